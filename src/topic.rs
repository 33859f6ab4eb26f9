//! MQTT topic filters with `{name}` captures: parsing, matching and level extraction.

/// One level of a topic filter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    /// `{name}`: matches one level and names it.
    Capture(String),
    /// `+`
    Any,
    /// `#`, always last.
    Rest,
}

/// A parsed topic filter such as `sensors/{site}/+/temperature`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    levels: Vec<Level>,
}

impl Filter {
    pub fn parse(text: &str) -> Result<Filter, String> {
        if text.is_empty() {
            return Err("the topic filter is empty".into());
        }
        if text.contains('\0') {
            return Err("the topic filter contains a NUL character".into());
        }
        let parts: Vec<&str> = text.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let level = match *part {
                "+" => Level::Any,
                "#" if i + 1 == parts.len() => Level::Rest,
                "#" => return Err("`#` may only be the last level of a topic filter".into()),
                p if p.starts_with('{') && p.ends_with('}') && p.len() > 2 => {
                    let name = &p[1..p.len() - 1];
                    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        return Err(format!(
                            "`{{{name}}}`: capture names use letters, digits and _"
                        ));
                    }
                    if levels
                        .iter()
                        .any(|l| matches!(l, Level::Capture(n) if n == name))
                    {
                        return Err(format!("the capture `{{{name}}}` appears twice"));
                    }
                    Level::Capture(name.to_string())
                }
                p if p.contains(['+', '#', '{', '}']) => {
                    return Err(format!(
                        "level `{p}`: `+`, `#` and `{{name}}` must fill a whole level"
                    ));
                }
                p => Level::Literal(p.to_string()),
            };
            levels.push(level);
        }
        Ok(Filter { levels })
    }

    /// The filter as sent to the broker: captures become `+`.
    pub fn mqtt_filter(&self) -> String {
        self.levels
            .iter()
            .map(|l| match l {
                Level::Literal(s) => s.as_str(),
                Level::Capture(_) | Level::Any => "+",
                Level::Rest => "#",
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// The level index of a `{name}` capture.
    pub fn capture_index(&self, name: &str) -> Option<usize> {
        self.levels
            .iter()
            .position(|l| matches!(l, Level::Capture(n) if n == name))
    }

    /// MQTT matching rules, including "wildcards never match topics starting with `$`".
    pub fn matches(&self, topic: &str) -> bool {
        if topic.starts_with('$') && !matches!(self.levels.first(), Some(Level::Literal(_))) {
            return false;
        }
        let mut parts = topic.split('/');
        for level in &self.levels {
            match level {
                Level::Rest => return true,
                Level::Literal(l) => {
                    if parts.next() != Some(l.as_str()) {
                        return false;
                    }
                }
                Level::Capture(_) | Level::Any => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn captures_become_single_level_wildcards() {
        let f = Filter::parse("sensors/{site}/{device}/temperature").unwrap();
        assert_eq!(f.mqtt_filter(), "sensors/+/+/temperature");
        assert_eq!(f.capture_index("device"), Some(2));
        assert_eq!(f.capture_index("nope"), None);
    }

    #[test]
    fn matching_follows_mqtt() {
        let f = Filter::parse("a/+/c").unwrap();
        assert!(f.matches("a/b/c"));
        assert!(f.matches("a//c"));
        assert!(!f.matches("a/b/c/d"));
        assert!(!f.matches("a/b"));
        let rest = Filter::parse("a/#").unwrap();
        assert!(rest.matches("a"));
        assert!(rest.matches("a/b/c"));
        assert!(!rest.matches("b/a"));
        assert!(!Filter::parse("#").unwrap().matches("$SYS/x"));
        assert!(Filter::parse("$SYS/#").unwrap().matches("$SYS/x"));
    }

    #[test]
    fn rejects_malformed_filters() {
        assert!(Filter::parse("a/#/b").is_err());
        assert!(Filter::parse("a/b+").is_err());
        assert!(Filter::parse("a/{x}/{x}").is_err());
        assert!(Filter::parse("a/{x y}").is_err());
        assert!(Filter::parse("").is_err());
    }

    proptest! {
        #[test]
        fn a_literal_filter_matches_exactly_its_topic(levels in prop::collection::vec("[a-z0-9]{1,5}", 1..6)) {
            let topic = levels.join("/");
            let f = Filter::parse(&topic).unwrap();
            prop_assert!(f.matches(&topic));
            let longer = format!("{topic}/x");
            prop_assert!(!f.matches(&longer));
        }

        #[test]
        fn plus_matches_any_single_level(a in "[a-z]{1,4}", b in "[^/#+\\x00]{0,8}") {
            let f = Filter::parse(&format!("{a}/+")).unwrap();
            let topic = format!("{a}/{b}");
            prop_assert!(f.matches(&topic));
        }
    }
}

//! `{column}` templates for outbound topics, exchanges and routing keys.

/// A parsed template: literal text and column references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Column(String),
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("`{text}`: unclosed `{{`"))?;
            let name = &rest[open + 1..open + close];
            if name.is_empty() || name.contains('{') {
                return Err(format!("`{text}`: `{{{name}}}` is not a column reference"));
            }
            parts.push(Part::Column(name.to_string()));
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("`{text}`: `}}` without `{{`"));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// The columns the template reads.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Column(c) => Some(c.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// The template as written: `alerts/{site}`.
    pub fn text(&self) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Literal(l) => l.clone(),
                Part::Column(c) => format!("{{{c}}}"),
            })
            .collect()
    }

    /// Fills the template; `value` gives a column's text (None when absent or NULL).
    pub fn render(&self, mut value: impl FnMut(&str) -> Option<String>) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Column(c) => match value(c) {
                    Some(v) => out.push_str(&v),
                    None => return Err(format!("column {c} is NULL or missing")),
                },
            }
        }
        Ok(out)
    }
}

/// A row value placed into an MQTT topic: it must not add a wildcard, a NUL or an empty
/// level, nor levels at all unless `add_levels`. Literal parts of the template may hold
/// empty levels (MQTT allows them).
pub fn check_topic_value(column: &str, value: &str, add_levels: bool) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!(
            "column {column} is empty, which would make an empty topic level"
        ));
    }
    if value.contains(['+', '#']) {
        return Err(format!(
            "column {column} value {value:?} contains a wildcard (+ or #)"
        ));
    }
    if value.contains('\0') {
        return Err(format!("column {column} value contains a NUL character"));
    }
    if !add_levels && value.contains('/') {
        return Err(format!(
            "column {column} value {value:?} contains `/`, which would add topic levels (set topic_values_add_levels: true on the route to allow it)"
        ));
    }
    if value.split('/').any(str::is_empty) {
        return Err(format!(
            "column {column} value {value:?} would make an empty topic level"
        ));
    }
    Ok(())
}

/// The whole topic: not empty, not longer than MQTT allows.
pub fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("the topic is empty".into());
    }
    if topic.len() > 65_535 {
        return Err("the topic is longer than 65535 bytes".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_columns() {
        let t = Template::parse("alarms/{site}/{device}").unwrap();
        assert_eq!(t.columns().collect::<Vec<_>>(), ["site", "device"]);
        let out = t.render(|c| Some(format!("<{c}>"))).unwrap();
        assert_eq!(out, "alarms/<site>/<device>");
        assert!(t.render(|_| None).is_err());
    }

    #[test]
    fn rejects_malformed_templates() {
        assert!(Template::parse("a/{x").is_err());
        assert!(Template::parse("a/{}").is_err());
        assert!(Template::parse("a/x}").is_err());
        assert_eq!(Template::parse("plain").unwrap().columns().count(), 0);
    }

    #[test]
    fn topic_values_from_rows_are_checked() {
        for add_levels in [false, true] {
            assert!(check_topic_value("c", "dev1", add_levels).is_ok());
            assert!(check_topic_value("c", "a+b", add_levels).is_err());
            assert!(check_topic_value("c", "#", add_levels).is_err());
            assert!(check_topic_value("c", "", add_levels).is_err());
            assert!(check_topic_value("c", "a/", add_levels).is_err());
            assert!(check_topic_value("c", "a\0b", add_levels).is_err());
        }
        assert!(check_topic_value("c", "a/b", true).is_ok());
        let e = check_topic_value("dev", "a/\u{1b}b", false).unwrap_err();
        assert!(
            e.contains(r#"column dev value "a/\u{1b}b" contains `/`"#),
            "{e}"
        );
        assert!(e.contains("topic_values_add_levels: true"), "{e}");
        assert!(check_topic("/a/b").is_ok());
        assert!(check_topic("").is_err());
    }
}

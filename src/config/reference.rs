//! The README's configuration reference must name every key the model accepts. The keys
//! are not listed here by hand: serde is asked, block by block, which fields it expects,
//! so a new key fails this test until it is documented.

use serde_json::{Value, json};

use super::model::Config;

const README: &str = include_str!("../../README.md");
const PROBE: &str = "zz_probe";

/// How to reach a nested block from its parent key.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// `key: { … }`
    Direct,
    /// `key: [ { … } ]`
    List,
    /// `key: { name: { … } }`
    Named,
}

/// The fields serde expects at `path`, or `None` if no struct lives there.
fn fields_at(path: &[(String, Shape)]) -> Option<Vec<String>> {
    let mut doc = json!({ PROBE: 1 });
    for (key, shape) in path.iter().rev() {
        doc = match shape {
            Shape::Direct => doc,
            Shape::List => json!([doc]),
            Shape::Named => json!({ "x": doc }),
        };
        doc = json!({ key.as_str(): doc });
    }
    // JSON is YAML.
    let text = doc.to_string();
    let error = serde_saphyr::from_str::<Config>(&text).err()?.to_string();
    // serde-saphyr writes serde's list without quotes: `expected one of a, b, c`.
    let line = error.lines().next()?;
    let rest = line.split(&format!("unknown field `{PROBE}`")).nth(1)?;
    let expected = rest
        .split_once("expected one of ")
        .or_else(|| rest.split_once("expected "))
        .map_or("", |(_, list)| list);
    Some(
        expected
            .split(", ")
            .map(|k| k.trim_matches(|c: char| c == '`' || c.is_whitespace()))
            .filter(|k| !k.is_empty())
            .map(str::to_string)
            .collect(),
    )
}

/// Every (block, key) of the model, blocks named like `inbound[].csv`.
fn every_key() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut blocks: Vec<Vec<(String, Shape)>> = vec![Vec::new()];
    while let Some(path) = blocks.pop() {
        let fields = fields_at(&path).expect("the path was found to hold a struct");
        assert!(!fields.is_empty(), "no fields found at {path:?}");
        for field in fields {
            for shape in [Shape::Direct, Shape::List, Shape::Named] {
                let mut child = path.clone();
                child.push((field.clone(), shape));
                if fields_at(&child).is_some() {
                    blocks.push(child);
                    break;
                }
            }
            out.push((block_name(&path), field));
        }
    }
    out
}

fn block_name(path: &[(String, Shape)]) -> String {
    path.iter()
        .map(|(key, shape)| match shape {
            Shape::Direct => key.clone(),
            Shape::List => format!("{key}[]"),
            Shape::Named => format!("{key}.NAME"),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The README from its `## Configuration` heading to the next top-level section.
fn reference() -> &'static str {
    let start = README
        .find("\n## Configuration")
        .expect("README has a Configuration section");
    let rest = &README[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    &rest[..end]
}

fn documented(key: &str, text: &str) -> bool {
    text.match_indices(&format!("{key}:")).any(|(i, _)| {
        text[..i]
            .chars()
            .next_back()
            .is_none_or(|c| c.is_whitespace() || c == '{' || c == ',' || c == '#')
    })
}

#[test]
fn the_probe_finds_nested_blocks() {
    let keys = every_key();
    let has = |block: &str, key: &str| keys.iter().any(|(b, k)| b == block && k == key);
    assert!(has("", "inbound"), "{keys:?}");
    assert!(has("inbound[]", "topic"), "{keys:?}");
    assert!(has("inbound[].csv", "null"), "{keys:?}");
    assert!(has("inbound[].batch", "max_delay"), "{keys:?}");
    assert!(has("brokers.NAME.tls", "ca_file"), "{keys:?}");
    assert!(has("dead_letter.publish", "routing_key"), "{keys:?}");
    assert!(has("http", "listen"), "{keys:?}");
    assert!(has("outbound[].wake", "password_file"), "{keys:?}");
    assert!(keys.len() > 60, "only {} keys found", keys.len());
}

#[test]
fn every_config_key_is_in_the_readme_reference() {
    let text = reference();
    let missing: Vec<String> = every_key()
        .into_iter()
        .filter(|(_, key)| !documented(key, text))
        .map(|(block, key)| {
            if block.is_empty() {
                key
            } else {
                format!("{block}.{key}")
            }
        })
        .collect();
    assert!(
        missing.is_empty(),
        "README.md's Configuration section does not document: {}",
        missing.join(", ")
    );
}

#[test]
fn documented_means_written_as_a_key() {
    assert!(documented("qos", "    qos: 1"));
    assert!(documented("qos", "{ broker: b, qos: 1 }"));
    assert!(documented("null", "# null: ~"));
    assert!(!documented("qos", "max_qos: 1"));
    assert!(!documented("qos", "the qos is 1"));
}

#[test]
fn probe_json_is_yaml() {
    let v: Value = json!({"a": [{"b": 1}]});
    assert!(serde_saphyr::from_str::<Config>(&v.to_string()).is_err());
}

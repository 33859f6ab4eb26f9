//! The configuration blocks of README.md, as a reader would copy them.
//!
//! Every ```` ```yaml ```` block is a configuration. The line right before its fence may
//! say how to load it, in an HTML comment (invisible on the rendered page):
//!
//! - no marker: the block is a whole configuration and loads on its own;
//! - `<!-- config-test: adds to the first example -->`: the block adds top-level keys to the
//!   first ```` ```yaml ```` block of the README (the main example), and loads appended to it;
//! - `<!-- config-test: skip -->`: a fragment that is not loaded.
//!
//! Any other `config-test:` comment is an error, so a typo cannot skip a block.

const MARKER: &str = "config-test:";

/// How a README block is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Whole,
    AddsToFirst,
    Skip,
}

/// One ```` ```yaml ```` block: its text without the fence's indentation.
#[derive(Clone, Debug)]
pub struct YamlBlock {
    /// The line of the opening fence, counted from 1.
    pub line: usize,
    pub role: Role,
    pub text: String,
}

/// Every ```` ```yaml ```` block of `markdown`, in order; an unknown marker is an error.
pub fn yaml_blocks(markdown: &str) -> Result<Vec<YamlBlock>, String> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let fence = lines[i];
        let indent = fence.len() - fence.trim_start().len();
        if fence.trim() != "```yaml" {
            i += 1;
            continue;
        }
        let role = role(i.checked_sub(1).map(|p| lines[p]), i + 1)?;
        let mut text = String::new();
        let mut end = i + 1;
        while end < lines.len() && lines[end].trim() != "```" {
            let line = lines[end];
            text.push_str(line.get(indent..).unwrap_or(line.trim_start()));
            text.push('\n');
            end += 1;
        }
        if end == lines.len() {
            return Err(format!("line {}: the ```yaml block is never closed", i + 1));
        }
        let line = i + 1;
        blocks.push(YamlBlock { line, role, text });
        i = end + 1;
    }
    Ok(blocks)
}

fn role(before: Option<&str>, fence_line: usize) -> Result<Role, String> {
    let Some(comment) = before
        .map(str::trim)
        .and_then(|l| l.strip_prefix("<!--"))
        .and_then(|l| l.strip_suffix("-->"))
    else {
        return Ok(Role::Whole);
    };
    let Some(value) = comment.trim().strip_prefix(MARKER) else {
        return Ok(Role::Whole);
    };
    match value.trim() {
        "adds to the first example" => Ok(Role::AddsToFirst),
        "skip" => Ok(Role::Skip),
        other => Err(format!(
            "line {fence_line}: unknown marker `{MARKER} {other}` before a ```yaml block \
             (write `{MARKER} adds to the first example` or `{MARKER} skip`)"
        )),
    }
}

/// `text` with every `${NAME}` that has no default given one from `values`, so the block
/// loads through the usual substitution without touching the process environment. A
/// variable missing from `values` is an error naming it.
pub fn with_defaults(text: &str, values: &[(&str, &str)]) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push_str("$$");
            rest = tail;
            continue;
        }
        // Anything but `${NAME}` is copied as it is.
        let body = after.strip_prefix('{').unwrap_or("");
        let is_name = |c: &char| c.is_ascii_alphanumeric() || *c == '_';
        let name: String = body.chars().take_while(is_name).collect();
        match body[name.len()..].strip_prefix('}') {
            Some(tail) if !name.is_empty() => {
                let Some((_, value)) = values.iter().find(|(n, _)| *n == name) else {
                    let missing = format!("${{{name}}} has no value in the test: add one for it");
                    return Err(missing);
                };
                out.push_str(&format!("${{{name}:-{value}}}"));
                rest = tail;
            }
            _ => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

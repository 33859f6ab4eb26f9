//! Keeps the module graph of `src/` the one the `# Layout` section of `lib.rs` describes:
//! no file imports another that (through any chain) imports it back, and no file imports a
//! module of a higher layer. Only a file's code before its `#[cfg(test)]` counts, because
//! tests may borrow fixtures from anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom first: each top-level module of the crate and the layer it sits in.
/// Modules of a layer marked apart never import each other (the database, broker and
/// state-store adapters stand side by side).
const LAYERS: &[(&str, bool, &[&str])] = &[
    (
        "values",
        false,
        &[
            "error",
            "backoff",
            "heap",
            "metrics",
            "convert",
            "cell",
            "message",
            "dlq",
            "net",
            "connection_string",
        ],
    ),
    ("codecs", false, &["codec", "mapping", "topic", "template"]),
    ("config", false, &["config"]),
    ("adapters", true, &["db", "broker", "state"]),
    (
        "routes",
        false,
        &[
            "routes",
            "destination",
            "inbound",
            "outbound",
            "replay",
            "mirror",
            "lease",
            "slots",
            "dedup",
        ],
    ),
    (
        "application",
        false,
        &[
            "app",
            "cli",
            "dlq_commands",
            "status",
            "position_commands",
            "http",
            "demo",
            "logging",
        ],
    ),
];

/// A module path (`["broker", "mqtt"]`) and the file holding it.
type Modules = BTreeMap<Vec<String>, PathBuf>;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every module file under `src/` by its module path; `main.rs` is a crate of its own.
fn modules() -> Modules {
    fn walk(dir: &Path, prefix: &[String], out: &mut Modules) {
        for entry in std::fs::read_dir(dir).expect("src is readable") {
            let path = entry.expect("src entry").path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                walk(&path, &[prefix, &[name]].concat(), out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let module = match name.as_str() {
                    "lib" | "mod" => prefix.to_vec(),
                    // `main` is a crate of its own; this check is no part of the graph.
                    "main" | "layering" => continue,
                    _ => [prefix, &[name]].concat(),
                };
                out.insert(module, path);
            }
        }
    }
    let mut out = Modules::new();
    walk(&src(), &[], &mut out);
    out
}

/// The code of a file before its tests, without comment lines.
fn code(path: &Path) -> String {
    production(&std::fs::read_to_string(path).expect("source is readable"))
}

fn production(text: &str) -> String {
    // The first inline test module; `#[cfg(test)] mod name;` declarations are no cut.
    let end = text
        .match_indices("#[cfg(test)]")
        .map(|(at, marker)| at + marker.len())
        .find(|&after| {
            let next = text[after..].trim_start();
            next.starts_with("mod ") && next.lines().next().is_some_and(|l| l.ends_with('{'))
        })
        .map_or(text.len(), |after| after - "#[cfg(test)]".len());
    text[..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| l.split(" // ").next().unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        return tree
            .split_whitespace()
            .next()
            .map(str::to_string)
            .into_iter()
            .collect();
    };
    let head = tree[..open].trim();
    let inner = &tree[open + 1..tree.rfind('}').expect("a closed group")];
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(inner[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(inner[start..].trim());
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand(&format!("{head}{p}")))
        .collect()
}

/// The paths a file names: every `use` tree, expanded, and every `crate::`/`super::` path
/// written inline.
fn paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = code.lines();
    while let Some(line) = lines.next() {
        let line = line.trim_start();
        let Some(at) = ["use ", "pub use ", "pub(crate) use "]
            .iter()
            .find_map(|start| line.strip_prefix(start))
        else {
            continue;
        };
        let mut tree = at.to_string();
        while !tree.contains(';') {
            match lines.next() {
                Some(more) => tree.push_str(more),
                None => break,
            }
        }
        out.extend(expand(tree.split(';').next().unwrap_or_default()));
    }
    for start in ["crate::", "super::"] {
        for (at, _) in code.match_indices(start) {
            let before = code[..at].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let path: String = code[at..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            // `super::{a, b}` is a use tree, read above.
            if !path.ends_with("::") {
                out.push(path);
            }
        }
    }
    out
}

/// The file a path leads to from the module `here`, if it is a module of this crate.
fn resolve(path: &str, here: &[String], modules: &Modules) -> Option<PathBuf> {
    let mut segments = path.split("::").filter(|s| !s.is_empty() && *s != "*");
    let mut base: Vec<String> = match segments.next()? {
        "crate" => Vec::new(),
        "self" => here.to_vec(),
        "super" => here[..here.len().checked_sub(1)?].to_vec(),
        child => {
            let module = [here, &[child.to_string()]].concat();
            modules.contains_key(&module).then_some(module)?
        }
    };
    let mut found = modules.get(&base).cloned();
    for segment in segments {
        if segment == "super" {
            base.pop();
        } else if segment != "self" {
            base.push(segment.to_string());
        }
        match modules.get(&base) {
            Some(file) => found = Some(file.clone()),
            None => break,
        }
    }
    found
}

/// Each file and the files it imports.
fn graph(modules: &Modules) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    modules
        .iter()
        .map(|(module, file)| {
            let imports = paths(&code(file))
                .iter()
                .filter_map(|p| resolve(p, module, modules))
                .filter(|target| target != file && target != &src().join("lib.rs"))
                .collect();
            (file.clone(), imports)
        })
        .collect()
}

/// A circle of imports, as the files along it, if there is one.
fn circle(graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Option<Vec<PathBuf>> {
    fn visit(
        file: &PathBuf,
        graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        path: &mut Vec<PathBuf>,
        done: &mut BTreeSet<PathBuf>,
    ) -> Option<Vec<PathBuf>> {
        if let Some(at) = path.iter().position(|f| f == file) {
            return Some(path[at..].to_vec());
        }
        if !done.insert(file.clone()) {
            return None;
        }
        path.push(file.clone());
        for next in graph.get(file).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|file| visit(file, graph, &mut Vec::new(), &mut done))
}

/// The layer of a file: its index in `LAYERS` and whether that layer's modules stay apart.
fn layer(file: &Path) -> Option<(usize, bool, String)> {
    let relative = file.strip_prefix(src()).ok()?;
    let top = relative.components().next()?.as_os_str().to_string_lossy();
    let top = top.trim_end_matches(".rs").to_string();
    LAYERS
        .iter()
        .position(|(_, _, modules)| modules.contains(&top.as_str()))
        .map(|i| (i, LAYERS[i].1, top))
}

fn shown(file: &Path) -> String {
    file.strip_prefix(src().parent().unwrap())
        .unwrap_or(file)
        .display()
        .to_string()
}

#[test]
fn no_file_imports_itself_back_through_a_circle() {
    let graph = graph(&modules());
    if let Some(files) = circle(&graph) {
        let files: Vec<String> = files.iter().map(|f| shown(f)).collect();
        panic!("import circle: {} → {}", files.join(" → "), files[0]);
    }
}

#[test]
fn every_top_level_module_has_a_layer() {
    let missing: Vec<String> = modules()
        .values()
        .filter(|f| f.file_name().is_some_and(|n| n != "lib.rs") && layer(f).is_none())
        .map(|f| shown(f))
        .collect();
    assert!(
        missing.is_empty(),
        "give these files a layer in LAYERS: {missing:?}"
    );
}

#[test]
fn imports_run_down_the_layers() {
    let mut wrong = Vec::new();
    for (file, imports) in graph(&modules()) {
        let Some((from, apart, top)) = layer(&file) else {
            continue;
        };
        for target in imports {
            let Some((to, _, target_top)) = layer(&target) else {
                continue;
            };
            let sideways = to == from && apart && target_top != top;
            if to > from || sideways {
                wrong.push(format!(
                    "{} ({}) imports {} ({})",
                    shown(&file),
                    LAYERS[from].0,
                    shown(&target),
                    LAYERS[to].0
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

/// The modules `lib.rs` names (as [`module`] links) under each numbered layer of its
/// `# Layout` section.
fn documented_layers() -> Vec<BTreeSet<String>> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("lib.rs is readable");
    let start = lib.find("# Layout").expect("lib.rs has a # Layout section");
    let end = lib[start..]
        .find("\n//! # ")
        .map_or(lib.len(), |e| start + e);
    let mut layers: Vec<BTreeSet<String>> = Vec::new();
    for line in lib[start..end].lines() {
        let text = line.trim_start_matches("//!").trim_start();
        if text
            .split_once(". ")
            .is_some_and(|(n, _)| n.parse::<usize>().is_ok())
        {
            layers.push(BTreeSet::new());
        }
        let Some(layer) = layers.last_mut() else {
            continue;
        };
        for link in text.split("[`").skip(1) {
            let name = link.split('`').next().unwrap_or_default();
            if !name.contains("::") {
                layer.insert(name.to_string());
            }
        }
    }
    layers
}

#[test]
fn the_layout_in_lib_rs_lists_the_same_layers() {
    let table: Vec<BTreeSet<String>> = LAYERS
        .iter()
        .map(|(_, _, modules)| modules.iter().map(|m| m.to_string()).collect())
        .collect();
    assert_eq!(
        documented_layers(),
        table,
        "lib.rs `# Layout` and LAYERS disagree"
    );
}

#[test]
fn grouped_and_nested_imports_expand_to_each_path() {
    assert_eq!(
        expand("crate::{a, b::{c, d as e}, f::*}"),
        ["crate::a", "crate::b::c", "crate::b::d", "crate::f::*"]
    );
}

#[test]
fn only_an_inline_test_module_ends_the_production_code() {
    let text =
        "#[cfg(test)]\nmod reference;\nuse crate::a;\n#[cfg(test)]\nmod tests {\nuse crate::b;\n}";
    assert_eq!(paths(&production(text)), ["crate::a", "crate::a"]);
}

#[test]
fn a_planted_circle_is_found() {
    let (a, b, c) = (
        PathBuf::from("a.rs"),
        PathBuf::from("b.rs"),
        PathBuf::from("c.rs"),
    );
    let graph = BTreeMap::from([
        (a.clone(), BTreeSet::from([b.clone()])),
        (b.clone(), BTreeSet::from([c.clone()])),
        (c.clone(), BTreeSet::from([b.clone()])),
    ]);
    assert_eq!(circle(&graph), Some(vec![b, c]));
}

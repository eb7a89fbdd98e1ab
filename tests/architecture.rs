//! The house plan, checked: reads `src/`, builds the import graph between top-level modules and between
//! the groups of `src/model`, and fails on a cycle or an arrow pointing up.
//!
//! An arrow is any path a file names through `crate::`, `qlab::` (the binary's files), `super::` or
//! `self::`, in `use` trees (braces expanded) and in code. Comments, `#[cfg(test)] mod ... { }` bodies,
//! `tests.rs` and `test_support.rs` are left out: tests may build a whole decoder to check a kernel.
//! Names re-exported by `model/mod.rs` are followed to the group that defines them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The groups of `src/model`, lowest first: a group may import only groups of a lower rank.
const MODEL_RANKS: &[(&str, u8)] = &[
    ("error", 0),
    ("target", 0),
    ("autograd", 0),
    ("text", 0),
    ("config", 1),
    ("device", 1),
    ("quant", 2),
    ("kernels", 3),
    ("decoder", 4),
    ("load", 5),
    ("generate", 6),
];

/// Top-level modules `model` may import besides itself.
const MODEL_MAY_IMPORT: &[&str] = &["store", "config"];

/// An import arrow between module paths (`["model", "decoder"]` ...), from a file to what it names.
struct Arrow {
    from: Vec<String>,
    to: Vec<String>,
    file: PathBuf,
}

/// The module path of a file under `src/` (`src/model/decoder/mod.rs` -> `model::decoder`).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("file under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_string());
    }
    parts
}

/// The text of a file without comments and without inline test modules.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            let next = lines.peek().map(|l| l.trim_start()).unwrap_or("");
            if next.starts_with("mod ") && next.trim_end().ends_with('{') {
                // Skip the module: up to its closing brace at the same indentation.
                let indent = line.len() - trimmed.len();
                let close = format!("{}}}", " ".repeat(indent));
                lines.next();
                for l in lines.by_ref() {
                    if l.trim_end() == close {
                        break;
                    }
                }
                continue;
            }
        }
        if trimmed.starts_with("//") {
            continue;
        }
        let code = match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Expands a `use` tree (`a::{b, c::{d as e}}`) into its paths.
fn expand_use(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or(tree).trim();
        return vec![path.to_string()];
    };
    let prefix = tree[..open].trim();
    let close = tree.rfind('}').filter(|&c| c > open).unwrap_or(tree.len());
    let inner = &tree[open + 1..close];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, ch) in inner.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(expand_use)
        .map(|p| {
            if p == "self" {
                prefix.trim_end_matches("::").to_string()
            } else {
                format!("{prefix}{p}")
            }
        })
        .collect()
}

/// Every path the code names, `use` trees expanded.
fn named_paths(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("use ") {
        let before = rest[..i].chars().last();
        let after = &rest[i + 4..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            rest = after;
            continue;
        }
        let end = after.find(';').unwrap_or(after.len());
        let tree: String = after[..end]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        paths.extend(expand_use(&tree.replace(":: ", "::").replace(" ::", "::")));
        rest = &after[end..];
    }
    let bytes = code.as_bytes();
    for start in ["crate::", "qlab::", "super::", "self::"] {
        for (i, _) in code.match_indices(start) {
            if i > 0
                && (bytes[i - 1].is_ascii_alphanumeric()
                    || bytes[i - 1] == b'_'
                    || bytes[i - 1] == b':')
            {
                continue;
            }
            let len = code[i..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(code.len() - i);
            paths.push(code[i..i + len].trim_end_matches(':').to_string());
        }
    }
    paths
}

/// The absolute module path a path names from `module`, or None for an outside crate.
fn resolve(module: &[String], path: &str) -> Option<Vec<String>> {
    let mut segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: Vec<String> = match segs.first()? {
        &"crate" | &"qlab" => {
            segs.remove(0);
            Vec::new()
        }
        &"super" | &"self" => module.to_vec(),
        _ => return None,
    };
    while let Some(&seg) = segs.first() {
        match seg {
            "super" => {
                base.pop();
            }
            "self" => {}
            _ => break,
        }
        segs.remove(0);
    }
    base.extend(segs.iter().map(|s| s.to_string()));
    Some(base)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("readable src dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let name = path.file_name().unwrap_or_default();
            if name != "tests.rs" && name != "test_support.rs" {
                out.push(path);
            }
        }
    }
}

fn arrows(src: &Path) -> Vec<Arrow> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable source file");
        let module = module_of(src, &file);
        for path in named_paths(&code_of(&text)) {
            if let Some(to) = resolve(&module, &path) {
                out.push(Arrow {
                    from: module.clone(),
                    to,
                    file: file.clone(),
                });
            }
        }
    }
    out
}

/// The names `model/mod.rs` re-exports, each with the group that defines it.
fn model_reexports(src: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(src.join("model/mod.rs")).expect("model/mod.rs");
    let mut map = BTreeMap::new();
    for line in code_of(&text).split(';') {
        let line = line.trim();
        if let Some(tree) = line.strip_prefix("pub use ") {
            for path in expand_use(tree) {
                let segs: Vec<&str> = path.split("::").collect();
                if let (Some(group), Some(name)) = (segs.first(), segs.last()) {
                    map.insert(name.to_string(), group.to_string());
                }
            }
        }
    }
    map
}

/// A cycle in `graph` as its nodes in order, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

struct Graphs {
    top: BTreeMap<String, BTreeSet<String>>,
    model: BTreeMap<String, BTreeSet<String>>,
    /// One file per arrow, to name in a failure.
    witness: BTreeMap<(String, String), PathBuf>,
}

fn graphs() -> Graphs {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let reexports = model_reexports(&src);
    let groups: BTreeSet<&str> = MODEL_RANKS.iter().map(|(g, _)| *g).collect();
    let mut g = Graphs {
        top: BTreeMap::new(),
        model: BTreeMap::new(),
        witness: BTreeMap::new(),
    };
    for arrow in arrows(&src) {
        let (Some(from), Some(to)) = (arrow.from.first(), arrow.to.first()) else {
            continue;
        };
        if from != to {
            g.top.entry(from.clone()).or_default().insert(to.clone());
            g.witness
                .insert((from.clone(), to.clone()), arrow.file.clone());
        }
        if from == "model" && to == "model" {
            let (Some(a), Some(b)) = (arrow.from.get(1), arrow.to.get(1)) else {
                continue;
            };
            let b = reexports.get(b).unwrap_or(b);
            if a != b && groups.contains(a.as_str()) && groups.contains(b.as_str()) {
                g.model.entry(a.clone()).or_default().insert(b.clone());
                g.witness.insert(
                    (format!("model::{a}"), format!("model::{b}")),
                    arrow.file.clone(),
                );
            }
        }
    }
    g
}

fn describe(g: &Graphs, from: &str, to: &str) -> String {
    let file = g.witness.get(&(from.to_string(), to.to_string()));
    format!(
        "{from} -> {to} (in {})",
        file.map(|f| f.display().to_string()).unwrap_or_default()
    )
}

#[test]
fn the_groups_of_model_import_downward_only() {
    let g = graphs();
    assert!(g.model.len() >= 6, "too few groups found: {:?}", g.model);
    if let Some(cycle) = find_cycle(&g.model) {
        panic!("import cycle inside src/model: {}", cycle.join(" -> "));
    }
    let rank: BTreeMap<&str, u8> = MODEL_RANKS.iter().copied().collect();
    let mut upward = Vec::new();
    for (from, tos) in &g.model {
        for to in tos {
            if rank[from.as_str()] <= rank[to.as_str()] {
                upward.push(describe(
                    &g,
                    &format!("model::{from}"),
                    &format!("model::{to}"),
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "arrows not pointing down in src/model:\n{}",
        upward.join("\n")
    );
}

#[test]
fn top_level_modules_have_no_cycle_and_keep_their_floors() {
    let g = graphs();
    if let Some(cycle) = find_cycle(&g.top) {
        panic!(
            "import cycle between top-level modules: {}",
            cycle.join(" -> ")
        );
    }
    let imports = |m: &str| g.top.get(m).cloned().unwrap_or_default();
    for banned in ["model", "train"] {
        assert!(
            !imports("tui").contains(banned),
            "the TUI imports {}",
            describe(&g, "tui", banned)
        );
    }
    let model = imports("model");
    assert!(
        model.contains("store"),
        "model's arrows were not found: {model:?}"
    );
    for to in model {
        assert!(
            MODEL_MAY_IMPORT.contains(&to.as_str()),
            "model may import only {MODEL_MAY_IMPORT:?}: {}",
            describe(&g, "model", &to)
        );
    }
}

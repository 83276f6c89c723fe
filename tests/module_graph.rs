//! The crate's top-level modules form no cycle, and no face imports `cli`
//! (it only parses and dispatches). Read from the sources' `crate::`
//! paths, test code left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module of a source file under src/.
fn module_of(path: &Path) -> Option<String> {
    let rel = path
        .strip_prefix(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))
        .ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_string())
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Test-only files, and the part of a file from its test module on.
fn non_test_code(path: &Path, text: &str) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    if ["tests.rs", "fixtures.rs", "replay_tests.rs"].contains(&name) {
        return None;
    }
    let cut = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    // Comments name modules without depending on them.
    Some(
        text[..cut]
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(f)).collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let Some(m) = module_of(f) else { continue };
        if m == "main" || m == "lib" || m == "bin" {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        let Some(code) = non_test_code(f, &text) else {
            continue;
        };
        let deps = g.entry(m.clone()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name != m && modules.contains(&name) {
                deps.insert(name);
            }
        }
        // `use crate::{a, b}` groups.
        for (i, _) in code.match_indices("crate::{") {
            let rest = &code[i + "crate::{".len()..];
            let group = &rest[..rest.find('}').unwrap_or(0)];
            for part in group.split(',') {
                let name = part.trim().split("::").next().unwrap_or("").to_string();
                if name != m && modules.contains(&name) {
                    deps.insert(name);
                }
            }
        }
    }
    g
}

/// A cycle through `from`, if any (depth-first search).
fn cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut c = path[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, g, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in g.keys() {
        if let Some(c) = visit(n, g, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn top_level_modules_form_no_cycle() {
    let g = graph();
    assert!(
        g.contains_key("session") && g.contains_key("model"),
        "{g:?}"
    );
    if let Some(c) = cycle(&g) {
        panic!("module cycle: {}\ngraph: {g:#?}", c.join(" -> "));
    }
}

#[test]
fn no_face_imports_cli() {
    let g = graph();
    let importers: Vec<_> = g
        .iter()
        .filter(|(m, deps)| m.as_str() != "cli" && deps.contains("cli"))
        .map(|(m, _)| m.clone())
        .collect();
    assert!(importers.is_empty(), "{importers:?} import cli");
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    assert_eq!(cycle(&g), None);
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(cycle(&g).unwrap().join(" -> "), "a -> b -> c -> a");
}

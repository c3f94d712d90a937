//! The files of `replication/src` must not import each other in a circle: files in a cycle can
//! only be read and changed together. There were two: `api.rs` <-> `cluster.rs` (the relay, the
//! cluster's one axum code, took `MAX_BODY` from the server) and `cluster.rs` -> `network.rs` ->
//! `election.rs` -> `cluster.rs` (for `Timings`).
//!
//! A file's edges are the `crate::…` paths it names (in `use` trees and inline), each resolved
//! to the file of the longest module prefix it names. A path to a name of the crate root
//! (`crate::Command`) would be an edge to `lib.rs`, which only declares modules and re-exports
//! them, so it is left out; so are comments and a parent's `mod child;`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[test]
fn the_files_of_replication_import_each_other_without_a_cycle() {
    let graph = file_graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    // The parser must see edges at all, or the check below would pass on nothing.
    assert!(graph["duties.rs"].contains("cluster.rs"), "no edge duties.rs -> cluster.rs found: {graph:#?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!("the files of replication/src import each other in a cycle: {}", cycle.join(" -> "));
    }
}

/// Each `.rs` file under `src` (by its path there) and the files it references.
fn file_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let files = rs_files(src, src);
    let modules: BTreeMap<Vec<String>, String> = files.keys().map(|f| (module_of(f), f.clone())).collect();
    let mut graph = BTreeMap::new();
    for (file, text) in &files {
        let mut edges = BTreeSet::new();
        for path in crate_paths(text) {
            let to = (0..=path.len()).rev().find_map(|n| modules.get(&path[..n])).expect("the root always matches");
            if to != file && to != "lib.rs" {
                edges.insert(to.clone());
            }
        }
        graph.insert(file.clone(), edges);
    }
    graph
}

/// The text of every `.rs` file under `dir`, by its path relative to `src` (`/`-separated).
fn rs_files(src: &Path, dir: &Path) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path: PathBuf = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rs_files(src, &path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(src).unwrap().components();
            let rel: Vec<_> = rel.map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            files.insert(rel.join("/"), std::fs::read_to_string(&path).unwrap());
        }
    }
    files
}

/// `lib.rs` → `[]`, `store/mod.rs` → `[store]`, `rpc/wire.rs` → `[rpc, wire]`.
fn module_of(file: &str) -> Vec<String> {
    let mut parts: Vec<String> = file.trim_end_matches(".rs").split('/').map(str::to_owned).collect();
    if matches!(parts.last().map(String::as_str), Some("lib" | "mod")) {
        parts.pop();
    }
    parts
}

/// Every path after `crate::` in `text` (comments left out), a `use` tree's braces expanded:
/// `use crate::{a, b::{self, C}}` names `[a]`, `[b]` and `[b, C]`.
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    let code: String = text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
    let mut paths = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // e.g. `my_crate::`
        }
        use_tree(&mut code[at + "crate::".len()..].chars().peekable(), Vec::new(), &mut paths);
    }
    paths
}

/// Reads one use tree (or inline path) after `prefix::`, pushing every path it names.
fn use_tree(s: &mut std::iter::Peekable<std::str::Chars>, mut prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    loop {
        skip_space(s);
        if s.peek() == Some(&'{') {
            s.next();
            loop {
                use_tree(s, prefix.clone(), out);
                // Past what the subtree did not read (`as name`), to the next `,` or the `}`.
                if s.find(|c| *c == ',' || *c == '}') != Some(',') {
                    return;
                }
                skip_space(s);
                if s.peek() == Some(&'}') {
                    s.next();
                    return;
                }
            }
        }
        let mut ident = String::new();
        while let Some(&c) = s.peek().filter(|c| c.is_alphanumeric() || **c == '_') {
            ident.push(c);
            s.next();
        }
        if !ident.is_empty() && ident != "self" {
            prefix.push(ident);
        }
        let mut rest = s.clone();
        if rest.next() == Some(':') && rest.next() == Some(':') {
            *s = rest;
        } else {
            out.push(prefix);
            return;
        }
    }
}

fn skip_space(s: &mut std::iter::Peekable<std::str::Chars>) {
    while s.peek().is_some_and(|c| c.is_whitespace()) {
        s.next();
    }
}

/// A cycle of `graph` (its first file repeated at the end), by depth-first search.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit<'a>(
        f: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| *s == f) {
            return Some(stack[i..].iter().chain([&f]).map(|s| s.to_string()).collect());
        }
        if !done.insert(f) {
            return None;
        }
        stack.push(f);
        for to in graph.get(f).into_iter().flatten() {
            if let Some(cycle) = visit(to, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|f| visit(f, graph, &mut Vec::new(), &mut done))
}

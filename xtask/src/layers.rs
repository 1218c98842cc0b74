//! `cargo xtask layers` (part of `lint`): the modules of each workspace crate form layers,
//! with no import cycle between them.
//!
//! A module is a top-level file `src/x.rs` (with its folder `src/x/`, if any); the crate root
//! (`lib.rs`, `main.rs`) declares them and is not a module here. Module `a` uses module `b`
//! when code in `a` names `crate::b` (in a path or a `use crate::{b, ...}` group); comments
//! do not count. A cycle (`hub` uses `push`, `push` uses `hub`) is what makes a module
//! impossible to understand or test alone: the fix is to move the shared piece down into a
//! module both use, or to hand the lower one a narrow handle instead of the upper one.
//! Cycles between crates need no check: cargo refuses them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Module name → the modules it uses.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// Cycles that predate this check, per crate folder: a cycle whose modules are all listed
/// here is tolerated until it is taken apart (then delete its entry). New modules, and new
/// cycles between these, still fail. Empty: the last ones (host/policy's engine, cache,
/// tenant and bindings/wasi/host; sdk/plugin's host and testing) were taken apart by moving
/// what both sides used into a leaf below them (`runtime`, `version`, `inert`; `native`).
const KNOWN: &[(&str, &[&str])] = &[];

/// Whether every module of `cycle` is a known one of the crate at `at`.
fn known(at: &str, cycle: &[String]) -> bool {
    KNOWN
        .iter()
        .any(|(dir, mods)| *dir == at && cycle.iter().all(|m| mods.contains(&m.as_str())))
}

/// Runs the check on every workspace crate with a `src/` folder.
pub fn run() -> Result<()> {
    let root = crate::root();
    let mut cycles = Vec::new();
    let mut crates = 0;
    for dir in crate_dirs(&root)? {
        let src = dir.join("src");
        if !src.is_dir() {
            continue;
        }
        crates += 1;
        let graph = graph_of(&src)?;
        let at = dir
            .strip_prefix(&root)
            .unwrap_or(&dir)
            .display()
            .to_string();
        for cycle in find_cycles(&graph) {
            if !known(&at, &cycle) {
                cycles.push(format!("{at}: {}", cycle.join(" → ")));
            }
        }
    }
    if cycles.is_empty() {
        eprintln!("module layers: ok ({crates} crates, no import cycle)");
        return Ok(());
    }
    for c in &cycles {
        eprintln!("error: import cycle in {c}");
    }
    bail!(
        "{} import cycle(s) between modules. Move what both need into a lower module, or give \
         the lower module a narrow handle instead of the upper one (xtask/src/layers.rs)",
        cycles.len()
    )
}

/// The folders of the workspace's member crates (from `cargo metadata`).
fn crate_dirs(root: &Path) -> Result<Vec<PathBuf>> {
    let out = crate::cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(root)
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing cargo metadata's output")?;
    let mut dirs: Vec<PathBuf> = meta["packages"]
        .as_array()
        .context("cargo metadata lists no packages")?
        .iter()
        .filter_map(|p| p["manifest_path"].as_str())
        .filter_map(|m| Path::new(m).parent().map(Path::to_path_buf))
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// The module graph of the crate whose sources are in `src`.
fn graph_of(src: &Path) -> Result<Graph> {
    let mut files: Vec<(String, String)> = Vec::new();
    for entry in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let path = entry?.path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
            continue;
        };
        if path.is_dir() {
            for file in rust_files(&path)? {
                files.push((stem.clone(), std::fs::read_to_string(&file)?));
            }
        } else if path.extension().is_some_and(|e| e == "rs") && stem != "lib" && stem != "main" {
            files.push((stem, std::fs::read_to_string(&path)?));
        }
    }
    Ok(graph_from(&files))
}

fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(rust_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(out)
}

/// The graph of `(module, source)` pairs; uses of names that are not modules (items of the
/// crate root, like a re-exported error type) are not edges.
fn graph_from(files: &[(String, String)]) -> Graph {
    let modules: BTreeSet<&str> = files.iter().map(|(m, _)| m.as_str()).collect();
    let mut graph = Graph::new();
    for (module, source) in files {
        let uses = graph.entry(module.clone()).or_default();
        for used in crate_paths(source) {
            if used != *module && modules.contains(used.as_str()) {
                uses.insert(used);
            }
        }
    }
    graph
}

/// The first segment after every `crate::` in `source`'s code (comments stripped), including
/// each name of a `crate::{a, b::c}` group.
fn crate_paths(source: &str) -> BTreeSet<String> {
    let code: String = source
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        // `crate::` inside a longer identifier (`my_crate::`) is another crate.
        let preceded = rest[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        rest = &rest[i + "crate::".len()..];
        if preceded {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = matching_brace(group);
            for item in split_top_level(&group[..end]) {
                if let Some(name) = first_ident(item.trim()) {
                    out.insert(name);
                }
            }
        } else if let Some(name) = first_ident(rest) {
            out.insert(name);
        }
    }
    out
}

/// Index of the `}` closing a group whose `{` was just consumed.
fn matching_brace(s: &str) -> usize {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    s.len()
}

/// Splits `a, b::{c, d}, e` at its top-level commas.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn first_ident(s: &str) -> Option<String> {
    let ident: String = s
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!ident.is_empty() && ident != "self").then_some(ident)
}

/// One cycle per strongly connected component of more than one module, as the path that
/// closes it (`a → b → a`).
fn find_cycles(graph: &Graph) -> Vec<Vec<String>> {
    let mut cycles = Vec::new();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    for start in graph.keys() {
        if done.contains(start.as_str()) {
            continue;
        }
        if let Some(path) = path_back(graph, start) {
            for m in &path {
                done.insert(
                    graph
                        .get_key_value(m.as_str())
                        .map_or("", |(k, _)| k.as_str()),
                );
            }
            cycles.push(path);
        }
        done.insert(start.as_str());
    }
    cycles
}

/// A shortest path `start → … → start`, if there is one (breadth first).
fn path_back(graph: &Graph, start: &str) -> Option<Vec<String>> {
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(at) = queue.pop_front() {
        for next in graph.get(at).into_iter().flatten() {
            if next == start {
                let mut path = vec![start.to_owned()];
                let mut cur = at;
                let mut back = vec![at.to_owned()];
                while cur != start {
                    cur = came_from[cur];
                    back.push(cur.to_owned());
                }
                back.pop(); // `start` itself, already first
                back.reverse();
                path.extend(back);
                path.push(start.to_owned());
                return Some(path);
            }
            if !came_from.contains_key(next.as_str()) && next != start {
                came_from.insert(next.as_str(), at);
                queue.push_back(next.as_str());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(files: &[(&str, &str)]) -> Graph {
        let owned: Vec<(String, String)> = files
            .iter()
            .map(|(m, s)| (m.to_string(), s.to_string()))
            .collect();
        graph_from(&owned)
    }

    #[test]
    fn uses_are_read_from_paths_and_groups_but_not_comments() {
        let g = graph(&[
            (
                "hub",
                "use crate::{push::{Outbox, Push}, state::Session, RequestError};\n\
                 // crate::conn is only mentioned here\n\
                 /// and [`crate::conn`] in a doc\n\
                 fn f() { crate::clock::now_ms(); other_crate::conn::x(); }",
            ),
            ("push", ""),
            ("state", ""),
            ("clock", ""),
            ("conn", ""),
        ]);
        let uses: Vec<&str> = g["hub"].iter().map(String::as_str).collect();
        assert_eq!(uses, ["clock", "push", "state"]);
    }

    #[test]
    fn a_layered_crate_passes() {
        let g = graph(&[
            ("hub", "use crate::push::X; use crate::state::Y;"),
            ("push", "use crate::state::Y;"),
            ("state", ""),
        ]);
        assert!(find_cycles(&g).is_empty());
    }

    #[test]
    fn a_cycle_is_reported_as_the_path_that_closes_it() {
        let g = graph(&[
            ("hub", "use crate::push::X;"),
            ("push", "use crate::state::Y;"),
            ("state", "use crate::hub::Hub;"),
            ("clock", ""),
        ]);
        assert_eq!(find_cycles(&g), vec![vec!["hub", "push", "state", "hub"]]);
    }

    #[test]
    fn this_workspace_has_no_new_import_cycle() {
        let root = crate::root();
        for dir in crate_dirs(&root).unwrap() {
            let src = dir.join("src");
            if src.is_dir() {
                let at = dir.strip_prefix(&root).unwrap().display().to_string();
                let cycles: Vec<_> = find_cycles(&graph_of(&src).unwrap())
                    .into_iter()
                    .filter(|c| !known(&at, c))
                    .collect();
                assert!(cycles.is_empty(), "{at}: {cycles:?}");
            }
        }
    }
}

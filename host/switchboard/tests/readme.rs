//! The commands the documentation shows behave as a newcomer expects: no `cargo run -q`, which
//! hides a first build of several minutes behind a prompt that looks hung.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    // Read at run time: a test binary reused from a checkout at another path (a shared
    // target dir) would otherwise look there.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf(),
            Into::into,
        )
        .join("../..")
}

/// Every Markdown file of the repository's documentation: the README, `docs/`, and the
/// READMEs one level down (`examples/*`, `sdk/*`, `plugins`).
fn documents() -> Vec<PathBuf> {
    let root = repo();
    let mut files = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    for dir in ["examples", "sdk", "plugins"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let readme = entry.unwrap().path().join("README.md");
            if readme.is_file() {
                files.push(readme);
            }
        }
    }
    files
}

#[test]
fn no_cargo_run_hides_its_build() {
    let mut quiet = Vec::new();
    let files = documents();
    assert!(files.len() > 5, "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, line) in text.lines().enumerate() {
            let Some(at) = line.find("cargo run") else {
                continue;
            };
            // cargo's own options: up to the `--` that starts the program's.
            let options = line[at..].split(" -- ").next().unwrap_or("");
            if options
                .split_whitespace()
                .any(|w| w == "-q" || w == "--quiet")
            {
                quiet.push(format!("{}:{}: {line}", file.display(), i + 1));
            }
        }
    }
    assert!(quiet.is_empty(), "cargo run -q in:\n{}", quiet.join("\n"));
}

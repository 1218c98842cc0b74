//! `cargo xtask boundaries` (part of `lint`): which workspace crate may depend on what, held by
//! the build instead of by convention.
//!
//! The rules are the tables below; ARCHITECTURE.md ("Isolation and absences") lists the same
//! rules in the same words, and `architecture_md_lists_every_rule` fails when the two differ.
//! They apply to direct dependencies that end up in the crate itself (normal and build
//! dependencies, optional and target-specific ones included); dev-dependencies are free, so
//! tests may drive a node over real QUIC. A rule on a crate also covers its family
//! (`quinn` covers `quinn-proto`, `tokio` covers `tokio-util`).
//!
//! Cycles between workspace crates are not checked here: cargo refuses a cycle of normal or
//! build dependencies before anything is built, and a dev-dependency back onto a crate that
//! depends on you is cargo's ordinary way to test through it.

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// Only `owners` may depend on `dep`; each owner says why it may.
struct Owned {
    dep: &'static str,
    owners: &'static [(&'static str, &'static str)],
}

/// `krate`, when it is in the workspace, depends on none of `deps`.
struct Absent {
    krate: &'static str,
    deps: &'static [&'static str],
    why: &'static str,
}

const OWNED: &[Owned] = &[
    Owned {
        dep: "sled",
        owners: &[("switchboard-store", "the store traits' sled implementation")],
    },
    Owned {
        dep: "wasmtime",
        owners: &[("switchboard-policy", "the plugin runtime")],
    },
    Owned {
        dep: "quinn",
        owners: &[
            ("switchboard-edge", "the node's QUIC endpoint"),
            ("switchboard-client", "the apps' SDK"),
            (
                "switchboard-bench",
                "raw clients that measure the wire as apps use it",
            ),
        ],
    },
    Owned {
        dep: "rustls",
        owners: &[
            ("switchboard-edge", "QUIC's TLS"),
            ("switchboard-admin", "the admin API's HTTPS listener"),
            ("switchboard-client", "QUIC's TLS"),
            (
                "switchboard-bench",
                "the peer benchmark's TLS over TCP to NATS and MQTT",
            ),
        ],
    },
    Owned {
        dep: "wtransport",
        owners: &[
            (
                "switchboard-edge",
                "the node's WebTransport endpoint for browsers",
            ),
            (
                "switchboard-bench",
                "raw WebTransport clients that measure the node's side of browser sessions",
            ),
        ],
    },
    Owned {
        dep: "async-nats",
        owners: &[(
            "switchboard-cluster",
            "the cluster: JetStream group log, shard leases",
        )],
    },
    Owned {
        dep: "uniffi",
        owners: &[
            (
                "switchboard-mobile",
                "the Kotlin, Swift and Python bindings",
            ),
            ("switchboard-mobile-bindgen", "their generator"),
        ],
    },
];

const ABSENT: &[Absent] = &[
    Absent {
        krate: "switchboard-core",
        deps: &[
            "tokio",
            "quinn",
            "rustls",
            "sled",
            "wasmtime",
            "flatbuffers",
        ],
        why: "pure: no IO, no clock, no async, no encoding",
    },
    Absent {
        krate: "switchboard-wire",
        deps: &["quinn", "rustls", "sled", "wasmtime"],
        why: "frames and their encoding only",
    },
    Absent {
        krate: "switchboard-router",
        deps: &["tokio", "quinn", "rustls", "sled", "wasmtime"],
        why: "routing as a state machine, driven by edge",
    },
];

/// The part of `cargo metadata --format-version 1` the check reads.
#[derive(Deserialize)]
struct Metadata {
    packages: Vec<Package>,
    workspace_members: Vec<String>,
    workspace_root: String,
}

#[derive(Deserialize)]
struct Package {
    id: String,
    name: String,
    manifest_path: String,
    dependencies: Vec<Dependency>,
}

#[derive(Deserialize)]
struct Dependency {
    /// The package's own name, also when the manifest renames it.
    name: String,
    /// `None` for normal dependencies, `"dev"` or `"build"` otherwise.
    kind: Option<String>,
}

/// Runs the check on this workspace.
pub fn run() -> Result<()> {
    let out = crate::cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(crate::root())
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let violations = check(&out.stdout)?;
    if violations.is_empty() {
        eprintln!(
            "crate boundaries: ok ({} rules)",
            OWNED.len() + ABSENT.len()
        );
        return Ok(());
    }
    for v in &violations {
        eprintln!("error: {v}");
    }
    bail!(
        "{} crate boundary violation(s). Move the code behind the crate that owns the dependency, \
         or, if the exception is right, add it with its reason to xtask/src/boundaries.rs and \
         ARCHITECTURE.md (\"Isolation and absences\")",
        violations.len()
    )
}

/// Every rule the workspace in `metadata` (cargo metadata's JSON) breaks, one message each.
fn check(metadata: &[u8]) -> Result<Vec<String>> {
    let meta: Metadata =
        serde_json::from_slice(metadata).context("parsing cargo metadata's output")?;
    let members: BTreeSet<&str> = meta.workspace_members.iter().map(String::as_str).collect();
    let mut violations = Vec::new();
    for pkg in meta
        .packages
        .iter()
        .filter(|p| members.contains(p.id.as_str()))
    {
        let at = location(&meta.workspace_root, &pkg.manifest_path);
        let deps: BTreeSet<&str> = pkg
            .dependencies
            .iter()
            .filter(|d| d.kind.as_deref() != Some("dev"))
            .map(|d| d.name.as_str())
            .collect();
        for dep in &deps {
            for rule in OWNED.iter().filter(|r| in_family(dep, r.dep)) {
                if !rule.owners.iter().any(|(owner, _)| *owner == pkg.name) {
                    violations.push(format!(
                        "{} ({at}) depends on `{dep}`, which only {} may use",
                        pkg.name,
                        names(rule.owners.iter().map(|(o, _)| *o)),
                    ));
                }
            }
            for rule in ABSENT.iter().filter(|r| r.krate == pkg.name) {
                if let Some(family) = rule.deps.iter().find(|f| in_family(dep, f)) {
                    violations.push(format!(
                        "{} ({at}) depends on `{dep}`, but it must know nothing of `{family}`: {}",
                        pkg.name, rule.why
                    ));
                }
            }
        }
    }
    Ok(violations)
}

/// Whether `dep` is `family` or one of its crates (`quinn-proto` for `quinn`).
fn in_family(dep: &str, family: &str) -> bool {
    dep.strip_prefix(family)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
}

/// `host/edge` for `<root>/host/edge/Cargo.toml`.
fn location(root: &str, manifest: &str) -> String {
    let rel = manifest.strip_prefix(root).unwrap_or(manifest);
    let rel = rel.trim_start_matches('/').trim_end_matches("Cargo.toml");
    rel.trim_end_matches('/').to_owned()
}

/// "`a`", "`a` and `b`", "`a`, `b` and `c`".
fn names<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let items: Vec<String> = items.map(|i| format!("`{i}`")).collect();
    match items.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

/// The rules as ARCHITECTURE.md lists them, one line each (the start of a list item).
#[cfg(test)]
fn doc_lines() -> Vec<String> {
    let owned = OWNED.iter().map(|r| {
        format!(
            "- `{}`: only {}",
            r.dep,
            names(r.owners.iter().map(|(o, _)| *o))
        )
    });
    let absent = ABSENT
        .iter()
        .map(|r| format!("- `{}`: none of {}", r.krate, names(r.deps.iter().copied())));
    owned.chain(absent).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A workspace crate: its name and its dependencies with their kind (`None`: normal).
    type Crate<'a> = (&'a str, &'a [(&'a str, Option<&'a str>)]);

    /// A workspace of crates, as cargo metadata would print it.
    fn metadata(crates: &[Crate]) -> Vec<u8> {
        let packages: Vec<serde_json::Value> = crates
            .iter()
            .map(|(name, deps)| {
                serde_json::json!({
                    "id": format!("path+file:///ws/{name}#0.1.0"),
                    "name": name,
                    "manifest_path": format!("/ws/{name}/Cargo.toml"),
                    "dependencies": deps
                        .iter()
                        .map(|(dep, kind)| serde_json::json!({
                            "name": dep, "kind": kind, "rename": null, "optional": false,
                        }))
                        .collect::<Vec<_>>(),
                })
            })
            .collect();
        let members: Vec<String> = crates
            .iter()
            .map(|(name, _)| format!("path+file:///ws/{name}#0.1.0"))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "packages": packages,
            "workspace_members": members,
            "workspace_root": "/ws",
            "version": 1,
        }))
        .unwrap()
    }

    fn check_graph(crates: &[Crate]) -> Vec<String> {
        check(&metadata(crates)).unwrap()
    }

    #[test]
    fn a_clean_graph_passes() {
        let v = check_graph(&[
            (
                "switchboard-core",
                &[("serde", None), ("tokio", Some("dev"))],
            ),
            (
                "switchboard-store",
                &[("sled", None), ("switchboard-core", None)],
            ),
            (
                "switchboard-edge",
                &[("quinn", None), ("rustls", None), ("tokio", None)],
            ),
            ("switchboard-policy", &[("wasmtime", None)]),
            ("switchboard-router", &[("switchboard-core", None)]),
            // Tests may use anything.
            (
                "switchboard",
                &[("quinn", Some("dev")), ("sled", Some("dev"))],
            ),
        ]);
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn a_dependency_outside_its_owner_is_reported() {
        let v = check_graph(&[
            ("switchboard-store", &[("sled", None)]),
            (
                "switchboard-admin",
                &[("sled", None), ("quinn-proto", Some("build"))],
            ),
        ]);
        assert_eq!(
            v,
            [
                "switchboard-admin (switchboard-admin) depends on `quinn-proto`, which only \
                 `switchboard-edge`, `switchboard-client` and `switchboard-bench` may use",
                "switchboard-admin (switchboard-admin) depends on `sled`, which only \
                 `switchboard-store` may use",
            ]
        );
    }

    #[test]
    fn an_absence_is_reported() {
        let v = check_graph(&[
            ("switchboard-core", &[("tokio-util", None)]),
            ("switchboard-router", &[("quinn", None)]),
        ]);
        assert_eq!(v.len(), 3, "{v:?}");
        assert!(v[0].starts_with("switchboard-core (switchboard-core) depends on `tokio-util`, but it must know nothing of `tokio`"), "{v:?}");
        // The router breaks two rules: quinn is edge's, and the router must not know it.
        assert!(v[1].contains("which only `switchboard-edge`"), "{v:?}");
        assert!(v[2].contains("must know nothing of `quinn`"), "{v:?}");
    }

    #[test]
    fn packages_outside_the_workspace_are_not_judged() {
        let mut meta: serde_json::Value =
            serde_json::from_slice(&metadata(&[("switchboard-admin", &[("sled", None)])])).unwrap();
        meta["workspace_members"] = serde_json::json!([]);
        let v = check(&serde_json::to_vec(&meta).unwrap()).unwrap();
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn families() {
        assert!(in_family("quinn", "quinn"));
        assert!(in_family("quinn-proto", "quinn"));
        assert!(!in_family("quinnish", "quinn"));
        assert!(!in_family("tokio-rustls", "rustls"));
        assert_eq!(location("/ws", "/ws/host/edge/Cargo.toml"), "host/edge");
    }

    #[test]
    fn architecture_md_lists_every_rule() {
        let path = crate::root().join("ARCHITECTURE.md");
        let doc = std::fs::read_to_string(&path).unwrap();
        let missing: Vec<String> = doc_lines()
            .into_iter()
            .filter(|line| {
                !doc.lines()
                    .any(|l| l.trim_start().starts_with(line.as_str()))
            })
            .collect();
        assert!(
            missing.is_empty(),
            "ARCHITECTURE.md (\"Isolation and absences\") does not list these rules of \
             xtask/src/boundaries.rs as lines starting with:\n{}",
            missing.join("\n")
        );
    }

    #[test]
    fn this_workspace_keeps_its_boundaries() {
        run().unwrap();
    }
}

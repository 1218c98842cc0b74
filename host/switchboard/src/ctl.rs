//! `switchboard ctl`: the admin and tenant HTTP API from the command line, over
//! [`AdminClient`]. Human-readable output by default, the API's JSON with `--json`.
//!
//! Exit codes: 0 done; 1 a local problem (a file that cannot be read); 2 usage (clap);
//! 3 the server refused (its problem's code and detail go to stderr); 4 the server could
//! not be reached or answered something unreadable.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;
use switchboard_admin::client::{AdminClient, ClientError};
use switchboard_admin::control::types::*;

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The node's admin API.
    #[arg(
        long,
        env = "SWITCHBOARD_ADMIN_URL",
        default_value = "http://127.0.0.1:7780",
        global = true
    )]
    url: String,
    /// A file holding the admin token or a tenant API key (`sbk_…`): its first line, without
    /// surrounding whitespace. Without it the token is `$SWITCHBOARD_ADMIN_TOKEN`. There is no
    /// flag taking the token itself: a command line is visible to every local user (`ps`).
    #[arg(long, global = true, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Removed (it showed the token in `ps`); refused with a pointer to the alternatives.
    #[arg(long, global = true, hide = true)]
    token: Option<String>,
    /// Print the API's JSON answer instead of a summary.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Tenants (admin, except `show`).
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// A tenant's API keys (admin).
    #[command(subcommand)]
    Key(KeyCmd),
    /// Client tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Groups and members.
    #[command(subcommand)]
    Group(GroupCmd),
    /// Policy plugins.
    #[command(subcommand)]
    Plugin(PluginCmd),
    /// Which plugin versions serve a tenant (changes: admin).
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Feature-flag rules.
    #[command(subcommand)]
    Flags(FlagsCmd),
    /// The node's load level override (admin).
    #[command(subcommand)]
    Degradation(DegradationCmd),
    /// Is the node up?
    Health,
    /// Prometheus metrics (admin).
    Metrics,
}

#[derive(Debug, Subcommand)]
enum TenantCmd {
    /// Create a tenant; prints its token secret (shown once).
    Create {
        tenant: String,
        /// The token-signing secret (≥ 16 bytes); generated if absent.
        #[arg(long)]
        secret: Option<String>,
    },
    /// List every tenant.
    List,
    /// Show a tenant (admin or the tenant's key).
    Show { tenant: String },
    /// Change quotas; the ones not given keep their value.
    #[command(group = clap::ArgGroup::new("quota").required(true).multiple(true))]
    Quotas {
        tenant: String,
        #[arg(long, group = "quota")]
        max_groups: Option<u32>,
        #[arg(long, group = "quota")]
        max_plugin_versions: Option<u32>,
        #[arg(long, group = "quota")]
        max_plugin_bytes: Option<u32>,
    },
    /// Replace the token secret: tokens signed with the old one stop working.
    RotateSecret { tenant: String },
}

#[derive(Debug, Subcommand)]
enum KeyCmd {
    /// Create an API key; prints it (shown once).
    Create {
        tenant: String,
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List a tenant's keys (never the keys themselves).
    List { tenant: String },
    /// Delete a key: it stops working at once.
    Delete { tenant: String, key_id: String },
}

#[derive(Debug, Subcommand)]
enum TokenCmd {
    /// Mint a client token for a user; prints the token.
    Mint {
        tenant: String,
        user: String,
        /// Lifetime in seconds (default one day, at most 30 days).
        #[arg(long)]
        ttl: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
enum GroupCmd {
    /// Create a group.
    Create {
        tenant: String,
        group: String,
        /// Any user of the tenant may join.
        #[arg(long)]
        open: bool,
        #[arg(long)]
        max_members: Option<u32>,
    },
    /// List a tenant's groups.
    List { tenant: String },
    /// Show a group.
    Show { tenant: String, group: String },
    /// List a group's members.
    Members { tenant: String, group: String },
    /// Add a member; its sessions receive the group at once.
    AddMember {
        tenant: String,
        group: String,
        user: String,
    },
    /// Remove a member.
    RemoveMember {
        tenant: String,
        group: String,
        user: String,
    },
}

#[derive(Debug, Subcommand)]
enum PluginCmd {
    /// Upload a `tenant-policy` component (.wasm); prints its version.
    Upload {
        tenant: String,
        file: PathBuf,
        /// Print only the version (for scripts: `v=$(switchboard ctl plugin upload -q …)`).
        #[arg(long, short)]
        quiet: bool,
    },
    /// List stored versions.
    List { tenant: String },
    /// Show a version (or an unambiguous prefix of one) and where it serves.
    Show { tenant: String, version: String },
}

#[derive(Debug, Subcommand)]
enum PolicyCmd {
    /// Versions serving and their health.
    Status { tenant: String },
    /// Serve a version (or an unambiguous prefix of one) to every user.
    Activate {
        tenant: String,
        version: String,
        /// A value the plugin reads with `config-get` (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = key_value)]
        config: Vec<(String, String)>,
    },
    /// Serve a version (or an unambiguous prefix) to a share of users and to some groups.
    Canary {
        tenant: String,
        version: String,
        /// Share of users, 0–100.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
        percent: u8,
        /// A group whose messages always go to the canary (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = key_value)]
        config: Vec<(String, String)>,
    },
    /// Make the canary the active version.
    Promote { tenant: String },
    /// End the canary, or go back to the previous version.
    Rollback { tenant: String },
    /// End the canary.
    AbortCanary { tenant: String },
}

#[derive(Debug, Subcommand)]
enum FlagsCmd {
    /// Show the rules.
    Get { tenant: String },
    /// Replace every rule with a JSON file's (`--file`), or turn flags on or off for
    /// everyone (`name=on`, `name=off`), keeping the other rules.
    Set {
        tenant: String,
        /// A JSON object: flag name → {"enabled", "percent", "users"}.
        #[arg(
            long,
            conflicts_with = "switches",
            required_unless_present = "switches"
        )]
        file: Option<PathBuf>,
        #[arg(value_name = "NAME=on|off", value_parser = flag_switch)]
        switches: Vec<(String, bool)>,
    },
}

#[derive(Debug, Subcommand)]
enum DegradationCmd {
    /// Show the load level and the override.
    Get,
    /// Force a level (0 normal … 3 critical), or `none` to clear the override.
    Set {
        #[arg(value_parser = level)]
        level: Level,
    },
}

#[derive(Debug, Clone, Copy)]
struct Level(Option<u8>);

fn level(s: &str) -> Result<Level, String> {
    match s {
        "none" => Ok(Level(None)),
        _ => match s.parse::<u8>() {
            Ok(l) if l <= 3 => Ok(Level(Some(l))),
            _ => Err("a level 0–3, or `none`".to_owned()),
        },
    }
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

fn flag_switch(s: &str) -> Result<(String, bool), String> {
    match s.split_once('=') {
        Some((name, "on")) => Ok((name.to_owned(), true)),
        Some((name, "off")) => Ok((name.to_owned(), false)),
        _ => Err(format!("{s:?} is not NAME=on or NAME=off")),
    }
}

/// Why a command failed, and so its exit code.
enum Failure {
    Local(String),
    Client(ClientError),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Client(e)
    }
}

/// What a command prints: the API's answer (for `--json`) and a summary.
struct Answer {
    json: Option<serde_json::Value>,
    human: String,
}

fn answer<T: Serialize>(value: &T, human: impl FnOnce(&T) -> String) -> Answer {
    Answer {
        json: serde_json::to_value(value).ok(),
        human: human(value),
    }
}

/// The environment variable `switchboard ctl` reads the token from.
pub const TOKEN_ENV: &str = "SWITCHBOARD_ADMIN_TOKEN";

/// The token to send: from `--token-file`, else from [`TOKEN_ENV`]. `--token` is refused.
fn token(args: &CtlArgs) -> Result<Option<String>, String> {
    if args.token.is_some() {
        return Err(format!(
            "--token is no longer accepted: a token on the command line is visible to every \
             local user (ps). Export {TOKEN_ENV}, or pass --token-file PATH"
        ));
    }
    if let Some(path) = &args.token_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--token-file {}: {e}", path.display()))?;
        let token = text.lines().next().unwrap_or("").trim();
        if token.is_empty() {
            return Err(format!(
                "--token-file {}: the file is empty",
                path.display()
            ));
        }
        return Ok(Some(token.to_owned()));
    }
    Ok(std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()))
}

/// Runs `switchboard ctl` and returns the process's exit code.
pub fn run(args: CtlArgs) -> i32 {
    let token = match token(&args) {
        Ok(token) => token,
        Err(message) => {
            eprintln!("error: {message}");
            return if args.token.is_some() { 2 } else { 1 };
        }
    };
    let client = AdminClient::new(&args.url, token);
    match execute(&client, args.command) {
        Ok(out) => {
            match (args.json, out.json) {
                (true, Some(json)) => println!(
                    "{}",
                    serde_json::to_string_pretty(&json).unwrap_or_default()
                ),
                // Answers without a body (204) print nothing under --json.
                (true, None) => {}
                (false, _) => {
                    if !out.human.is_empty() {
                        println!("{}", out.human.trim_end());
                    }
                }
            }
            0
        }
        Err(Failure::Local(msg)) => {
            eprintln!("error: {msg}");
            1
        }
        Err(Failure::Client(e)) => match &e {
            ClientError::Problem { status, problem } => {
                eprintln!(
                    "error: {} (HTTP {status}): {}",
                    problem.code, problem.detail
                );
                3
            }
            ClientError::Status { status, body } => {
                eprintln!("error: HTTP {status}: {}", body.trim());
                3
            }
            ClientError::Transport { .. } | ClientError::Decode { .. } => {
                eprintln!("error: {e}");
                4
            }
        },
    }
}

fn execute(c: &AdminClient, command: CtlCommand) -> Result<Answer, Failure> {
    Ok(match command {
        CtlCommand::Tenant(cmd) => tenant(c, cmd)?,
        CtlCommand::Key(cmd) => key(c, cmd)?,
        CtlCommand::Token(TokenCmd::Mint { tenant, user, ttl }) => {
            let req = MintToken {
                user,
                ttl_secs: ttl,
            };
            answer(&c.mint_token(&tenant, &req)?, |t| t.token.clone())
        }
        CtlCommand::Group(cmd) => group(c, cmd)?,
        CtlCommand::Plugin(cmd) => plugin(c, cmd)?,
        CtlCommand::Policy(cmd) => policy(c, cmd)?,
        CtlCommand::Flags(cmd) => flags(c, cmd)?,
        CtlCommand::Degradation(cmd) => {
            let status = match cmd {
                DegradationCmd::Get => c.degradation()?,
                DegradationCmd::Set { level } => c.set_degradation(level.0)?,
            };
            answer(&status, |d| match d.forced {
                Some(f) => format!("load level {} (forced to {f})", d.level),
                None => format!("load level {} (not forced)", d.level),
            })
        }
        CtlCommand::Health => answer(&c.health()?, |h| {
            format!(
                "{}: {} sessions, {} connections, load level {}",
                h.status, h.sessions, h.connections, h.load_level
            )
        }),
        CtlCommand::Metrics => {
            let text = c.metrics()?;
            Answer {
                json: Some(serde_json::Value::String(text.clone())),
                human: text,
            }
        }
    })
}

fn tenant(c: &AdminClient, cmd: TenantCmd) -> Result<Answer, Failure> {
    Ok(match cmd {
        TenantCmd::Create { tenant, secret } => {
            let req = CreateTenant {
                id: tenant,
                secret,
                quotas: None,
            };
            answer(&c.create_tenant(&req)?, |s| {
                format!(
                    "created tenant {}\nsecret: {}\n(the secret is shown only now)",
                    s.tenant, s.secret
                )
            })
        }
        TenantCmd::List => answer(&c.tenants()?, |ts| {
            table(
                &["TENANT", "ACTIVE", "CANARY", "GROUPS"],
                ts.iter().map(|t| {
                    vec![
                        t.id.clone(),
                        short_or_builtin(t.active_version.as_deref()),
                        t.canary_version
                            .as_deref()
                            .map(short)
                            .unwrap_or("-")
                            .to_owned(),
                        t.groups.to_string(),
                    ]
                }),
            )
        }),
        TenantCmd::Show { tenant } => answer(&c.tenant(&tenant)?, show_tenant),
        TenantCmd::Quotas {
            tenant,
            max_groups,
            max_plugin_versions,
            max_plugin_bytes,
        } => {
            let mut q = c.tenant(&tenant)?.quotas;
            q.max_groups = max_groups.unwrap_or(q.max_groups);
            q.max_plugin_versions = max_plugin_versions.unwrap_or(q.max_plugin_versions);
            q.max_plugin_bytes = max_plugin_bytes.unwrap_or(q.max_plugin_bytes);
            answer(&c.set_quotas(&tenant, &q)?, show_tenant)
        }
        TenantCmd::RotateSecret { tenant } => answer(&c.rotate_secret(&tenant)?, |s| {
            format!(
                "new secret for {}: {}\n(tokens signed with the old secret no longer work)",
                s.tenant, s.secret
            )
        }),
    })
}

fn show_tenant(t: &TenantInfo) -> String {
    format!(
        "tenant {}\n  active:  {}\n  canary:  {}\n  groups:  {}\n  quotas:  {} groups, {} plugin versions, {} bytes per plugin",
        t.id,
        t.active_version.as_deref().unwrap_or("built-in policy"),
        t.canary_version.as_deref().unwrap_or("-"),
        t.groups,
        t.quotas.max_groups,
        t.quotas.max_plugin_versions,
        t.quotas.max_plugin_bytes,
    )
}

fn key(c: &AdminClient, cmd: KeyCmd) -> Result<Answer, Failure> {
    Ok(match cmd {
        KeyCmd::Create { tenant, label } => answer(&c.create_api_key(&tenant, &label)?, |k| {
            format!(
                "created key {} for {}\nkey: {}\n(the key is shown only now)",
                k.info.id, k.info.tenant, k.key
            )
        }),
        KeyCmd::List { tenant } => answer(&c.api_keys(&tenant)?, |keys| {
            table(
                &["KEY", "LABEL", "CREATED"],
                keys.iter()
                    .map(|k| vec![k.id.clone(), k.label.clone(), utc(k.created_at_ms)]),
            )
        }),
        KeyCmd::Delete { tenant, key_id } => {
            c.delete_api_key(&tenant, &key_id)?;
            Answer {
                json: None,
                human: format!("deleted key {key_id}"),
            }
        }
    })
}

fn group(c: &AdminClient, cmd: GroupCmd) -> Result<Answer, Failure> {
    Ok(match cmd {
        GroupCmd::Create {
            tenant,
            group,
            open,
            max_members,
        } => {
            let req = CreateGroup {
                id: group,
                open,
                max_members,
            };
            answer(&c.create_group(&tenant, &req)?, |g| {
                format!("created {}", show_group(g))
            })
        }
        GroupCmd::List { tenant } => answer(&c.groups(&tenant)?, |gs| {
            table(
                &["GROUP", "OPEN", "MEMBERS", "HEAD"],
                gs.iter().map(|g| {
                    vec![
                        g.id.clone(),
                        if g.open { "open" } else { "closed" }.to_owned(),
                        format!("{}/{}", g.members, g.max_members),
                        g.head.to_string(),
                    ]
                }),
            )
        }),
        GroupCmd::Show { tenant, group } => answer(&c.group(&tenant, &group)?, show_group),
        GroupCmd::Members { tenant, group } => {
            answer(&c.members(&tenant, &group)?, |ms| ms.join("\n"))
        }
        GroupCmd::AddMember {
            tenant,
            group,
            user,
        } => answer(&c.add_member(&tenant, &group, &user)?, |m| {
            if m.added {
                format!("added {} to {}", m.user, m.group)
            } else {
                format!("{} is already a member of {}", m.user, m.group)
            }
        }),
        GroupCmd::RemoveMember {
            tenant,
            group,
            user,
        } => {
            c.remove_member(&tenant, &group, &user)?;
            Answer {
                json: None,
                human: format!("removed {user} from {group}"),
            }
        }
    })
}

fn show_group(g: &GroupInfo) -> String {
    format!(
        "group {} ({}): {}/{} members, head {}",
        g.id,
        if g.open { "open" } else { "closed" },
        g.members,
        g.max_members,
        g.head
    )
}

fn plugin(c: &AdminClient, cmd: PluginCmd) -> Result<Answer, Failure> {
    Ok(match cmd {
        PluginCmd::Upload {
            tenant,
            file,
            quiet,
        } => {
            let wasm = std::fs::read(&file)
                .map_err(|e| Failure::Local(format!("{}: {e}", file.display())))?;
            answer(&c.upload_plugin(&tenant, &wasm)?, |u| {
                let p = &u.plugin;
                if quiet {
                    return p.version.clone();
                }
                if !u.created {
                    return format!("version {} was stored already", p.version);
                }
                let tests: Vec<String> = u
                    .self_test_us
                    .iter()
                    .map(|(hook, us)| format!("{hook} {us}µs"))
                    .collect();
                format!(
                    "stored version {} ({} bytes)\nself-test: {}",
                    p.version,
                    p.size,
                    tests.join(", ")
                )
            })
        }
        PluginCmd::List { tenant } => answer(&c.plugins(&tenant)?, |ps| {
            table(
                &["VERSION", "SIZE", "UPLOADER", "UPLOADED"],
                ps.iter().map(|p| {
                    vec![
                        p.version.clone(),
                        p.size.to_string(),
                        p.uploader.clone(),
                        utc(p.uploaded_at_ms),
                    ]
                }),
            )
        }),
        PluginCmd::Show { tenant, version } => {
            let version = full_version(c, &tenant, &version)?;
            answer(&c.plugin(&tenant, &version)?, |d| {
                let p = &d.plugin;
                format!(
                "version {}\n  role:     {}\n  size:     {} bytes\n  uploader: {}\n  uploaded: {}\n  imports:  {}",
                p.version,
                d.role,
                p.size,
                p.uploader,
                utc(p.uploaded_at_ms),
                p.imports.join(", ")
            )
            })
        }
    })
}

/// The stored version `given` names: itself when it is a whole version (64 hex digits),
/// else the one stored version it is a prefix of. No match, or several, is a local error
/// listing what matched.
fn full_version(c: &AdminClient, tenant: &str, given: &str) -> Result<String, Failure> {
    let whole = given.len() == 64 && given.bytes().all(|b| b.is_ascii_hexdigit());
    if whole {
        return Ok(given.to_ascii_lowercase());
    }
    if given.is_empty() {
        return Err(Failure::Local(
            "a version (or a prefix of one) is needed".into(),
        ));
    }
    let prefix = given.to_ascii_lowercase();
    let matching: Vec<String> = c
        .plugins(tenant)?
        .into_iter()
        .map(|p| p.version)
        .filter(|v| v.starts_with(&prefix))
        .collect();
    match matching.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Failure::Local(format!(
            "no stored version of {tenant} starts with {given:?} (`ctl plugin list {tenant}`)"
        ))),
        many => Err(Failure::Local(format!(
            "{given:?} is ambiguous: {} versions of {tenant} start with it ({}); give more digits",
            many.len(),
            many.iter().map(|v| short(v)).collect::<Vec<_>>().join(", ")
        ))),
    }
}

fn policy(c: &AdminClient, cmd: PolicyCmd) -> Result<Answer, Failure> {
    let status = match cmd {
        PolicyCmd::Status { tenant } => c.policy(&tenant)?,
        PolicyCmd::Activate {
            tenant,
            version,
            config,
        } => c.activate(
            &tenant,
            &Activate {
                version: full_version(c, &tenant, &version)?,
                config: config.into_iter().collect(),
            },
        )?,
        PolicyCmd::Canary {
            tenant,
            version,
            percent,
            groups,
            config,
        } => c.start_canary(
            &tenant,
            &StartCanary {
                version: full_version(c, &tenant, &version)?,
                config: config.into_iter().collect(),
                percent,
                groups,
            },
        )?,
        PolicyCmd::Promote { tenant } => c.promote(&tenant)?,
        PolicyCmd::Rollback { tenant } => c.rollback(&tenant)?,
        PolicyCmd::AbortCanary { tenant } => c.abort_canary(&tenant)?,
    };
    Ok(answer(&status, show_policy))
}

fn show_policy(s: &PolicyStatus) -> String {
    let health = |h: &VersionHealth| {
        let config: Vec<String> = h.config.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!(
            "{} — handled {}, failed {} (traps {}, out of fuel {}, deadline {}, invalid output {}){}",
            h.version,
            h.handled,
            h.failed,
            h.traps,
            h.out_of_fuel,
            h.deadline,
            h.invalid_output,
            if config.is_empty() {
                String::new()
            } else {
                format!("\n          config {}", config.join(" "))
            }
        )
    };
    let mut out = format!(
        "tenant {} (revision {}, applied {})\n",
        s.tenant, s.revision, s.applied_revision
    );
    match &s.active {
        Some(a) => out += &format!("  active: {}\n", health(a)),
        None => out += "  active: built-in policy\n",
    }
    if let Some(c) = &s.canary {
        let groups = if c.groups.is_empty() {
            String::new()
        } else {
            format!(" and groups {}", c.groups.join(", "))
        };
        out += &format!(
            "  canary: {}\n          for {}% of users{groups}, since {}\n",
            health(&c.health),
            c.percent,
            utc(c.started_at_ms)
        );
    }
    if !s.previous.is_empty() {
        out += &format!("  previous: {}\n", s.previous.join(", "));
    }
    if let Some(r) = &s.last_rollback {
        out += &format!(
            "  last rollback: {} → {} ({}, {}): {}\n",
            r.from,
            r.to.as_deref().unwrap_or("built-in policy"),
            if r.automatic { "automatic" } else { "manual" },
            utc(r.at_ms),
            r.reason
        );
    }
    out
}

fn flags(c: &AdminClient, cmd: FlagsCmd) -> Result<Answer, Failure> {
    let rules = match cmd {
        FlagsCmd::Get { tenant } => c.flags(&tenant)?,
        FlagsCmd::Set {
            tenant,
            file: Some(file),
            ..
        } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| Failure::Local(format!("{}: {e}", file.display())))?;
            let rules: BTreeMap<String, FlagRuleBody> = serde_json::from_str(&text)
                .map_err(|e| Failure::Local(format!("{}: {e}", file.display())))?;
            c.put_flags(&tenant, &rules)?
        }
        FlagsCmd::Set {
            tenant, switches, ..
        } => {
            // Read, change, write: the other flags keep their rules. (The API replaces
            // the whole set, so a concurrent change between the two calls is lost.)
            let mut rules = c.flags(&tenant)?;
            for (name, enabled) in switches {
                rules.insert(
                    name,
                    FlagRuleBody {
                        enabled,
                        percent: 100,
                        users: Vec::new(),
                    },
                );
            }
            c.put_flags(&tenant, &rules)?
        }
    };
    Ok(answer(&rules, |rules| {
        table(
            &["FLAG", "ENABLED", "PERCENT", "USERS"],
            rules.iter().map(|(name, r)| {
                vec![
                    name.clone(),
                    if r.enabled { "on" } else { "off" }.to_owned(),
                    format!("{}%", r.percent),
                    r.users.join(","),
                ]
            }),
        )
    }))
}

// --- formatting ---

fn short(version: &str) -> &str {
    version.get(..12).unwrap_or(version)
}

fn short_or_builtin(version: Option<&str>) -> String {
    version.map(short).unwrap_or("built-in").to_owned()
}

/// Columns padded to their widest cell; the last column is not padded.
fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| h.to_string()).collect())
        .chain(rows)
        .collect();
    let mut widths = vec![0; header.len()];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let last = row.len().saturating_sub(1);
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i == last {
                out += cell;
            } else {
                out += &format!("{cell:<w$}  ");
            }
        }
        out.push('\n');
    }
    out
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000_123), "2023-11-14 22:13:20 UTC");
    }

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["A", "BB"],
            vec![vec!["xyz".to_owned(), "1".to_owned()]].into_iter(),
        );
        assert_eq!(t, "A    BB\nxyz  1\n");
    }

    #[test]
    fn argument_parsers() {
        assert_eq!(level("none").unwrap().0, None);
        assert_eq!(level("3").unwrap().0, Some(3));
        assert!(level("4").is_err());
        assert_eq!(flag_switch("beta=on").unwrap(), ("beta".to_owned(), true));
        assert!(flag_switch("beta=yes").is_err());
        assert_eq!(
            key_value("a=b=c").unwrap(),
            ("a".to_owned(), "b=c".to_owned())
        );
    }
}

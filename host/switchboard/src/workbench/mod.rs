//! `switchboard plugin`: the plugin workbench, for tenants writing a policy plugin, without
//! a node.
//!
//! - `plugin new NAME [--lang rust|python|js]`: a project that builds and tests as it is
//!   (`new.rs`);
//! - `plugin check FILE`: every check an upload runs, from `switchboard-policy` itself
//!   (`check_upload_size`, `PolicyEngine::check_upload_and_self_test`), with the node's messages
//!   (`check.rs`);
//! - `plugin run FILE --event events.json`: hooks called with sample events, each verdict
//!   shown with its fuel, time, log lines, and the counters after (`run.rs`; the event file's
//!   format is documented there and in `docs/plugins.md`).
//!
//! Exit codes: 0 done; 1 a local problem (a file that cannot be read or written, an event
//! file that does not parse); 2 usage (clap); 3 the plugin is refused (what an upload would
//! answer); 4 `run`: an event fell back to the built-in default or did not match its
//! `expect`.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

mod check;
mod new;
mod run;

#[derive(Debug, Args)]
pub struct PluginArgs {
    #[command(subcommand)]
    command: PluginCommand,
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Start a plugin project that builds and tests as it is.
    New {
        /// The project's name and directory (lowercase letters, digits and `-`).
        name: String,
        #[arg(long, value_enum, default_value_t = Lang::Rust)]
        lang: Lang,
        /// Where to create the project's directory.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The Switchboard repository (for the SDK and the WIT); found from the current
        /// directory or this binary when not given.
        #[arg(long, value_name = "PATH")]
        repo: Option<PathBuf>,
    },
    /// Run every check an upload runs (size, component, shape, compilation, imports, world,
    /// start, self-test), with the node's messages; exit code 3 when it would be refused.
    Check {
        file: PathBuf,
        /// The tenant's plugin size quota, if the operator raised it (default: a new
        /// tenant's).
        #[arg(long, value_name = "BYTES")]
        quota_bytes: Option<usize>,
        /// The node's config file: check under its `[plugins]` budgets (default: the
        /// defaults, as a node without that section).
        #[arg(long, value_name = "FILE")]
        node_config: Option<PathBuf>,
        /// Print a JSON report instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Call the plugin's hooks with the events of a JSON file; print each verdict, the fuel
    /// and time it took, its log lines, and the counters.
    Run {
        file: PathBuf,
        /// The events (format: `docs/plugins.md`, "The workbench").
        #[arg(long = "event", alias = "events", value_name = "EVENTS_JSON")]
        events: PathBuf,
        /// A value the plugin reads with `config-get` (repeatable; overrides the file's).
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = key_value)]
        config: Vec<(String, String)>,
        /// The node's config file: run under its `[plugins]` budgets.
        #[arg(long, value_name = "FILE")]
        node_config: Option<PathBuf>,
        /// Print a JSON report instead of a summary.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// Why a workbench command did not succeed, and so its exit code.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// A file could not be read or written, or the event file does not parse.
    #[error("{0}")]
    Local(String),
    /// The plugin would be refused at upload (or cannot be loaded to run): the problem code
    /// the node's API would answer, and its message.
    #[error("{code}: {message}")]
    Refused { code: &'static str, message: String },
    /// `run`: events fell back or did not match what they expected (already reported).
    #[error("{0}")]
    Events(String),
}

impl Failure {
    fn exit_code(&self) -> i32 {
        match self {
            Failure::Local(_) => 1,
            Failure::Refused { .. } => 3,
            Failure::Events(_) => 4,
        }
    }
}

/// Runs `switchboard plugin` and returns the process's exit code.
pub fn run(args: PluginArgs) -> i32 {
    let result = match args.command {
        PluginCommand::New {
            name,
            lang,
            dir,
            repo,
        } => new::run(&name, lang, &dir, repo.as_deref()),
        PluginCommand::Check {
            file,
            quota_bytes,
            node_config,
            json,
        } => check::run(&file, quota_bytes, node_config.as_deref(), json),
        PluginCommand::Run {
            file,
            events,
            config,
            node_config,
            json,
        } => run::run(&file, &events, config, node_config.as_deref(), json),
    };
    match result {
        Ok(()) => 0,
        Err(failure) => {
            match &failure {
                Failure::Refused { code, message } => eprintln!("refused ({code}): {message}"),
                other => eprintln!("error: {other}"),
            }
            failure.exit_code()
        }
    }
}

/// The engine a node runs plugins with: the budgets of `node_config`'s `[plugins]`, or the
/// defaults (a node whose config has no such section).
fn engine(
    node_config: Option<&std::path::Path>,
) -> Result<switchboard_policy::PolicyEngine, Failure> {
    let budgets = match node_config {
        Some(path) => {
            switchboard::Config::load(path)
                .map_err(|e| Failure::Local(e.to_string()))?
                .plugins
        }
        None => switchboard::PluginSettings::default(),
    };
    switchboard_policy::PolicyEngine::new(
        budgets.apply(switchboard_policy::PolicyLimits::default()),
    )
    .map_err(|e| Failure::Local(format!("could not set up the plugin engine: {e}")))
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| Failure::Local(format!("{}: {e}", path.display())))
}

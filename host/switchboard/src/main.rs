//! `switchboard`: the node binary. `serve` runs from a config file; `dev` runs on embedded
//! defaults with a demo tenant; `token` mints client tokens from the store; `ctl` drives a
//! node's admin API; `plugin` is the plugin workbench (no node needed).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use rand::RngCore;
use switchboard::{ensure_group, Config};
use switchboard_core::token::{self, Claims};
use switchboard_core::{GroupId, Limits, TenantId, UserId};
use switchboard_store::{GroupMeta, Store, TenantRecord};

mod ctl;
mod workbench;

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Multi-tenant group-message router over QUIC"
)]
struct Cli {
    /// How `serve` and `dev` write their log: lines for people, or one JSON object per line
    /// for a log pipeline.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Text,
        env = "SWITCHBOARD_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node from a config file (values can be overridden by `SWITCHBOARD_*`
    /// environment variables: `SWITCHBOARD_LISTEN`, `SWITCHBOARD_ADMIN__LISTEN`, …).
    Serve {
        #[arg(long, short)]
        config: PathBuf,
        /// The QUIC address, instead of the config's `listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// The data directory (from the current directory), instead of the config's
        /// `data_dir`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Check a config file (with its `SWITCHBOARD_*` environment overrides) as `serve` reads
    /// it, without starting anything; prints what it would serve.
    CheckConfig { file: PathBuf },
    /// Run a node on embedded defaults with a demo tenant and an open group "general".
    Dev {
        #[arg(long, default_value = "dev-data")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:7700")]
        listen: SocketAddr,
        /// Where the admin HTTP API listens.
        #[arg(long, default_value = "127.0.0.1:7780")]
        admin_listen: SocketAddr,
        /// Where browsers connect over WebTransport (UDP; path /switchboard/1).
        #[arg(long, default_value = "127.0.0.1:7701")]
        webtransport_listen: SocketAddr,
    },
    /// Mint a client token for a user of a tenant stored in a data dir (node stopped or not).
    Token {
        #[arg(long, default_value = "dev-data")]
        data_dir: PathBuf,
        #[arg(long, default_value = "demo")]
        tenant: String,
        #[arg(long)]
        user: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
        /// The store key file, if not `<data-dir>/store.key` (the config's `store_key_file`).
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Drive a node's admin API: tenants, keys, tokens, groups, plugins, policy, flags.
    Ctl(ctl::CtlArgs),
    /// The plugin workbench, no node needed: start a plugin, check it as an upload would,
    /// run its hooks on sample events.
    Plugin(workbench::PluginArgs),
    /// The store key that seals tenant secrets at rest.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Seal every tenant secret under a new store key and retire the old one. Stop the node
    /// first; tokens stay valid (the secrets do not change).
    Rotate {
        #[arg(long, default_value = "dev-data")]
        data_dir: PathBuf,
        /// The store key file, if not `<data-dir>/store.key` (the config's `store_key_file`).
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    // Everything the node creates (store, key files, certificates, artifacts, sled's later
    // snapshots) is readable by its user only, whatever the shell's umask.
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_bits_truncate(0o077));
    // The node's plugin compiler (a child of a node, not a command for people): before
    // anything else starts, so that its bounds hold for all it does.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(switchboard::COMPILE_CHILD_ARG) {
        std::process::exit(compile_child(&args[1..]));
    }
    let cli = Cli::parse();
    // Before the log subscriber and the runtime: ctl needs neither, and its stdout is the
    // answer (`--json` output must not mix with log lines).
    let command = match cli.command {
        Command::Ctl(args) => std::process::exit(ctl::run(args)),
        Command::Plugin(args) => std::process::exit(workbench::run(args)),
        Command::CheckConfig { file } => std::process::exit(check_config(&file)),
        other => other,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,quinn=warn".into());
    match cli.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    let rt = tokio::runtime::Runtime::new()?;
    match command {
        Command::Serve {
            config,
            listen,
            data_dir,
        } => {
            let mut cfg = Config::load(&config)?;
            if let Some(listen) = listen {
                cfg.listen = listen;
            }
            if let Some(data_dir) = data_dir {
                cfg.data_dir = data_dir;
            }
            cfg.plugin_compile.program =
                Some(std::env::current_exe().context("finding this binary")?);
            rt.block_on(serve(cfg))
        }
        Command::Dev {
            data_dir,
            listen,
            admin_listen,
            webtransport_listen,
        } => rt.block_on(dev(data_dir, listen, admin_listen, webtransport_listen)),
        Command::Token {
            data_dir,
            tenant,
            user,
            ttl,
            key_file,
        } => {
            // A running node holds the store's lock: say how to mint through it instead.
            let store = switchboard::open_sled_store(&data_dir, key_file.as_deref()).with_context(
                || {
                    format!(
                        "opening the store in {} (if a node is running on it, mint through \
                         its admin API instead: `switchboard ctl token mint {tenant} {user}`)",
                        data_dir.display()
                    )
                },
            )?;
            println!("{}", mint(&store, &tenant, &user, ttl)?);
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Rotate { data_dir, key_file },
        } => {
            let (id, resealed) = switchboard::rotate_store_key(&data_dir, key_file.as_deref())?;
            println!("store key rotated: key {id} now seals {resealed} tenant secrets");
            Ok(())
        }
        Command::Ctl(_) | Command::Plugin(_) | Command::CheckConfig { .. } => {
            unreachable!("handled before the runtime starts")
        }
    }
}

/// `switchboard check-config FILE`: 0 and a summary when `serve` would accept the file, 1
/// and the reason when not.
fn check_config(file: &std::path::Path) -> i32 {
    match Config::load(file) {
        Ok(cfg) => {
            let admin = if cfg.admin.enabled {
                format!("admin API on {}", cfg.admin.listen)
            } else {
                "no admin API".to_owned()
            };
            for t in &cfg.tenants {
                if let Some(plugin) = &t.plugin {
                    if let Err(e) = std::fs::metadata(plugin) {
                        eprintln!(
                            "{}: tenant {}: plugin {}: {e}",
                            file.display(),
                            t.id,
                            plugin.display()
                        );
                        return 1;
                    }
                }
            }
            println!(
                "ok: {}: QUIC on {}, data in {}, {admin}, {} tenants",
                file.display(),
                cfg.listen,
                cfg.data_dir.display(),
                cfg.tenants.len()
            );
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// `switchboard __compile-plugin --cpu-secs=… …`: applies its bounds to itself (the kernel
/// enforces them: `SIGXCPU` past the CPU time, a failed allocation past the memory), then
/// compiles the plugin on stdin and writes the artifact to stdout.
fn compile_child(args: &[String]) -> i32 {
    use rustix::process::{setrlimit, Resource, Rlimit};
    let params = match switchboard_policy::compile::ChildParams::from_args(args) {
        Ok(params) => params,
        Err(e) => {
            eprintln!("switchboard {}: {e}", switchboard::COMPILE_CHILD_ARG);
            return 2;
        }
    };
    let limits = [
        // The hard limit a little above the soft one: SIGXCPU first, SIGKILL if ignored.
        (
            Resource::Cpu,
            params.cpu_secs,
            params.cpu_secs.saturating_add(5),
        ),
        (Resource::Data, params.memory_bytes, params.memory_bytes),
    ];
    for (resource, current, maximum) in limits {
        let limit = Rlimit {
            current: Some(current),
            maximum: Some(maximum),
        };
        if let Err(e) = setrlimit(resource, limit) {
            eprintln!("setting {resource:?} to {current}: {e}");
            return 1;
        }
    }
    switchboard_policy::compile::serve_child(
        &params,
        std::io::stdin().lock(),
        std::io::stdout().lock(),
        std::io::stderr().lock(),
    )
}

async fn serve(cfg: Config) -> Result<()> {
    // Before anything serves: a SIGTERM that arrives while the node starts must stop it
    // gracefully, not kill it (the default action).
    let stop = Stop::install()?;
    let opened = switchboard::open_for(&cfg)?;
    switchboard::seed(&*opened.store, &cfg)?;
    let node = switchboard::start_opened(&cfg, opened).await?;
    stop.wait_or_drain(&node).await;
    node.shutdown().await;
    Ok(())
}

const DEMO_TENANT: &str = "demo";
const DEMO_GROUP: &str = "general";

async fn dev(
    data_dir: PathBuf,
    listen: SocketAddr,
    admin_listen: SocketAddr,
    webtransport_listen: SocketAddr,
) -> Result<()> {
    let stop = Stop::install()?;
    let mut cfg = Config {
        listen,
        data_dir: data_dir.clone(),
        store_key_file: None,
        tls: None,
        limits: Limits::default(),
        tenants: Vec::new(),
        notify: switchboard::NotifySettings::default(),
        store: switchboard::StoreSettings::default(),
        cluster: None,
        plugins: switchboard::PluginSettings::default(),
        plugin_compile: switchboard::PluginCompileSettings {
            program: Some(std::env::current_exe().context("finding this binary")?),
            ..Default::default()
        },
        webtransport: switchboard::WebTransportSettings {
            enabled: true,
            listen: webtransport_listen,
            allowed_origins: Vec::new(),
        },
        admin: switchboard::AdminSettings {
            listen: admin_listen,
            // Set below, once the data dir exists.
            token: None,
            ..Default::default()
        },
    };
    let store = switchboard::open_store_for(&cfg)?;
    let (admin_token, token_source) = dev_admin_token(&data_dir)?;
    cfg.admin.token = Some(admin_token);
    let tenant = TenantId::new(DEMO_TENANT)?;
    if store.tenant(&tenant)?.is_none() {
        // A random secret, kept in the store so tokens survive restarts of the dev node.
        let mut secret = vec![0u8; 32];
        rand::thread_rng().fill_bytes(&mut secret);
        store.put_tenant(&TenantRecord {
            id: tenant.clone(),
            secret,
        })?;
    }
    ensure_group(
        &*store,
        &tenant,
        &GroupId::new(DEMO_GROUP)?,
        GroupMeta {
            open: true,
            max_members: cfg.limits.max_group_members,
        },
    )?;
    store.flush()?;
    let (_, cert) = switchboard::identity(&cfg)?;
    let cert = cert.context("dev certificate path")?;
    let node = switchboard::start(&cfg, store.clone()).await?;
    let addr = node.local_addr();
    let admin = node
        .admin_addr
        .map(|a| format!("http://{a}"))
        .unwrap_or_else(|| "(disabled)".into());
    let admin_token = cfg.admin.token.clone().unwrap_or_default();
    let alice = mint(&*store, DEMO_TENANT, "alice", 86_400)?;
    let bob = mint(&*store, DEMO_TENANT, "bob", 86_400)?;
    let web_addr = node
        .node
        .webtransport_addr()
        .context("WebTransport endpoint")?;
    let web_hash = node.node.webtransport_cert_sha256().unwrap_or_default();
    let web_url = format!("https://{web_addr}{}", switchboard_edge::webtransport::PATH);
    println!(
        "\nSwitchboard dev node listening on {addr} (QUIC, ALPN switchboard/1)\n\
         tenant: {DEMO_TENANT}, open group: {DEMO_GROUP}, data: {data}, certificate: {cert}\n\n\
         Chat as alice (in a second terminal):\n  \
         SWITCHBOARD_TOKEN={alice} cargo run -p chat -- --addr {addr} --cert {cert} --group {DEMO_GROUP}\n\n\
         Chat as bob (in a third terminal):\n  \
         SWITCHBOARD_TOKEN={bob} cargo run -p chat -- --addr {addr} --cert {cert} --group {DEMO_GROUP}\n\n\
         More tokens: cargo run -p switchboard -- token --data-dir {data} --user NAME\n\n\
         Dashboard: {admin}/ in a browser; sign in with the admin token below.\n\
         Admin API: {admin} (OpenAPI at {admin}/openapi.json). For `switchboard ctl`:\n  \
         export SWITCHBOARD_ADMIN_URL={admin} SWITCHBOARD_ADMIN_TOKEN={admin_token}\n  \
         (the admin token {token_source})\n  \
         cargo run -p switchboard -- ctl policy status {DEMO_TENANT}\n\n\
         WebTransport for browsers: {web_url}\n  \
         certificate SHA-256 (serverCertificateHashes, valid 13 days, new at each start):\n  \
         {web_hash}\n\
         Web chat (build sdk/js first, then serve the repository: see examples/web-chat/README.md):\n  \
         http://localhost:8080/examples/web-chat/?url={web_url}&hash={web_hash}&group={DEMO_GROUP}&token={alice}\n\n\
         Ctrl-C stops the node.\n",
        data = data_dir.display(),
        cert = cert.display(),
    );
    stop.wait_or_drain(&node).await;
    node.shutdown().await;
    Ok(())
}

/// Where the dev node keeps its admin token, so that a restart keeps `ctl`'s exports and the
/// dashboard's sign-in working.
const DEV_ADMIN_TOKEN_FILE: &str = "admin.token";

/// The dev node's admin token: `$SWITCHBOARD_ADMIN_TOKEN` if set, else the one kept in the
/// data dir (0600), else a new one written there. Returns it and where it came from.
fn dev_admin_token(data_dir: &std::path::Path) -> Result<(String, String)> {
    if let Some(t) = std::env::var("SWITCHBOARD_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
    {
        return Ok((t, "is $SWITCHBOARD_ADMIN_TOKEN".to_owned()));
    }
    let path = data_dir.join(DEV_ADMIN_TOKEN_FILE);
    let kept = match std::fs::read_to_string(&path) {
        Ok(text) => text.lines().next().unwrap_or("").trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let source = format!(
        "is kept in {} across restarts; delete the file for a new one",
        path.display()
    );
    if !kept.is_empty() {
        return Ok((kept, source));
    }
    let mut t = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut t);
    let token: String = t.iter().map(|b| format!("{b:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut file, format!("{token}\n").as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok((token, source))
}

fn mint(store: &dyn Store, tenant: &str, user: &str, ttl: u64) -> Result<String> {
    let tenant = TenantId::new(tenant)?;
    let user = UserId::new(user)?;
    let Some(record) = store.tenant(&tenant)? else {
        bail!("tenant {tenant} not found in the store");
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    Ok(token::mint(
        &Claims {
            tenant,
            user,
            exp: now + ttl,
            nbf: now.saturating_sub(60),
        },
        &record.secret,
    ))
}

/// The signals that stop the node, registered up front so that one arriving during start-up
/// is kept for [`Stop::wait`] instead of ending the process.
struct Stop {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Stop {
    fn install() -> Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Until a signal arrives or an operator asks `node` to drain (`ctl node drain`).
    async fn wait_or_drain(mut self, node: &switchboard::RunningNode) {
        let mut drain = node.control.drain_requested();
        let drained = async move {
            // The sender lives in the control plane as long as the node: no error while
            // this waits.
            let _ = drain.wait_for(|d| *d).await;
        };
        #[cfg(unix)]
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = drained => {}
        }
        #[cfg(not(unix))]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = drained => {}
        }
        tracing::info!(
            drain_s = switchboard_edge::DRAIN_TIMEOUT.as_secs(),
            "shutting down"
        );
    }
}

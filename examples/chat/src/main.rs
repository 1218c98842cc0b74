//! `chat`: a terminal chat client on the Switchboard client SDK. See README.md.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use switchboard_client::{
    load_cert, Client, ClientConfig, Event, Message, PresenceState, ReceiptKind, Trust,
};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Parser)]
#[command(about = "Chat in a Switchboard group from the terminal")]
struct Args {
    /// The node: `host:port`, a DNS name or an IP address (`[::1]:7700` for IPv6).
    #[arg(long, alias = "addr", default_value = "localhost:7700")]
    server: String,
    /// A root certificate to trust instead of the web PKI's (DER or PEM): the node's own
    /// self-signed `cert.der` for a dev node, or a private CA.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Pin the node's certificate: its SHA-256 in hex (on top of the CA check).
    #[arg(long)]
    pin: Option<String>,
    /// A file holding your client token (its first line), minted for you by the tenant
    /// (`switchboard token --user NAME`). Without it the token is `$SWITCHBOARD_TOKEN`. No
    /// flag takes the token itself: a command line is visible to every local user (`ps`).
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Removed (it showed the token in `ps`); refused with a pointer to the alternatives.
    #[arg(long, hide = true)]
    token: Option<String>,
    /// The group to join.
    #[arg(long, default_value = "general")]
    group: String,
    /// Client name reported to the node, for its logs.
    #[arg(long, default_value = concat!("chat/", env!("CARGO_PKG_VERSION")))]
    name: String,
    /// Name checked against the node's certificate; default the host of `--server`.
    #[arg(long)]
    server_name: Option<String>,
    /// Keep unsent messages in this directory across restarts (the offline outbox).
    #[arg(long)]
    outbox: Option<PathBuf>,
}

const HELP: &str = "commands: /fetch N (last N messages), /bg, /fg (presence), /pause, /resume, /net (network changed), /quit";

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    if args.token.is_some() {
        eprintln!(
            "chat: --token is no longer accepted: a token on the command line is visible to \
             every local user (ps). Export {TOKEN_ENV}, or pass --token-file PATH"
        );
        return ExitCode::from(2);
    }
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where the token comes from when no `--token-file` is given.
const TOKEN_ENV: &str = "SWITCHBOARD_TOKEN";

/// The client token: the first line of `--token-file`, else `$SWITCHBOARD_TOKEN`.
fn token(args: &Args) -> Result<String> {
    let token = match &args.token_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("--token-file {}", path.display()))?
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_owned(),
        None => std::env::var(TOKEN_ENV).unwrap_or_default(),
    };
    if token.is_empty() {
        anyhow::bail!("no token: export {TOKEN_ENV}=sb1.… or pass --token-file PATH");
    }
    Ok(token)
}

async fn run(args: Args) -> Result<()> {
    let mut cfg = ClientConfig::for_server(args.server.clone(), token(&args)?);
    if let Some(cert) = &args.cert {
        cfg.trust = Trust::Roots(vec![load_cert(cert)?]);
    }
    if let Some(pin) = &args.pin {
        cfg.pins.push(parse_pin(pin).context("--pin")?);
    }
    if let Some(name) = args.server_name {
        cfg.server_name = name;
    }
    cfg.outbox_dir = args.outbox;
    cfg.client_name = args.name;
    let (client, mut events) = Client::connect(cfg)
        .await
        .with_context(|| format!("connecting to {}", args.server))?;
    // The first event is always `Connected`: it says who the token made us.
    let mut me = String::new();
    if let Some(Event::Connected { user, .. }) = events.next().await {
        println!("* connected as {user}");
        me = user;
    }
    let head = client.join(&args.group).await.context("joining")?;
    println!("* joined {} (newest #{head}); {HELP}", args.group);
    tokio::spawn(read_input(client.clone(), args.group));

    while let Some(event) = events.next().await {
        match event {
            Event::Connected { user, .. } => println!("* reconnected as {user}"),
            Event::Message(m) => {
                print_message(&m);
                if m.sender != me {
                    // Fire-and-forget; it only fails once the client is closed.
                    let _ = client.receipt(&m.group, m.seq, ReceiptKind::Read).await;
                }
            }
            Event::Receipt {
                group,
                seq,
                user,
                kind,
            } => println!("* {user} {} #{seq} in {group}", receipt_verb(kind)),
            Event::Presence {
                user,
                state,
                online,
            } => println!("{}", presence_line(&user, state, online)),
            Event::Flags { flags } if !flags.is_empty() => {
                let on: Vec<&str> = flags
                    .iter()
                    .filter(|(_, enabled)| *enabled)
                    .map(|(name, _)| name.as_str())
                    .collect();
                println!("* feature flags on: {}", on.join(", "))
            }
            Event::Disconnected { reason } => println!("* disconnected: {reason}"),
            Event::Reconnecting { attempt, delay } => {
                println!("* reconnecting (attempt {attempt}) in {delay:.1?}")
            }
            Event::OutboxSent {
                group,
                seq,
                duplicate,
                ..
            } => println!(
                "* queued message stored in {group} as #{seq}{}",
                if duplicate { " (already there)" } else { "" }
            ),
            Event::OutboxFailed { group, error, .. } => {
                println!("* queued message refused by {group}: {error}")
            }
            Event::Closed { error: None } => println!("* bye"),
            Event::Closed { error: Some(e) } => return Err(e).context("connection closed"),
            _ => {}
        }
    }
    Ok(())
}

/// Reads stdin line by line: commands, or text to send. Sends one at a time, in order.
async fn read_input(client: Client, group: String) {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line = line.trim();
        let result = match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            [] => Ok(()),
            ["/quit"] => break,
            ["/bg"] => set_presence(&client, PresenceState::Background).await,
            ["/fg"] => set_presence(&client, PresenceState::Foreground).await,
            ["/pause"] => {
                client.pause();
                Ok(())
            }
            ["/resume"] => {
                client.resume();
                Ok(())
            }
            ["/net"] => {
                client.network_changed();
                Ok(())
            }
            ["/fetch", n] => match n.parse::<u32>() {
                Ok(n) => fetch_last(&client, &group, n).await,
                Err(_) => {
                    println!("* usage: /fetch N");
                    Ok(())
                }
            },
            [cmd, ..] if cmd.starts_with('/') => {
                println!("* {HELP}");
                Ok(())
            }
            _ => client.send(&group, line.to_owned()).await.map(|_| ()),
        };
        if let Err(e) = result {
            println!("* error: {e}");
        }
    }
    // End of input or /quit: the event loop ends after `Closed`.
    client.close().await;
}

/// Tells the node, then says what changed: a command that prints nothing looks ignored.
async fn set_presence(
    client: &Client,
    state: PresenceState,
) -> Result<(), switchboard_client::ClientError> {
    client.set_presence(state).await?;
    println!("* {}", presence_confirmation(state));
    Ok(())
}

fn presence_confirmation(state: PresenceState) -> &'static str {
    match state {
        PresenceState::Background => {
            "you are away (background): others see you as away, and your messages may come \
             after those of members in the foreground; /fg to come back"
        }
        PresenceState::Foreground => "you are online (foreground) again",
    }
}

/// Prints the last `n` messages of `group` from the node's log.
async fn fetch_last(
    client: &Client,
    group: &str,
    n: u32,
) -> Result<(), switchboard_client::ClientError> {
    // The newest seq is not known up front: ask for the head with an empty page first.
    let head = client.fetch(group, u64::MAX - 1, 1).await?.head_seq;
    let page = client
        .fetch(group, head.saturating_sub(u64::from(n)), n.max(1))
        .await?;
    println!("* last {} of {group}:", page.messages.len());
    for m in &page.messages {
        print_message(m);
    }
    Ok(())
}

fn print_message(m: &Message) {
    println!(
        "[{} #{}] {}: {}",
        m.group,
        m.seq,
        m.sender,
        String::from_utf8_lossy(&m.body)
    );
}

/// A SHA-256 in hex (64 digits, `:` separators allowed).
fn parse_pin(hex: &str) -> Result<[u8; 32]> {
    let digits: Vec<u8> = hex.bytes().filter(|b| *b != b':').collect();
    anyhow::ensure!(digits.len() == 64, "a SHA-256 is 64 hex digits");
    let mut pin = [0u8; 32];
    for (i, pair) in digits.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair)?;
        pin[i] = u8::from_str_radix(text, 16).with_context(|| format!("{text:?} is not hex"))?;
    }
    Ok(pin)
}

fn receipt_verb(kind: ReceiptKind) -> &'static str {
    match kind {
        ReceiptKind::Delivered => "received",
        ReceiptKind::Read => "read",
    }
}

/// What the chat shows of a co-member's presence notice: online, away, or gone.
fn presence_line(user: &str, state: PresenceState, online: bool) -> String {
    if online {
        format!("* {user} is {}", presence_word(state))
    } else {
        format!("* {user} left (offline)")
    }
}

fn presence_word(state: PresenceState) -> &'static str {
    match state {
        PresenceState::Foreground => "online",
        PresenceState::Background => "away",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_leaving_is_shown() {
        assert_eq!(
            presence_line("bob", PresenceState::Background, false),
            "* bob left (offline)"
        );
        assert_eq!(
            presence_line("bob", PresenceState::Background, true),
            "* bob is away"
        );
        assert_eq!(
            presence_line("bob", PresenceState::Foreground, true),
            "* bob is online"
        );
    }

    #[test]
    fn presence_commands_confirm_the_state_they_set() {
        assert!(presence_confirmation(PresenceState::Background).starts_with("you are away"));
        assert!(presence_confirmation(PresenceState::Foreground).starts_with("you are online"));
        // The words match what co-members are told (`presence_word`).
        for state in [PresenceState::Background, PresenceState::Foreground] {
            assert!(presence_confirmation(state).contains(presence_word(state)));
        }
    }
}

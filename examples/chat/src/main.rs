//! `chat`: a terminal chat client on the Switchboard client SDK. See README.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use switchboard_client::{
    load_cert, Client, ClientConfig, Event, Message, PresenceState, ReceiptKind,
};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Parser)]
#[command(about = "Chat in a Switchboard group from the terminal")]
struct Args {
    /// The node's QUIC address.
    #[arg(long, default_value = "127.0.0.1:7700")]
    addr: SocketAddr,
    /// The node's certificate (`cert.der` or `cert.pem` in its data dir); it is pinned.
    #[arg(long)]
    cert: PathBuf,
    /// A client token minted for you by the tenant (`switchboard token --user NAME`).
    #[arg(long)]
    token: String,
    /// The group to join.
    #[arg(long, default_value = "general")]
    group: String,
    /// Client name reported to the node, for its logs.
    #[arg(long, default_value = concat!("chat/", env!("CARGO_PKG_VERSION")))]
    name: String,
    /// Name checked against the node's certificate.
    #[arg(long, default_value = "localhost")]
    server_name: String,
}

const HELP: &str = "commands: /fetch N (last N messages), /bg, /fg (presence), /quit";

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let cert = load_cert(&args.cert)?;
    let mut cfg = ClientConfig::new(args.addr, cert, args.token);
    cfg.client_name = args.name;
    cfg.server_name = args.server_name;
    let (client, mut events) = Client::connect(cfg)
        .await
        .with_context(|| format!("connecting to {}", args.addr))?;
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
            Event::Presence { user, state } => println!("* {user} is {}", presence_word(state)),
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
            ["/bg"] => client.set_presence(PresenceState::Background).await,
            ["/fg"] => client.set_presence(PresenceState::Foreground).await,
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

fn receipt_verb(kind: ReceiptKind) -> &'static str {
    match kind {
        ReceiptKind::Delivered => "received",
        ReceiptKind::Read => "read",
    }
}

fn presence_word(state: PresenceState) -> &'static str {
    match state {
        PresenceState::Foreground => "online",
        PresenceState::Background => "away",
    }
}

// TEMPORARY scratch smoke test; removed before handing back.
use std::collections::HashSet;
use switchboard_client::*;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or("warn".into()))
        .init();
    let args: Vec<String> = std::env::args().collect();
    let cert = load_cert(args[1].as_ref()).unwrap();
    let token = std::fs::read_to_string(&args[2])
        .unwrap()
        .trim()
        .to_string();
    let n: usize = args[3].parse().unwrap();
    let cfg = ClientConfig::new("127.0.0.1:7711".parse().unwrap(), cert, token);
    let (client, mut events) = Client::connect(cfg).await.unwrap();
    let Some(Event::Connected { user, .. }) = events.next().await else {
        panic!()
    };
    let head = client.join("general").await.unwrap();
    println!("user {user} head {head}");
    let mut tasks = Vec::new();
    for i in 0..n {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            c.send("general", format!("smoke {i}")).await
        }));
        if i == n / 3 || i == 2 * n / 3 {
            tokio::task::yield_now().await;
            client.reconnect();
        }
    }
    let mut seqs = HashSet::new();
    let mut dups = 0;
    for t in tasks {
        let ack = t.await.unwrap().expect("send failed");
        dups += ack.duplicate as usize;
        assert!(seqs.insert(ack.seq), "seq {} twice", ack.seq);
    }
    println!("acks ok: {} unique seqs, {dups} duplicate acks", seqs.len());
    let mut got = Vec::new();
    let mut lifecycle = Vec::new();
    while !seqs.iter().all(|s| got.contains(s)) {
        match tokio::time::timeout(std::time::Duration::from_secs(10), events.next()).await {
            Ok(Some(Event::Message(m))) => got.push(m.seq),
            Ok(Some(e)) => lifecycle.push(format!("{e:?}")),
            Ok(None) => panic!("ended"),
            Err(_) => {
                let missing: Vec<u64> = seqs.iter().copied().filter(|s| !got.contains(s)).collect();
                println!("timeout with {} messages; last got {:?}; missing {missing:?}; lifecycle {lifecycle:?}; cursors {:?}", got.len(), got.last(), client.cursors());
                let f = client
                    .fetch("general", *missing.iter().min().unwrap() - 1, 10)
                    .await
                    .unwrap();
                println!(
                    "fetch: head {} seqs {:?}",
                    f.head_seq,
                    f.messages.iter().map(|m| m.seq).collect::<Vec<_>>()
                );
                std::process::exit(1);
            }
        }
    }
    assert!(
        got.windows(2).all(|w| w[1] == w[0] + 1),
        "not contiguous: {got:?}"
    );
    let old = got.iter().filter(|s| !seqs.contains(s)).count();
    println!("old catch-up messages: {old}");
    println!(
        "deliveries ok: {}..={}; lifecycle: {lifecycle:?}",
        got[0],
        got[got.len() - 1]
    );
    println!(
        "ping {:?}, cursors {:?}",
        client.ping().await.unwrap(),
        client.cursors()
    );
    let big = vec![0u8; 70_000];
    println!(
        "too large: {}",
        client.send("general", big).await.unwrap_err()
    );
    println!(
        "not member: {:?}",
        client.send("nope", "x").await.unwrap_err().code()
    );
    client.close().await;
    let mut rest = Vec::new();
    while let Some(e) = events.next().await {
        rest.push(format!("{e:?}"));
    }
    println!("after close: {rest:?}");
    assert!(client.join("general").await.is_err());
}

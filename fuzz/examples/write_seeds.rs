//! Writes the starting corpus (`corpus/<target>/seed-*`). Run by hand when a target's input
//! format changes: `cargo run --manifest-path fuzz/Cargo.toml --example write_seeds`. The plugin seeds are copies of
//! the built plugins (`cargo xtask build-plugins` prints their folder; pass it as
//! `PLUGIN_ARTIFACTS`).

use std::path::{Path, PathBuf};

use switchboard_core::token::{mint, Claims};
use switchboard_core::{Lane, PresenceState, TenantId, UserId};
use switchboard_wire::{
    encode_client, encode_server, ClientFrame, GroupCursor, Hello, Message, ServerFrame, LEN_PREFIX,
};

fn dir(target: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(target: &str, name: &str, mode: u8, body: &[u8]) {
    let mut bytes = vec![mode];
    bytes.extend_from_slice(body);
    std::fs::write(dir(target).join(format!("seed-{name}")), bytes).unwrap();
}

/// xorshift64*, for seeds that are just bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

fn main() {
    // frame: valid frames of both directions (mode 0), a stream of them (mode 1), and
    // bytes for the structured mode (2).
    let client = [
        ClientFrame::Hello(Hello {
            token: "sb1.e30.AAAA".into(),
            presence: PresenceState::Background,
            cursors: vec![GroupCursor {
                group: "g1".into(),
                seq: 7,
            }],
            client: "seed/1".into(),
        }),
        ClientFrame::Send {
            request_id: 3,
            group: "g1".into(),
            client_msg_id: "m1".into(),
            body: "hello".into(),
        },
        ClientFrame::Fetch {
            request_id: 4,
            group: "g1".into(),
            after_seq: 2,
            limit: 10,
        },
    ];
    let server = [
        ServerFrame::Welcome {
            session_id: 1,
            tenant: "acme".into(),
            user: "alice".into(),
            server_time_ms: 1,
            max_payload_bytes: 65536,
            groups: vec![GroupCursor {
                group: "g1".into(),
                seq: 9,
            }],
            resume: vec![GroupCursor {
                group: "g1".into(),
                seq: 7,
            }],
        },
        ServerFrame::FetchResult {
            request_id: 4,
            group: "g1".into(),
            messages: vec![Message {
                group: "g1".into(),
                seq: 3,
                sender: "bob".into(),
                client_msg_id: "m9".into(),
                sent_at_ms: 5,
                body: "hi".into(),
                lane: Lane::High,
            }],
            head_seq: 9,
        },
    ];
    let mut stream = vec![200u8, 7];
    for (i, f) in client.iter().enumerate() {
        let e = encode_client(f);
        write("frame", &format!("client-{i}"), 0, &e[LEN_PREFIX..]);
        stream.extend_from_slice(&e);
    }
    for (i, f) in server.iter().enumerate() {
        let e = encode_server(f);
        write("frame", &format!("server-{i}"), 0, &e[LEN_PREFIX..]);
        stream.extend_from_slice(&e);
    }
    write("frame", "stream", 1, &stream);
    write("frame", "structured", 2, &noise(1, 300));

    // token: real tokens (raw mode), and bytes for the forging mode.
    let claims = Claims {
        tenant: TenantId::new("acme").unwrap(),
        user: UserId::new("alice").unwrap(),
        exp: 2_000,
        nbf: 1_000,
    };
    let t = mint(&claims, switchboard_fuzz::token::SECRET);
    write("token", "minted", 0, t.as_bytes());
    let o = mint(&claims, switchboard_fuzz::token::OTHER_SECRET);
    write("token", "other-tenant", 0, o.as_bytes());
    write("token", "forge-a", 1, &noise(2, 64));
    write("token", "forge-b", 1, &noise(3, 64));

    // plugin_upload: built plugins (raw mode) and bytes for the generators.
    if let Ok(artifacts) = std::env::var("PLUGIN_ARTIFACTS") {
        for name in [
            "hostile_core_module",
            "hostile_trap",
            "hostile_wrong_world",
            "hostile_loop",
            "receipts",
        ] {
            let wasm = std::fs::read(Path::new(&artifacts).join(format!("{name}.wasm")))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            write("plugin_upload", name, 0, &wasm);
        }
    }
    for (mode, name) in [(1, "policy-shaped"), (2, "component"), (3, "core")] {
        for k in 0..2u64 {
            let seed = noise(10 + k + 2 * mode as u64, 1024);
            write("plugin_upload", &format!("{name}-{k}"), mode, &seed);
        }
    }

    // routing: a scenario written out (two tenants with the same group names, resends,
    // reconnects, small outboxes), and arbitrary bytes.
    let mut sc = vec![0u8, 0]; // outbox 1 frame per lane, 1 message per fetch page
    let ops: &[(u32, &[u8])] = &[
        (0, &[0, 0, 0]),      // Connect ta/u0
        (0, &[0, 1, 1]),      // Connect ta/u1 (background)
        (0, &[1, 0, 0]),      // Connect tb/u0
        (3, &[0, 0]),         // Join slot0 g0
        (3, &[1, 0]),         // Join slot1 g0
        (3, &[2, 0]),         // Join slot2 g0 (tb)
        (5, &[0, 0, 1, 10]),  // Send slot0 g0 m1
        (5, &[2, 0, 1, 10]),  // Send slot2 g0 m1 (tb, same names)
        (5, &[0, 0, 1, 10]),  // resend slot0 g0 m1
        (5, &[1, 0, 2, 200]), // Send slot1 g0 m2
        (6, &[]),             // Settle
        (7, &[1]),            // Pump slot1
        (1, &[1]),            // Reconnect slot1
        (5, &[0, 0, 3, 0]),   // Send slot0 g0 m3
        (6, &[]),             // Settle
        (7, &[1]),            // Pump slot1
        (8, &[1, 0, 0, 7]),   // Fetch slot1 g0 after 0
        (11, &[0, 2, 2]),     // AddMember ta/u2 g2
        (13, &[0, 1]),        // ForeignHello
    ];
    for (variant, fields) in ops {
        // arbitrary picks an enum variant as (u32 * variants) >> 32.
        let x = (u64::from(*variant) << 32).div_ceil(14);
        sc.extend_from_slice(&(x as u32).to_le_bytes());
        sc.extend_from_slice(fields);
    }
    std::fs::write(dir("routing").join("seed-scripted"), &sc).unwrap();
    for (k, len) in [64usize, 256, 1024].into_iter().enumerate() {
        std::fs::write(
            dir("routing").join(format!("seed-{k}")),
            noise(100 + k as u64, len),
        )
        .unwrap();
    }
}

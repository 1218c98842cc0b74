//! What the plugin_upload generators produce and how uploads of it end, per mode:
//! `cargo run --example plugin_outcomes -- [INPUTS_PER_MODE]`.
use std::collections::BTreeMap;

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let mut x = 0x1234_5678_u64;
    for mode in 1..4u8 {
        let mut outcomes: BTreeMap<String, u32> = BTreeMap::new();
        for _ in 0..n {
            let bytes: Vec<u8> = (0..4096)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let key = match switchboard_fuzz::plugin::generate(mode, &bytes) {
                None => "no wasm generated".to_string(),
                Some(w) => {
                    let o = switchboard_fuzz::plugin::outcome(&w);
                    o.chars().take(110).collect()
                }
            };
            *outcomes.entry(key).or_default() += 1;
        }
        println!("mode {mode}:");
        for (k, v) in outcomes {
            println!("  {v:4}  {k}");
        }
    }
}

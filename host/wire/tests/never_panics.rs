//! A quick randomized smoke test: random and mutated bytes never make decoding or framing panic,
//! and whatever decodes re-encodes to something that decodes to the same value.
//!
//! Deterministic (fixed seeds). `WIRE_FUZZ_ITERS=1000000 cargo test -p switchboard-wire --release
//! --test never_panics` runs it longer.

mod common;

use switchboard_wire::{
    decode_client, decode_server, encode_client, encode_server, DecodeLimits, FrameReader,
    LEN_PREFIX,
};

/// xorshift64*: tiny, deterministic, good enough to pick bytes and positions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

fn iterations() -> usize {
    std::env::var("WIRE_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000)
}

/// Valid frames (without prefix) to mutate.
fn corpus() -> Vec<Vec<u8>> {
    let client = common::client_cases()
        .into_iter()
        .map(|f| encode_client(&f));
    let server = common::server_cases()
        .into_iter()
        .map(|f| encode_server(&f));
    client
        .chain(server)
        .map(|b| b[LEN_PREFIX..].to_vec())
        .collect()
}

fn mutate(rng: &mut Rng, frame: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            // Flip a byte (the most common way to hit offsets, lengths and union tags).
            0..=2 if !frame.is_empty() => {
                let i = rng.below(frame.len());
                frame[i] = rng.byte();
            }
            // Set a byte to an interesting value.
            3 if !frame.is_empty() => {
                let i = rng.below(frame.len());
                frame[i] = [0, 1, 0x7f, 0x80, 0xff, 19, 20][rng.below(7)];
            }
            4 => frame.truncate(rng.below(frame.len() + 1)),
            _ => {
                let n = rng.below(16);
                frame.extend((0..n).map(|_| rng.byte()));
            }
        }
    }
}

/// Decodes with both decoders; anything accepted must survive a round trip. (Re-decoding uses
/// the default limits: a hostile frame may share one string between fields, which the encoder
/// writes twice, so its re-encoding can be larger.)
fn exercise(bytes: &[u8], l: &DecodeLimits) -> bool {
    let default = DecodeLimits::default();
    let mut ok = false;
    if let Ok(f) = decode_client(bytes, l) {
        let again = encode_client(&f);
        assert_eq!(decode_client(&again[LEN_PREFIX..], &default).unwrap(), f);
        ok = true;
    }
    if let Ok(f) = decode_server(bytes, l) {
        let again = encode_server(&f);
        assert_eq!(decode_server(&again[LEN_PREFIX..], &default).unwrap(), f);
        ok = true;
    }
    ok
}

#[test]
fn random_bytes_never_panic() {
    let l = DecodeLimits::default();
    let mut rng = Rng(0x5eed_0001);
    for _ in 0..iterations() {
        let len = rng.below(128);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        // Half the time carry the right identifier so the verifier itself gets exercised.
        if bytes.len() >= 8 && rng.below(2) == 0 {
            bytes[4..8].copy_from_slice(b"SB01");
            bytes[0] = (rng.below(len - 3) & !3) as u8;
            bytes[1..4].fill(0);
        }
        exercise(&bytes, &l);
    }
}

#[test]
fn mutated_frames_never_panic() {
    let corpus = corpus();
    let limits = [
        DecodeLimits::default(),
        DecodeLimits {
            max_frame_bytes: 64,
            max_list_len: 1,
            max_string_bytes: 4,
            max_depth: 3,
            max_tables: 4,
        },
    ];
    let mut rng = Rng(0x5eed_0002);
    let mut accepted = 0;
    for i in 0..iterations() {
        let mut frame = corpus[rng.below(corpus.len())].clone();
        mutate(&mut rng, &mut frame);
        if exercise(&frame, &limits[i % 2]) {
            accepted += 1;
        }
    }
    // Sanity: the mutations are not all caught by the first check; many frames still decode.
    assert!(
        accepted > 0,
        "no mutated frame decoded; the mutator is too blunt"
    );
}

#[test]
fn random_streams_never_panic() {
    let mut rng = Rng(0x5eed_0003);
    for _ in 0..iterations() / 10 {
        let mut r = FrameReader::new(256);
        for _ in 0..rng.below(8) {
            let chunk: Vec<u8> = (0..rng.below(64)).map(|_| rng.byte()).collect();
            r.push(&chunk);
            while let Ok(Some(frame)) = r.next_frame() {
                exercise(&frame, &DecodeLimits::default());
            }
        }
        let _ = r.finish();
    }
}

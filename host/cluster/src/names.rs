//! Names in NATS: which shard a group is in, the stream of a shard, the subject of a group,
//! and the encoding that makes any id safe as a subject token. Pure: no IO.
//!
//! A subject is `<prefix>.log.<shard>.<tenant>.<group>` with the shard as three digits and
//! the ids encoded by [`encode_token`]. NATS splits subjects at `.`, treats `*` and `>` as
//! wildcards and forbids whitespace, and our ids may contain `.` (and a client message id
//! anything), so an id is never put into a subject or a header as it is.

use switchboard_core::{GroupId, TenantId};

/// How many virtual shards groups hash into. Fixed for the life of a cluster: changing it
/// moves every group to another stream.
pub const SHARDS: u16 = 256;

/// The NATS servers of a comma-separated URL list (`nats://a:4222, nats://b:4222`), for
/// the client's connect (which takes one URL per item, not a list in one string).
pub fn server_list(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// The virtual shard of a group: FNV-1a (64-bit) over the length-prefixed tenant and group,
/// modulo [`SHARDS`]. Stable across processes, versions and platforms (it decides which
/// stream holds the group's log, so it must never change).
pub fn shard_of(tenant: &TenantId, group: &GroupId) -> u16 {
    let mut hash = Fnv::new();
    for id in [tenant.as_str(), group.as_str()] {
        hash.write(&[id.len() as u8]);
        hash.write(id.as_bytes());
    }
    (hash.finish() % u64::from(SHARDS)) as u16
}

/// FNV-1a, 64-bit: tiny, and its output is fixed by its definition (std's hasher is not).
pub(crate) struct Fnv(u64);

impl Fnv {
    pub(crate) fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}

/// Encodes `s` as one subject token (and a header value): ASCII letters, digits, `-` and `_`
/// stay as they are; every other byte becomes `~` and two upper-case hex digits. So the
/// result has no `.`, `*`, `>`, whitespace or control character, is never empty for a
/// non-empty input, and different inputs give different tokens (`~` itself is encoded).
pub fn encode_token(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push('~');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

/// [`encode_token`] for a KV key, whose alphabet has `=` but not `~`: the escape is `=HH`.
pub fn encode_kv_token(s: &str) -> String {
    encode_token(s).replace('~', "=")
}

/// The inverse of [`encode_kv_token`].
pub fn decode_kv_token(token: &str) -> Option<String> {
    decode_token(&token.replace('=', "~"))
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// The inverse of [`encode_token`]; `None` for anything it cannot have produced.
pub fn decode_token(token: &str) -> Option<String> {
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'~' {
            let hex = bytes.get(i + 1..i + 3)?;
            let digit = |c: u8| HEX.iter().position(|&h| h == c);
            out.push((digit(hex[0])? << 4 | digit(hex[1])?) as u8);
            i += 3;
        } else if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

/// The names of one cluster's log streams and subjects, under a prefix (so several clusters,
/// or several tests, can share one NATS account).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogNames {
    prefix: String,
}

/// A prefix that is not a safe subject token and stream-name part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cluster prefix {0:?}: use 1 to 32 ASCII letters, digits, '-' or '_'")]
pub struct BadPrefix(pub String);

impl LogNames {
    pub fn new(prefix: &str) -> Result<Self, BadPrefix> {
        let ok = (1..=32).contains(&prefix.len())
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(Self {
                prefix: prefix.to_owned(),
            })
        } else {
            Err(BadPrefix(prefix.to_owned()))
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The stream that holds every group of `shard`: `<prefix>-log-NNN`.
    pub fn stream(&self, shard: u16) -> String {
        format!("{}-log-{shard:03}", self.prefix)
    }

    /// The subjects the stream of `shard` takes: `<prefix>.log.NNN.>`.
    pub fn stream_subjects(&self, shard: u16) -> String {
        format!("{}.log.{shard:03}.>", self.prefix)
    }

    /// The subject of a shard's fence markers: `<prefix>.log.NNN.fence`. Four tokens, so
    /// no group's subject (always five) can be it.
    pub fn fence_subject(&self, shard: u16) -> String {
        format!("{}.log.{shard:03}.fence", self.prefix)
    }

    /// The subject of a group's log: `<prefix>.log.NNN.<tenant>.<group>`, ids encoded.
    pub fn subject(&self, tenant: &TenantId, group: &GroupId) -> String {
        format!(
            "{}.log.{:03}.{}.{}",
            self.prefix,
            shard_of(tenant, group),
            encode_token(tenant.as_str()),
            encode_token(group.as_str())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_list_is_split_on_commas_and_trimmed() {
        assert_eq!(
            server_list("nats://a:4222, nats://b:4223,,nats://c:4224 "),
            ["nats://a:4222", "nats://b:4223", "nats://c:4224"]
        );
        assert_eq!(server_list("nats://a:4222"), ["nats://a:4222"]);
    }

    #[test]
    fn encoded_tokens_have_no_subject_syntax_and_round_trip() {
        let hostile = [
            "a.b",
            "*",
            ">",
            "a.*.>",
            "with space",
            "tab\there",
            "new\nline",
            "~7E",
            "ü/\0 ",
            "plain-id_09",
            "",
        ];
        for s in hostile {
            let token = encode_token(s);
            assert!(
                !token.contains(['.', '*', '>', ' ', '\t', '\r', '\n', '\0']),
                "{s:?} → {token:?}"
            );
            assert!(token.is_ascii(), "{token:?}");
            assert_eq!(decode_token(&token).as_deref(), Some(s), "{token:?}");
            assert_eq!(token.is_empty(), s.is_empty());
        }
        assert_eq!(encode_token("plain-id_09"), "plain-id_09");
        assert_eq!(encode_token("a.b"), "a~2Eb");
    }

    #[test]
    fn different_ids_never_share_a_token() {
        let ids = [
            "a.b", "a~2Eb", "a_2Eb", "a2Eb", "a", "b", "ab", "a.", ".a", "~", "~~",
        ];
        let tokens: std::collections::HashSet<_> = ids.iter().map(|s| encode_token(s)).collect();
        assert_eq!(tokens.len(), ids.len());
    }

    #[test]
    fn tokens_not_made_by_the_encoder_are_refused() {
        for bad in ["a.b", "~", "~4", "~ZZ", "a b", "~C3", "*"] {
            assert_eq!(decode_token(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn subjects_keep_tenant_and_group_apart() {
        let names = LogNames::new("sb").unwrap();
        let t = |s: &str| TenantId::new(s).unwrap();
        let g = |s: &str| GroupId::new(s).unwrap();
        // Tenant `t.u` + group `v` is not tenant `t` + group `u.v`.
        let a = names.subject(&t("t.u"), &g("v"));
        let b = names.subject(&t("t"), &g("u.v"));
        assert_ne!(a, b);
        for subject in [&a, &b] {
            // prefix, "log", shard, tenant, group: exactly five tokens.
            assert_eq!(subject.split('.').count(), 5, "{subject}");
            assert!(!subject.contains(['*', '>']));
        }
        let shard = shard_of(&t("t.u"), &g("v"));
        assert!(a.starts_with(&format!("sb.log.{shard:03}.")));
        assert_eq!(names.stream(7), "sb-log-007");
        assert_eq!(names.stream_subjects(7), "sb.log.007.>");
        // The fence marker is in the shard's stream and is no group's subject.
        assert_eq!(names.fence_subject(7), "sb.log.007.fence");
        assert_eq!(names.fence_subject(7).split('.').count(), 4);
    }

    #[test]
    fn shards_are_stable_and_spread() {
        let t = TenantId::new("acme").unwrap();
        // Pinned values: the shard decides where a group's log lives, so it must never move.
        assert_eq!(shard_of(&t, &GroupId::new("general").unwrap()), {
            let mut h = Fnv::new();
            h.write(&[4]);
            h.write(b"acme");
            h.write(&[7]);
            h.write(b"general");
            (h.finish() % 256) as u16
        });
        let mut fnv = Fnv::new();
        fnv.write(b"a");
        assert_eq!(fnv.finish(), 0xaf63_dc4c_8601_ec8c, "FNV-1a 64 of \"a\"");
        let mut counts = vec![0u32; usize::from(SHARDS)];
        for i in 0..25_600 {
            counts[usize::from(shard_of(&t, &GroupId::new(&format!("g{i}")).unwrap()))] += 1;
        }
        // 100 per shard on average; every shard is used and none is more than twice as full.
        assert!(counts.iter().all(|&c| (1..200).contains(&c)), "{counts:?}");
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(LogNames::new("sb-test_1").is_ok());
        for bad in ["", "a.b", "a b", "*", ">", &"x".repeat(33)] {
            assert!(LogNames::new(bad).is_err(), "{bad:?}");
        }
    }
}

//! Target `token`: client tokens (`sb1.<claims>.<HMAC-SHA256>`) under hostile strings.
//!
//! Modes (first input byte):
//! - raw: the rest, as a string, to `parse` and `verify` under the harness's secret;
//! - forge: the harness mints a token for claims and a window the input chooses, then
//!   applies the input's edits to it (flip, insert, delete, splice parts of a token of
//!   another tenant, swap the prefix for another algorithm name, re-encode the claims).
//!
//! Checks: nothing panics. A token the harness did not mint with the secret is never
//! accepted: whatever `verify` accepts is byte for byte `mint(claims, secret)` of the claims
//! it returns (HMAC-SHA256 is not forgeable by a fuzzer, and base64url decoding is
//! canonical, so there is no second spelling). An unedited token verifies under its own
//! secret exactly inside its window (`Expired` at `exp` and after, `NotYetValid` before
//! `nbf`), and never under another tenant's secret.

use arbitrary::{Result as AResult, Unstructured};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use switchboard_core::token::{self, Claims, TokenError, MAX_TOKEN_LEN};
use switchboard_core::{ErrorCode, TenantId, UserId};

/// The harness's tenant secret (what the fuzzer does not know).
pub const SECRET: &[u8] = b"fuzz-tenant-secret-0123456789";
/// Another tenant's secret.
pub const OTHER_SECRET: &[u8] = b"other-tenant-secret-987654321";

pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(s) = std::str::from_utf8(rest) {
            check_untrusted(s, None, u64::from_le_bytes(pad8(rest)));
        }
    } else {
        let _ = forge(&mut Unstructured::new(rest));
    }
}

fn pad8(b: &[u8]) -> [u8; 8] {
    let mut out = [0; 8];
    for (o, i) in out.iter_mut().zip(b.iter().rev()) {
        *o = *i;
    }
    out
}

/// Verifies `s` under both secrets at `now`. `minted` holds the tokens the harness signed
/// (with [`SECRET`], then with [`OTHER_SECRET`]) that `s` may legitimately be.
fn check_untrusted(s: &str, minted: Option<(&str, &str)>, now: u64) {
    let unverified = match token::parse(s) {
        Ok(u) => u,
        Err(e) => {
            // Parsing only ever says "malformed"; the window is checked after the signature.
            assert!(matches!(e, TokenError::Malformed(_)), "parse: {e:?}");
            assert_eq!(e.code(), ErrorCode::InvalidToken);
            return;
        }
    };
    drop(unverified);
    assert!(s.len() <= MAX_TOKEN_LEN, "parsed a {}-byte token", s.len());
    assert!(
        s.starts_with("sb1."),
        "parsed a token without the sb1 prefix: {s:?}"
    );
    let signed = [
        (SECRET, minted.map(|m| m.0)),
        (OTHER_SECRET, minted.map(|m| m.1)),
    ];
    for (secret, legit) in signed {
        let unverified = token::parse(s).expect("parsed above");
        let tenant = unverified.tenant().clone();
        match unverified.verify(secret, now) {
            Ok(claims) => {
                assert_eq!(claims.tenant, tenant);
                assert!(
                    claims.nbf <= now && now < claims.exp,
                    "accepted outside its window"
                );
                // Nothing but the harness's own signing produces an accepted token.
                assert_eq!(
                    s,
                    token::mint(&claims, secret),
                    "accepted a token that is not the one minted for its claims"
                );
                if let Some(m) = legit {
                    assert_eq!(s, m, "accepted an edited token");
                }
            }
            Err(TokenError::Expired { exp, now: n }) => assert!(n >= exp && n == now),
            Err(TokenError::NotYetValid { nbf, now: n }) => assert!(n < nbf && n == now),
            Err(TokenError::BadSignature) => {}
            Err(TokenError::Malformed(m)) => panic!("verify said Malformed ({m}) after parse"),
        }
    }
}

fn id(u: &mut Unstructured, pool: &[&str]) -> AResult<String> {
    Ok(if u.ratio(7, 8)? {
        (*u.choose(pool)?).to_string()
    } else {
        let s: String = u.arbitrary()?;
        s.chars().take(70).collect()
    })
}

fn forge(u: &mut Unstructured) -> AResult<()> {
    let tenant = id(u, &["acme", "globex", "t-1"])?;
    let user = id(u, &["alice", "bob", "u_2"])?;
    let (Ok(tenant), Ok(user)) = (TenantId::new(&tenant), UserId::new(&user)) else {
        return Ok(());
    };
    let nbf = u64::from(u.arbitrary::<u16>()?);
    let exp = nbf + u64::from(u.arbitrary::<u16>()?);
    let now = u64::from(u.arbitrary::<u16>()?) + u64::from(u.arbitrary::<u8>()?) * 256;
    let claims = Claims {
        tenant: tenant.clone(),
        user,
        exp,
        nbf,
    };
    let minted = token::mint(&claims, SECRET);

    // The window, unedited.
    let verdict = token::parse(&minted)
        .expect("own token parses")
        .verify(SECRET, now);
    if now < nbf {
        assert_eq!(verdict, Err(TokenError::NotYetValid { nbf, now }));
    } else if now >= exp {
        assert_eq!(verdict, Err(TokenError::Expired { exp, now }));
    } else {
        assert_eq!(verdict, Ok(claims.clone()));
    }
    // Wrong tenant: the same claims under another tenant's key.
    assert_eq!(
        token::parse(&minted).unwrap().verify(OTHER_SECRET, now),
        Err(TokenError::BadSignature)
    );
    let foreign = token::mint(&claims, OTHER_SECRET);
    assert_eq!(
        token::parse(&foreign).unwrap().verify(SECRET, now),
        Err(TokenError::BadSignature)
    );

    // Edits.
    let mut t: Vec<u8> = minted.clone().into_bytes();
    let edits = u.int_in_range(0..=6u8)?;
    for _ in 0..edits {
        match u.int_in_range(0..=7u8)? {
            0 if !t.is_empty() => {
                let i = u.choose_index(t.len())?;
                t[i] = u.arbitrary()?;
            }
            1 => {
                let i = u.int_in_range(0..=t.len())?;
                t.insert(i, *u.choose(b"sb1.-_=+/AQgw{}\"\\ \0")?);
            }
            2 if !t.is_empty() => {
                let i = u.choose_index(t.len())?;
                t.remove(i);
            }
            3 => {
                // Algorithm confusion: another version prefix, JWT-style headers.
                let prefixes = [
                    "sb2",
                    "SB1",
                    "none",
                    "sb1 ",
                    "eyJhbGciOiJub25lIn0",
                    "",
                    "sb0",
                ];
                let s = String::from_utf8_lossy(&t).into_owned();
                let rest = s.split_once('.').map_or("", |(_, r)| r).to_string();
                t = format!("{}.{rest}", u.choose(&prefixes)?).into_bytes();
            }
            4 => {
                // The other tenant's signature on these claims, or these claims with its
                // signature.
                let s = String::from_utf8_lossy(&t).into_owned();
                let mut parts: Vec<String> = s.split('.').map(str::to_string).collect();
                let fparts: Vec<&str> = foreign.split('.').collect();
                let k = u.choose_index(parts.len().min(fparts.len()).max(1))?;
                if k < parts.len() && k < fparts.len() {
                    parts[k] = fparts[k].to_string();
                }
                t = parts.join(".").into_bytes();
            }
            5 => {
                // Re-encode the claims with other JSON: extra fields, other types, an
                // `alg`, duplicated keys, another expiry; keep the signature.
                let variants = [
                    format!(r#"{{"t":"{tenant}","u":"mallory","exp":{exp},"nbf":{nbf}}}"#),
                    format!(r#"{{"t":"{tenant}","u":"alice","exp":18446744073709551615}}"#),
                    format!(r#"{{"alg":"none","t":"{tenant}","u":"alice","exp":{exp}}}"#),
                    format!(r#"{{"t":"{tenant}","t":"other","u":"alice","exp":{exp}}}"#),
                    format!(r#"{{"t":"{tenant}","u":"alice","exp":"{exp}"}}"#),
                    format!(r#" {{"t":"{tenant}","u":"alice","exp":{exp},"nbf":{nbf}}} "#),
                    r#"{"t":"","u":"","exp":0}"#.to_string(),
                ];
                let json = u.choose(&variants)?;
                let s = String::from_utf8_lossy(&t).into_owned();
                let sig = s.rsplit('.').next().unwrap_or("").to_string();
                t = format!("sb1.{}.{sig}", B64.encode(json)).into_bytes();
            }
            6 => {
                // Append or strip base64 padding / trailing bits on the signature.
                let pad = *u.choose(&["=", "==", "A", "Q", ""])?;
                t.extend_from_slice(pad.as_bytes());
            }
            _ => {
                let i = u.int_in_range(0..=t.len())?;
                t.truncate(i);
            }
        }
    }
    if let Ok(s) = std::str::from_utf8(&t) {
        check_untrusted(s, Some((&minted, &foreign)), now);
    }
    Ok(())
}

//! Client tokens: `sb1.<claims>.<signature>`, both parts base64url without padding.
//!
//! `claims` is a small JSON object `{"t": tenant, "u": user, "exp": secs, "nbf": secs}`;
//! `signature` is HMAC-SHA256 over the ASCII bytes `sb1.<claims>` keyed with the tenant's
//! secret. The algorithm is fixed by the `sb1` prefix, never read from the token, so there is
//! nothing to confuse. Verification is split in two so the caller can look the tenant's secret
//! up between the steps: [`parse`] (untrusted, tells which tenant signed) then
//! [`Unverified::verify`].

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::{ErrorCode, TenantId, UserId};

const PREFIX: &str = "sb1";
/// Longest token accepted, in bytes; anything longer is refused before decoding.
pub const MAX_TOKEN_LEN: usize = 1024;
/// Shortest tenant secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token expired at {exp} (now {now})")]
    Expired { exp: u64, now: u64 },
    #[error("token not valid before {nbf} (now {now})")]
    NotYetValid { nbf: u64, now: u64 },
}

impl TokenError {
    /// The protocol error code a client is told.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Malformed(_) | Self::BadSignature => ErrorCode::InvalidToken,
            Self::Expired { .. } => ErrorCode::TokenExpired,
            Self::NotYetValid { .. } => ErrorCode::TokenNotYetValid,
        }
    }
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub tenant: TenantId,
    pub user: UserId,
    /// Expiry, seconds since the Unix epoch (exclusive).
    pub exp: u64,
    /// Not before, seconds since the Unix epoch.
    pub nbf: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClaims {
    t: String,
    u: String,
    exp: u64,
    #[serde(default)]
    nbf: u64,
}

/// A parsed token whose signature has not been checked yet.
#[derive(Debug)]
pub struct Unverified {
    claims: Claims,
    signed: String,
    signature: Vec<u8>,
}

impl Unverified {
    /// The tenant the token claims; look its secret up and call [`Unverified::verify`].
    pub fn tenant(&self) -> &TenantId {
        &self.claims.tenant
    }

    /// Checks the signature with `secret` and the validity window against `now` (Unix secs).
    pub fn verify(self, secret: &[u8], now: u64) -> Result<Claims, TokenError> {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(self.signed.as_bytes());
        // Constant-time comparison.
        mac.verify_slice(&self.signature)
            .map_err(|_| TokenError::BadSignature)?;
        if now >= self.claims.exp {
            return Err(TokenError::Expired {
                exp: self.claims.exp,
                now,
            });
        }
        if now < self.claims.nbf {
            return Err(TokenError::NotYetValid {
                nbf: self.claims.nbf,
                now,
            });
        }
        Ok(self.claims)
    }
}

/// Parses a token without trusting it.
pub fn parse(token: &str) -> Result<Unverified, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed("too long"));
    }
    let mut parts = token.split('.');
    let (Some(prefix), Some(claims_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("expected three dot-separated parts"));
    };
    if prefix != PREFIX {
        return Err(TokenError::Malformed("unknown token version"));
    }
    let claims_json = B64
        .decode(claims_b64)
        .map_err(|_| TokenError::Malformed("claims are not base64url"))?;
    let signature = B64
        .decode(sig_b64)
        .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
    let raw: RawClaims = serde_json::from_slice(&claims_json)
        .map_err(|_| TokenError::Malformed("claims are not the expected JSON"))?;
    let tenant = TenantId::new(&raw.t).map_err(|_| TokenError::Malformed("bad tenant id"))?;
    let user = UserId::new(&raw.u).map_err(|_| TokenError::Malformed("bad user id"))?;
    Ok(Unverified {
        claims: Claims {
            tenant,
            user,
            exp: raw.exp,
            nbf: raw.nbf,
        },
        signed: format!("{PREFIX}.{claims_b64}"),
        signature,
    })
}

/// Mints a token for `claims` signed with the tenant's `secret`.
pub fn mint(claims: &Claims, secret: &[u8]) -> String {
    let raw = RawClaims {
        t: claims.tenant.to_string(),
        u: claims.user.to_string(),
        exp: claims.exp,
        nbf: claims.nbf,
    };
    let json = serde_json::to_vec(&raw).expect("claims serialise");
    let signed = format!("{PREFIX}.{}", B64.encode(json));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(signed.as_bytes());
    let sig = mac.finalize().into_bytes();
    format!("{signed}.{}", B64.encode(sig))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"tenant-secret-0123456789";

    fn claims() -> Claims {
        Claims {
            tenant: TenantId::new("acme").unwrap(),
            user: UserId::new("alice").unwrap(),
            exp: 2_000,
            nbf: 1_000,
        }
    }

    fn check(token: &str, secret: &[u8], now: u64) -> Result<Claims, TokenError> {
        parse(token)?.verify(secret, now)
    }

    #[test]
    fn round_trip() {
        let t = mint(&claims(), SECRET);
        assert_eq!(parse(&t).unwrap().tenant().as_str(), "acme");
        assert_eq!(check(&t, SECRET, 1_500), Ok(claims()));
    }

    #[test]
    fn window() {
        let t = mint(&claims(), SECRET);
        assert_eq!(check(&t, SECRET, 1_000), Ok(claims()));
        assert_eq!(
            check(&t, SECRET, 2_000),
            Err(TokenError::Expired {
                exp: 2_000,
                now: 2_000
            })
        );
        assert_eq!(
            check(&t, SECRET, 999),
            Err(TokenError::NotYetValid {
                nbf: 1_000,
                now: 999
            })
        );
    }

    #[test]
    fn wrong_secret_or_tampering() {
        let t = mint(&claims(), SECRET);
        assert_eq!(
            check(&t, b"other-tenant-secret-xyz", 1_500),
            Err(TokenError::BadSignature)
        );
        // Re-point the claims at another user keeping the old signature.
        let mut c = claims();
        c.user = UserId::new("mallory").unwrap();
        let forged_claims = mint(&c, SECRET);
        let sig = t.rsplit('.').next().unwrap();
        let mut parts: Vec<&str> = forged_claims.split('.').collect();
        parts[2] = sig;
        assert_eq!(
            check(&parts.join("."), SECRET, 1_500),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn malformed() {
        for bad in [
            "",
            "sb1",
            "sb1.a",
            "sb1.a.b.c",
            "sb2.e30.AAAA",
            "sb1.!!!.AAAA",
            "sb1.e30.AAAA", // "{}": missing fields
            "none.eyJ0IjoiYSIsInUiOiJiIiwiZXhwIjo5fQ.",
        ] {
            assert!(
                matches!(parse(bad), Err(TokenError::Malformed(_))),
                "accepted {bad:?}"
            );
        }
        assert!(matches!(
            parse(&"a".repeat(MAX_TOKEN_LEN + 1)),
            Err(TokenError::Malformed("too long"))
        ));
        // An empty signature never verifies.
        let t = mint(&claims(), SECRET);
        let unsigned = format!("{}.", t.rsplit_once('.').unwrap().0);
        assert_eq!(
            check(&unsigned, SECRET, 1_500),
            Err(TokenError::BadSignature)
        );
    }

    /// What docs/protocol.md §5 promises about strictness: every variant below is refused.
    #[test]
    fn parsing_is_as_strict_as_the_protocol_says() {
        let sign = |claims_json: &str| {
            let signed = format!("{PREFIX}.{}", B64.encode(claims_json));
            let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
            mac.update(signed.as_bytes());
            format!("{signed}.{}", B64.encode(mac.finalize().into_bytes()))
        };
        // Any member order and whitespace are fine.
        let ok = sign(r#" { "exp": 2000, "u": "alice", "nbf": 1000, "t": "acme" } "#);
        assert_eq!(check(&ok, SECRET, 1_500), Ok(claims()));
        for bad_claims in [
            r#"{"t":"acme","u":"alice","exp":2000,"exp":2000}"#,
            r#"{"t":"acme","u":"alice","exp":2000.0}"#,
            r#"{"t":"acme","u":"alice","exp":2e3}"#,
            r#"{"t":"acme","u":"alice","exp":"2000"}"#,
            r#"{"t":"acme","u":"alice","exp":-1}"#,
            r#"{"t":"acme","u":"alice","exp":2000,"x":1}"#,
            r#"{"t":"acme","u":"..","exp":2000}"#,
            r#"{"t":"acme","u":"alice","exp":2000} {}"#,
            r#"[]"#,
        ] {
            assert!(
                matches!(
                    check(&sign(bad_claims), SECRET, 1_500),
                    Err(TokenError::Malformed(_))
                ),
                "{bad_claims}"
            );
        }
        let good = mint(&claims(), SECRET);
        let (head, sig) = good.rsplit_once('.').unwrap();
        // Padding, standard-alphabet characters, non-canonical trailing bits, a short MAC.
        // 32 bytes are 43 characters whose last carries 2 unused bits: set one of them.
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut last = sig.as_bytes().to_vec();
        let l = last.len() - 1;
        let v = ALPHABET.iter().position(|c| *c == last[l]).unwrap();
        assert_eq!(v & 3, 0, "a canonical encoding");
        last[l] = ALPHABET[v | 1];
        for bad in [
            format!("{good}="),
            format!("{head}.{sig}+"),
            format!("{head}.{}", String::from_utf8(last).unwrap()),
        ] {
            assert!(
                matches!(check(&bad, SECRET, 1_500), Err(TokenError::Malformed(_))),
                "{bad}"
            );
        }
        let short = format!("{head}.{}", &sig[..sig.len() - 3]);
        assert_eq!(check(&short, SECRET, 1_500), Err(TokenError::BadSignature));
    }
}

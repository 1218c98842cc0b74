//! What both bench binaries' raw clients do to become a session: a bench token, and `Hello`
//! on a new control stream answered by `Welcome`. Included by `main.rs` and, by path, by
//! `peers/main.rs` (two binaries, no shared library target).

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use switchboard_core::token::{self, Claims};
use switchboard_core::{PresenceState, TenantId, UserId};
use switchboard_wire::{self as wire, ClientFrame, DecodeLimits, ServerFrame};

/// A token for `user` of `tenant` signed with `secret`, valid for an hour.
pub fn token(tenant: &str, user: &str, secret: &[u8]) -> Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    Ok(token::mint(
        &Claims {
            tenant: TenantId::new(tenant)?,
            user: UserId::new(user)?,
            exp: now + 3600,
            nbf: 0,
        },
        secret,
    ))
}

/// Opens the control stream of `conn`, says `Hello` (foreground, no cursors) and reads the
/// `Welcome`: the streams and the read buffer, ready for requests.
pub async fn hello(
    conn: &quinn::Connection,
    token: String,
    client: &str,
    max_frame: u32,
) -> Result<(quinn::SendStream, quinn::RecvStream, BytesMut)> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&wire::encode_client(&ClientFrame::Hello(wire::Hello {
        token,
        presence: PresenceState::Foreground,
        cursors: vec![],
        client: client.into(),
    })))
    .await?;
    let mut buf = BytesMut::new();
    let f = wire::read_frame(&mut recv, &mut buf, max_frame)
        .await?
        .context("no welcome")?;
    match wire::decode_server(&f, &DecodeLimits::default())? {
        ServerFrame::Welcome { .. } => Ok((send, recv, buf)),
        other => bail!("expected Welcome, got {other:?}"),
    }
}

//! What the API hands out works on the QUIC side: a minted token opens a session, a member
//! added over HTTP can send to the group, and rotating the secret retires old tokens.

mod common;

use common::*;
use switchboard_admin::control::types::{CreateGroup, MintToken};
use switchboard_client::{Client, ClientConfig, Event};
use switchboard_core::ErrorCode;

fn config(api: &TestApi, token: String) -> ClientConfig {
    let mut c = ClientConfig::new(api.quic_addr, api.cert_der.clone(), token);
    c.request_timeout = WAIT;
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn a_minted_token_opens_a_session() {
    let api = TestApi::start().await;
    let key = api.tenant_with_key("acme");
    let tenant = api.client(&key);
    let mint = |user: &str| {
        let req = MintToken {
            user: user.to_owned(),
            ttl_secs: None,
        };
        sync(|| tenant.mint_token("acme", &req)).unwrap().token
    };
    sync(|| {
        tenant
            .create_group(
                "acme",
                &CreateGroup {
                    id: "team".into(),
                    open: false,
                    max_members: None,
                },
            )
            .unwrap();
        tenant.add_member("acme", "team", "alice").unwrap();
    });
    let token = mint("alice");

    let (alice, mut events) = Client::connect(config(&api, token.clone())).await.unwrap();
    let first = tokio::time::timeout(WAIT, events.next()).await.unwrap();
    assert!(matches!(first, Some(Event::Connected { .. })), "{first:?}");
    let ack = alice.send("team", "hello over QUIC").await.unwrap();
    assert_eq!(ack.seq, 1);
    assert_eq!(sync(|| tenant.group("acme", "team")).unwrap().head, 1);
    let health = sync(|| api.anonymous().health()).unwrap();
    assert!(health.sessions >= 1, "{health:?}");

    // A new secret: tokens signed with the old one are refused, new ones work.
    sync(|| api.admin().rotate_secret("acme")).unwrap();
    let e = Client::connect(config(&api, token)).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidToken), "{e}");
    let (_bob, mut events) = Client::connect(config(&api, mint("bob"))).await.unwrap();
    let first = tokio::time::timeout(WAIT, events.next()).await.unwrap();
    assert!(matches!(first, Some(Event::Connected { .. })), "{first:?}");
    api.stop().await;
}

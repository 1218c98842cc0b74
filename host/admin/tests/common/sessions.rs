//! Real QUIC sessions for tests that look at the node from the API: groups with members, and
//! connected clients (the apps' SDK) holding tokens the API minted.

use switchboard_admin::control::types::{CreateGroup, MintToken};
use switchboard_client::{Client, ClientConfig, Event, Events};
use switchboard_core::PresenceState;

use super::{sync, TestApi, WAIT};

/// Creates a closed group of `tenant` with these members, with the tenant's `key`.
pub fn group(api: &TestApi, key: &str, tenant: &str, id: &str, users: &[&str]) {
    let tc = api.client(key);
    sync(|| {
        tc.create_group(
            tenant,
            &CreateGroup {
                id: id.into(),
                open: false,
                max_members: None,
            },
        )
        .unwrap();
        for u in users {
            tc.add_member(tenant, id, u).unwrap();
        }
    });
}

/// Connects `user` of `tenant` (a token minted with the tenant's `key`), in the foreground or
/// the background, and waits for its session.
pub async fn connect(
    api: &TestApi,
    key: &str,
    tenant: &str,
    user: &str,
    presence: PresenceState,
) -> (Client, Events) {
    let tc = api.client(key);
    let req = MintToken {
        user: user.to_owned(),
        ttl_secs: None,
    };
    let token = sync(|| tc.mint_token(tenant, &req)).unwrap().token;
    let mut c = ClientConfig::new(api.quic_addr, api.cert_der.clone(), token);
    c.request_timeout = WAIT;
    c.presence = presence;
    let (client, mut events) = Client::connect(c).await.unwrap();
    let first = tokio::time::timeout(WAIT, events.next()).await.unwrap();
    assert!(matches!(first, Some(Event::Connected { .. })), "{first:?}");
    (client, events)
}

/// Waits until `events` delivered `n` messages.
pub async fn messages(events: &mut Events, n: usize) {
    let mut got = 0;
    while got < n {
        match tokio::time::timeout(WAIT, events.next()).await.unwrap() {
            Some(Event::Message(_)) => got += 1,
            Some(_) => {}
            None => panic!("the client's events ended"),
        }
    }
}

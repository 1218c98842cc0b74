//! Client-SDK helpers for tests that drive the node through `switchboard-client`.
#![allow(dead_code)]

use super::{TestNode, WAIT};
use switchboard_wire as wire;

impl TestNode {
    pub fn client_config(&self, tenant: &str, user: &str) -> switchboard_client::ClientConfig {
        let mut c = switchboard_client::ClientConfig::new(
            self.addr,
            self.cert_der(),
            self.token(tenant, user),
        );
        c.request_timeout = WAIT;
        c
    }

    pub async fn client(
        &self,
        tenant: &str,
        user: &str,
    ) -> (switchboard_client::Client, switchboard_client::Events) {
        let (c, mut ev) = switchboard_client::Client::connect(self.client_config(tenant, user))
            .await
            .unwrap();
        // The first event is always Connected.
        match next_event(&mut ev).await {
            switchboard_client::Event::Connected { .. } => {}
            other => panic!("expected Connected, got {other:?}"),
        }
        (c, ev)
    }
}

pub async fn next_event(ev: &mut switchboard_client::Events) -> switchboard_client::Event {
    tokio::time::timeout(WAIT, ev.next())
        .await
        .expect("timed out waiting for an event")
        .expect("event stream ended")
}

/// Waits for the next delivered message, skipping other events.
pub async fn next_message(ev: &mut switchboard_client::Events) -> wire::Message {
    loop {
        if let switchboard_client::Event::Message(m) = next_event(ev).await {
            return m;
        }
    }
}

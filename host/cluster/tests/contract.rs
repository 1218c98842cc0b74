//! The store's group-log contract (`switchboard_store::contract`) against `NodeStore` with
//! its messages in JetStream, on a real nats-server.
//!
//! Each test thread gets its own server; reopening the store in the same directory (the
//! contract's reopen test) reconnects to the same server and prefix, as a restarted node
//! would.

mod support;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use switchboard_store::contract::{open_sled, Harness};
use switchboard_store::{MessageLog, NodeStore, Store};

use support::NatsServer;

thread_local! {
    /// The server of the test running on this thread, and the directory it serves.
    static SERVER: RefCell<Option<(PathBuf, NatsServer)>> = const { RefCell::new(None) };
}

struct JetStream;

impl Harness for JetStream {
    fn open(dir: &Path) -> Option<Arc<dyn Store>> {
        let url = SERVER.with(|s| {
            let mut s = s.borrow_mut();
            if s.as_ref().is_none_or(|(d, _)| d != dir) {
                *s = Some((dir.to_owned(), NatsServer::start()));
            }
            s.as_ref().map(|(_, server)| server.url())
        })?;
        let log = switchboard_cluster::JetStreamLog::connect(
            switchboard_cluster::JetStreamLogConfig::new(url, "contract").replicas(1),
        )
        .expect("connect");
        // The only node: it takes every shard (fencing the writer of a reopened store).
        let log = support::take_all(log, "contract");
        let store = NodeStore::open(open_sled(dir), MessageLog::Backend(Arc::new(log)), None)
            .expect("open the node store");
        Some(Arc::new(store))
    }
}

switchboard_store::store_contract! {
    jetstream: JetStream,
}

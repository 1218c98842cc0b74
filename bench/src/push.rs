//! A session's pushes as an app sees them: read from every push stream the node opens, each
//! group's deliveries in `seq` order (protocol §9, `wire::order`).

use anyhow::{Context, Result};
use bytes::BytesMut;
use switchboard_wire::order::PushOrder;
use switchboard_wire::{self as wire, DecodeLimits, ServerFrame};
use tokio::sync::mpsc;

/// Reads a connection's push streams in background tasks; [`Pushes::next`] hands frames on
/// in order. Dropping it stops the readers (and so the push streams).
pub struct Pushes {
    rx: mpsc::UnboundedReceiver<Result<ServerFrame>>,
    order: PushOrder,
    accept: tokio::task::JoinHandle<()>,
}

impl Pushes {
    pub fn new(conn: &quinn::Connection) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let accept = tokio::spawn(accept_streams(conn.clone(), tx));
        Self {
            rx,
            order: PushOrder::new(1 << 20),
            accept,
        }
    }

    /// The next push in order; an error if the streams ended or the node broke a promise.
    pub async fn next(&mut self) -> Result<ServerFrame> {
        loop {
            if let Some(f) = self.order.pop() {
                return Ok(f);
            }
            let f = self.rx.recv().await.context("push streams ended")??;
            self.order.arrive(f)?;
        }
    }
}

impl Drop for Pushes {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_streams(conn: quinn::Connection, tx: mpsc::UnboundedSender<Result<ServerFrame>>) {
    let mut readers = tokio::task::JoinSet::new();
    while let Ok(mut recv) = conn.accept_uni().await {
        let tx = tx.clone();
        readers.spawn(async move {
            let mut buf = BytesMut::new();
            let limits = DecodeLimits::default();
            loop {
                let frame = match wire::read_frame(&mut recv, &mut buf, 1 << 20).await {
                    Ok(Some(f)) => f,
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(e.into()));
                        return;
                    }
                };
                let f = wire::decode_server(&frame, &limits).map_err(Into::into);
                if tx.send(f).is_err() {
                    return;
                }
            }
        });
    }
}

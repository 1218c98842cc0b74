//! The bridge from the node's synchronous [`Store`](switchboard_store::Store) calls to
//! async-nats: a tokio runtime owned by the log, and a bounded wait for each call.
//!
//! Why a runtime of its own rather than the caller's: the store seam is synchronous and is
//! called from tokio workers, the blocking pool and plain threads alike. Blocking on the
//! caller's runtime from one of its workers panics (or deadlocks a current-thread runtime);
//! a separate runtime makes every call the same: spawn the future there, wait on a channel
//! with a deadline. The calling thread blocks exactly as it does for a sled write or an
//! fsync, so callers keep running store calls where blocking is allowed (the committer runs
//! on the blocking pool).

use std::future::Future;
use std::time::Duration;

use crate::ClusterError;

/// Runs futures on the log's own runtime and waits for each at most `wait`.
#[derive(Debug)]
pub(crate) struct Bridge {
    runtime: Option<tokio::runtime::Runtime>,
    wait: Duration,
}

impl Bridge {
    /// A multi-thread runtime with `workers` threads (the NATS connection's reader and
    /// writer tasks, and the calls' futures, run there).
    pub(crate) fn new(workers: usize, wait: Duration) -> Result<Self, ClusterError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name("sb-cluster")
            .enable_all()
            .build()
            .map_err(|e| ClusterError::Config(format!("start the cluster runtime: {e}")))?;
        Ok(Self {
            runtime: Some(runtime),
            wait,
        })
    }

    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        match &self.runtime {
            Some(rt) => rt.handle(),
            // Only `Drop` takes the runtime.
            None => unreachable!("the runtime lives as long as the bridge"),
        }
    }

    /// Runs `fut` on the runtime and waits for its result, at most the bridge's `wait`. On
    /// time-out the future keeps running to its own (shorter) time-outs and its result is
    /// dropped.
    pub(crate) fn run<T, F>(&self, op: &'static str, fut: F) -> Result<T, ClusterError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, ClusterError>> + Send + 'static,
    {
        // Capacity 1: the one result; the sender never waits.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle().spawn(async move {
            let _ = tx.send(fut.await);
        });
        match rx.recv_timeout(self.wait) {
            Ok(result) => result,
            Err(_) => Err(ClusterError::TimedOut {
                op,
                after: self.wait,
            }),
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // Dropping a runtime from inside another runtime's context panics; shutting it
        // down in the background never blocks and works from anywhere.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_returns_its_result_from_any_thread_even_inside_another_runtime() {
        let bridge = Bridge::new(1, Duration::from_secs(30)).unwrap();
        assert_eq!(bridge.run("plain", async { Ok(7) }).unwrap(), 7);
        // From a current-thread runtime's own thread (where blocking on that runtime would
        // deadlock): the future runs on the bridge's runtime instead.
        let outer = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let got = outer.block_on(async { bridge.run("nested", async { Ok("x") }) });
        assert_eq!(got.unwrap(), "x");
        // Dropping the bridge inside a runtime does not panic.
        outer.block_on(async move { drop(bridge) });
    }

    #[test]
    fn a_call_that_outlives_the_wait_fails_as_timed_out() {
        let bridge = Bridge::new(1, Duration::from_millis(50)).unwrap();
        // The future never finishes; the caller is released at the bound.
        let err = bridge
            .run("stuck", std::future::pending::<Result<(), ClusterError>>())
            .unwrap_err();
        assert!(
            matches!(err, ClusterError::TimedOut { op: "stuck", .. }),
            "{err:?}"
        );
        assert!(err.outcome_unknown());
    }
}

//! CPU time of this process's threads, split between the node and the load generator by
//! thread name (the clients' runtime names its threads `clients`; every other thread — the
//! node's runtime, its blocking pool, the store's threads — counts as the node's). Linux
//! `/proc/self/task/*/stat`, in clock ticks (10 ms), so short runs are coarse.

use std::time::Duration;

/// CPU seconds of the node's threads and of the load generator's, at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Split {
    pub node: f64,
    pub clients: f64,
}

impl Split {
    /// Now (zeros where `/proc` cannot be read).
    pub fn now() -> Self {
        let mut s = Split::default();
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return s;
        };
        for t in tasks.flatten() {
            let Ok(text) = std::fs::read_to_string(t.path().join("stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (text.find('('), text.rfind(')')) else {
                continue;
            };
            let name = &text[open + 1..close];
            // utime and stime are fields 14 and 15, i.e. 11 and 12 after the state.
            let f: Vec<&str> = text[close + 2..].split_whitespace().collect();
            let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            let secs = (ticks(11) + ticks(12)) as f64 / 100.0;
            if name == "clients" {
                s.clients += secs;
            } else {
                s.node += secs;
            }
        }
        s
    }

    /// What was spent since `before`.
    pub fn since(self, before: Split) -> Split {
        Split {
            node: self.node - before.node,
            clients: self.clients - before.clients,
        }
    }

    /// Share of one core the load generator used over `elapsed` (1.0: a core busy).
    pub fn clients_busy(&self, elapsed: Duration) -> f64 {
        self.clients / elapsed.as_secs_f64().max(1e-9)
    }
}

/// From this share of its core on, a run is flagged as bound by the load generator.
pub const GENERATOR_BOUND: f64 = 0.9;

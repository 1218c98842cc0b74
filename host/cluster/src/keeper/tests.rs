//! The keeper over simulated time: unit cases, then a seeded simulation of several
//! keepers against a model of the lease bucket, with delays, pauses and changing views of
//! the live nodes, checking after every step that no shard has two serving owners.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use super::*;

const TTL: Duration = Duration::from_secs(9);

fn keeper(node: &str) -> Keeper {
    Keeper::new(KeeperConfig::for_ttl(node, TTL))
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// The holder's deadline for a write sent at `sent` (as `lease.rs` computes it).
fn deadline(sent: Instant) -> Instant {
    sent + TTL - TTL / 10
}

fn acquires(actions: &[Action]) -> Vec<u16> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Acquire { shard } => Some(*shard),
            _ => None,
        })
        .collect()
}

/// A lone keeper that was granted `shard` at `t0`.
fn holding(shard: u16, t0: Instant) -> Keeper {
    let mut k = keeper("a");
    assert_eq!(
        acquires(&k.handle(Event::Tick, t0)).len(),
        usize::from(SHARDS)
    );
    let actions = k.handle(
        Event::Granted {
            shard,
            revision: 1,
            valid_until: deadline(t0),
        },
        t0,
    );
    assert_eq!(actions, vec![Action::Take { shard, epoch: 1 }]);
    // Not served until the log took it.
    assert!(!k.serves(shard, t0));
    k.handle(Event::Taken { shard, epoch: 1 }, t0);
    assert!(k.serves(shard, t0));
    k
}

#[test]
fn a_held_lease_is_renewed_before_its_deadline_and_served_on() {
    let t0 = Instant::now();
    let mut k = holding(3, t0);
    // Nothing before a third of the TTL.
    assert!(k.handle(Event::Tick, t0 + secs(2.9)).is_empty());
    let t1 = t0 + secs(3.0);
    assert_eq!(
        k.handle(Event::Tick, t1),
        vec![Action::Renew {
            shard: 3,
            revision: 1
        }]
    );
    // One renewal in flight at a time.
    assert!(k.handle(Event::Tick, t1 + secs(1.0)).is_empty());
    let renewed = Event::Renewed {
        shard: 3,
        revision: 2,
        valid_until: deadline(t1),
    };
    assert!(k.handle(renewed, t1 + secs(1.0)).is_empty());
    // Served past the first deadline, thanks to the renewal.
    assert!(k.serves(3, deadline(t0) + secs(1.0)));
    assert_eq!(
        k.handle(Event::Tick, t1 + secs(4.0)),
        vec![Action::Renew {
            shard: 3,
            revision: 2
        }]
    );
}

#[test]
fn a_refused_renewal_steps_down_at_once() {
    let t0 = Instant::now();
    let mut k = holding(3, t0);
    let t1 = t0 + secs(3.0);
    k.handle(Event::Tick, t1);
    let actions = k.handle(
        Event::RenewFailed {
            shard: 3,
            lost: true,
        },
        t1,
    );
    assert_eq!(actions, vec![Action::StepDown { shard: 3 }]);
    assert!(!k.serves(3, t1));
    // Still preferred: it asks again after the retry interval, not before.
    assert!(acquires(&k.handle(Event::Tick, t1 + secs(0.5))).is_empty());
    assert_eq!(acquires(&k.handle(Event::Tick, t1 + secs(0.9))), vec![3]);
}

#[test]
fn the_deadline_passing_without_an_answer_steps_down_and_a_late_renewal_is_not_trusted() {
    let t0 = Instant::now();
    let mut k = holding(3, t0);
    k.handle(Event::Tick, t0 + secs(3.0)); // renewal sent, never answered
                                           // A transient failure retries, and the deadline still decides.
    let actions = k.handle(
        Event::RenewFailed {
            shard: 3,
            lost: false,
        },
        t0 + secs(4.0),
    );
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(
        k.handle(Event::Tick, t0 + secs(4.9)),
        vec![Action::Renew {
            shard: 3,
            revision: 1
        }]
    );
    let end = deadline(t0);
    assert!(k.serves(3, end - secs(0.001)));
    assert_eq!(
        k.handle(Event::Tick, end),
        vec![Action::StepDown { shard: 3 }]
    );
    assert!(!k.serves(3, end));
    // The renewal's answer comes after the step-down: ignored.
    let late = Event::Renewed {
        shard: 3,
        revision: 2,
        valid_until: end + secs(5.0),
    };
    k.handle(late, end + secs(0.1));
    assert!(!k.serves(3, end + secs(0.1)));
}

#[test]
fn a_grant_that_arrives_after_its_own_deadline_is_released_not_served() {
    let t0 = Instant::now();
    let mut k = keeper("a");
    k.handle(Event::Tick, t0);
    let actions = k.handle(
        Event::Granted {
            shard: 5,
            revision: 4,
            valid_until: t0 + secs(1.0),
        },
        t0 + secs(2.0),
    );
    assert_eq!(
        actions[0],
        Action::Release {
            shard: 5,
            revision: 4
        }
    );
    assert!(!k.serves(5, t0 + secs(2.0)));
}

#[test]
fn an_acquire_never_answered_is_asked_again() {
    let t0 = Instant::now();
    let mut k = keeper("a");
    assert_eq!(
        acquires(&k.handle(Event::Tick, t0)).len(),
        usize::from(SHARDS)
    );
    assert!(acquires(&k.handle(Event::Tick, t0 + secs(8.9))).is_empty());
    // After a TTL without an answer the driver's request is given up on.
    assert_eq!(
        acquires(&k.handle(Event::Tick, t0 + TTL)).len(),
        usize::from(SHARDS)
    );
}

#[test]
fn a_take_for_an_earlier_grant_does_not_make_a_shard_served() {
    let t0 = Instant::now();
    let mut k = holding(3, t0);
    k.handle(Event::Fenced { shard: 3 }, t0);
    let t1 = t0 + secs(1.0);
    assert_eq!(acquires(&k.handle(Event::Tick, t1)), vec![3]);
    k.handle(
        Event::Granted {
            shard: 3,
            revision: 7,
            valid_until: deadline(t1),
        },
        t1,
    );
    // The first grant's take answers late: not this grant's.
    k.handle(Event::Taken { shard: 3, epoch: 1 }, t1);
    assert!(!k.serves(3, t1));
    k.handle(Event::Taken { shard: 3, epoch: 7 }, t1);
    assert!(k.serves(3, t1));
}

#[test]
fn a_drain_steps_down_and_releases_everything_and_takes_nothing_more() {
    let t0 = Instant::now();
    let mut k = holding(3, t0);
    let actions = k.handle(Event::Drain, t0);
    assert_eq!(
        actions,
        vec![
            Action::StepDown { shard: 3 },
            Action::Release {
                shard: 3,
                revision: 1
            }
        ]
    );
    // The acquires still in flight: a late grant is released, a lost one forgotten.
    assert!(!k.drained());
    let late = k.handle(
        Event::Granted {
            shard: 4,
            revision: 2,
            valid_until: deadline(t0),
        },
        t0,
    );
    assert_eq!(
        late,
        vec![Action::Release {
            shard: 4,
            revision: 2
        }]
    );
    assert!(k.handle(Event::Tick, t0 + TTL).is_empty());
    assert!(k.drained());
    // Nothing is acquired again, whatever time or the live nodes say.
    assert!(k.handle(Event::Nodes(vec!["a".into()]), t0).is_empty());
    assert!(k.handle(Event::Tick, t0 + secs(60.0)).is_empty());
    assert_eq!(k.served(t0).count(), 0);
}

#[test]
fn the_log_fencing_a_shard_steps_down() {
    let t0 = Instant::now();
    let mut k = holding(3, t0);
    assert_eq!(
        k.handle(Event::Fenced { shard: 3 }, t0 + secs(1.0)),
        vec![Action::StepDown { shard: 3 }]
    );
    assert!(!k.serves(3, t0 + secs(1.0)));
}

#[test]
fn nodes_joining_and_leaving_move_only_the_shards_rendezvous_moves() {
    let t0 = Instant::now();
    let mut a = keeper("a");
    a.handle(Event::Tick, t0);
    for shard in 0..SHARDS {
        a.handle(
            Event::Granted {
                shard,
                revision: 1,
                valid_until: deadline(t0),
            },
            t0,
        );
        a.handle(Event::Taken { shard, epoch: 1 }, t0);
    }
    assert_eq!(a.served(t0).count(), usize::from(SHARDS));
    // b joins: a hands over exactly b's shards (step down first, then release).
    let both = vec!["a".to_owned(), "b".to_owned()];
    let actions = a.handle(Event::Nodes(both.clone()), t0);
    let to_b: Vec<u16> = (0..SHARDS)
        .filter(|&s| preferred_owner(s, &both) == Some("b"))
        .collect();
    assert!(!to_b.is_empty());
    let expected: Vec<Action> = to_b
        .iter()
        .flat_map(|&shard| {
            [
                Action::StepDown { shard },
                Action::Release { shard, revision: 1 },
            ]
        })
        .collect();
    assert_eq!(actions, expected);
    assert_eq!(a.served(t0).count(), usize::from(SHARDS) - to_b.len());
    // b leaves: a goes after those shards again.
    let actions = a.handle(Event::Nodes(vec!["a".into()]), t0 + secs(1.0));
    assert_eq!(acquires(&actions), to_b);
}

// --- The simulation ---------------------------------------------------------------------

/// xorshift64*: a seeded, dependency-free generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn millis(&mut self, max: u64) -> Duration {
        Duration::from_millis(self.below(max + 1))
    }
}

/// The lease bucket as the keepers see it: per shard the holder, the revision and when the
/// server lets it go (its store time plus the TTL).
#[derive(Default)]
struct Bucket {
    keys: BTreeMap<u16, (usize, u64, Instant)>,
    revision: u64,
}

impl Bucket {
    fn live(&self, shard: u16, now: Instant) -> Option<(usize, u64)> {
        self.keys
            .get(&shard)
            .filter(|k| now < k.2)
            .map(|k| (k.0, k.1))
    }
    fn write(&mut self, shard: u16, node: usize, now: Instant) -> u64 {
        self.revision += 1;
        self.keys.insert(shard, (node, self.revision, now + TTL));
        self.revision
    }
}

/// A request on its way to the bucket: who sent it, when, and what.
#[derive(Debug, Clone)]
enum Msg {
    /// Node `n`'s request, sent at `sent`.
    Request {
        n: usize,
        sent: Instant,
        action: Action,
    },
    /// An answer to node `n`.
    Answer { n: usize, event: Event },
    /// Node `n`'s clock tick.
    Tick { n: usize },
}

struct Sim {
    rng: Rng,
    now: Instant,
    queue: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    msgs: Vec<Msg>,
    seq: u64,
    keepers: Vec<Keeper>,
    paused_until: Vec<Instant>,
    bucket: Bucket,
}

impl Sim {
    fn new(seed: u64, nodes: usize, start: Instant) -> Self {
        let names: Vec<String> = (0..nodes).map(|i| format!("node-{i}")).collect();
        let mut sim = Sim {
            rng: Rng(seed | 1),
            now: start,
            queue: BinaryHeap::new(),
            msgs: Vec::new(),
            seq: 0,
            keepers: names.iter().map(|n| keeper(n)).collect(),
            paused_until: vec![start; nodes],
            bucket: Bucket::default(),
        };
        for n in 0..nodes {
            let actions = sim.keepers[n].handle(Event::Nodes(names.clone()), start);
            sim.send(n, actions);
            sim.at(start, Msg::Tick { n });
        }
        sim
    }

    fn at(&mut self, when: Instant, msg: Msg) {
        self.seq += 1;
        self.msgs.push(msg);
        self.queue
            .push(Reverse((when, self.seq, self.msgs.len() - 1)));
    }

    /// A node's view of the live nodes changes (views may disagree for a while).
    fn view(&mut self, n: usize, live: &[usize]) {
        let names = live.iter().map(|i| format!("node-{i}")).collect();
        let actions = self.keepers[n].handle(Event::Nodes(names), self.now);
        self.send(n, actions);
    }

    fn send(&mut self, n: usize, actions: Vec<Action>) {
        for action in actions {
            match action {
                // The log's take answers after a delay; a step-down needs nothing.
                Action::Take { shard, epoch } => {
                    let when = self.now + self.rng.millis(200);
                    let event = Event::Taken { shard, epoch };
                    self.at(when, Msg::Answer { n, event });
                }
                Action::StepDown { .. } => {}
                action => {
                    let when = self.now + self.rng.millis(400);
                    let sent = self.now;
                    self.at(when, Msg::Request { n, sent, action });
                }
            }
        }
    }

    /// Runs until `until`, checking the invariant after every step.
    fn run(&mut self, until: Instant) {
        while let Some(&Reverse((when, _, i))) = self.queue.peek() {
            if when > until {
                break;
            }
            self.queue.pop();
            self.now = when;
            let msg = self.msgs[i].clone();
            match msg {
                Msg::Request { n, sent, action } => self.serve(n, sent, action),
                Msg::Answer { n, .. } | Msg::Tick { n } if self.now < self.paused_until[n] => {
                    // A paused node handles it when it resumes.
                    let resume = self.paused_until[n];
                    self.at(resume, msg);
                }
                Msg::Answer { n, event } => {
                    let shard = shard_of_event(&event);
                    let actions = self.keepers[n].handle(event, self.now);
                    self.send(n, actions);
                    // Only an answer can make a node serve a shard (time only ends
                    // serving), so checking its shard after it covers every instant.
                    self.check(shard);
                }
                Msg::Tick { n } => {
                    let actions = self.keepers[n].handle(Event::Tick, self.now);
                    self.send(n, actions);
                    let next = self.now + Duration::from_millis(250);
                    self.at(next, Msg::Tick { n });
                }
            }
        }
        self.now = until;
    }

    /// The bucket answers a request (the answer travels back with a delay).
    fn serve(&mut self, n: usize, sent: Instant, action: Action) {
        let now = self.now;
        let event = match action {
            Action::Acquire { shard } => match self.bucket.live(shard, now) {
                Some((holder, _)) if holder != n => Event::Refused { shard },
                _ => Event::Granted {
                    shard,
                    revision: self.bucket.write(shard, n, now),
                    valid_until: deadline(sent),
                },
            },
            Action::Renew { shard, revision } => match self.bucket.live(shard, now) {
                Some((holder, rev)) if holder == n && rev == revision => Event::Renewed {
                    shard,
                    revision: self.bucket.write(shard, n, now),
                    valid_until: deadline(sent),
                },
                _ => Event::RenewFailed { shard, lost: true },
            },
            Action::Release { shard, revision } => {
                if self.bucket.live(shard, now).map(|k| k.1) == Some(revision) {
                    self.bucket.keys.remove(&shard);
                }
                return;
            }
            Action::Take { .. } | Action::StepDown { .. } => return,
        };
        let when = now + self.rng.millis(400);
        self.at(when, Msg::Answer { n, event });
    }

    /// `shard` is not served by two nodes.
    fn check(&self, shard: u16) {
        let serving: Vec<usize> = (0..self.keepers.len())
            .filter(|&n| self.keepers[n].serves(shard, self.now))
            .collect();
        assert!(serving.len() <= 1, "shard {shard} served by {serving:?}");
    }
}

fn shard_of_event(event: &Event) -> u16 {
    match *event {
        Event::Granted { shard, .. }
        | Event::Refused { shard }
        | Event::Renewed { shard, .. }
        | Event::RenewFailed { shard, .. }
        | Event::Taken { shard, .. }
        | Event::Fenced { shard } => shard,
        Event::Tick | Event::Nodes(_) | Event::Drain => 0,
    }
}

/// One seeded run: three nodes, then pauses longer than the TTL, disagreeing views of the
/// live nodes, a node leaving and coming back; then calm, after which every shard is
/// served by exactly its preferred owner.
fn simulate(seed: u64) {
    let start = Instant::now();
    let mut sim = Sim::new(seed, 3, start);
    let mut t = start;
    for _ in 0..16 {
        // Stretches from half a second to beyond a TTL, so pauses and stale views last.
        t += secs(0.5) + sim.rng.millis(12_000);
        sim.run(t);
        let n = sim.rng.below(3) as usize;
        match sim.rng.below(4) {
            // Paused for up to twice the TTL (SIGSTOP, a long GC, a VM migration).
            // The others see it gone (it stopped heartbeating) and go after its shards.
            0 => {
                sim.paused_until[n] = t + sim.rng.millis(2 * TTL.as_millis() as u64);
                let live: Vec<usize> = (0..3).filter(|&i| i != n).collect();
                for other in live.clone() {
                    sim.view(other, &live);
                }
            }
            // One node believes another is gone.
            1 => {
                let gone = (n + 1 + sim.rng.below(2) as usize) % 3;
                let live: Vec<usize> = (0..3).filter(|&i| i != gone).collect();
                sim.view(n, &live);
            }
            // Views agree again.
            _ => {
                for i in 0..3 {
                    sim.view(i, &[0, 1, 2]);
                }
            }
        }
    }
    // Calm: everyone live, one view, long enough for expiries and retries.
    for i in 0..3 {
        sim.paused_until[i] = t;
        sim.view(i, &[0, 1, 2]);
    }
    let calm = t + 4 * TTL;
    sim.run(calm);
    let names: Vec<String> = (0..3).map(|i| format!("node-{i}")).collect();
    for shard in 0..SHARDS {
        let serving: Vec<usize> = (0..3)
            .filter(|&n| sim.keepers[n].serves(shard, calm))
            .collect();
        let preferred = preferred_owner(shard, &names).unwrap();
        assert_eq!(
            serving
                .iter()
                .map(|&n| names[n].as_str())
                .collect::<Vec<_>>(),
            vec![preferred],
            "seed {seed}: shard {shard}"
        );
    }
}

#[test]
fn keepers_under_pauses_delays_and_changing_views_never_serve_a_shard_twice() {
    for seed in 1..=20 {
        simulate(seed);
    }
}

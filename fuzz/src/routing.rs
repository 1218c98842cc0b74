//! Target `routing`: the hub (routing, fan-out, catch-up, dedupe) driven by arbitrary
//! sequences of client and admin operations, with a sled store in a temporary directory and
//! no sockets (sessions through `switchboard_edge::local`).
//!
//! World: tenants `ta` and `tb`, each with users `u0`..`u2` and the same group names: `g0`
//! and `g1` open, `g2` closed (admin-managed), plus a missing group and an invalid id. Up to
//! [`SLOTS`] client devices, each a tenant's user that connects, disconnects and reconnects
//! with the cursors it has seen. Operations: connect, reconnect, disconnect, join, leave,
//! send (client message ids drawn from a small set, so resends happen), settle (wait for
//! every ack), pump (run a session's push writer), fetch, ack-delivery, presence, admin add
//! and remove member, and a hello with a token signed by the other tenant.
//!
//! Invariants checked as it goes and once everything is committed at the end:
//! - **per-group order**: a session receives each group's messages in sequence order with
//!   no gap and nothing twice, from its resume point (or the head when it joined);
//! - **no cross-tenant delivery or fetch**: every message a session sees is its own
//!   tenant's (bodies carry their tenant; same group names in both tenants), of a group its
//!   user belongs to, equal to its tenant's log entry;
//! - **exactly once per (sender, group, client_msg_id)**: one log entry each; every ack of
//!   it names that entry's sequence number; resends are acked as duplicates (also after the
//!   sender left the group);
//! - **acks only for stored messages**: an ack names a durable (visible) log entry with its
//!   sender and id; refused sends are never stored; every accepted send is acked once;
//! - **visibility after durability**: nothing delivered or fetched above the group's head;
//! - **completeness**: after the final commit and pump, every open session has everything
//!   up to the head of each of its groups;
//! - **tenant isolation at hello**: a token of one tenant signed with the other's secret
//!   is refused.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use switchboard_core::token::{self, Claims};
use switchboard_core::{ErrorCode, GroupId, Limits, PresenceState, TenantId, UserId};
use switchboard_edge::hub::{Hub, RequestError, SendRequest};
use switchboard_edge::local::LocalSession;
use switchboard_store::{GroupMeta, SledStore, SledStoreConfig, Store, TenantRecord};
use switchboard_wire::{decode_server, DecodeLimits, GroupCursor, Hello, Message, ServerFrame};

pub const TENANTS: [&str; 2] = ["ta", "tb"];
pub const USERS: [&str; 3] = ["u0", "u1", "u2"];
/// `g0`, `g1` open; `g2` closed; then a group that does not exist and an invalid id.
pub const GROUPS: [&str; 5] = ["g0", "g1", "g2", "g-missing", "no spaces!"];
const REAL_GROUPS: usize = 3;
pub const SLOTS: usize = 6;
const MAX_OPS: usize = 96;
/// How long a settle waits for one ack before calling it a hang.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

fn secret(tenant: usize) -> Vec<u8> {
    format!("routing-fuzz-secret-of-{}", TENANTS[tenant]).into_bytes()
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Op {
    Connect {
        tenant: u8,
        user: u8,
        background: bool,
    },
    Reconnect {
        slot: u8,
    },
    Disconnect {
        slot: u8,
    },
    Join {
        slot: u8,
        group: u8,
    },
    Leave {
        slot: u8,
        group: u8,
    },
    Send {
        slot: u8,
        group: u8,
        msg: u8,
        len: u8,
    },
    Settle,
    Pump {
        slot: u8,
    },
    Fetch {
        slot: u8,
        group: u8,
        after: u8,
        limit: u8,
    },
    AckDelivery {
        slot: u8,
        group: u8,
        seq: u8,
    },
    Presence {
        slot: u8,
        background: bool,
    },
    AddMember {
        tenant: u8,
        user: u8,
        group: u8,
    },
    RemoveMember {
        tenant: u8,
        user: u8,
        group: u8,
    },
    ForeignHello {
        tenant: u8,
        user: u8,
    },
}

#[derive(Debug)]
pub struct Scenario {
    /// Picks the outbox size (small ones overflow into catch-up).
    pub outbox: u8,
    /// Picks `max_fetch_messages` (small ones page catch-up and fetch).
    pub page: u8,
    pub ops: Vec<Op>,
}

impl Scenario {
    /// Two bytes of settings, then operations until the input ends (no length prefix, so
    /// every byte libFuzzer adds or removes is an operation's worth).
    pub fn parse(data: &[u8]) -> arbitrary::Result<Self> {
        let mut u = Unstructured::new(data);
        let outbox = u.arbitrary()?;
        let page = u.arbitrary()?;
        let mut ops = Vec::new();
        while !u.is_empty() && ops.len() < MAX_OPS {
            ops.push(Op::arbitrary(&mut u)?);
        }
        Ok(Self { outbox, page, ops })
    }
}

/// What the scenarios of this process did (for the figures): operations applied, sends
/// acked, messages delivered.
pub static STATS: [std::sync::atomic::AtomicU64; 3] = [
    std::sync::atomic::AtomicU64::new(0),
    std::sync::atomic::AtomicU64::new(0),
    std::sync::atomic::AtomicU64::new(0),
];

fn count(i: usize) {
    STATS[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

pub fn run(data: &[u8]) {
    if let Ok(s) = Scenario::parse(data) {
        run_scenario(&s);
    }
}

/// A send accepted by the hub and not yet answered.
#[derive(Debug, Clone)]
struct Pending {
    group: String,
    cmid: String,
}

/// One open session of a device and what it has seen.
struct Live {
    session: LocalSession,
    /// Per group: the last sequence number delivered (or the resume point / join head).
    last: HashMap<String, u64>,
    /// Requests in flight, by request id.
    pending: HashMap<u64, Pending>,
}

/// A client device: a tenant's user, connected or not, with the cursors it has seen.
struct Device {
    tenant: usize,
    user: usize,
    background: bool,
    live: Option<Live>,
    cursors: BTreeMap<String, u64>,
}

/// (tenant, group, sender, client_msg_id)
type Key = (usize, String, String, String);

struct World {
    hub: Arc<Hub>,
    devices: Vec<Device>,
    next_request: u64,
    sends: u64,
    /// Sends the hub accepted (appended), acked or not.
    accepted: HashSet<Key>,
    /// The sequence number each message was acked with.
    acked: HashMap<Key, u64>,
    /// Messages acked as new (not duplicate).
    acked_new: HashSet<Key>,
}

fn tid(t: usize) -> TenantId {
    TenantId::new(TENANTS[t]).unwrap()
}

fn gid(g: &str) -> GroupId {
    GroupId::new(g).unwrap()
}

fn body_tag(tenant: usize, user: &str, group: &str, cmid: &str) -> String {
    format!("{}/{user}/{group}/{cmid}/", TENANTS[tenant])
}

pub fn run_scenario(s: &Scenario) {
    let limits = Limits {
        outbox_frames: [1, 2, 3, 8, 1024][usize::from(s.outbox) % 5],
        max_fetch_messages: [1, 2, 3, 5, 256][usize::from(s.page) % 5],
        max_inflight_sends: 8,
        max_group_members: 4,
        // Rate limits off: the scenario is about routing, not pacing.
        user_messages_per_sec: 0,
        user_receipts_per_sec: 0,
        user_joins_per_sec: 0,
        tenant_messages_per_sec: 0,
        tenant_connections_per_sec: 0,
        ..Limits::default()
    };
    limits.validate().expect("harness limits");
    let dir = temp_dir();
    let store = SledStore::open_with(
        SledStoreConfig::new(dir.path().join("store"))
            .cache_capacity_bytes(4 << 20)
            .flush_every_ms(None),
    )
    .expect("open store");
    for (t, _) in TENANTS.iter().enumerate() {
        store
            .put_tenant(&TenantRecord {
                id: tid(t),
                secret: secret(t),
            })
            .unwrap();
        for (g, name) in GROUPS.iter().take(REAL_GROUPS).enumerate() {
            let meta = GroupMeta {
                open: g < 2,
                max_members: 3,
            };
            store.create_group(&tid(t), &gid(name), meta).unwrap();
        }
    }
    let store: Arc<dyn Store> = Arc::new(store);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (hub, committer) = Hub::new(store, limits);
        let stop = Arc::new(tokio::sync::Notify::new());
        let committer = tokio::spawn(committer.run(stop.clone()));
        let mut w = World {
            hub,
            devices: Vec::new(),
            next_request: 1,
            sends: 0,
            accepted: HashSet::new(),
            acked: HashMap::new(),
            acked_new: HashSet::new(),
        };
        for op in s.ops.iter().take(MAX_OPS) {
            count(0);
            w.apply(*op).await;
        }
        w.settle().await;
        // Commit whatever disconnected sessions left queued, then check the end state.
        stop.notify_one();
        committer.await.expect("committer");
        w.finish();
    });
}

fn temp_dir() -> tempfile::TempDir {
    // Memory-backed when the machine has it: the store fsyncs on every commit.
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new().prefix("sb-fuzz-").tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("temp dir")
}

impl World {
    fn device(&mut self, slot: u8) -> Option<usize> {
        if self.devices.is_empty() {
            return None;
        }
        Some(usize::from(slot) % self.devices.len())
    }

    fn store(&self) -> &Arc<dyn Store> {
        self.hub.store()
    }

    fn is_member(&self, t: usize, user: &str, group: &str) -> bool {
        let Ok(g) = GroupId::new(group) else {
            return false;
        };
        self.store()
            .is_member(&tid(t), &g, &UserId::new(user).unwrap())
            .unwrap()
    }

    fn head(&self, t: usize, group: &str) -> u64 {
        self.hub.group(&tid(t), &gid(group)).unwrap().head()
    }

    async fn apply(&mut self, op: Op) {
        match op {
            Op::Connect {
                tenant,
                user,
                background,
            } => {
                if self.devices.len() < SLOTS {
                    self.devices.push(Device {
                        tenant: usize::from(tenant) % TENANTS.len(),
                        user: usize::from(user) % USERS.len(),
                        background,
                        live: None,
                        cursors: BTreeMap::new(),
                    });
                    let d = self.devices.len() - 1;
                    self.connect(d);
                }
            }
            Op::Reconnect { slot } => {
                if let Some(d) = self.device(slot) {
                    self.disconnect(d);
                    self.connect(d);
                }
            }
            Op::Disconnect { slot } => {
                if let Some(d) = self.device(slot) {
                    self.disconnect(d);
                }
            }
            Op::Join { slot, group } => self.membership(slot, group, true),
            Op::Leave { slot, group } => self.membership(slot, group, false),
            Op::Send {
                slot,
                group,
                msg,
                len,
            } => self.send(slot, group, msg, len).await,
            Op::Settle => self.settle().await,
            Op::Pump { slot } => {
                if let Some(d) = self.device(slot) {
                    self.pump(d);
                }
            }
            Op::Fetch {
                slot,
                group,
                after,
                limit,
            } => self.fetch(slot, group, after, limit),
            Op::AckDelivery { slot, group, seq } => self.ack_delivery(slot, group, seq),
            Op::Presence { slot, background } => {
                if let Some(d) = self.device(slot) {
                    if let Some(live) = &self.devices[d].live {
                        let state = if background {
                            PresenceState::Background
                        } else {
                            PresenceState::Foreground
                        };
                        // Only the per-user presence limit may refuse (the state is kept).
                        if let Err(e) = self.hub.set_presence(live.session.session(), state) {
                            assert_eq!(e.code, ErrorCode::RateLimited, "presence: {e:?}");
                        }
                    }
                }
            }
            Op::AddMember {
                tenant,
                user,
                group,
            } => self.admin_membership(tenant, user, group, true),
            Op::RemoveMember {
                tenant,
                user,
                group,
            } => self.admin_membership(tenant, user, group, false),
            Op::ForeignHello { tenant, user } => {
                let t = usize::from(tenant) % TENANTS.len();
                let claims = Claims {
                    tenant: tid(t),
                    user: UserId::new(USERS[usize::from(user) % USERS.len()]).unwrap(),
                    exp: u64::MAX,
                    nbf: 0,
                };
                let forged = token::mint(&claims, &secret(1 - t));
                let e = self
                    .hub
                    .authenticate(&forged)
                    .expect_err("a token signed with another tenant's secret was accepted");
                assert_eq!(e.code, ErrorCode::InvalidToken, "{e}");
            }
        }
    }

    fn connect(&mut self, d: usize) {
        let dev = &self.devices[d];
        let (t, user) = (dev.tenant, USERS[dev.user]);
        let claims = Claims {
            tenant: tid(t),
            user: UserId::new(user).unwrap(),
            exp: u64::MAX,
            nbf: 0,
        };
        let token = token::mint(&claims, &secret(t));
        let claims = self.hub.authenticate(&token).expect("own token");
        let hello = Hello {
            token,
            presence: if dev.background {
                PresenceState::Background
            } else {
                PresenceState::Foreground
            },
            cursors: dev
                .cursors
                .iter()
                .map(|(g, &seq)| GroupCursor {
                    group: g.clone(),
                    seq,
                })
                .collect(),
            client: "routing-fuzz".into(),
        };
        let (session, welcome) = LocalSession::open(&self.hub, claims, &hello).expect("hello");
        let ServerFrame::Welcome {
            tenant,
            user: wuser,
            groups,
            resume,
            ..
        } = welcome
        else {
            panic!("open_session answered {welcome:?}");
        };
        assert_eq!((tenant.as_str(), wuser.as_str()), (TENANTS[t], user));
        let mut last = HashMap::new();
        for g in &groups {
            assert!(self.is_member(t, user, &g.group), "welcome lists {g:?}");
            assert_eq!(g.seq, self.head(t, &g.group), "welcome head of {}", g.group);
        }
        for r in &resume {
            let head = self.head(t, &r.group);
            assert!(r.seq <= head, "resume {r:?} past the head {head}");
            if let Some(&mine) = self.devices[d].cursors.get(&r.group) {
                assert_eq!(r.seq, mine.min(head), "resume ignores the hello cursor");
            }
            last.insert(r.group.clone(), r.seq);
        }
        assert_eq!(groups.len(), resume.len());
        self.devices[d].live = Some(Live {
            session,
            last,
            pending: HashMap::new(),
        });
    }

    /// Closes the device's session. Sends in flight stay accepted (the client does not know
    /// whether they landed, as after a lost connection).
    fn disconnect(&mut self, d: usize) {
        if let Some(mut live) = self.devices[d].live.take() {
            // Acks already queued are read (the connection would have written them).
            let frames = live.session.responses();
            let (t, user) = (self.devices[d].tenant, USERS[self.devices[d].user]);
            for f in frames {
                self.on_response(t, user, &mut live.pending, &f);
            }
            live.session.close(&self.hub);
        }
    }

    fn sessions_of(&mut self, t: usize, user: usize) -> impl Iterator<Item = &mut Live> {
        self.devices
            .iter_mut()
            .filter(move |d| d.tenant == t && d.user == user)
            .filter_map(|d| d.live.as_mut())
    }

    /// A new member's sessions start at the head the hub joined them at.
    fn subscribed(&mut self, t: usize, user: usize, group: &str, head: u64) {
        for live in self.sessions_of(t, user) {
            live.last.insert(group.to_string(), head);
        }
    }

    fn unsubscribed(&mut self, t: usize, user: usize, group: &str) {
        for live in self.sessions_of(t, user) {
            live.last.remove(group);
        }
    }

    fn membership(&mut self, slot: u8, group: u8, join: bool) {
        let Some(d) = self.device(slot) else { return };
        let (t, u) = (self.devices[d].tenant, self.devices[d].user);
        let Some(live) = &self.devices[d].live else {
            return;
        };
        let session = live.session.session().clone();
        let group = GROUPS[usize::from(group) % GROUPS.len()];
        let was_member = self.is_member(t, USERS[u], group);
        if join {
            match self.hub.join(&session, group) {
                Ok(head) => {
                    assert_eq!(head, self.head(t, group));
                    assert!(self.is_member(t, USERS[u], group));
                    if !was_member {
                        self.subscribed(t, u, group, head);
                    }
                }
                Err(e) => {
                    expect_refusal(&e, &[ErrorCode::JoinRefused, ErrorCode::GroupFull]);
                    assert_eq!(self.is_member(t, USERS[u], group), was_member);
                    if e.code == ErrorCode::JoinRefused {
                        assert!(!was_member && group == "g2", "{e}");
                    }
                }
            }
        } else {
            match self.hub.leave(&session, group) {
                Ok(()) => {
                    assert!(was_member, "left a group it was not in");
                    assert!(!self.is_member(t, USERS[u], group));
                    self.unsubscribed(t, u, group);
                }
                Err(e) => {
                    expect_refusal(&e, &[ErrorCode::NotMember]);
                    assert!(!was_member || e.code != ErrorCode::NotMember);
                }
            }
        }
    }

    fn admin_membership(&mut self, tenant: u8, user: u8, group: u8, add: bool) {
        let t = usize::from(tenant) % TENANTS.len();
        let u = usize::from(user) % USERS.len();
        let group = GROUPS[usize::from(group) % REAL_GROUPS];
        let uid = UserId::new(USERS[u]).unwrap();
        let was_member = self.is_member(t, USERS[u], group);
        if add {
            match self.hub.add_member(&tid(t), &gid(group), &uid) {
                Ok(added) => {
                    assert_eq!(added, !was_member);
                    if added {
                        let head = self.head(t, group);
                        self.subscribed(t, u, group, head);
                    }
                }
                Err(e) => expect_refusal(&e, &[ErrorCode::GroupFull]),
            }
        } else {
            let removed = self
                .hub
                .remove_member(&tid(t), &gid(group), &uid)
                .expect("remove_member");
            assert_eq!(removed, was_member);
            if removed {
                self.unsubscribed(t, u, group);
            }
        }
    }

    async fn send(&mut self, slot: u8, group: u8, msg: u8, len: u8) {
        let Some(d) = self.device(slot) else { return };
        let (t, u) = (self.devices[d].tenant, self.devices[d].user);
        if self.devices[d].live.is_none() {
            return;
        }
        let group = GROUPS[usize::from(group) % GROUPS.len()].to_string();
        let cmid = format!("m{}", msg % 6);
        self.sends += 1;
        let mut body = format!("{}{}", body_tag(t, USERS[u], &group, &cmid), self.sends);
        body.extend(std::iter::repeat_n('.', usize::from(len)));
        let request_id = self.next_request;
        self.next_request += 1;
        let req = || SendRequest {
            request_id,
            group: group.clone(),
            client_msg_id: cmid.clone(),
            body: Bytes::from(body.clone()),
        };
        let mut result = {
            let live = self.devices[d].live.as_ref().unwrap();
            live.session.send(&self.hub, req()).await
        };
        if result.is_none() {
            // At the in-flight limit: wait for acks as a connection would, then send.
            self.settle().await;
            let live = self.devices[d].live.as_ref().unwrap();
            result = live.session.send(&self.hub, req()).await;
        }
        let result = result.expect("in-flight slots after a settle");
        let member = self.is_member(t, USERS[u], &group);
        match result {
            Ok(()) => {
                // A non-member may only resend a message it stored while a member: that is
                // acked again as a duplicate (one "new" ack per message is checked below).
                let resend =
                    self.accepted
                        .contains(&(t, group.clone(), USERS[u].to_string(), cmid.clone()));
                assert!(
                    member || resend,
                    "accepted a send to {group} from a non-member that is not a resend"
                );
                self.accepted
                    .insert((t, group.clone(), USERS[u].to_string(), cmid.clone()));
                let live = self.devices[d].live.as_mut().unwrap();
                live.pending.insert(request_id, Pending { group, cmid });
            }
            Err(e) => {
                expect_refusal(&e, &[]);
                if member {
                    panic!("refused a member's send to {group}: {e}");
                }
            }
        }
    }

    /// Waits for the answer to every send in flight of every open session.
    async fn settle(&mut self) {
        for d in 0..self.devices.len() {
            let (t, user) = (self.devices[d].tenant, USERS[self.devices[d].user]);
            let Some(live) = self.devices[d].live.as_mut() else {
                continue;
            };
            let mut pending = std::mem::take(&mut live.pending);
            while !pending.is_empty() {
                let live = self.devices[d].live.as_mut().unwrap();
                let frame = tokio::time::timeout(ACK_TIMEOUT, live.session.next_response())
                    .await
                    .unwrap_or_else(|_| panic!("no answer to {pending:?} in {ACK_TIMEOUT:?}"))
                    .expect("response queue open");
                self.on_response(t, user, &mut pending, &frame);
            }
        }
    }

    /// Checks one committer response (an ack) against the log and what was acked before.
    fn on_response(
        &mut self,
        t: usize,
        user: &str,
        pending: &mut HashMap<u64, Pending>,
        frame: &[u8],
    ) {
        let decoded = decode_server(&frame[4..], &DecodeLimits::default()).expect("response");
        let ServerFrame::Ack {
            request_id,
            group,
            client_msg_id,
            seq,
            duplicate,
        } = decoded
        else {
            panic!("committer answered {decoded:?}");
        };
        let p = pending
            .remove(&request_id)
            .unwrap_or_else(|| panic!("ack for unknown request {request_id}"));
        assert_eq!((&p.group, &p.cmid), (&group, &client_msg_id));
        assert!(
            seq >= 1 && seq <= self.head(t, &group),
            "ack of seq {seq} above the head"
        );
        let stored = self
            .store()
            .message(&tid(t), &gid(&group), seq)
            .unwrap()
            .unwrap_or_else(|| panic!("ack of {group}#{seq}, which is not in the log"));
        assert_eq!(
            (stored.sender.as_str(), stored.client_msg_id.as_str()),
            (user, client_msg_id.as_str()),
            "ack names another message"
        );
        count(1);
        let key = (t, group, user.to_string(), client_msg_id);
        // Acks of different sessions are read in no particular order, so "new" may be read
        // after "duplicate"; there is just one "new" per message.
        if !duplicate {
            assert!(
                self.acked_new.insert(key.clone()),
                "{key:?} acked as new twice"
            );
        }
        match self.acked.get(&key) {
            Some(&first) => assert_eq!(seq, first, "{key:?} acked with two sequence numbers"),
            None => {
                self.acked.insert(key, seq);
            }
        }
    }

    /// Runs the device's push writer until idle and checks every frame it writes.
    fn pump(&mut self, d: usize) {
        let (t, u) = (self.devices[d].tenant, self.devices[d].user);
        let Some(live) = self.devices[d].live.as_mut() else {
            return;
        };
        let frames = live.session.push_stream().expect("push writer");
        for f in frames {
            let frame = decode_server(&f[4..], &DecodeLimits::default()).expect("push frame");
            let ServerFrame::Deliver(m) = frame else {
                continue; // flags, presence and receipt notices
            };
            assert!(
                self.is_member(t, USERS[u], &m.group),
                "delivered {}#{} to a non-member",
                m.group,
                m.seq
            );
            self.check_message(t, &m);
            let live = self.devices[d].live.as_mut().unwrap();
            let last = live.last.get(&m.group).copied().unwrap_or_else(|| {
                panic!("delivered {}#{} of a group not subscribed", m.group, m.seq)
            });
            assert_eq!(
                m.seq,
                last + 1,
                "{}: after #{last} the session got #{}",
                m.group,
                m.seq
            );
            live.last.insert(m.group.clone(), m.seq);
            count(2);
            let c = self.devices[d].cursors.entry(m.group.clone()).or_insert(0);
            *c = (*c).max(m.seq);
        }
    }

    /// A delivered or fetched message is its own tenant's, durable, and as logged.
    fn check_message(&self, t: usize, m: &Message) {
        let tag = body_tag(t, &m.sender, &m.group, &m.client_msg_id);
        assert!(
            m.body.starts_with(tag.as_bytes()),
            "tenant {} got a message of another tenant or sender: {:?}",
            TENANTS[t],
            String::from_utf8_lossy(&m.body)
        );
        assert!(m.seq <= self.head(t, &m.group), "message above the head");
        let stored = self
            .store()
            .message(&tid(t), &gid(&m.group), m.seq)
            .unwrap()
            .expect("message in the log");
        assert_eq!(
            (
                stored.sender.as_str(),
                stored.client_msg_id.as_str(),
                &stored.body
            ),
            (m.sender.as_str(), m.client_msg_id.as_str(), &m.body)
        );
    }

    fn fetch(&mut self, slot: u8, group: u8, after: u8, limit: u8) {
        let Some(d) = self.device(slot) else { return };
        let (t, u) = (self.devices[d].tenant, self.devices[d].user);
        let Some(live) = &self.devices[d].live else {
            return;
        };
        let group = GROUPS[usize::from(group) % GROUPS.len()];
        let after = u64::from(after % 16);
        let limit = u32::from(limit % 8);
        match self.hub.fetch(live.session.session(), group, after, limit) {
            Ok((msgs, head)) => {
                assert!(self.is_member(t, USERS[u], group), "fetch by a non-member");
                assert_eq!(head, self.head(t, group));
                assert!(msgs.len() <= limit as usize);
                if after < head && limit > 0 {
                    assert!(
                        !msgs.is_empty(),
                        "fetch after {after} of {head} returned nothing"
                    );
                }
                for (i, m) in msgs.iter().enumerate() {
                    assert_eq!(m.seq, after + 1 + i as u64, "fetch page out of order");
                    assert_eq!(m.group, group);
                    self.check_message(t, m);
                }
            }
            Err(e) => {
                expect_refusal(&e, &[ErrorCode::NotMember]);
                assert!(!self.is_member(t, USERS[u], group) || e.code != ErrorCode::NotMember);
            }
        }
    }

    fn ack_delivery(&mut self, slot: u8, group: u8, seq: u8) {
        let Some(d) = self.device(slot) else { return };
        let (t, u) = (self.devices[d].tenant, self.devices[d].user);
        let Some(live) = &self.devices[d].live else {
            return;
        };
        let group = GROUPS[usize::from(group) % GROUPS.len()];
        let seq = u64::from(seq % 16);
        match self.hub.ack_delivery(live.session.session(), group, seq) {
            Ok(()) => {
                let head = self.head(t, group);
                let cursor = self
                    .store()
                    .cursor(&tid(t), &gid(group), &UserId::new(USERS[u]).unwrap())
                    .unwrap();
                assert!(cursor >= seq.min(head) && cursor <= head, "cursor {cursor}");
            }
            Err(e) => expect_refusal(&e, &[ErrorCode::NotMember]),
        }
    }

    /// Everything committed: the final pump and the log checks.
    fn finish(&mut self) {
        for d in 0..self.devices.len() {
            let (t, user) = (self.devices[d].tenant, USERS[self.devices[d].user]);
            let Some(live) = self.devices[d].live.as_mut() else {
                continue;
            };
            let frames = live.session.responses();
            let mut pending = std::mem::take(&mut live.pending);
            for f in frames {
                self.on_response(t, user, &mut pending, &f);
            }
            assert!(pending.is_empty(), "sends never answered: {pending:?}");
            self.pump(d);
            let live = self.devices[d].live.as_ref().unwrap();
            for (group, &last) in &live.last {
                assert_eq!(
                    last,
                    self.head(t, group),
                    "{} {user}: {group} delivered up to {last} only",
                    TENANTS[t]
                );
            }
        }
        for t in 0..TENANTS.len() {
            for group in GROUPS.iter().take(REAL_GROUPS) {
                let head = self.head(t, group);
                assert_eq!(head, self.store().head(&tid(t), &gid(group)).unwrap());
                let log = self
                    .store()
                    .read_after(&tid(t), &gid(group), 0, 100_000)
                    .unwrap();
                assert_eq!(log.len() as u64, head, "{group}: log length vs head");
                let mut seen = HashSet::new();
                for (i, m) in log.iter().enumerate() {
                    assert_eq!(m.seq, i as u64 + 1, "{group}: log has a gap");
                    let key = (
                        t,
                        group.to_string(),
                        m.sender.to_string(),
                        m.client_msg_id.clone(),
                    );
                    let tag = body_tag(t, m.sender.as_str(), group, &m.client_msg_id);
                    assert!(m.body.starts_with(tag.as_bytes()), "{key:?}: foreign body");
                    assert!(
                        self.accepted.contains(&key),
                        "{key:?} stored, never accepted"
                    );
                    if let Some(&s) = self.acked.get(&key) {
                        assert_eq!(s, m.seq, "{key:?} acked with another seq");
                    }
                    assert!(seen.insert(key.clone()), "{key:?} stored twice");
                }
            }
        }
        for (t, group, user, cmid) in &self.accepted {
            assert!(
                self.store()
                    .find_sent(&tid(*t), &gid(group), &UserId::new(user).unwrap(), cmid)
                    .unwrap()
                    .is_some(),
                "accepted {group}/{user}/{cmid} is not in the log"
            );
        }
        for d in self.devices.drain(..) {
            if let Some(live) = d.live {
                live.session.close(&self.hub);
            }
        }
    }
}

/// A refusal must be one a client can be given for that request; `also` lists the codes
/// specific to it besides the generic ones (bad id, missing group, not a member).
fn expect_refusal(e: &RequestError, also: &[ErrorCode]) {
    let generic = [
        ErrorCode::InvalidArgument,
        ErrorCode::GroupNotFound,
        ErrorCode::NotMember,
    ];
    assert!(
        generic.contains(&e.code) || also.contains(&e.code),
        "unexpected refusal {:?}: {}",
        e.code,
        e.message
    );
}

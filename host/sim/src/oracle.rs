//! The oracle's vocabulary and its end-of-run checks: each violation names the
//! [`Invariant`] it breaks (ARCHITECTURE.md, "Invariants"); the run settles (no new sends or
//! faults, everyone reconnects, comes to the foreground and reads) and then every member
//! must have every message, every ack must name the logged message, and every held nudge
//! must have been told.

use switchboard_core::{PresenceState, UserId};
use switchboard_router::{load, NUDGE_INTERVAL_MS};
use switchboard_store::Store;

use crate::client::Reader;
use crate::config::FOREGROUND_GATE_MS;
use crate::invariant::Invariant;
use crate::node::NOTICES;
use crate::Sim;

impl Sim {
    pub(crate) fn violation(&mut self, inv: Invariant, what: String) {
        if self.report.violations.len() < 20 {
            let at = format!(
                "[{}] step {} (t={} ms): {what}",
                inv.name(),
                self.step,
                self.now_ms
            );
            self.report.violations.push(at);
        }
    }

    /// The measured load level after a sample of `pressure` moved from `before` as
    /// ARCHITECTURE.md says: up at once to the pressure, down one step only on the
    /// `CALM_SAMPLES`-th sample in a row below the level, else where it was.
    pub(crate) fn check_load_sample(&mut self, before: u8, pressure: u8) {
        let pressure = pressure.min(load::MAX_LEVEL);
        let after = self.load.measured();
        let expect = if pressure > before {
            self.calm_samples = 0;
            pressure
        } else if pressure == before {
            self.calm_samples = 0;
            before
        } else {
            self.calm_samples += 1;
            if self.calm_samples >= load::CALM_SAMPLES {
                self.calm_samples = 0;
                before - 1
            } else {
                before
            }
        };
        if after != expect {
            let what = format!(
                "a sample of pressure {pressure} moved the level {before} → {after}, \
                 expected {expect} ({} calm samples before it)",
                self.calm_samples
            );
            self.calm_samples = 0;
            self.violation(Invariant::LoadLevel, what);
        }
    }

    /// Lets everything in flight land, in two rounds. First the traffic stops: every client
    /// reconnects, comes to the foreground and reads, and with nothing resent every device
    /// must have everything up to each group's head (a session whose queue overflowed is
    /// caught up by the node alone, not by a later message or resend). Then unacknowledged
    /// sends are resent until acked (or refused: the user left the group).
    pub(crate) fn settle(&mut self) {
        self.cfg.flush_failure_pct = 0;
        self.check_trailing_nudges();
        self.load.calm_down();
        self.calm_samples = 0;
        for c in 0..self.clients.len() {
            self.clients[c].reader = Reader::Fast;
            if self.clients[c].session.is_none() {
                self.connect(c);
            }
            if let Some(id) = self.clients[c].session {
                if let Some(s) = self.sessions.get_mut(&id) {
                    if s.presence.get() == PresenceState::Background {
                        s.presence.set(PresenceState::Foreground);
                        s.catch_up = true;
                    }
                }
            }
        }
        // Sends still waiting for the committer stay there: a publish now would fill a
        // session's gap on its own and hide a missed catch-up.
        self.drain(false);
        self.check_caught_up("once the traffic stopped");
        for c in 0..self.clients.len() {
            for (g, id, body) in self.clients[c].unacked.clone() {
                self.submit(c, g, id, body);
            }
        }
        self.drain(true);
    }

    /// Publishes (flushing what waits for the committer when `commit`), writes and reads
    /// until nothing moves.
    fn drain(&mut self, commit: bool) {
        for _ in 0..10_000 {
            let before = (self.report.delivered, self.report.acked);
            self.now_ms += FOREGROUND_GATE_MS;
            if commit {
                self.flush();
            }
            while !self.phase2.is_empty() {
                self.run_phase2();
            }
            let ids: Vec<u64> = self.sessions.keys().copied().collect();
            let mut pending = false;
            for id in ids {
                for s in 0..4 {
                    self.write(id, s);
                }
                let s = &self.sessions[&id];
                pending |= s.catch_up || s.queues.iter().any(|q| !q.is_empty());
            }
            for c in 0..self.clients.len() {
                while self.clients[c].inbox.iter().any(|q| !q.is_empty()) {
                    for s in 0..4 {
                        if let Some((gen, f)) = self.clients[c].inbox[s].pop_front() {
                            self.take_frame(c, gen, &f);
                        }
                    }
                }
            }
            let moved = before != (self.report.delivered, self.report.acked);
            if !moved && !pending && (!commit || self.commits.is_empty()) {
                return;
            }
        }
        self.violation(Invariant::InOrderNoGap, "the run did not settle".into());
    }

    /// Nudges have a trailing edge: once the interval has passed with no new traffic, every
    /// session whose planner was asked to nudge about a message it has not been sent has been
    /// told the newest such message.
    fn check_trailing_nudges(&mut self) {
        self.now_ms += NUDGE_INTERVAL_MS;
        let ids: Vec<u64> = self.sessions.keys().copied().collect();
        for &id in &ids {
            // The notices stream may be blocked by a client that does not read: drain it.
            let c = self.sessions[&id].client;
            self.clients[c].inbox[NOTICES].clear();
            while !self.sessions[&id].queues[NOTICES].is_empty() {
                self.write(id, NOTICES);
                self.clients[c].inbox[NOTICES].clear();
            }
        }
        // No traffic for an interval: every held nudge is due.
        self.now_ms += NUDGE_INTERVAL_MS;
        for &id in &ids {
            self.write(id, NOTICES);
        }
        let mut problems = Vec::new();
        for id in ids {
            let s = &self.sessions[&id];
            for (&g, &asked) in &s.nudge_asked {
                let gid = &self.groups[g].id;
                let sent = s.planner.sent(gid).unwrap_or(u64::MAX);
                let told = s.last_nudge.get(&g).map_or(0, |&(_, seq)| seq);
                if asked > sent && told < asked {
                    problems.push(format!(
                        "session {id}: nudged up to {told} of {gid}, asked {asked}, sent {sent}"
                    ));
                }
            }
        }
        for p in problems {
            self.violation(Invariant::TrailingNudge, p);
        }
    }

    /// Every device has every message of each of its user's groups (from where its
    /// subscription started), or says why not.
    fn check_caught_up(&mut self, when: &str) {
        let mut problems = Vec::new();
        for (c, client) in self.clients.iter().enumerate() {
            let session = client.session.and_then(|id| self.sessions.get(&id));
            for &g in &self.users[client.user].groups {
                let head = self.groups[g].fanout.head();
                // A device owes nothing before its subscription's start (a new member's
                // Resume may not have come yet: nothing was sent since the join).
                let start = session
                    .and_then(|s| s.spans.get(&g))
                    .and_then(|spans| spans.last())
                    .map_or(0, |span| span.after);
                let got = client.tracker.cursor(g).unwrap_or(0).max(start);
                if client.tracker.unannounced(g) {
                    let what =
                        format!("client {c}: g{g} deliveries held, never announced ({when})");
                    problems.push((Invariant::ResumeFirst, what));
                } else if got != head {
                    let what = format!("client {c}: group g{g} at {got}, head {head} ({when})");
                    problems.push((Invariant::InOrderNoGap, what));
                }
            }
        }
        for (inv, p) in problems {
            self.violation(inv, p);
        }
    }

    /// Every device has every message of each of its user's groups; every acknowledgement
    /// names the logged message; nothing is left unacknowledged.
    pub(crate) fn check_end_state(&mut self) {
        self.check_caught_up("settled");
        let mut problems = Vec::new();
        for (c, client) in self.clients.iter().enumerate() {
            if !client.unacked.is_empty() {
                problems.push((
                    Invariant::AckAfterDurable,
                    format!("client {c}: {} sends never acked", client.unacked.len()),
                ));
            }
        }
        for ((g, sender, id), seq) in &self.acks {
            let user = UserId::new(sender.as_str()).expect("valid id");
            match self
                .store
                .find_sent(&self.tenant, &self.groups[*g].id, &user, id)
            {
                Ok(Some(s)) if s == *seq => {}
                other => problems.push((
                    Invariant::AckAfterDurable,
                    format!("ack {g}/{sender}/{id}={seq}, log says {other:?}"),
                )),
            }
        }
        for (g, group) in self.groups.iter().enumerate() {
            let visible = group.fanout.head();
            match self.store.head(&self.tenant, &group.id) {
                // Above the head only messages whose resend was refused (see `orphans`).
                Ok(h) if (visible + 1..=h).all(|seq| self.orphans.contains(&(g, seq))) => {}
                other => problems.push((
                    Invariant::VisibleAfterDurable,
                    format!(
                        "g{g}: visible head {} but log {other:?}",
                        group.fanout.head()
                    ),
                )),
            }
        }
        for (inv, p) in problems {
            self.violation(inv, p);
        }
    }
}

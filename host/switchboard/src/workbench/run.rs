//! `switchboard plugin run FILE --event events.json`: calls a plugin's hooks with sample
//! events, as a node would (same budgets, same fallback, instances reused between calls and
//! discarded after a failure), and reports each call.
//!
//! The event file (documented in `docs/plugins.md`, "The workbench"):
//!
//! ```json
//! {
//!   "tenant": "acme",                       // optional; the plugin's tenant name
//!   "config": { "vip_users": "ceo" },       // optional; what config-get answers
//!   "now_ms": 1767225600000,                // optional; what now-ms answers (default: the clock)
//!   "events": [
//!     { "hook": "on-message", "sender": "ceo", "body": "hello",
//!       "expect": { "accept": { "lane": "high", "notify_offline": true } } },
//!     { "hook": "on-receipt", "kind": "read", "seq": 7 },
//!     { "hook": "evaluate-flags", "user": "bob", "group": "general" },
//!     { "hook": "on-load", "level": 2 }
//!   ]
//! }
//! ```
//!
//! Every field but `hook` has a default (see [`MessageEvent`] and its siblings). `expect`,
//! when present, is compared with the verdict as printed by `--json`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use switchboard_policy::{
    Decision, Flag, FlagContext, Lane, LoadInfo, MessageInfo, ReceiptAction, ReceiptInfo,
    ReceiptKind, Shedding, Source, Trial, TrialCall, Verdict, BODY_PREFIX_BYTES,
};

use super::check::{micros, problem_code};
use super::{engine, read, Failure};

/// The events a run's file holds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventFile {
    #[serde(default = "default_tenant")]
    tenant: String,
    #[serde(default)]
    config: BTreeMap<String, String>,
    now_ms: Option<u64>,
    events: Vec<Entry>,
}

fn default_tenant() -> String {
    "workbench".into()
}

#[derive(Debug, Deserialize)]
struct Entry {
    /// A label for the output.
    name: Option<String>,
    /// What `now-ms` answers for this event (else the file's, else the clock).
    now_ms: Option<u64>,
    /// The verdict expected, in the output's JSON form.
    expect: Option<Value>,
    #[serde(flatten)]
    event: Event,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "hook", rename_all = "kebab-case")]
enum Event {
    OnMessage(MessageEvent),
    OnReceipt(ReceiptEvent),
    EvaluateFlags(FlagsEvent),
    OnLoad(LoadEvent),
}

/// `on-message`. The plugin sees the first 64 bytes of the body.
#[derive(Debug, Deserialize)]
struct MessageEvent {
    #[serde(default = "default_group")]
    group: String,
    #[serde(default = "default_user")]
    sender: String,
    /// The body as text; or `body_hex` for bytes.
    #[serde(default)]
    body: String,
    body_hex: Option<String>,
    /// The body's size, if larger than the text given (a plugin sees only a prefix).
    body_size: Option<u32>,
    #[serde(default = "default_group_size")]
    group_size: u32,
    #[serde(default = "one")]
    connected_members: u32,
}

#[derive(Debug, Deserialize)]
struct ReceiptEvent {
    #[serde(default = "default_group")]
    group: String,
    #[serde(default = "one_u64")]
    seq: u64,
    #[serde(default = "default_user")]
    reader: String,
    #[serde(default = "default_kind")]
    kind: KindName,
    #[serde(default = "default_group_size")]
    group_size: u32,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum KindName {
    Delivered,
    Read,
}

#[derive(Debug, Deserialize)]
struct FlagsEvent {
    #[serde(default = "default_user")]
    user: String,
    group: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LoadEvent {
    #[serde(default)]
    level: u8,
    #[serde(default)]
    tenant_message_rate: u32,
    #[serde(default = "one")]
    tenant_connections: u32,
}

fn default_group() -> String {
    "general".into()
}
fn default_user() -> String {
    "alice".into()
}
fn default_group_size() -> u32 {
    3
}
fn one() -> u32 {
    1
}
fn one_u64() -> u64 {
    1
}
fn default_kind() -> KindName {
    KindName::Read
}

/// One event's outcome, as `--json` prints it.
#[derive(Debug, Serialize)]
struct Outcome {
    index: usize,
    name: Option<String>,
    hook: &'static str,
    /// The input in words (human output only).
    #[serde(skip)]
    input: String,
    verdict: Value,
    /// `plugin`, or `fallback` when the built-in default replaced a failed call.
    source: &'static str,
    fallback_reason: Option<String>,
    fuel_used: Option<u64>,
    time_us: u64,
    fresh_instance: bool,
    logs: Vec<LogOut>,
    expect: Option<Value>,
    /// Whether the verdict is what `expect` says (absent without `expect`).
    matches: Option<bool>,
}

#[derive(Debug, Serialize)]
struct LogOut {
    level: &'static str,
    message: String,
}

#[derive(Debug, Serialize)]
struct Report {
    file: String,
    version: String,
    tenant: String,
    events: Vec<Outcome>,
    counters: BTreeMap<String, u64>,
    fuel_per_call: u64,
    instances_made: u64,
    memory_peak_bytes: u64,
    log_lines_dropped: u64,
    counter_updates_dropped: u64,
    fell_back: usize,
    mismatched: usize,
}

pub(super) fn run(
    file: &Path,
    events: &Path,
    config: Vec<(String, String)>,
    node_config: Option<&Path>,
    json: bool,
) -> Result<(), Failure> {
    let text = read(events)?;
    let mut spec: EventFile = serde_json::from_slice(&text)
        .map_err(|e| Failure::Local(format!("{}: {e}", events.display())))?;
    spec.config.extend(config);
    for (i, entry) in spec.events.iter().enumerate() {
        if let Event::OnMessage(MessageEvent {
            body_hex: Some(hex),
            ..
        }) = &entry.event
        {
            if decode_hex(hex).is_none() {
                return Err(Failure::Local(format!(
                    "{}: event {}: body_hex {hex:?} is not hex digits",
                    events.display(),
                    i + 1
                )));
            }
        }
    }
    let wasm = read(file)?;
    let engine = engine(node_config)?;
    // Only what `load` checks: `run` is for finding out why a plugin fails its self-test too.
    let plugin = engine.load(&wasm).map_err(|e| {
        let refusal = switchboard_policy::UploadRefusal::from(e);
        Failure::Refused {
            code: problem_code(&refusal),
            message: refusal.to_string(),
        }
    })?;
    let trial = Trial::new(&plugin, &spec.tenant, spec.config.clone());
    let clock = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let mut outcomes = Vec::with_capacity(spec.events.len());
    for (index, entry) in spec.events.into_iter().enumerate() {
        let now = entry.now_ms.or(spec.now_ms).unwrap_or(clock);
        let mut outcome = call(&trial, &entry.event, now);
        outcome.index = index + 1;
        outcome.name = entry.name;
        outcome.matches = entry.expect.as_ref().map(|e| *e == outcome.verdict);
        outcome.expect = entry.expect;
        outcomes.push(outcome);
    }
    let stats = trial.stats();
    let report = Report {
        file: file.display().to_string(),
        version: plugin.version().to_owned(),
        tenant: spec.tenant,
        fell_back: outcomes.iter().filter(|o| o.source == "fallback").count(),
        mismatched: outcomes.iter().filter(|o| o.matches == Some(false)).count(),
        events: outcomes,
        counters: trial.counters(),
        fuel_per_call: engine.limits().fuel_per_call,
        instances_made: stats.instantiations,
        memory_peak_bytes: stats.memory_peak_bytes,
        log_lines_dropped: stats.log_lines_dropped,
        counter_updates_dropped: stats.counter_updates_dropped,
    };
    if json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Failure::Local(format!("encoding the report: {e}")))?;
        println!("{text}");
    } else {
        println!("{}", human(&report));
    }
    match (report.fell_back, report.mismatched) {
        (0, 0) => Ok(()),
        (fell, mis) => Err(Failure::Events(format!(
            "{fell} event(s) fell back to the built-in default, {mis} did not match `expect`"
        ))),
    }
}

fn call(trial: &Trial, event: &Event, now: u64) -> Outcome {
    match event {
        Event::OnMessage(m) => {
            // `body_hex` was checked when the file was read.
            let body = match m.body_hex.as_deref().and_then(decode_hex) {
                Some(bytes) => bytes,
                None => m.body.as_bytes().to_vec(),
            };
            let size = m
                .body_size
                .unwrap_or(u32::try_from(body.len()).unwrap_or(u32::MAX));
            let info = MessageInfo {
                group: m.group.clone(),
                sender: m.sender.clone(),
                body_size: size,
                body_prefix: body.iter().copied().take(BODY_PREFIX_BYTES).collect(),
                group_size: m.group_size,
                connected_members: m.connected_members,
            };
            let input = format!(
                "from {} in {} ({} bytes: {:?})",
                m.sender,
                m.group,
                size,
                String::from_utf8_lossy(&info.body_prefix)
            );
            outcome(
                "on-message",
                input,
                trial.on_message(&info, now),
                verdict_json,
            )
        }
        Event::OnReceipt(r) => {
            let kind = match r.kind {
                KindName::Delivered => ReceiptKind::Delivered,
                KindName::Read => ReceiptKind::Read,
            };
            let info = ReceiptInfo {
                group: r.group.clone(),
                seq: r.seq,
                reader: r.reader.clone(),
                kind,
                group_size: r.group_size,
            };
            let input = format!(
                "{:?} by {} of seq {} in {}",
                r.kind, r.reader, r.seq, r.group
            )
            .to_lowercase();
            outcome(
                "on-receipt",
                input,
                trial.on_receipt(&info, now),
                receipt_json,
            )
        }
        Event::EvaluateFlags(f) => {
            let ctx = FlagContext {
                user: f.user.clone(),
                group: f.group.clone(),
            };
            let input = match &f.group {
                Some(g) => format!("for {} in {g}", f.user),
                None => format!("for {}", f.user),
            };
            outcome(
                "evaluate-flags",
                input,
                trial.evaluate_flags(&ctx, now),
                flags_json,
            )
        }
        Event::OnLoad(l) => {
            let info = LoadInfo {
                level: l.level,
                tenant_message_rate: l.tenant_message_rate,
                tenant_connections: l.tenant_connections,
            };
            outcome(
                "on-load",
                format!("level {}", l.level),
                trial.on_load(&info, now),
                shedding_json,
            )
        }
    }
}

fn outcome<R>(
    hook: &'static str,
    input: String,
    call: TrialCall<R>,
    to_json: fn(&R) -> Value,
) -> Outcome {
    let TrialCall {
        decision: Decision { value, source },
        fuel_used,
        elapsed,
        fresh_instance,
        logs,
    } = call;
    let (source, fallback_reason) = match source {
        Source::Plugin => ("plugin", None),
        Source::Fallback(reason) => ("fallback", Some(reason.to_string())),
    };
    Outcome {
        index: 0,
        name: None,
        hook,
        input,
        verdict: to_json(&value),
        source,
        fallback_reason,
        fuel_used,
        time_us: micros(elapsed),
        fresh_instance,
        logs: logs
            .into_iter()
            .map(|l| LogOut {
                level: l.level.as_str(),
                message: l.message,
            })
            .collect(),
        expect: None,
        matches: None,
    }
}

fn lane_name(lane: Lane) -> &'static str {
    match lane {
        Lane::High => "high",
        Lane::Normal => "normal",
        Lane::Low => "low",
    }
}

fn verdict_json(v: &Verdict) -> Value {
    match v {
        Verdict::Accept(d) => json!({
            "accept": { "lane": lane_name(d.lane), "notify_offline": d.notify_offline }
        }),
        Verdict::Reject(reason) => json!({ "reject": reason }),
    }
}

fn receipt_json(a: &ReceiptAction) -> Value {
    json!(match a {
        ReceiptAction::Forward => "forward",
        ReceiptAction::Aggregate => "aggregate",
        ReceiptAction::Drop => "drop",
    })
}

// `&Vec` because it is `to_json` for `evaluate-flags`, whose answer is a `Vec<Flag>`.
#[allow(clippy::ptr_arg)]
fn flags_json(flags: &Vec<Flag>) -> Value {
    Value::Array(
        flags
            .iter()
            .map(|f| json!({ "name": f.name, "enabled": f.enabled }))
            .collect(),
    )
}

fn shedding_json(s: &Shedding) -> Value {
    json!({
        "receipts": s.receipts,
        "presence": s.presence,
        "background_delivery": s.background_delivery,
    })
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn human(r: &Report) -> String {
    let mut out = format!(
        "{} (version {}) as tenant {}\n",
        r.file,
        r.version.get(..12).unwrap_or(&r.version),
        r.tenant
    );
    for o in &r.events {
        let label = o
            .name
            .as_deref()
            .map(|n| format!(" {n:?}"))
            .unwrap_or_default();
        out.push_str(&format!("#{} {}{label} {}\n", o.index, o.hook, o.input));
        let verdict = compact(&o.verdict);
        match &o.fallback_reason {
            None => out.push_str(&format!("   verdict  {verdict}\n")),
            Some(why) => out.push_str(&format!(
                "   verdict  {verdict} (FALLBACK, the built-in default: {why})\n"
            )),
        }
        let fuel = o
            .fuel_used
            .map(|f| format!("{f} of {}", r.fuel_per_call))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "   fuel     {fuel}   time {} µs{}\n",
            o.time_us,
            if o.fresh_instance {
                " (made an instance)"
            } else {
                ""
            }
        ));
        for l in &o.logs {
            out.push_str(&format!("   log      {}: {}\n", l.level, l.message));
        }
        if let (Some(expect), Some(false)) = (&o.expect, o.matches) {
            out.push_str(&format!("   EXPECTED {}\n", compact(expect)));
        }
    }
    out.push_str("counters:");
    if r.counters.is_empty() {
        out.push_str(" none\n");
    } else {
        out.push('\n');
        for (name, value) in &r.counters {
            out.push_str(&format!("   {name} = {value}\n"));
        }
    }
    out.push_str(&format!(
        "{} event(s): {} fell back, {} did not match `expect`; {} instance(s) made, memory peak {} bytes",
        r.events.len(),
        r.fell_back,
        r.mismatched,
        r.instances_made,
        r.memory_peak_bytes
    ));
    if r.log_lines_dropped > 0 || r.counter_updates_dropped > 0 {
        out.push_str(&format!(
            "; dropped {} log line(s), {} counter update(s)",
            r.log_lines_dropped, r.counter_updates_dropped
        ));
    }
    out
}

fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

//! `switchboard plugin check FILE`: the upload's checks, run locally. The checks are
//! `switchboard-policy`'s own ([`check_upload_size`], [`PolicyEngine::check_upload_and_self_test`]), the
//! functions the node's upload calls, so the answer and its message are the node's.
//!
//! [`PolicyEngine::check_upload_and_self_test`]: switchboard_policy::PolicyEngine::check_upload_and_self_test

use std::path::Path;

use serde::Serialize;
use switchboard_policy::{check_upload_size, Plugin, SelfTestReport, UploadRefusal};
use switchboard_store::TenantQuotas;

use super::{engine, read, Failure};

/// The problem code the node's API answers a refused upload with (`host/admin`'s
/// `ControlError` codes for these three refusals).
pub(super) fn problem_code(refusal: &UploadRefusal) -> &'static str {
    match refusal {
        r if r.is_too_large() => "plugin-too-large",
        UploadRefusal::SelfTest(_) => "plugin-self-test-failed",
        _ => "plugin-rejected",
    }
}

#[derive(Serialize)]
struct Report<'a> {
    file: String,
    version: &'a str,
    size: usize,
    /// The size limit applied: the tenant's quota or the node's limit, whichever is smaller.
    max_size: usize,
    imports: &'a [String],
    fuel_per_call: u64,
    deadline_us: u64,
    self_test: Vec<HookLine>,
}

#[derive(Serialize)]
struct HookLine {
    hook: &'static str,
    calls: u32,
    /// The slowest call's wall time (the first includes making the instance).
    time_us: u64,
    /// The most fuel one call used.
    fuel_used: u64,
}

pub(super) fn run(
    file: &Path,
    quota_bytes: Option<usize>,
    node_config: Option<&Path>,
    json: bool,
) -> Result<(), Failure> {
    let wasm = read(file)?;
    let engine = engine(node_config)?;
    let quota = quota_bytes.unwrap_or(TenantQuotas::default().max_plugin_bytes as usize);
    let refused = |r: UploadRefusal| Failure::Refused {
        code: problem_code(&r),
        message: r.to_string(),
    };
    check_upload_size(wasm.len(), quota, &engine).map_err(refused)?;
    let (plugin, report) = engine.check_upload_and_self_test(&wasm).map_err(refused)?;
    let max_size = quota.min(engine.limits().max_plugin_bytes);
    let out = report_of(file, &plugin, &report, max_size);
    if json {
        let text = serde_json::to_string_pretty(&out)
            .map_err(|e| Failure::Local(format!("encoding the report: {e}")))?;
        println!("{text}");
    } else {
        println!("{}", human(&out));
    }
    Ok(())
}

fn report_of<'a>(
    file: &Path,
    plugin: &'a Plugin,
    report: &SelfTestReport,
    max_size: usize,
) -> Report<'a> {
    Report {
        file: file.display().to_string(),
        version: plugin.version(),
        size: plugin.size(),
        max_size,
        imports: plugin.imports(),
        fuel_per_call: report.fuel_per_call,
        deadline_us: micros(report.deadline),
        self_test: report
            .hooks
            .iter()
            .map(|h| HookLine {
                hook: h.hook.wit_name(),
                calls: h.calls,
                time_us: micros(h.elapsed),
                fuel_used: h.fuel_used,
            })
            .collect(),
    }
}

pub(super) fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn human(r: &Report<'_>) -> String {
    let mut out = format!(
        "ok: {} passes every upload check\n  version  {}\n  size     {} bytes (at most {})\n  imports  {}\n  self-test (each call's budget: {} fuel, {} µs):\n",
        r.file,
        r.version,
        r.size,
        r.max_size,
        if r.imports.is_empty() {
            "none".to_owned()
        } else {
            r.imports.join(", ")
        },
        r.fuel_per_call,
        r.deadline_us,
    );
    for h in &r.self_test {
        out.push_str(&format!(
            "    {:<15} {} call{}, slowest {} µs, most fuel {}\n",
            h.hook,
            h.calls,
            if h.calls == 1 { "" } else { "s" },
            h.time_us,
            h.fuel_used
        ));
    }
    out.trim_end().to_owned()
}

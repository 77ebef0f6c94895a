//! Drill reports: per-fault metrics computed from the history (recovery time from the
//! injection instant to the first acknowledged write invoked after it, error rate
//! while the fault held, time from healing to convergence and to full redundancy), the
//! invariant verdicts,
//! and the Markdown, JSON and SVG renderings.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::check::Verdict;
use crate::check::convergence::NodeState;
use crate::history::{Event, FaultRecord, Phase};

#[derive(Debug, Clone, Serialize)]
pub struct FaultMetrics {
    #[serde(flatten)]
    pub fault: FaultRecord,
    /// Injection to the first acknowledged write invoked once the fault was in place
    /// (a write that began while drop rules were still being installed proves nothing).
    pub recovery_ms: Option<u64>,
    /// Operations invoked while the fault held, and how many of them failed.
    pub ops_during: u64,
    pub errors_during: u64,
    pub error_rate: f64,
    /// Healing to every node caught up with the leader.
    pub heal_to_converged_ms: Option<u64>,
    /// Healing to every node reporting an empty repair backlog (after converging).
    pub heal_to_redundant_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub count: usize,
    pub median_ms: Option<u64>,
    pub worst_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Totals {
    pub ops: u64,
    pub acked_writes: u64,
    pub reads_ok: u64,
    pub failures: u64,
    pub verify_reads: u64,
    /// Answers by status ("none" for no answer).
    pub by_status: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub passed: bool,
    pub seed: u64,
    pub replay: String,
    pub mode: String,
    pub nodes: Vec<u64>,
    pub duration_ms: u64,
    pub totals: Totals,
    pub faults: Vec<FaultMetrics>,
    /// Recovery time per fault kind.
    pub recovery: BTreeMap<String, Summary>,
    /// Healing to full redundancy per fault kind.
    pub redundancy: BTreeMap<String, Summary>,
    pub verdicts: Vec<Verdict>,
    pub final_states: Vec<NodeState>,
    pub notes: Vec<String>,
}

/// A failed operation: no answer or a 5xx. A 404 is an answer (the workload reads
/// digests it saw acknowledged, which a delete may have removed).
pub fn failed(e: &Event) -> bool {
    e.outcome.status.is_none_or(|s| s >= 500)
}

pub fn fault_metrics(events: &[Event], f: &FaultRecord) -> FaultMetrics {
    let recovery_ms = events
        .iter()
        .filter(|e| e.phase == Phase::Workload && e.acked_write() && e.invoke_ms >= f.in_place_ms)
        .map(|e| e.complete_ms - f.inject_ms)
        .min();
    let heal = f.heal_ms.unwrap_or(u64::MAX);
    let during: Vec<&Event> = events
        .iter()
        .filter(|e| e.phase == Phase::Workload && e.invoke_ms >= f.inject_ms && e.invoke_ms < heal)
        .collect();
    let errors = during.iter().filter(|e| failed(e)).count() as u64;
    FaultMetrics {
        fault: f.clone(),
        recovery_ms,
        ops_during: during.len() as u64,
        errors_during: errors,
        error_rate: if during.is_empty() {
            0.0
        } else {
            errors as f64 / during.len() as f64
        },
        heal_to_converged_ms: since_heal(f, f.converged_ms),
        heal_to_redundant_ms: since_heal(f, f.redundant_ms),
    }
}

fn since_heal(f: &FaultRecord, at: Option<u64>) -> Option<u64> {
    Some(at?.saturating_sub(f.heal_ms?))
}

/// One measure of every fault, summarized per fault kind and over all of them
/// (`(all faults)`); faults without the measure are left out.
pub fn by_kind(
    faults: &[FaultMetrics],
    measure: impl Fn(&FaultMetrics) -> Option<u64>,
) -> BTreeMap<String, Summary> {
    let mut kinds: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for f in faults {
        if let Some(v) = measure(f) {
            kinds.entry(f.fault.kind.clone()).or_default().push(v);
        }
    }
    let mut all: Vec<u64> = kinds.values().flatten().copied().collect();
    let mut out: BTreeMap<String, Summary> = kinds
        .into_iter()
        .map(|(k, mut v)| (k, summarize(&mut v)))
        .collect();
    out.insert("(all faults)".into(), summarize(&mut all));
    out
}

pub fn summarize(values: &mut [u64]) -> Summary {
    values.sort_unstable();
    Summary {
        count: values.len(),
        median_ms: (!values.is_empty()).then(|| values[values.len() / 2]),
        worst_ms: values.last().copied(),
    }
}

pub fn totals(events: &[Event]) -> Totals {
    let mut t = Totals::default();
    for e in events {
        if e.phase == Phase::Verify {
            t.verify_reads += 1;
            continue;
        }
        t.ops += 1;
        if e.acked_write() {
            t.acked_writes += 1;
        } else if e.outcome.ok() {
            t.reads_ok += 1;
        }
        if failed(e) {
            t.failures += 1;
        }
        let key = e
            .outcome
            .status
            .map_or("none".to_string(), |s| s.to_string());
        *t.by_status.entry(key).or_default() += 1;
    }
    t
}

fn summary_table(s: &mut String, rows: &BTreeMap<String, Summary>) {
    let _ = writeln!(s, "| fault | count | median | worst |");
    let _ = writeln!(s, "| --- | ---: | ---: | ---: |");
    for (k, sum) in rows {
        let _ = writeln!(
            s,
            "| {k} | {} | {} | {} |",
            sum.count,
            fmt_ms(sum.median_ms),
            fmt_ms(sum.worst_ms)
        );
    }
}

fn fmt_ms(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2} s", v as f64 / 1000.0))
}

pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let verdict = if r.passed { "PASSED" } else { "FAILED" };
    let _ = writeln!(s, "# berth failover drill: {verdict}\n");
    let _ = writeln!(s, "- seed: {}", r.seed);
    let _ = writeln!(s, "- replay: `{}`", r.replay);
    let _ = writeln!(s, "- mode: {}", r.mode);
    let _ = writeln!(s, "- nodes: {:?}", r.nodes);
    let _ = writeln!(
        s,
        "- workload: {:.0} s, {} operations ({} acknowledged writes, {} successful reads, {} failed), {} read-back requests",
        r.duration_ms as f64 / 1000.0,
        r.totals.ops,
        r.totals.acked_writes,
        r.totals.reads_ok,
        r.totals.failures,
        r.totals.verify_reads
    );
    let statuses: Vec<String> = r
        .totals
        .by_status
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    let _ = writeln!(s, "- answers by status: {}", statuses.join(", "));
    let _ = writeln!(s, "\n![throughput and errors](chart.svg)\n");
    let _ = writeln!(s, "## Invariants\n");
    let _ = writeln!(s, "| checker | invariant | checked | violations |");
    let _ = writeln!(s, "| --- | --- | ---: | ---: |");
    for v in &r.verdicts {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            v.name, v.invariant, v.checked, v.violations
        );
    }
    for v in r.verdicts.iter().filter(|v| !v.passed()) {
        let _ = writeln!(s, "\n### {} violations\n", v.name);
        for ex in &v.examples {
            let _ = writeln!(s, "- {ex}");
        }
    }
    let _ = writeln!(
        s,
        "\n## Recovery time (fault injection to first acknowledged write)\n"
    );
    summary_table(&mut s, &r.recovery);
    let _ = writeln!(
        s,
        "\n## Time to full redundancy (heal to every node's repair backlog empty)\n"
    );
    summary_table(&mut s, &r.redundancy);
    let _ = writeln!(s, "\n## Fault timeline\n");
    let _ = writeln!(
        s,
        "| at | fault | what | held | recovery | ops during | error rate | heal to converged \
         | heal to full redundancy (peak backlog) |"
    );
    let _ = writeln!(
        s,
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for f in &r.faults {
        let held = f.fault.heal_ms.map(|h| h - f.fault.inject_ms);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {:.1} % | {} | {} ({} shards) |",
            fmt_ms(Some(f.fault.inject_ms)),
            f.fault.kind,
            f.fault.note.replace('|', "\\|"),
            fmt_ms(held),
            fmt_ms(f.recovery_ms),
            f.ops_during,
            f.error_rate * 100.0,
            fmt_ms(f.heal_to_converged_ms),
            fmt_ms(f.heal_to_redundant_ms),
            f.fault.backlog_peak.map_or("-".into(), |b| b.to_string())
        );
    }
    let _ = writeln!(s, "\n## Final node states\n");
    let _ = writeln!(
        s,
        "| node | applied index | leader | state digest (at index) | error |"
    );
    let _ = writeln!(s, "| ---: | ---: | ---: | --- | --- |");
    for n in &r.final_states {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            n.node,
            n.last_applied.map_or("-".into(), |v| v.to_string()),
            n.leader.map_or("-".into(), |v| v.to_string()),
            match (&n.state_digest, n.state_applied) {
                (Some(d), Some(i)) => format!("`{}` ({i})", d.get(..16).unwrap_or(d)),
                _ => "-".into(),
            },
            n.error.clone().unwrap_or_default()
        );
    }
    if !r.notes.is_empty() {
        let _ = writeln!(s, "\n## Notes\n");
        for n in &r.notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    s
}

/// Throughput (successful operations per second) and errors per second over the
/// workload, with each fault's hold shaded and labelled.
pub fn svg(events: &[Event], faults: &[FaultRecord], end_ms: u64) -> String {
    let (w, h, left, top, bottom) = (1000.0f64, 320.0f64, 50.0f64, 30.0f64, 30.0f64);
    let secs = (end_ms / 1000 + 1) as usize;
    let mut ok = vec![0u64; secs];
    let mut err = vec![0u64; secs];
    for e in events.iter().filter(|e| e.phase == Phase::Workload) {
        let i = usize::try_from(e.complete_ms / 1000)
            .unwrap_or(0)
            .min(secs - 1);
        if failed(e) {
            err[i] += 1;
        } else {
            ok[i] += 1;
        }
    }
    let max = ok.iter().chain(&err).copied().max().unwrap_or(1).max(1) as f64;
    let plot_w = w - left - 10.0;
    let plot_h = h - top - bottom;
    let x = |ms: f64| left + plot_w * ms / (secs as f64 * 1000.0);
    let y = |v: f64| top + plot_h * (1.0 - v / max);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    for f in faults {
        let a = x(f.inject_ms as f64);
        let b = x(f.heal_ms.unwrap_or(end_ms) as f64);
        let c = x(f.converged_ms.or(f.heal_ms).unwrap_or(end_ms) as f64);
        let _ = writeln!(
            s,
            r##"<rect x="{a:.1}" y="{top}" width="{:.1}" height="{plot_h}" fill="#f4c7c3" opacity="0.7"/>"##,
            (b - a).max(1.0)
        );
        let _ = writeln!(
            s,
            r##"<rect x="{b:.1}" y="{top}" width="{:.1}" height="{plot_h}" fill="#fde7c0" opacity="0.7"/>"##,
            (c - b).max(0.0)
        );
        let _ = writeln!(
            s,
            r#"<text x="{a:.1}" y="{:.1}">{}</text>"#,
            top - 4.0,
            f.kind
        );
    }
    let line = |vals: &[u64], color: &str| {
        let pts: Vec<String> = vals
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", x(i as f64 * 1000.0 + 500.0), y(*v as f64)))
            .collect();
        format!(
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
            pts.join(" ")
        )
    };
    let _ = writeln!(s, "{}", line(&ok, "#1a73e8"));
    let _ = writeln!(s, "{}", line(&err, "#d93025"));
    let _ = writeln!(
        s,
        r##"<line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/>"##,
        top + plot_h,
        left + plot_w,
        top + plot_h
    );
    let _ = writeln!(
        s,
        r##"<line x1="{left}" y1="{top}" x2="{left}" y2="{:.1}" stroke="#333"/>"##,
        top + plot_h
    );
    let _ = writeln!(s, r#"<text x="4" y="{:.1}">{max:.0}/s</text>"#, top + 4.0);
    let _ = writeln!(s, r#"<text x="4" y="{:.1}">0</text>"#, top + plot_h);
    let step = (secs / 10).max(1);
    for t in (0..secs).step_by(step) {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{t}s</text>"#,
            x(t as f64 * 1000.0),
            h - 10.0
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="14" fill="#1a73e8">successful ops/s</text><text x="{:.1}" y="14" fill="#d93025">failed ops/s</text><text x="{:.1}" y="14" fill="#b0605a">fault held</text><text x="{:.1}" y="14" fill="#b08a3a">healing</text>"##,
        left,
        left + 130.0,
        left + 230.0,
        left + 310.0
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Op, Outcome};

    fn ev(invoke: u64, complete: u64, status: Option<u16>) -> Event {
        Event {
            id: invoke,
            worker: 0,
            node: 1,
            phase: Phase::Workload,
            invoke_ms: invoke,
            complete_ms: complete,
            op: Op::PushBlob {
                repo: "r".into(),
                digest: "d".into(),
            },
            outcome: status.map_or(Outcome::failed("refused"), Outcome::status),
        }
    }

    #[test]
    fn recovery_counts_from_injection_to_the_first_write_invoked_once_the_fault_is_in_place() {
        let fault = FaultRecord {
            kind: "kill-leader".into(),
            targets: vec![1],
            minority: vec![],
            inject_ms: 1_000,
            in_place_ms: 1_005,
            heal_ms: Some(5_000),
            converged_ms: Some(6_000),
            redundant_ms: Some(9_500),
            backlog_peak: Some(12),
            note: String::new(),
        };
        let events = vec![
            // Invoked before the fault: does not count even though it ends after.
            ev(900, 1_100, Some(201)),
            // Invoked while the fault was being put in place: does not count either.
            ev(1_002, 1_030, Some(201)),
            ev(1_010, 1_020, None),
            ev(1_050, 3_400, Some(201)),
            ev(2_000, 2_900, Some(201)),
            ev(2_100, 2_200, Some(503)),
        ];
        let m = fault_metrics(&events, &fault);
        assert_eq!(m.recovery_ms, Some(1_900));
        assert_eq!(m.ops_during, 5);
        assert_eq!(m.errors_during, 2);
        assert_eq!(m.heal_to_converged_ms, Some(1_000));
        assert_eq!(m.heal_to_redundant_ms, Some(4_500));
        let by = by_kind(&[m.clone(), m.clone()], |f| f.heal_to_redundant_ms);
        assert_eq!(by["kill-leader"].count, 2);
        assert_eq!(by["(all faults)"].worst_ms, Some(4_500));
        let svg = svg(&events, &[fault], 7_000);
        assert!(svg.starts_with("<svg") && svg.contains("kill-leader"));
    }
}

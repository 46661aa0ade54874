//! Latency: run-queue latency system-wide and per process name, syscall latency per syscall; each
//! percentile's confidence intervals compared.

use std::collections::BTreeMap;

use super::{
    Finding, FindingKind, Findings, LatencyComparison, PercentileChange,
    stats::{change_percent, quantile_interval},
};
use crate::{
    analysis::{histogram::percentiles, summary::syscall_name},
    recording::{LatencyHistogram, Recording},
};

const PERCENTILES: [(&str, f64); 4] = [("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p99.9", 0.999)];

/// One distribution measured on both sides.
struct Pair<'a> {
    kind: FindingKind,
    subject: String,
    base: &'a LatencyHistogram,
    new: &'a LatencyHistogram,
}

/// Per-process run-queue histograms merged by process name: pids differ between runs.
fn runq_by_name(recording: &Recording) -> BTreeMap<String, LatencyHistogram> {
    let mut by_name: BTreeMap<String, LatencyHistogram> = BTreeMap::new();
    if let Some(runq) = &recording.runq {
        for (&tgid, histogram) in &runq.per_process {
            by_name.entry(recording.process_name(tgid).to_string()).or_default().merge(histogram);
        }
    }
    by_name
}

/// Each syscall's histogram of the calls timed. A recording that timed one call in N counted each
/// N times (`--syscall-latency-sample`): its counts, all multiples of N, are divided back, so that
/// a percentile's interval is as wide as its samples make it, not N times narrower.
fn timed_syscalls(recording: &Recording) -> BTreeMap<u32, LatencyHistogram> {
    let weight = u64::from(recording.meta.options.syscall_sample_one_in);
    recording
        .syscalls
        .iter()
        .flat_map(|s| &s.latency)
        .map(|(&nr, histogram)| (nr, histogram.unweighed(weight)))
        .collect()
}

/// The distributions each recording keeps by name: run-queue latency per process name, syscall
/// latency per syscall (timed calls).
struct Named {
    runq: BTreeMap<String, LatencyHistogram>,
    syscalls: BTreeMap<u32, LatencyHistogram>,
}

impl Named {
    fn of(recording: &Recording) -> Named {
        Named { runq: runq_by_name(recording), syscalls: timed_syscalls(recording) }
    }
}

/// Every distribution both recordings have.
fn pairs<'a>(base: &'a Recording, new: &'a Recording, base_named: &'a Named, new_named: &'a Named) -> Vec<Pair<'a>> {
    let mut pairs = Vec::new();
    if let (Some(b), Some(n)) = (&base.runq, &new.runq) {
        pairs.push(Pair {
            kind: FindingKind::RunqLatency,
            subject: "system-wide".into(),
            base: &b.system,
            new: &n.system,
        });
    }
    for (name, b) in &base_named.runq {
        if let Some(n) = new_named.runq.get(name) {
            pairs.push(Pair { kind: FindingKind::RunqLatency, subject: format!("process {name}"), base: b, new: n });
        }
    }
    for (nr, bh) in &base_named.syscalls {
        if let Some(nh) = new_named.syscalls.get(nr) {
            pairs.push(Pair { kind: FindingKind::SyscallLatency, subject: syscall_name(*nr), base: bh, new: nh });
        }
    }
    pairs
}

pub fn compare(base: &Recording, new: &Recording, findings: &mut Findings) -> Vec<LatencyComparison> {
    let (base_named, new_named) = (Named::of(base), Named::of(new));
    let pairs = pairs(base, new, &base_named, &new_named);
    let z = findings.critical_z(pairs.len() * PERCENTILES.len());
    pairs.iter().map(|pair| compare_pair(pair, z, findings)).collect()
}

fn compare_pair(pair: &Pair<'_>, z: f64, findings: &mut Findings) -> LatencyComparison {
    let (bp, np) = (percentiles(pair.base), percentiles(pair.new));
    let mut changes = Vec::new();
    for (name, q) in PERCENTILES {
        let pick = |p: &crate::analysis::histogram::Percentiles| match name {
            "p50" => p.p50_ns,
            "p90" => p.p90_ns,
            "p99" => p.p99_ns,
            _ => p.p999_ns,
        };
        let (b, n) = (pick(&bp), pick(&np));
        let (Some(bi), Some(ni)) = (quantile_interval(pair.base, q, z), quantile_interval(pair.new, q, z)) else {
            continue;
        };
        let significant = ni.0 > bi.1 || ni.1 < bi.0;
        let change = change_percent(b as f64, n as f64);
        findings.flag_if(
            significant,
            Finding {
                kind: pair.kind,
                subject: pair.subject.clone(),
                metric: name.into(),
                base: b as f64,
                new: n as f64,
                unit: "ns".into(),
                change_percent: change,
                detail: format!(
                    "intervals [{}, {}] → [{}, {}] ns, {} → {} samples",
                    bi.0, bi.1, ni.0, ni.1, bp.count, np.count
                ),
            },
        );
        changes.push(PercentileChange {
            name: name.into(),
            base_ns: b,
            new_ns: n,
            change_percent: change,
            base_interval: bi,
            new_interval: ni,
            significant,
        });
    }
    LatencyComparison {
        kind: pair.kind,
        subject: pair.subject.clone(),
        base_count: bp.count,
        new_count: np.count,
        percentiles: changes,
    }
}

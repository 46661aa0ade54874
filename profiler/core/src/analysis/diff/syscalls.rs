//! Syscalls: calls per second (recordings may differ in length), error rates and new errnos.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    Finding, FindingKind, Findings, SyscallComparison,
    stats::{change_percent, rate_z, two_proportion_z},
};
use crate::{
    analysis::summary::{errno_name, syscall_name},
    recording::Recording,
};

#[derive(Default)]
struct Totals {
    count: u64,
    errors: u64,
    total_ns: u64,
    /// Calls timed (a call whose entry time was lost counts, with no time).
    timed: u64,
    errnos: BTreeSet<u32>,
}

impl Totals {
    fn error_percent(&self) -> f64 {
        if self.count == 0 { 0.0 } else { self.errors as f64 * 100.0 / self.count as f64 }
    }

    fn mean_ns(&self) -> f64 {
        if self.timed == 0 { 0.0 } else { self.total_ns as f64 / self.timed as f64 }
    }
}

/// Each syscall's totals over all processes.
fn totals(recording: &Recording) -> BTreeMap<u32, Totals> {
    let mut totals: BTreeMap<u32, Totals> = BTreeMap::new();
    for row in recording.syscalls.iter().flat_map(|s| &s.per_process) {
        let t = totals.entry(row.nr).or_default();
        t.count = t.count.saturating_add(row.count);
        t.errors = t.errors.saturating_add(row.errors);
        t.total_ns = t.total_ns.saturating_add(row.total_ns);
        t.errnos.extend(row.errnos.iter().map(|&(errno, _)| errno));
    }
    for (nr, histogram) in recording.syscalls.iter().flat_map(|s| &s.latency) {
        totals.entry(*nr).or_default().timed = histogram.count();
    }
    totals
}

/// Whether the recording's calls were timed.
fn timed(recording: &Recording) -> bool {
    recording.syscalls.as_ref().is_some_and(|s| !s.counts_only)
}

pub(super) fn seconds(recording: &Recording) -> f64 {
    (recording.meta.duration_ns as f64 / 1e9).max(1e-9)
}

/// One syscall on both sides, over their lengths.
struct Pair<'a> {
    name: String,
    base: &'a Totals,
    new: &'a Totals,
    base_seconds: f64,
    new_seconds: f64,
}

pub fn compare(base: &Recording, new: &Recording, findings: &mut Findings) -> Vec<SyscallComparison> {
    if base.syscalls.is_none() || new.syscalls.is_none() {
        return Vec::new();
    }
    let (bt, nt) = (totals(base), totals(new));
    let nrs: BTreeSet<u32> = bt.keys().chain(nt.keys()).copied().collect();
    let z_crit = findings.critical_z(nrs.len() * 2);
    let zero = Totals::default();
    let mut comparisons: Vec<SyscallComparison> = nrs
        .into_iter()
        .map(|nr| {
            let pair = Pair {
                name: syscall_name(nr),
                base: bt.get(&nr).unwrap_or(&zero),
                new: nt.get(&nr).unwrap_or(&zero),
                base_seconds: seconds(base),
                new_seconds: seconds(new),
            };
            flag_rate(&pair, z_crit, findings);
            let new_errnos = flag_errors(&pair, z_crit, findings);
            SyscallComparison {
                base_per_second: pair.base.count as f64 / pair.base_seconds,
                new_per_second: pair.new.count as f64 / pair.new_seconds,
                base_error_percent: pair.base.error_percent(),
                new_error_percent: pair.new.error_percent(),
                base_mean_ns: timed(base).then(|| pair.base.mean_ns()),
                new_mean_ns: timed(new).then(|| pair.new.mean_ns()),
                new_syscall: pair.base.count == 0 && pair.new.count > 0,
                new_errnos,
                name: pair.name,
            }
        })
        .collect();
    comparisons.sort_by(|a, b| {
        let weight = |s: &SyscallComparison| (s.new_per_second - s.base_per_second).abs();
        weight(b).total_cmp(&weight(a))
    });
    comparisons
}

fn flag_rate(pair: &Pair<'_>, z_crit: f64, findings: &mut Findings) {
    let (b_rate, n_rate) = (pair.base.count as f64 / pair.base_seconds, pair.new.count as f64 / pair.new_seconds);
    let change = change_percent(b_rate, n_rate);
    let z = rate_z(pair.base.count, pair.base_seconds, pair.new.count, pair.new_seconds);
    findings.flag_if(
        z.abs() > z_crit,
        Finding {
            kind: FindingKind::SyscallRate,
            subject: pair.name.clone(),
            metric: "calls per second".into(),
            base: b_rate,
            new: n_rate,
            unit: "/s".into(),
            change_percent: change,
            detail: format!("{} → {} calls, z = {z:.1}", pair.base.count, pair.new.count),
        },
    );
}

/// Flags a changed error rate; returns the errnos seen only in NEW.
fn flag_errors(pair: &Pair<'_>, z_crit: f64, findings: &mut Findings) -> Vec<String> {
    let (b, n) = (pair.base, pair.new);
    let (b_err, n_err) = (b.error_percent(), n.error_percent());
    let change = change_percent(b_err, n_err);
    // A syscall absent from one side has no error rate there: compare errors per second.
    let z = if b.count > 0 && n.count > 0 {
        two_proportion_z(b.errors, b.count, n.errors, n.count)
    } else {
        rate_z(b.errors, pair.base_seconds, n.errors, pair.new_seconds)
    };
    let new_errnos: Vec<String> = n.errnos.difference(&b.errnos).map(|&e| errno_name(e)).collect();
    let significant = z.abs() > z_crit;
    if significant {
        let mut detail = format!("{} of {} → {} of {} calls failed, z = {z:.1}", b.errors, b.count, n.errors, n.count);
        if !new_errnos.is_empty() {
            detail.push_str(&format!("; new errnos: {}", new_errnos.join(", ")));
        }
        findings.flag_if(
            significant,
            Finding {
                kind: FindingKind::SyscallErrors,
                subject: pair.name.clone(),
                metric: "error rate".into(),
                base: b_err,
                new: n_err,
                unit: "%".into(),
                change_percent: change,
                detail,
            },
        );
    }
    new_errnos
}

//! Comparing two recordings: which latencies, syscall behaviours and functions changed, and which
//! changes are both large (past `threshold`) and statistically significant (at `confidence`).
//!
//! Tests, chosen for bucketed data and for counts:
//! - Latency percentiles: a distribution-free confidence interval for each percentile from binomial
//!   order statistics (the ranks n·q ± z·√(n·q·(1−q))), widened to whole bucket edges. A change is
//!   significant when the two intervals do not overlap.
//! - Syscall rates: the conditional binomial test for two Poisson rates (recordings may differ in
//!   length). Error rates and function shares: the two-proportion z-test.
//! - Within each family of comparisons the confidence is Bonferroni-corrected, so comparing
//!   hundreds of functions does not produce false alarms by chance.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use statrs::distribution::{ContinuousCDF, Normal};

use super::{
    histogram::percentiles,
    hotpaths::{FunctionShare, function_shares},
    summary::{errno_name, syscall_name},
};
use crate::recording::{LatencyHistogram, Recording};

#[derive(Clone, Copy, Debug)]
pub struct DiffOptions {
    /// Smallest relative change (percent) worth flagging.
    pub threshold_percent: f64,
    /// Confidence (0..1) a change must reach to be flagged.
    pub confidence: f64,
    /// Rows per table.
    pub top: usize,
}

/// Functions below this share (percent of samples) on both sides are too small to flag.
const MIN_FUNCTION_SHARE: f64 = 1.0;

#[derive(Debug, Serialize)]
pub struct Diff {
    pub warnings: Vec<String>,
    pub regressions: Vec<Finding>,
    pub improvements: Vec<Finding>,
    pub latency: Vec<LatencyComparison>,
    pub syscalls: Vec<SyscallComparison>,
    pub functions: Vec<FunctionComparison>,
    pub growing_paths: Vec<PathComparison>,
}

/// A flagged change.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// What kind of thing changed: "run-queue latency", "syscall latency", "syscall errors",
    /// "syscall rate", "function".
    pub kind: String,
    /// Which one: "system-wide", a process, a syscall, a function.
    pub subject: String,
    /// The measure: "p99", "error rate", "self share", ...
    pub metric: String,
    pub base: f64,
    pub new: f64,
    pub unit: String,
    pub change_percent: f64,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct LatencyComparison {
    pub kind: String,
    pub subject: String,
    pub base_count: u64,
    pub new_count: u64,
    pub percentiles: Vec<PercentileChange>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PercentileChange {
    pub name: String,
    pub base_ns: u64,
    pub new_ns: u64,
    pub change_percent: f64,
    /// Confidence intervals (ns), [lower, upper].
    pub base_interval: (u64, u64),
    pub new_interval: (u64, u64),
    pub significant: bool,
}

#[derive(Debug, Serialize)]
pub struct SyscallComparison {
    pub name: String,
    pub base_per_second: f64,
    pub new_per_second: f64,
    pub base_error_percent: f64,
    pub new_error_percent: f64,
    pub base_mean_ns: f64,
    pub new_mean_ns: f64,
    /// Only in NEW.
    pub new_syscall: bool,
    /// Errnos seen only in NEW.
    pub new_errnos: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FunctionComparison {
    pub function: String,
    pub kernel: bool,
    pub base_self_percent: f64,
    pub new_self_percent: f64,
    pub base_total_percent: f64,
    pub new_total_percent: f64,
    /// z statistic of the self-share change (positive: grew).
    pub self_z: f64,
    pub total_z: f64,
}

#[derive(Debug, Serialize)]
pub struct PathComparison {
    pub path: String,
    pub base_percent: f64,
    pub new_percent: f64,
}

/// The two-sided critical z for `confidence`, Bonferroni-corrected for `tests` comparisons.
fn critical_z(confidence: f64, tests: usize) -> f64 {
    let alpha = (1.0 - confidence) / tests.max(1) as f64;
    Normal::standard().inverse_cdf(1.0 - alpha / 2.0)
}

fn change_percent(base: f64, new: f64) -> f64 {
    if base == 0.0 { if new == 0.0 { 0.0 } else { f64::INFINITY } } else { (new - base) / base * 100.0 }
}

/// Confidence interval of the q-quantile of a bucketed histogram: the buckets holding the ranks
/// n·q ∓ z·√(n·q·(1−q)), from the lower edge of the first to the upper edge of the second. A rank
/// that falls outside the samples leaves that side unbounded (0 or u64::MAX): too few samples to
/// bound it.
pub fn quantile_interval(histogram: &LatencyHistogram, q: f64, z: f64) -> Option<(u64, u64)> {
    let n = histogram.count();
    if n == 0 {
        return None;
    }
    let nf = n as f64;
    let spread = z * (nf * q * (1.0 - q)).sqrt();
    let (low_rank, high_rank) = ((nf * q - spread).floor(), (nf * q + spread).ceil());
    let mut low = (low_rank < 1.0).then_some(0);
    let mut high = (high_rank > nf).then_some(u64::MAX);
    let mut cumulative = 0u64;
    for (lower, upper, count) in histogram.ranges() {
        cumulative = cumulative.saturating_add(count);
        if low.is_none() && cumulative as f64 >= low_rank {
            low = Some(lower);
        }
        if high.is_none() && cumulative as f64 >= high_rank {
            high = Some(upper.saturating_sub(1));
        }
    }
    Some((low?, high?))
}

/// Two-proportion z statistic for x1/n1 → x2/n2 (positive when the proportion grew).
pub fn two_proportion_z(x1: u64, n1: u64, x2: u64, n2: u64) -> f64 {
    if n1 == 0 || n2 == 0 {
        return 0.0;
    }
    let (p1, p2) = (x1 as f64 / n1 as f64, x2 as f64 / n2 as f64);
    let pooled = (x1 as f64 + x2 as f64) / (n1 as f64 + n2 as f64);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1 as f64 + 1.0 / n2 as f64)).sqrt();
    if se == 0.0 { 0.0 } else { (p2 - p1) / se }
}

/// z statistic for the change of a Poisson rate: c1 events in t1 seconds → c2 in t2, from the
/// conditional binomial test (under equal rates, c2 ~ Bin(c1 + c2, t2 / (t1 + t2))).
pub fn rate_z(c1: u64, t1: f64, c2: u64, t2: f64) -> f64 {
    let n = c1 as f64 + c2 as f64;
    if n == 0.0 || t1 <= 0.0 || t2 <= 0.0 {
        return 0.0;
    }
    let p = t2 / (t1 + t2);
    (c2 as f64 - n * p) / (n * p * (1.0 - p)).sqrt()
}

const PERCENTILES: [(&str, f64); 4] = [("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p99.9", 0.999)];

fn compare_latency(
    kind: &str,
    subject: &str,
    base: &LatencyHistogram,
    new: &LatencyHistogram,
    z: f64,
    options: &DiffOptions,
    findings: &mut Findings,
) -> LatencyComparison {
    let (bp, np) = (percentiles(base), percentiles(new));
    let mut changes = Vec::new();
    for (name, q) in PERCENTILES {
        let pick = |p: &super::histogram::Percentiles| match name {
            "p50" => p.p50_ns,
            "p90" => p.p90_ns,
            "p99" => p.p99_ns,
            _ => p.p999_ns,
        };
        let (b, n) = (pick(&bp), pick(&np));
        let (Some(bi), Some(ni)) = (quantile_interval(base, q, z), quantile_interval(new, q, z)) else { continue };
        let significant = ni.0 > bi.1 || ni.1 < bi.0;
        let change = change_percent(b as f64, n as f64);
        if significant && change.abs() > options.threshold_percent {
            findings.add(
                change > 0.0,
                Finding {
                    kind: kind.into(),
                    subject: subject.into(),
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
        }
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
        kind: kind.into(),
        subject: subject.into(),
        base_count: bp.count,
        new_count: np.count,
        percentiles: changes,
    }
}

#[derive(Default)]
struct Findings {
    regressions: Vec<Finding>,
    improvements: Vec<Finding>,
}

impl Findings {
    fn add(&mut self, worse: bool, finding: Finding) {
        if worse { self.regressions.push(finding) } else { self.improvements.push(finding) }
    }
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

#[derive(Default)]
struct SyscallTotals {
    count: u64,
    errors: u64,
    total_ns: u64,
    errnos: BTreeSet<u32>,
}

fn syscall_totals(recording: &Recording) -> BTreeMap<u32, SyscallTotals> {
    let mut totals: BTreeMap<u32, SyscallTotals> = BTreeMap::new();
    for row in recording.syscalls.iter().flat_map(|s| &s.per_process) {
        let t = totals.entry(row.nr).or_default();
        t.count = t.count.saturating_add(row.count);
        t.errors = t.errors.saturating_add(row.errors);
        t.total_ns = t.total_ns.saturating_add(row.total_ns);
        t.errnos.extend(row.errnos.iter().map(|&(errno, _)| errno));
    }
    totals
}

fn seconds(recording: &Recording) -> f64 {
    recording.meta.duration_ns as f64 / 1e9
}

fn warnings(base: &Recording, new: &Recording) -> Vec<String> {
    let (b, n) = (&base.meta, &new.meta);
    let mut warnings = Vec::new();
    let mut differ = |what: &str, x: String, y: String| {
        if x != y {
            warnings.push(format!("{what} differs: {x} vs {y}"));
        }
    };
    differ("kernel", b.kernel_release.clone(), n.kernel_release.clone());
    differ("CPU count", b.cpus.to_string(), n.cpus.to_string());
    differ("probes", b.options.probes.join(","), n.options.probes.join(","));
    differ("sampling frequency (Hz)", b.options.frequency_hz.to_string(), n.options.frequency_hz.to_string());
    differ("cgroup filter", format!("{:?}", b.options.cgroup), format!("{:?}", n.options.cgroup));
    differ(
        "pid filtering",
        (if b.options.pids.is_empty() { "none" } else { "by pid" }).to_string(),
        (if n.options.pids.is_empty() { "none" } else { "by pid" }).to_string(),
    );
    if b.hostname != n.hostname {
        warnings.push(format!("recorded on different hosts: {} vs {}", b.hostname, n.hostname));
    }
    warnings
}

pub fn diff(base: &Recording, new: &Recording, options: &DiffOptions) -> Diff {
    let mut findings = Findings::default();

    // Latency: run queue system-wide and per process (by name), syscalls per syscall.
    let mut latency_pairs: Vec<(String, String, &LatencyHistogram, &LatencyHistogram)> = Vec::new();
    if let (Some(b), Some(n)) = (&base.runq, &new.runq) {
        latency_pairs.push(("run-queue latency".into(), "system-wide".into(), &b.system, &n.system));
    }
    let (base_procs, new_procs) = (runq_by_name(base), runq_by_name(new));
    for (name, b) in &base_procs {
        if let Some(n) = new_procs.get(name) {
            latency_pairs.push(("run-queue latency".into(), format!("process {name}"), b, n));
        }
    }
    if let (Some(b), Some(n)) = (&base.syscalls, &new.syscalls) {
        for (nr, bh) in &b.latency {
            if let Some(nh) = n.latency.get(nr) {
                latency_pairs.push(("syscall latency".into(), syscall_name(*nr), bh, nh));
            }
        }
    }
    let z_latency = critical_z(options.confidence, latency_pairs.len() * PERCENTILES.len());
    let latency: Vec<LatencyComparison> = latency_pairs
        .iter()
        .map(|(kind, subject, b, n)| compare_latency(kind, subject, b, n, z_latency, options, &mut findings))
        .collect();

    // Syscalls: rates per second, error rates, errnos.
    let (bt, nt) = (syscall_totals(base), syscall_totals(new));
    let (bs, ns) = (seconds(base), seconds(new));
    let nrs: BTreeSet<u32> = bt.keys().chain(nt.keys()).copied().collect();
    let z_syscalls = critical_z(options.confidence, nrs.len() * 2);
    let zero = SyscallTotals::default();
    let mut syscalls = Vec::new();
    if base.syscalls.is_some() && new.syscalls.is_some() {
        for nr in nrs {
            let (b, n) = (bt.get(&nr).unwrap_or(&zero), nt.get(&nr).unwrap_or(&zero));
            let name = syscall_name(nr);
            let (b_rate, n_rate) = (b.count as f64 / bs.max(1e-9), n.count as f64 / ns.max(1e-9));
            let rate_change = change_percent(b_rate, n_rate);
            let z = rate_z(b.count, bs, n.count, ns);
            if z.abs() > z_syscalls && rate_change.abs() > options.threshold_percent {
                findings.add(
                    rate_change > 0.0,
                    Finding {
                        kind: "syscall rate".into(),
                        subject: name.clone(),
                        metric: "calls per second".into(),
                        base: b_rate,
                        new: n_rate,
                        unit: "/s".into(),
                        change_percent: rate_change,
                        detail: format!("{} → {} calls, z = {z:.1}", b.count, n.count),
                    },
                );
            }
            let ratio = |errors: u64, count: u64| if count == 0 { 0.0 } else { errors as f64 * 100.0 / count as f64 };
            let (b_err, n_err) = (ratio(b.errors, b.count), ratio(n.errors, n.count));
            let err_change = change_percent(b_err, n_err);
            // A syscall absent from one side has no error rate there: compare errors per second.
            let err_z = if b.count > 0 && n.count > 0 {
                two_proportion_z(b.errors, b.count, n.errors, n.count)
            } else {
                rate_z(b.errors, bs, n.errors, ns)
            };
            let new_errnos: Vec<String> = n.errnos.difference(&b.errnos).map(|&e| errno_name(e)).collect();
            if err_z.abs() > z_syscalls && err_change.abs() > options.threshold_percent {
                let mut detail =
                    format!("{} of {} → {} of {} calls failed, z = {err_z:.1}", b.errors, b.count, n.errors, n.count);
                if !new_errnos.is_empty() {
                    detail.push_str(&format!("; new errnos: {}", new_errnos.join(", ")));
                }
                findings.add(
                    err_change > 0.0,
                    Finding {
                        kind: "syscall errors".into(),
                        subject: name.clone(),
                        metric: "error rate".into(),
                        base: b_err,
                        new: n_err,
                        unit: "%".into(),
                        change_percent: err_change,
                        detail,
                    },
                );
            }
            let mean = |t: &SyscallTotals| if t.count == 0 { 0.0 } else { t.total_ns as f64 / t.count as f64 };
            syscalls.push(SyscallComparison {
                name,
                base_per_second: b_rate,
                new_per_second: n_rate,
                base_error_percent: b_err,
                new_error_percent: n_err,
                base_mean_ns: mean(b),
                new_mean_ns: mean(n),
                new_syscall: b.count == 0 && n.count > 0,
                new_errnos,
            });
        }
        syscalls.sort_by(|a, b| {
            let weight = |s: &SyscallComparison| (s.new_per_second - s.base_per_second).abs();
            weight(b).total_cmp(&weight(a))
        });
    }

    // Stacks: function shares and call paths.
    let (functions, growing_paths) = match (&base.stacks, &new.stacks) {
        (Some(bst), Some(nst)) => {
            let (bh, nh) = (Shares::of(bst), Shares::of(nst));
            compare_functions(&bh, &nh, options, &mut findings, base, new)
        }
        _ => (Vec::new(), Vec::new()),
    };

    let order = |a: &Finding, b: &Finding| b.change_percent.abs().total_cmp(&a.change_percent.abs());
    findings.regressions.sort_by(order);
    findings.improvements.sort_by(order);
    Diff {
        warnings: warnings(base, new),
        regressions: findings.regressions,
        improvements: findings.improvements,
        latency,
        syscalls,
        functions,
        growing_paths,
    }
}

/// All functions of one side and its number of samples.
struct Shares {
    samples: u64,
    functions: Vec<FunctionShare>,
}

impl Shares {
    fn of(stacks: &crate::recording::Stacks) -> Self {
        let (samples, functions) = function_shares(stacks);
        Shares { samples, functions }
    }
}

fn compare_functions(
    base: &Shares,
    new: &Shares,
    options: &DiffOptions,
    findings: &mut Findings,
    base_recording: &Recording,
    new_recording: &Recording,
) -> (Vec<FunctionComparison>, Vec<PathComparison>) {
    type Key = (String, bool);
    let index = |side: &Shares| -> BTreeMap<Key, (u64, u64)> {
        let mut map: BTreeMap<Key, (u64, u64)> = BTreeMap::new();
        for f in &side.functions {
            // Module paths differ between machines; functions are matched by name.
            let entry = map.entry((f.function.clone(), f.kernel)).or_default();
            entry.0 = entry.0.saturating_add(f.self_samples);
            entry.1 = entry.1.saturating_add(f.total_samples).min(side.samples);
        }
        map
    };
    let (bi, ni) = (index(base), index(new));
    let keys: BTreeSet<&Key> = bi.keys().chain(ni.keys()).collect();
    let share = super::percent;
    let candidates: Vec<&Key> = keys
        .into_iter()
        .filter(|k| {
            let (b, n) = (bi.get(*k).copied().unwrap_or_default(), ni.get(*k).copied().unwrap_or_default());
            share(b.1, base.samples) >= MIN_FUNCTION_SHARE || share(n.1, new.samples) >= MIN_FUNCTION_SHARE
        })
        .collect();
    let z_crit = critical_z(options.confidence, candidates.len() * 2);
    let mut comparisons = Vec::new();
    for key in candidates {
        let (b, n) = (bi.get(key).copied().unwrap_or_default(), ni.get(key).copied().unwrap_or_default());
        let cmp = FunctionComparison {
            function: key.0.clone(),
            kernel: key.1,
            base_self_percent: share(b.0, base.samples),
            new_self_percent: share(n.0, new.samples),
            base_total_percent: share(b.1, base.samples),
            new_total_percent: share(n.1, new.samples),
            self_z: two_proportion_z(b.0, base.samples, n.0, new.samples),
            total_z: two_proportion_z(b.1, base.samples, n.1, new.samples),
        };
        for (metric, before, after, z) in [
            ("self share", cmp.base_self_percent, cmp.new_self_percent, cmp.self_z),
            ("total share", cmp.base_total_percent, cmp.new_total_percent, cmp.total_z),
        ] {
            let change = change_percent(before, after);
            if z.abs() > z_crit && change.abs() > options.threshold_percent && before.max(after) >= MIN_FUNCTION_SHARE {
                let hot_now = before < MIN_FUNCTION_SHARE / 2.0 && after >= MIN_FUNCTION_SHARE;
                findings.add(
                    change > 0.0,
                    Finding {
                        kind: "function".into(),
                        subject: format!("{}{}", key.0, if key.1 { " [k]" } else { "" }),
                        metric: metric.into(),
                        base: before,
                        new: after,
                        unit: "% of samples".into(),
                        change_percent: change,
                        detail: format!("z = {z:.1}{}", if hot_now { "; became hot" } else { "" }),
                    },
                );
            }
        }
        comparisons.push(cmp);
    }
    comparisons.sort_by(|a, b| {
        let grow = |c: &FunctionComparison| c.new_self_percent - c.base_self_percent;
        grow(b).abs().total_cmp(&grow(a).abs())
    });
    comparisons.truncate(options.top);

    let folded = |recording: &Recording| match &recording.stacks {
        Some(stacks) => crate::output::flamegraph::folded(recording, stacks, &Default::default()),
        None => Vec::new(),
    };
    let (base_lines, new_lines) = (folded(base_recording), folded(new_recording));
    let before: HashMap<&str, u64> = base_lines.iter().filter_map(|line| split_folded(line)).collect();
    // Paths are long strings: rank borrowed slices, copy only the winners.
    let mut grown: Vec<(f64, &str, f64, f64)> = new_lines
        .iter()
        .filter_map(|line| split_folded(line))
        .map(|(path, count)| {
            let (b, n) = (share(before.get(path).copied().unwrap_or(0), base.samples), share(count, new.samples));
            (n - b, path, b, n)
        })
        .filter(|&(growth, ..)| growth > 0.0)
        .collect();
    grown.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    grown.truncate(options.top);
    let growing = grown
        .into_iter()
        .map(|(_, path, base_percent, new_percent)| PathComparison {
            path: path.to_string(),
            base_percent,
            new_percent,
        })
        .collect();
    (comparisons, growing)
}

/// A folded line's path and count.
fn split_folded(line: &str) -> Option<(&str, u64)> {
    line.rsplit_once(' ').map(|(path, count)| (path, count.parse().unwrap_or(0)))
}

/// Used by `--help` and the README.
pub const METHOD: &str = "Percentiles: distribution-free confidence intervals from binomial order statistics on the \
kernel's buckets; significant when the two intervals do not overlap. Syscall rates: conditional binomial test for \
two Poisson rates. Error rates and function shares: two-proportion z-test. Confidence is Bonferroni-corrected within \
each family of comparisons. A change is flagged when it is significant and larger than --threshold.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interval_brackets_the_truth() {
        let h = LatencyHistogram::from_values(1..=10_000u64);
        let (low, high) = quantile_interval(&h, 0.5, 2.576).unwrap();
        assert!(low <= 5000 && high >= 5000 && high - low < 1000, "[{low}, {high}]");
        // With few samples the interval is wide: too few to bound the p99 from above.
        let few = LatencyHistogram::from_values([100, 200, 300, 400, 500]);
        assert_eq!(quantile_interval(&few, 0.99, 2.576).unwrap().1, u64::MAX);
        assert_eq!(quantile_interval(&LatencyHistogram::from_values([100]), 0.5, 2.576), Some((0, u64::MAX)));
        assert_eq!(quantile_interval(&LatencyHistogram::default(), 0.5, 2.0), None);
    }

    #[test]
    fn z_tests() {
        assert!(two_proportion_z(300, 1000, 460, 1000) > 7.0);
        assert!(two_proportion_z(300, 1000, 310, 1000).abs() < 1.0);
        // The same rate over different lengths is no change.
        assert!(rate_z(1000, 10.0, 2000, 20.0).abs() < 1e-9);
        assert!(rate_z(1000, 10.0, 1500, 10.0) > 5.0);
        assert!((critical_z(0.99, 1) - 2.5758).abs() < 1e-3);
        assert!(critical_z(0.99, 100) > critical_z(0.99, 1));
    }

    fn recording_with_runq(values: impl IntoIterator<Item = u64>) -> Recording {
        let mut recording = Recording::default();
        recording.meta.duration_ns = 10_000_000_000;
        recording.runq =
            Some(crate::recording::RunqLatency { system: LatencyHistogram::from_values(values), ..Default::default() });
        recording
    }

    #[test]
    fn flags_a_latency_regression_and_not_noise() {
        let options = DiffOptions { threshold_percent: 10.0, confidence: 0.99, top: 10 };
        let base = recording_with_runq((0..5000).map(|i| 10_000 + (i % 100) * 100));
        let same = recording_with_runq((0..5000).map(|i| 10_000 + ((i + 37) % 100) * 100));
        assert!(diff(&base, &same, &options).regressions.is_empty());
        let worse = recording_with_runq((0..5000).map(|i| 20_000 + (i % 100) * 200));
        let d = diff(&base, &worse, &options);
        assert!(
            d.regressions.iter().any(|f| f.metric == "p99" && f.kind == "run-queue latency"),
            "{:?}",
            d.regressions
        );
        let d = diff(&worse, &base, &options);
        assert!(d.regressions.is_empty() && !d.improvements.is_empty());
    }

    #[test]
    fn recordings_of_different_length_compare_by_rate_and_share() {
        use crate::recording::{ProcessSyscall, Syscalls};
        let with_calls = |seconds: u64, calls: u64, errors: u64| {
            let mut recording = Recording::default();
            recording.meta.duration_ns = seconds * 1_000_000_000;
            recording.syscalls = Some(Syscalls {
                per_process: vec![ProcessSyscall { tgid: 1, nr: 39, count: calls, errors, ..Default::default() }],
                ..Default::default()
            });
            recording
        };
        let options = DiffOptions { threshold_percent: 10.0, confidence: 0.99, top: 10 };
        // Same rate (100/s) and error rate (10 %) over 10 s and 20 s: nothing to flag.
        let d = diff(&with_calls(10, 1000, 100), &with_calls(20, 2000, 200), &options);
        assert!(d.regressions.is_empty() && d.improvements.is_empty(), "{:?}", d.regressions);
        assert!((d.syscalls[0].base_per_second - d.syscalls[0].new_per_second).abs() < 1e-9);
        // Twice the rate in the same time is flagged.
        let d = diff(&with_calls(10, 1000, 100), &with_calls(10, 2000, 200), &options);
        assert!(d.regressions.iter().any(|f| f.kind == "syscall rate"));
    }
}

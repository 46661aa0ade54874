//! Comparing two recordings: which latencies, syscall behaviours and functions changed, and which
//! changes are both large (past `threshold`) and statistically significant (at `confidence`).
//!
//! Tests, chosen for bucketed data and for counts:
//! - Latency percentiles: a distribution-free confidence interval for each percentile from binomial
//!   order statistics (the ranks n·q ± z·√(n·q·(1−q))), widened to whole bucket edges. A change is
//!   significant when the two intervals do not overlap.
//! - Syscall rates: the conditional binomial test for two Poisson rates (recordings may differ in
//!   length). Error rates and function and container CPU shares: the two-proportion z-test.
//! - Off-CPU time per second under each user function and in each state: a z-test of two compound
//!   Poisson rates (`offcpu`).
//! - Within each family of comparisons the confidence is Bonferroni-corrected, so comparing
//!   hundreds of functions does not produce false alarms by chance.

mod containers;
mod functions;
mod latency;
mod offcpu;
mod paths;
pub mod stats;
mod syscalls;

use serde::Serialize;

use crate::recording::Recording;

#[derive(Clone, Copy, Debug)]
pub struct DiffOptions {
    /// Smallest relative change (percent) worth flagging.
    pub threshold_percent: f64,
    /// Confidence (0..1) a change must reach to be flagged.
    pub confidence: f64,
    /// Rows per table.
    pub top: usize,
}

#[derive(Debug, Serialize)]
pub struct Diff {
    pub warnings: Vec<String>,
    pub regressions: Vec<Finding>,
    pub improvements: Vec<Finding>,
    pub latency: Vec<LatencyComparison>,
    pub syscalls: Vec<SyscallComparison>,
    pub functions: Vec<FunctionComparison>,
    pub growing_paths: Vec<PathComparison>,
    pub containers: Vec<ContainerComparison>,
    /// Off-CPU time, where both recordings have it.
    pub offcpu: Vec<OffCpuComparison>,
}

/// What kind of thing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum FindingKind {
    #[serde(rename = "run-queue latency")]
    RunqLatency,
    #[serde(rename = "syscall latency")]
    SyscallLatency,
    #[serde(rename = "syscall errors")]
    SyscallErrors,
    #[serde(rename = "syscall rate")]
    SyscallRate,
    #[serde(rename = "function")]
    Function,
    #[serde(rename = "container")]
    Container,
    #[serde(rename = "off-CPU time")]
    OffCpu,
}

impl std::fmt::Display for FindingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, so that tables can align it with a width.
        f.pad(match self {
            FindingKind::RunqLatency => "run-queue latency",
            FindingKind::SyscallLatency => "syscall latency",
            FindingKind::SyscallErrors => "syscall errors",
            FindingKind::SyscallRate => "syscall rate",
            FindingKind::Function => "function",
            FindingKind::Container => "container",
            FindingKind::OffCpu => "off-CPU time",
        })
    }
}

/// A flagged change.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
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
    pub kind: FindingKind,
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
    /// Mean latency; absent for a side whose calls were counted, not timed.
    pub base_mean_ns: Option<f64>,
    pub new_mean_ns: Option<f64>,
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

/// A container (by namespace and name, else id): its share of the CPU samples and its syscall rate.
#[derive(Clone, Debug, Serialize)]
pub struct ContainerComparison {
    pub container: String,
    /// Whether each side has it: one on one side only is listed, not judged.
    pub in_base: bool,
    pub in_new: bool,
    pub base_cpu_percent: f64,
    pub new_cpu_percent: f64,
    pub cpu_z: f64,
    pub base_syscalls_per_second: f64,
    pub new_syscalls_per_second: f64,
    pub syscall_z: f64,
}

/// Time blocked under a user function, or in a state, per second of each recording.
#[derive(Clone, Debug, Serialize)]
pub struct OffCpuComparison {
    /// A user function, or a state ("[D uninterruptible]").
    pub subject: String,
    pub state: bool,
    pub base_ms_per_second: f64,
    pub new_ms_per_second: f64,
    /// Positive: grew.
    pub z: f64,
}

#[derive(Debug, Serialize)]
pub struct PathComparison {
    pub path: String,
    pub base_percent: f64,
    pub new_percent: f64,
}

/// Flagged changes, worse (grown) ones apart from better ones, and what it takes to be flagged.
struct Findings {
    confidence: f64,
    threshold_percent: f64,
    regressions: Vec<Finding>,
    improvements: Vec<Finding>,
}

impl Findings {
    /// The critical z of a family of `tests` comparisons.
    fn critical_z(&self, tests: usize) -> f64 {
        stats::critical_z(self.confidence, tests)
    }

    /// Keeps a change that is significant and larger than the threshold. Every measure compared is
    /// worse when it grows: latency, rates, error rates, CPU shares.
    fn flag_if(&mut self, significant: bool, finding: Finding) {
        if !significant || finding.change_percent.abs() <= self.threshold_percent {
            return;
        }
        if finding.change_percent > 0.0 { self.regressions.push(finding) } else { self.improvements.push(finding) }
    }
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
    let mut findings = Findings {
        confidence: options.confidence,
        threshold_percent: options.threshold_percent,
        regressions: Vec::new(),
        improvements: Vec::new(),
    };
    let latency = latency::compare(base, new, &mut findings);
    let syscalls = syscalls::compare(base, new, &mut findings);
    let (functions, growing_paths) = match (&base.stacks, &new.stacks) {
        (Some(b), Some(n)) => (
            functions::compare(b, n, options.top, &mut findings),
            paths::growing(base, new, b.samples(), n.samples(), options.top),
        ),
        _ => (Vec::new(), Vec::new()),
    };
    let containers = containers::compare(base, new, &mut findings);
    let offcpu = match (&base.offcpu, &new.offcpu) {
        (Some(b), Some(n)) => offcpu::compare((base, b), (new, n), options.top, &mut findings),
        _ => Vec::new(),
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
        containers,
        offcpu,
    }
}

/// Used by `--help` and the README.
pub const METHOD: &str = "Percentiles: distribution-free confidence intervals from binomial order statistics on the \
kernel's buckets; significant when the two intervals do not overlap. Syscall rates: conditional binomial test for \
two Poisson rates. Error rates and function and container shares: two-proportion z-test. Off-CPU time per second: \
z-test of two compound Poisson rates (variance 2T²/n for n blocks, (N+1)T²/n sampled 1 in N). Confidence is Bonferroni-corrected within \
each family of comparisons. A change is flagged when it is significant and larger than --threshold.";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::LatencyHistogram;

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
            d.regressions.iter().any(|f| f.metric == "p99" && f.kind == FindingKind::RunqLatency),
            "{:?}",
            d.regressions
        );
        let d = diff(&worse, &base, &options);
        assert!(d.regressions.is_empty() && !d.improvements.is_empty());
    }

    /// A recording that timed one call in 8 counted each 8 times: its percentiles' intervals are
    /// as wide as the calls timed make them, so a shift that 8 times as many would show is noise.
    #[test]
    fn sampled_syscall_latency_is_compared_at_its_true_sample_size() {
        use crate::recording::Syscalls;
        let with_latency = |shift: u64, weight: u64, one_in: u32| {
            let mut recording = Recording::default();
            recording.meta.duration_ns = 10_000_000_000;
            recording.meta.options.syscall_sample_one_in = one_in;
            let timed = LatencyHistogram::from_values((0..80).map(|i| 10_000 + shift + i * 125));
            recording.syscalls = Some(Syscalls { latency: [(39, timed.weighed(weight))].into(), ..Default::default() });
            recording
        };
        let options = DiffOptions { threshold_percent: 10.0, confidence: 0.99, top: 10 };
        let flagged = |base: &Recording, new: &Recording| {
            diff(base, new, &options).regressions.iter().any(|f| f.kind == FindingKind::SyscallLatency)
        };
        // 640 calls timed: a 2.5 µs shift (16 % at the median) stands out.
        assert!(flagged(&with_latency(0, 8, 1), &with_latency(2_500, 8, 1)));
        // 80 calls timed, each counted 8 times: the same shift is within the draw's noise.
        assert!(!flagged(&with_latency(0, 8, 8), &with_latency(2_500, 8, 8)));
        // A doubling stands out all the same.
        assert!(flagged(&with_latency(0, 8, 8), &with_latency(15_000, 8, 8)));
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
        assert!(d.regressions.iter().any(|f| f.kind == FindingKind::SyscallRate));
        // A side recorded with `syscall-counts` has rates and errors, and no mean latency.
        let mut counted = with_calls(10, 1000, 100);
        counted.syscalls.as_mut().unwrap().counts_only = true;
        let d = diff(&counted, &with_calls(10, 1000, 100), &options);
        assert_eq!((d.syscalls[0].base_mean_ns, d.syscalls[0].new_mean_ns), (None, Some(0.0)));
        let text = crate::output::diff::text(&d);
        assert!(text.contains("mean not timed → "), "{text}");
    }
}

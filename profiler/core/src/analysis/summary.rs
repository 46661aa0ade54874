//! What `report` (and the end of `record`) shows, computed once and rendered as text or JSON.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{
    histogram::{Percentiles, percentiles},
    hotpaths::HotPaths,
    waits::Waits,
};
use crate::recording::{Container, Drops, LatencyHistogram, LeftOutProbe, Recording, UnwindTables};

/// Process names with fewer run-queue samples (or calls of a syscall) than this are left out of the
/// worst-p99 lists and the outliers: below 100 samples, a p99 is just the maximum.
pub const MIN_SAMPLES_FOR_RANKING: u64 = 100;

/// Run-queue latency grouped by process name, as `diff` compares it: forty short-lived `sh`
/// processes are one workload, and apart each has too few waits for a p99.
struct NamedLatency<'a> {
    comm: &'a str,
    /// The ids of that name, lowest first.
    tgids: Vec<u32>,
    /// Processes they stand for (a total of exited processes stands for many).
    processes: usize,
    latency: Percentiles,
}

fn latency_by_name(recording: &Recording) -> Vec<NamedLatency<'_>> {
    let Some(runq) = &recording.runq else { return Vec::new() };
    let mut by_name: BTreeMap<&str, (Vec<u32>, LatencyHistogram)> = BTreeMap::new();
    for (&tgid, histogram) in &runq.per_process {
        let (tgids, merged) = by_name.entry(recording.process_name(tgid)).or_default();
        tgids.push(tgid);
        merged.merge(histogram);
    }
    by_name
        .into_iter()
        .map(|(comm, (mut tgids, histogram))| {
            tgids.sort_unstable();
            let processes = tgids.iter().map(|&tgid| recording.process_count(tgid)).sum();
            NamedLatency { comm, tgids, processes, latency: percentiles(&histogram) }
        })
        .filter(|named| named.latency.count >= MIN_SAMPLES_FOR_RANKING)
        .collect()
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub hostname: String,
    pub kernel_release: String,
    pub cpus: u32,
    pub start_unix_ns: u64,
    pub duration_s: f64,
    pub probes: Vec<String>,
    /// Probes this kernel could not run, with the reason.
    pub left_out: Vec<LeftOutProbe>,
    /// What the kernel offered the probes.
    pub kernel_features: Vec<String>,
    pub pids: Vec<u32>,
    pub cgroup: Option<String>,
    /// The profiler's own process was left out.
    pub excluded_self: bool,
    pub events: u64,
    pub drops: Drops,
    pub dropped_total: u64,
    pub runq: Option<RunqSummary>,
    pub syscalls: Option<SyscallSummary>,
    pub cpu: Option<HotPaths>,
    /// Where threads waited (the `offcpu` probe).
    pub waits: Option<Waits>,
    /// How the sampled user stacks ended, commonest first.
    pub stack_ends: Vec<(String, u64)>,
    pub unwind: Option<UnwindTables>,
    /// The containers (and pods) whose processes appear, busiest first: the `top` busiest.
    pub containers: Vec<ContainerSummary>,
    /// How many containers (and pods) appear in all.
    pub container_count: usize,
    pub outliers: Outliers,
}

/// One container, or the processes of a pod outside its containers, and what its processes did.
#[derive(Debug, Serialize)]
pub struct ContainerSummary {
    #[serde(flatten)]
    pub container: Container,
    /// Its processes (an exited name's total counts as its `processes`).
    pub processes: Vec<ContainerProcess>,
    /// On-CPU samples of its processes (the `cpu` probe).
    pub cpu_samples: u64,
    /// Syscalls its processes made (the `syscalls` or `syscall-counts` probe).
    pub syscalls: u64,
}

#[derive(Debug, Serialize)]
pub struct ContainerProcess {
    pub tgid: u32,
    pub comm: String,
    pub processes: usize,
}

/// The containers of the recording's processes, by CPU samples, then syscalls, then id.
pub(crate) fn containers(recording: &Recording) -> Vec<ContainerSummary> {
    let mut by_container: BTreeMap<&Container, ContainerSummary> = BTreeMap::new();
    for (&tgid, process) in &recording.processes {
        let Some(container) = &process.container else { continue };
        let entry = by_container.entry(container).or_insert_with(|| ContainerSummary {
            container: container.clone(),
            processes: Vec::new(),
            cpu_samples: 0,
            syscalls: 0,
        });
        entry.processes.push(ContainerProcess {
            tgid,
            comm: process.comm.clone(),
            processes: recording.process_count(tgid),
        });
    }
    let container_of = |tgid: u32| recording.processes.get(&tgid).and_then(|p| p.container.as_ref());
    for stack in recording.stacks.iter().flat_map(|stacks| &stacks.stacks) {
        if let Some(summary) = container_of(stack.tgid).and_then(|c| by_container.get_mut(c)) {
            summary.cpu_samples = summary.cpu_samples.saturating_add(stack.count);
        }
    }
    for row in recording.syscalls.iter().flat_map(|syscalls| &syscalls.per_process) {
        if let Some(summary) = container_of(row.tgid).and_then(|c| by_container.get_mut(c)) {
            summary.syscalls = summary.syscalls.saturating_add(row.count);
        }
    }
    let mut containers: Vec<ContainerSummary> = by_container.into_values().collect();
    containers.sort_by(|a, b| {
        (b.cpu_samples, b.syscalls).cmp(&(a.cpu_samples, a.syscalls)).then_with(|| a.container.id.cmp(&b.container.id))
    });
    containers
}

/// What stands out inside one recording.
#[derive(Debug, Default, Serialize)]
pub struct Outliers {
    /// Processes whose run-queue p99 stands far above the others': a robust (median/MAD) z-score
    /// of log p99 above `OUTLIER_Z`.
    pub runq_processes: Vec<ProcessOutlier>,
    /// Syscalls that fail at least `HIGH_ERROR_PERCENT` of the time (at least `MIN_ERRORS` errors).
    pub failing_syscalls: Vec<FailingSyscall>,
}

#[derive(Debug, Serialize)]
pub struct ProcessOutlier {
    /// The lowest pid of the processes of that name.
    pub tgid: u32,
    /// How many processes of that name there were.
    pub processes: usize,
    pub comm: String,
    pub p99_ns: u64,
    pub median_p99_ns: u64,
    pub z: f64,
}

#[derive(Debug, Serialize)]
pub struct FailingSyscall {
    pub name: String,
    pub count: u64,
    pub errors: u64,
    pub error_percent: f64,
    pub top_errno: Option<String>,
}

/// Iglewicz and Hoaglin's cut-off for the modified z-score.
const OUTLIER_Z: f64 = 3.5;
/// Fewer processes than this: no notion of "the rest" to stand out from.
const MIN_PROCESSES_FOR_OUTLIERS: usize = 5;
const HIGH_ERROR_PERCENT: f64 = 25.0;
const MIN_ERRORS: u64 = 10;

/// Modified z-scores, 0.6745·(x − median)/MAD; None when the spread is zero.
pub fn robust_z(values: &[f64]) -> Option<Vec<f64>> {
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
    };
    if values.is_empty() {
        return None;
    }
    let m = median(&mut values.to_vec());
    let mad = median(&mut values.iter().map(|v| (v - m).abs()).collect());
    (mad > 0.0).then(|| values.iter().map(|v| 0.6745 * (v - m) / mad).collect())
}

fn runq_outliers(recording: &Recording) -> Vec<ProcessOutlier> {
    let ranked: Vec<NamedLatency> = latency_by_name(recording).into_iter().filter(|n| n.latency.p99_ns > 0).collect();
    if ranked.len() < MIN_PROCESSES_FOR_OUTLIERS {
        return Vec::new();
    }
    // Latencies spread over orders of magnitude: compare them on a log scale.
    let logs: Vec<f64> = ranked.iter().map(|n| (n.latency.p99_ns as f64).ln()).collect();
    let Some(z) = robust_z(&logs) else { return Vec::new() };
    let mut sorted: Vec<u64> = ranked.iter().map(|n| n.latency.p99_ns).collect();
    sorted.sort_unstable();
    let median_p99_ns = sorted[sorted.len() / 2];
    let mut outliers: Vec<ProcessOutlier> = ranked
        .iter()
        .zip(z)
        .filter(|(_, z)| *z > OUTLIER_Z)
        .map(|(named, z)| ProcessOutlier {
            tgid: named.tgids[0],
            processes: named.processes,
            comm: named.comm.to_string(),
            p99_ns: named.latency.p99_ns,
            median_p99_ns,
            z,
        })
        .collect();
    outliers.sort_by(|a, b| b.z.total_cmp(&a.z));
    outliers
}

#[derive(Debug, Serialize)]
pub struct RunqSummary {
    pub sched_switches: u64,
    pub involuntary_switches: u64,
    pub wakeups: u64,
    pub system: Percentiles,
    pub per_cpu: Vec<Percentiles>,
    /// Processes with the worst p99, worst first.
    pub worst_processes: Vec<ProcessLatency>,
}

#[derive(Debug, Serialize)]
pub struct ProcessLatency {
    /// The lowest pid of the processes of that name.
    pub tgid: u32,
    /// How many processes of that name there were.
    pub processes: usize,
    pub comm: String,
    pub latency: Percentiles,
}

#[derive(Debug, Serialize)]
pub struct SyscallSummary {
    pub total: u64,
    pub errors: u64,
    /// Why there is no latency, when calls were counted and not timed; absent when timed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_not_measured: Option<&'static str>,
    /// How latency was sampled, when one call in N was timed; absent when every call was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_sampled: Option<String>,
    pub by_count: Vec<SyscallRow>,
    /// Empty when latency was not measured.
    pub by_time: Vec<SyscallRow>,
    /// Every (process, syscall) row with errors, most errors first.
    pub errors_by_process: Vec<ProcessSyscallErrors>,
    /// The (process, syscall) pairs with the worst p99, worst first: only where latency was kept
    /// per process (`record --syscall-latency-per-process`), else empty.
    pub slowest_by_process: Vec<ProcessSyscallLatency>,
}

#[derive(Debug, Serialize)]
pub struct ProcessSyscallLatency {
    pub tgid: u32,
    /// Processes the id stands for (more than 1: a total of exited processes of that name).
    pub processes: usize,
    pub comm: String,
    pub syscall: String,
    pub latency: Percentiles,
}

#[derive(Clone, Debug, Serialize)]
pub struct SyscallRow {
    pub name: String,
    pub nr: u32,
    pub count: u64,
    pub errors: u64,
    /// Time spent in the calls, and its percentiles: absent when calls were only counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<Percentiles>,
    /// The commonest errno of failures, with its count.
    pub top_errno: Option<(String, u64)>,
}

#[derive(Debug, Serialize)]
pub struct ProcessSyscallErrors {
    pub tgid: u32,
    /// Processes the id stands for (more than 1: a total of exited processes of that name).
    pub processes: usize,
    pub comm: String,
    pub syscall: String,
    pub count: u64,
    pub errors: u64,
    pub errnos: Vec<(String, u64)>,
}

/// What a report says of a recording whose calls were counted, not timed.
pub const COUNTS_ONLY: &str = "calls were counted, not timed (--probes syscall-counts): no latency";

/// What a report says of a recording whose syscall latency was timed for one call in `one_in`.
fn latency_sampled(one_in: u32) -> Option<String> {
    (one_in > 1).then(|| {
        format!(
            "latency of 1 call in {one_in}, drawn at random, each counted {one_in} times \
             (--syscall-latency-sample): totals, means and percentiles are estimates; counts and errors are exact"
        )
    })
}

pub fn syscall_name(nr: u32) -> String {
    syscalls::Sysno::new(nr as usize).map_or_else(|| format!("syscall_{nr}"), |s| s.name().to_string())
}

pub fn errno_name(errno: u32) -> String {
    syscalls::Errno::new(errno as i32)
        .name_and_description()
        .map_or_else(|| format!("errno {errno}"), |(name, _)| name.to_string())
}

impl Summary {
    pub fn new(recording: &Recording, top: usize) -> Self {
        let meta = &recording.meta;
        let mut summary = Summary {
            hostname: meta.hostname.clone(),
            kernel_release: meta.kernel_release.clone(),
            cpus: meta.cpus,
            start_unix_ns: meta.start_unix_ns,
            duration_s: meta.duration_ns as f64 / 1e9,
            probes: meta.options.probes.clone(),
            left_out: meta.left_out.clone(),
            kernel_features: meta.kernel_features.clone(),
            stack_ends: {
                let mut ends: Vec<(String, u64)> =
                    recording.counters.stack_ends.iter().map(|(end, &n)| (end.clone(), n)).collect();
                ends.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                ends
            },
            unwind: meta.unwind.clone(),
            containers: Vec::new(),
            container_count: 0,
            pids: meta.options.pids.clone(),
            cgroup: meta.options.cgroup.clone(),
            excluded_self: meta.options.excluded_self,
            events: recording.counters.events(),
            drops: recording.counters.drops.clone(),
            dropped_total: recording.counters.drops.total(),
            runq: recording.runq.as_ref().map(|runq| {
                let mut worst: Vec<ProcessLatency> = latency_by_name(recording)
                    .into_iter()
                    .map(|named| ProcessLatency {
                        tgid: named.tgids[0],
                        processes: named.processes,
                        comm: named.comm.to_string(),
                        latency: named.latency,
                    })
                    .collect();
                worst.sort_by(|a, b| b.latency.p99_ns.cmp(&a.latency.p99_ns).then(a.tgid.cmp(&b.tgid)));
                worst.truncate(top);
                RunqSummary {
                    sched_switches: recording.counters.sched_switches,
                    involuntary_switches: recording.counters.involuntary_switches,
                    wakeups: recording.counters.wakeups,
                    system: percentiles(&runq.system),
                    per_cpu: runq.per_cpu.iter().map(percentiles).collect(),
                    worst_processes: worst,
                }
            }),
            syscalls: None,
            cpu: recording.stacks.as_ref().map(|stacks| HotPaths::new(recording, stacks, top)),
            waits: recording.offcpu.as_ref().map(|stacks| Waits::new(recording, stacks, top)),
            outliers: Outliers { runq_processes: runq_outliers(recording), failing_syscalls: Vec::new() },
        };
        summary.containers = containers(recording);
        summary.container_count = summary.containers.len();
        summary.containers.truncate(top);
        if let Some(syscalls) = &recording.syscalls {
            let (syscalls, failing) = syscall_summary(recording, syscalls, top);
            summary.syscalls = Some(syscalls);
            summary.outliers.failing_syscalls = failing;
        }
        summary
    }
}

fn syscall_summary(
    recording: &Recording,
    syscalls: &crate::recording::Syscalls,
    top: usize,
) -> (SyscallSummary, Vec<FailingSyscall>) {
    #[derive(Default)]
    struct Totals {
        count: u64,
        errors: u64,
        total_ns: u64,
        errnos: BTreeMap<u32, u64>,
    }
    let mut by_nr: BTreeMap<u32, Totals> = BTreeMap::new();
    for row in &syscalls.per_process {
        let totals = by_nr.entry(row.nr).or_default();
        // Saturating: a recording from elsewhere may hold any numbers.
        totals.count = totals.count.saturating_add(row.count);
        totals.errors = totals.errors.saturating_add(row.errors);
        totals.total_ns = totals.total_ns.saturating_add(row.total_ns);
        for &(errno, count) in &row.errnos {
            let slot = totals.errnos.entry(errno).or_default();
            *slot = slot.saturating_add(count);
        }
    }

    let empty = LatencyHistogram::default();
    let timed = !syscalls.counts_only;
    let rows: Vec<SyscallRow> = by_nr
        .iter()
        .map(|(&nr, totals)| SyscallRow {
            name: syscall_name(nr),
            nr,
            count: totals.count,
            errors: totals.errors,
            total_ns: timed.then_some(totals.total_ns),
            latency: timed.then(|| percentiles(syscalls.latency.get(&nr).unwrap_or(&empty))),
            top_errno: totals
                .errnos
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                .map(|(&errno, &count)| (errno_name(errno), count)),
        })
        .collect();
    let ranked = |key: fn(&SyscallRow) -> u64| {
        let mut sorted = rows.clone();
        sorted.sort_by(|a, b| key(b).cmp(&key(a)).then(a.nr.cmp(&b.nr)));
        sorted.truncate(top);
        sorted
    };
    let failing = rows
        .iter()
        .filter(|row| row.errors >= MIN_ERRORS && row.errors as f64 * 100.0 >= HIGH_ERROR_PERCENT * row.count as f64)
        .map(|row| FailingSyscall {
            name: row.name.clone(),
            count: row.count,
            errors: row.errors,
            error_percent: super::percent(row.errors, row.count),
            top_errno: row.top_errno.as_ref().map(|(name, _)| name.clone()),
        })
        .collect();
    let summary = SyscallSummary {
        total: rows.iter().fold(0u64, |sum, r| sum.saturating_add(r.count)),
        errors: rows.iter().fold(0u64, |sum, r| sum.saturating_add(r.errors)),
        latency_not_measured: (!timed).then_some(COUNTS_ONLY),
        latency_sampled: latency_sampled(recording.meta.options.syscall_sample_one_in).filter(|_| timed),
        by_count: ranked(|r| r.count),
        by_time: if timed { ranked(|r| r.total_ns.unwrap_or(0)) } else { Vec::new() },
        errors_by_process: errors_by_process(recording, syscalls, top),
        slowest_by_process: slowest_by_process(recording, syscalls, top),
    };
    (summary, failing)
}

/// The (process, syscall) pairs with the most errors.
fn errors_by_process(
    recording: &Recording,
    syscalls: &crate::recording::Syscalls,
    top: usize,
) -> Vec<ProcessSyscallErrors> {
    let mut rows: Vec<ProcessSyscallErrors> = syscalls
        .per_process
        .iter()
        .filter(|row| row.errors > 0)
        .map(|row| ProcessSyscallErrors {
            tgid: row.tgid,
            processes: recording.process_count(row.tgid),
            comm: recording.process_name(row.tgid).to_string(),
            syscall: syscall_name(row.nr),
            count: row.count,
            errors: row.errors,
            errnos: row.errnos.iter().map(|&(errno, count)| (errno_name(errno), count)).collect(),
        })
        .collect();
    rows.sort_by(|a, b| b.errors.cmp(&a.errors).then(a.tgid.cmp(&b.tgid)));
    rows.truncate(top);
    rows
}

/// The (process, syscall) pairs with the worst p99, among those with enough calls for one.
fn slowest_by_process(
    recording: &Recording,
    syscalls: &crate::recording::Syscalls,
    top: usize,
) -> Vec<ProcessSyscallLatency> {
    let mut rows: Vec<ProcessSyscallLatency> = syscalls
        .per_process
        .iter()
        .filter_map(|row| Some((row, percentiles(row.latency.as_ref()?))))
        .filter(|(_, latency)| latency.count >= MIN_SAMPLES_FOR_RANKING)
        .map(|(row, latency)| ProcessSyscallLatency {
            tgid: row.tgid,
            processes: recording.process_count(row.tgid),
            comm: recording.process_name(row.tgid).to_string(),
            syscall: syscall_name(row.nr),
            latency,
        })
        .collect();
    rows.sort_by(|a, b| b.latency.p99_ns.cmp(&a.latency.p99_ns).then(a.tgid.cmp(&b.tgid)));
    rows.truncate(top);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_syscalls_and_errnos() {
        assert_eq!(syscall_name(syscalls::Sysno::getppid.id() as u32), "getppid");
        assert_eq!(syscall_name(100_000), "syscall_100000");
        assert_eq!(errno_name(2), "ENOENT");
        assert_eq!(errno_name(512), "ERESTARTSYS");
    }

    /// Forty short-lived `sh` with 10 waits each are one workload with a p99; a process with 40
    /// waits has none worth ranking (its p99 would be its maximum).
    #[test]
    fn worst_p99_groups_processes_by_name_and_needs_enough_waits() {
        use crate::recording::{Process, RunqLatency};
        let mut recording = Recording { runq: Some(RunqLatency::default()), ..Default::default() };
        let mut add = |tgid: u32, comm: &str, folded: u32, waits: usize, ns: u64| {
            let runq = recording.runq.as_mut().unwrap();
            runq.per_process.insert(tgid, LatencyHistogram::from_values(std::iter::repeat_n(ns, waits)));
            recording.processes.insert(tgid, Process { comm: comm.into(), folded, ..Default::default() });
        };
        for tgid in 100..140 {
            add(tgid, "sh", 0, 10, 1_000_000);
        }
        add(crate::recording::FIRST_FOLDED_ID, "sh", 200, 100, 1_000_000);
        add(7, "app", 0, 500, 10_000);
        add(8, "lonely", 0, 40, 100_000_000);
        let summary = Summary::new(&recording, 10);
        let worst = &summary.runq.as_ref().unwrap().worst_processes;
        let rows: Vec<(&str, usize, u64)> =
            worst.iter().map(|p| (p.comm.as_str(), p.processes, p.latency.count)).collect();
        assert_eq!(rows, [("sh", 240, 500), ("app", 1, 500)]);
        assert_eq!(worst[0].tgid, 100);
    }

    #[test]
    fn robust_z_finds_the_one_that_stands_out() {
        let z = robust_z(&[10.0, 11.0, 9.0, 10.5, 9.5, 30.0]).unwrap();
        assert!(z[5] > OUTLIER_Z);
        assert!(z[..5].iter().all(|z| z.abs() < OUTLIER_Z));
        assert_eq!(robust_z(&[1.0, 1.0, 1.0]), None);
    }
}

//! What `report` (and the end of `record`) shows, computed once and rendered as text or JSON.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{
    histogram::{Percentiles, percentiles},
    hotpaths::HotPaths,
};
use crate::recording::{Drops, LatencyHistogram, Recording};

/// Processes with fewer run-queue samples than this are left out of the worst-p99 list: a p99 of
/// a handful of samples is noise.
const MIN_SAMPLES_FOR_RANKING: u64 = 20;

#[derive(Debug, Serialize)]
pub struct Summary {
    pub hostname: String,
    pub kernel_release: String,
    pub cpus: u32,
    pub start_unix_ns: u64,
    pub duration_s: f64,
    pub probes: Vec<String>,
    pub pids: Vec<u32>,
    pub cgroup: Option<String>,
    pub events: u64,
    pub drops: Drops,
    pub dropped_total: u64,
    pub runq: Option<RunqSummary>,
    pub syscalls: Option<SyscallSummary>,
    pub cpu: Option<HotPaths>,
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
    pub tgid: u32,
    pub comm: String,
    pub latency: Percentiles,
}

#[derive(Debug, Serialize)]
pub struct SyscallSummary {
    pub total: u64,
    pub errors: u64,
    pub by_count: Vec<SyscallRow>,
    pub by_time: Vec<SyscallRow>,
    /// Every (process, syscall) row with errors, most errors first.
    pub errors_by_process: Vec<ProcessSyscallErrors>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SyscallRow {
    pub name: String,
    pub nr: u32,
    pub count: u64,
    pub errors: u64,
    pub total_ns: u64,
    pub latency: Percentiles,
    /// The commonest errno of failures, with its count.
    pub top_errno: Option<(String, u64)>,
}

#[derive(Debug, Serialize)]
pub struct ProcessSyscallErrors {
    pub tgid: u32,
    pub comm: String,
    pub syscall: String,
    pub count: u64,
    pub errors: u64,
    pub errnos: Vec<(String, u64)>,
}

pub fn syscall_name(nr: u32) -> String {
    syscalls::Sysno::new(nr as usize)
        .map_or_else(|| format!("syscall_{nr}"), |s| s.name().to_string())
}

pub fn errno_name(errno: u32) -> String {
    syscalls::Errno::new(errno as i32)
        .name_and_description()
        .map_or_else(|| format!("errno {errno}"), |(name, _)| name.to_string())
}

impl Summary {
    pub fn new(recording: &Recording, top: usize) -> Self {
        let meta = &recording.meta;
        Summary {
            hostname: meta.hostname.clone(),
            kernel_release: meta.kernel_release.clone(),
            cpus: meta.cpus,
            start_unix_ns: meta.start_unix_ns,
            duration_s: meta.duration_ns as f64 / 1e9,
            probes: meta.options.probes.clone(),
            pids: meta.options.pids.clone(),
            cgroup: meta.options.cgroup.clone(),
            events: recording.counters.events(),
            drops: recording.counters.drops.clone(),
            dropped_total: recording.counters.drops.total(),
            runq: recording.runq.as_ref().map(|runq| {
                let mut worst: Vec<ProcessLatency> = runq
                    .per_process
                    .iter()
                    .map(|(&tgid, histogram)| ProcessLatency {
                        tgid,
                        comm: recording.process_name(tgid).to_string(),
                        latency: percentiles(histogram),
                    })
                    .filter(|p| p.latency.count >= MIN_SAMPLES_FOR_RANKING)
                    .collect();
                worst.sort_by(|a, b| {
                    b.latency
                        .p99_ns
                        .cmp(&a.latency.p99_ns)
                        .then(a.tgid.cmp(&b.tgid))
                });
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
            syscalls: recording
                .syscalls
                .as_ref()
                .map(|s| syscall_summary(recording, s, top)),
            cpu: recording
                .stacks
                .as_ref()
                .map(|stacks| HotPaths::new(recording, stacks, top)),
        }
    }
}

fn syscall_summary(
    recording: &Recording,
    syscalls: &crate::recording::Syscalls,
    top: usize,
) -> SyscallSummary {
    #[derive(Default)]
    struct Totals {
        count: u64,
        errors: u64,
        total_ns: u64,
        errnos: BTreeMap<u32, u64>,
    }
    let mut by_nr: BTreeMap<u32, Totals> = BTreeMap::new();
    let mut errors_by_process = Vec::new();
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
        if row.errors > 0 {
            errors_by_process.push(ProcessSyscallErrors {
                tgid: row.tgid,
                comm: recording.process_name(row.tgid).to_string(),
                syscall: syscall_name(row.nr),
                count: row.count,
                errors: row.errors,
                errnos: row
                    .errnos
                    .iter()
                    .map(|&(errno, count)| (errno_name(errno), count))
                    .collect(),
            });
        }
    }
    errors_by_process.sort_by(|a, b| b.errors.cmp(&a.errors).then(a.tgid.cmp(&b.tgid)));
    errors_by_process.truncate(top);

    let empty = LatencyHistogram::default();
    let rows: Vec<SyscallRow> = by_nr
        .iter()
        .map(|(&nr, totals)| SyscallRow {
            name: syscall_name(nr),
            nr,
            count: totals.count,
            errors: totals.errors,
            total_ns: totals.total_ns,
            latency: percentiles(syscalls.latency.get(&nr).unwrap_or(&empty)),
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
    SyscallSummary {
        total: rows.iter().fold(0u64, |sum, r| sum.saturating_add(r.count)),
        errors: rows
            .iter()
            .fold(0u64, |sum, r| sum.saturating_add(r.errors)),
        by_count: ranked(|r| r.count),
        by_time: ranked(|r| r.total_ns),
        errors_by_process,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_syscalls_and_errnos() {
        assert_eq!(
            syscall_name(syscalls::Sysno::getppid.id() as u32),
            "getppid"
        );
        assert_eq!(syscall_name(100_000), "syscall_100000");
        assert_eq!(errno_name(2), "ENOENT");
        assert_eq!(errno_name(512), "ERESTARTSYS");
    }
}

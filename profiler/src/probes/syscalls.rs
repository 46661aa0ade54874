//! Syscall probe: its tracepoints and the drain of its maps.

use std::collections::BTreeMap;

use anyhow::Result;
use aya::maps::{Array, HashMap};
use profiler_common::{
    histogram::Histogram,
    syscalls::{ProcessSyscall as StatsKey, SyscallErrno, SyscallStats},
};

use super::{
    Feature, Probes,
    program::{Alternatives, Arg, Program, TASK, tracepoint},
};
use crate::recording::{LatencyHistogram, ProcessSyscall, Syscalls};

pub const REQUIRES: &[Feature] = &[Feature::BtfTracepoints];

/// sys_enter(struct pt_regs *regs, long id) and sys_exit(struct pt_regs *regs, long ret): the
/// programs read the second.
const NUMBER_OR_RESULT: &[Arg] = &[Arg::Unread, Arg::Int(8)];

pub const PROGRAMS: &[Alternatives] = &[
    &[Program { name: "syscall_sys_enter", attach: tracepoint("raw_syscalls", "sys_enter", NUMBER_OR_RESULT) }],
    &[Program { name: "syscall_sys_exit", attach: tracepoint("raw_syscalls", "sys_exit", NUMBER_OR_RESULT) }],
    &[Program { name: "syscall_thread_exit", attach: tracepoint("sched", "sched_process_exit", &[TASK]) }],
];

pub fn drain(probes: &Probes) -> Result<Syscalls> {
    let latency_map: Array<_, Histogram> = Array::try_from(probes.map("SYSCALL_LATENCY")?)?;
    let mut latency = BTreeMap::new();
    for (nr, histogram) in latency_map.iter().enumerate() {
        let histogram = LatencyHistogram::from_dense(histogram?.counts());
        if !histogram.is_empty() {
            latency.insert(nr as u32, histogram);
        }
    }

    let errno_map: HashMap<_, SyscallErrno, u64> = HashMap::try_from(probes.map("SYSCALL_ERRNOS")?)?;
    let stats_map: HashMap<_, StatsKey, SyscallStats> = HashMap::try_from(probes.map("SYSCALL_STATS")?)?;
    let per_process =
        rows(stats_map.iter().collect::<Result<Vec<_>, _>>()?, errno_map.iter().collect::<Result<Vec<_>, _>>()?);
    Ok(Syscalls { latency, per_process })
}

/// Per (process, syscall) rows, each with its errnos (commonest first), sorted by process.
pub(super) fn rows(
    stats: Vec<(StatsKey, SyscallStats)>,
    errno_counts: Vec<(SyscallErrno, u64)>,
) -> Vec<ProcessSyscall> {
    let mut errnos: BTreeMap<(u32, u32), Vec<(u32, u64)>> = BTreeMap::new();
    for (key, count) in errno_counts {
        errnos.entry((key.tgid, key.nr)).or_default().push((key.errno, count));
    }
    let mut rows: Vec<ProcessSyscall> = stats
        .into_iter()
        .map(|(key, stats)| {
            let mut errnos = errnos.remove(&(key.tgid, key.nr)).unwrap_or_default();
            errnos.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            ProcessSyscall {
                tgid: key.tgid,
                nr: key.nr,
                count: stats.count,
                errors: stats.errors,
                total_ns: stats.total_ns,
                errnos,
            }
        })
        .collect();
    rows.sort_by_key(|row| (row.tgid, row.nr));
    rows
}

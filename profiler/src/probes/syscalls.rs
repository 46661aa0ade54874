//! Syscall probe: its tracepoints and the drain of its maps.

use std::collections::BTreeMap;

use anyhow::Result;
use aya::maps::{Array, HashMap};
use profiler_common::{
    histogram::Histogram,
    syscalls::{ProcessSyscall as StatsKey, SyscallErrno, SyscallStats},
};

use super::{Probes, Tracepoint};
use crate::recording::{LatencyHistogram, ProcessSyscall, Syscalls};

pub const TRACEPOINTS: &[Tracepoint] = &[
    Tracepoint { category: "raw_syscalls", name: "sys_enter", args: 2 },
    Tracepoint { category: "raw_syscalls", name: "sys_exit", args: 2 },
    super::THREAD_EXIT,
];

pub fn drain(probes: &Probes) -> Result<Syscalls> {
    let latency_map: Array<_, Histogram> = Array::try_from(probes.map("SYSCALL_LATENCY")?)?;
    let mut latency = BTreeMap::new();
    for (nr, histogram) in latency_map.iter().enumerate() {
        let histogram = LatencyHistogram::from_dense(&histogram?.buckets);
        if !histogram.is_empty() {
            latency.insert(nr as u32, histogram);
        }
    }

    let errno_map: HashMap<_, SyscallErrno, u64> = HashMap::try_from(probes.map("SYSCALL_ERRNOS")?)?;
    let mut errnos: BTreeMap<(u32, u32), Vec<(u32, u64)>> = BTreeMap::new();
    for entry in errno_map.iter() {
        let (key, count) = entry?;
        errnos.entry((key.tgid, key.nr)).or_default().push((key.errno, count));
    }

    let stats_map: HashMap<_, StatsKey, SyscallStats> = HashMap::try_from(probes.map("SYSCALL_STATS")?)?;
    let mut per_process = Vec::new();
    for entry in stats_map.iter() {
        let (key, stats) = entry?;
        let mut errnos = errnos.remove(&(key.tgid, key.nr)).unwrap_or_default();
        errnos.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        per_process.push(ProcessSyscall {
            tgid: key.tgid,
            nr: key.nr,
            count: stats.count,
            errors: stats.errors,
            total_ns: stats.total_ns,
            errnos,
        });
    }
    per_process.sort_by_key(|row| (row.tgid, row.nr));
    Ok(Syscalls { latency, per_process })
}

/// Removes the entries of these processes (which exited) from the per-process maps.
pub fn forget(probes: &mut Probes, tgids: &[u32]) -> Result<()> {
    if tgids.is_empty() {
        return Ok(());
    }
    let mut stats: HashMap<_, StatsKey, SyscallStats> = HashMap::try_from(probes.map_mut("SYSCALL_STATS")?)?;
    let doomed: Vec<StatsKey> = stats.keys().filter_map(Result::ok).filter(|k| tgids.contains(&k.tgid)).collect();
    let removed = doomed.iter().filter(|key| stats.remove(key).is_ok()).count();
    probes.note_removed("SYSCALL_STATS", removed as u64);
    let mut errnos: HashMap<_, SyscallErrno, u64> = HashMap::try_from(probes.map_mut("SYSCALL_ERRNOS")?)?;
    let doomed: Vec<SyscallErrno> = errnos.keys().filter_map(Result::ok).filter(|k| tgids.contains(&k.tgid)).collect();
    let removed = doomed.iter().filter(|key| errnos.remove(key).is_ok()).count();
    probes.note_removed("SYSCALL_ERRNOS", removed as u64);
    Ok(())
}

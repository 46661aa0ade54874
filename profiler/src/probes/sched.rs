//! Run-queue latency probe: its tracepoints and the drain of its maps.

use std::collections::BTreeMap;

use anyhow::Result;
use aya::maps::{HashMap, PerCpuArray};
use profiler_common::{
    histogram::{Histogram, NUM_BUCKETS},
    runqlat::ProcessBucket,
};

use super::{Probes, Tracepoint};
use crate::recording::{LatencyHistogram, RunqLatency};

pub const TRACEPOINTS: &[Tracepoint] = &[
    Tracepoint { category: "sched", name: "sched_wakeup", args: 1 },
    Tracepoint { category: "sched", name: "sched_wakeup_new", args: 1 },
    Tracepoint { category: "sched", name: "sched_switch", args: 4 },
    super::THREAD_EXIT,
];

pub fn drain(probes: &Probes) -> Result<RunqLatency> {
    let per_cpu_map: PerCpuArray<_, Histogram> = PerCpuArray::try_from(probes.map("RUNQ_LATENCY")?)?;
    let per_cpu: Vec<LatencyHistogram> =
        per_cpu_map.get(&0, 0)?.iter().map(|h| LatencyHistogram::from_dense(&h.buckets)).collect();
    let mut system = LatencyHistogram::default();
    for histogram in &per_cpu {
        system.merge(histogram);
    }

    let process_map: HashMap<_, ProcessBucket, u64> = HashMap::try_from(probes.map("RUNQ_PROCESS_LATENCY")?)?;
    let mut dense: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for entry in process_map.iter() {
        let (key, count) = entry?;
        if let Some(slot) = dense.entry(key.tgid).or_insert_with(|| vec![0; NUM_BUCKETS]).get_mut(key.bucket as usize) {
            *slot += count;
        }
    }
    let per_process = dense.into_iter().map(|(tgid, counts)| (tgid, LatencyHistogram::from_dense(&counts))).collect();
    Ok(RunqLatency { system, per_cpu, per_process })
}

/// Removes the entries of these processes (which exited) from the per-process map.
pub fn forget(probes: &mut Probes, tgids: &[u32]) -> Result<()> {
    if tgids.is_empty() || probes.map("RUNQ_PROCESS_LATENCY").is_err() {
        return Ok(());
    }
    let mut map: HashMap<_, ProcessBucket, u64> = HashMap::try_from(probes.map_mut("RUNQ_PROCESS_LATENCY")?)?;
    let doomed: Vec<ProcessBucket> = map.keys().filter_map(Result::ok).filter(|k| tgids.contains(&k.tgid)).collect();
    let removed = doomed.iter().filter(|key| map.remove(key).is_ok()).count();
    probes.note_removed("RUNQ_PROCESS_LATENCY", removed as u64);
    Ok(())
}

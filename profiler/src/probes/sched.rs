//! Run-queue latency probe: its tracepoints and the drain of its maps.

use std::collections::BTreeMap;

use anyhow::Result;
use aya::maps::{HashMap, PerCpuArray};
use profiler_common::{
    histogram::{Histogram, NUM_BUCKETS},
    runqlat::ProcessBucket,
};

use super::{
    Feature, Probes,
    program::{Alternatives, Arg, Program, TASK, tracepoint},
};
use crate::recording::{LatencyHistogram, RunqLatency};

pub const REQUIRES: &[Feature] = &[Feature::BtfTracepoints];

/// `bool preempt`.
const PREEMPT: Arg = Arg::Int(1);

pub const PROGRAMS: &[Alternatives] = &[
    &[Program { name: "runq_sched_wakeup", attach: tracepoint("sched", "sched_wakeup", &[TASK]) }],
    &[Program { name: "runq_sched_wakeup_new", attach: tracepoint("sched", "sched_wakeup_new", &[TASK]) }],
    &[
        // 5.18 and later pass the switched-out task's state; before, the program reads it from the task.
        Program {
            name: "runq_sched_switch",
            attach: tracepoint("sched", "sched_switch", &[PREEMPT, TASK, TASK, Arg::Int(4)]),
        },
        Program {
            name: "runq_sched_switch_task_state",
            attach: tracepoint("sched", "sched_switch", &[PREEMPT, TASK, TASK]),
        },
    ],
    &[Program { name: "runq_thread_exit", attach: tracepoint("sched", "sched_process_exit", &[TASK]) }],
];

pub fn drain(probes: &Probes) -> Result<RunqLatency> {
    let per_cpu_map: PerCpuArray<_, Histogram> = PerCpuArray::try_from(probes.map("RUNQ_LATENCY")?)?;
    let per_cpu: Vec<LatencyHistogram> =
        per_cpu_map.get(&0, 0)?.iter().map(|h| LatencyHistogram::from_dense(h.counts())).collect();
    let mut system = LatencyHistogram::default();
    for histogram in &per_cpu {
        system.merge(histogram);
    }

    let process_map: HashMap<_, ProcessBucket, u64> = HashMap::try_from(probes.map("RUNQ_PROCESS_LATENCY")?)?;
    let per_process = per_process(process_map.iter().collect::<Result<Vec<_>, _>>()?);
    Ok(RunqLatency { system, per_cpu, per_process })
}

/// Per-process histograms from (tgid, bucket) -> count entries.
pub(super) fn per_process(entries: Vec<(ProcessBucket, u64)>) -> BTreeMap<u32, LatencyHistogram> {
    let mut dense: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (key, count) in entries {
        if let Some(slot) = dense.entry(key.tgid).or_insert_with(|| vec![0; NUM_BUCKETS]).get_mut(key.bucket as usize) {
            *slot += count;
        }
    }
    dense.into_iter().map(|(tgid, counts)| (tgid, LatencyHistogram::from_dense(&counts))).collect()
}

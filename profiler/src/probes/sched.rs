//! Run-queue latency probe (`profiler-ebpf/src/runqlat.rs`): its programs and the drain of its maps.

use anyhow::Result;
use aya::maps::PerCpuArray;
use profiler_common::{
    counters::Counter,
    histogram::Histogram,
    runqlat::{MAX_PROCESS_BUCKETS, ProcessBucket, RUNQ_LATENCY, RUNQ_PROCESS_LATENCY},
};

use super::{
    Drain, Drained, Feature, Kernel, ProbeOptions, ProbeSpec,
    counter_map::{CounterMap, Values, dense_growth, histograms},
    loader::map,
    program::{Alternatives, Arg, Program, TASK, tracepoint},
};
use crate::recording::{LatencyHistogram, RunqLatency};

pub struct Sched;

/// `bool preempt`.
const PREEMPT: Arg = Arg::Int(1);

const PROGRAMS: &[Alternatives] = &[
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

impl ProbeSpec for Sched {
    fn name(&self) -> &'static str {
        "sched"
    }

    fn about(&self) -> &'static str {
        "run-queue latency from sched_wakeup, sched_wakeup_new and sched_switch"
    }

    fn requires(&self) -> &'static [Feature] {
        &[Feature::BtfTracepoints]
    }

    fn programs(&self) -> &'static [Alternatives] {
        PROGRAMS
    }

    fn own_maps(&self) -> &'static [&'static str] {
        &[RUNQ_LATENCY, RUNQ_PROCESS_LATENCY]
    }

    fn drain(&self, _options: &ProbeOptions) -> Box<dyn Drain> {
        Box::new(SchedDrain {
            per_cpu: Vec::new(),
            per_process: CounterMap::new(
                RUNQ_PROCESS_LATENCY,
                Values::Shared,
                MAX_PROCESS_BUCKETS,
                Counter::RunqProcessEntries,
                |key: &ProcessBucket| key.tgid,
            ),
        })
    }
}

struct SchedDrain {
    /// Each CPU's histogram at the last drain.
    per_cpu: Vec<Vec<u64>>,
    per_process: CounterMap<ProcessBucket, u64>,
}

impl Drain for SchedDrain {
    fn drain(&mut self, kernel: &mut Kernel<'_>, interval: &mut Drained) -> Result<()> {
        let per_cpu_map: PerCpuArray<_, Histogram> = PerCpuArray::try_from(map(kernel.ebpf, RUNQ_LATENCY)?)?;
        let now: Vec<Vec<u64>> = per_cpu_map.get(&0, 0)?.iter().map(|h| h.counts().to_vec()).collect();
        let per_cpu: Vec<LatencyHistogram> = now
            .iter()
            .enumerate()
            .map(|(cpu, counts)| {
                LatencyHistogram::from_dense(&dense_growth(counts, self.per_cpu.get(cpu).map_or(&[], Vec::as_slice)))
            })
            .collect();
        self.per_cpu = now;
        let mut system = LatencyHistogram::default();
        for histogram in &per_cpu {
            system.merge(histogram);
        }
        let entries = self.per_process.drain(kernel.ebpf, kernel.exits, &mut ())?;
        let per_process = histograms(entries.into_iter().map(|(key, count)| (key.tgid, key.bucket, count)));
        interval.fills.push(self.per_process.fill());
        interval.recording.runq = Some(RunqLatency { system, per_cpu, per_process });
        Ok(())
    }

    fn fullest(&self, counters: &[u64]) -> f64 {
        self.per_process.fill_now(counters)
    }
}

//! Off-CPU probe (`profiler-ebpf/src/offcpu.rs`): sched_switch, the unwinder it tail-calls, and
//! the drain of the blocked time by (process, stacks, state).

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap};
use profiler_common::{
    offcpu::{
        BLOCKED, Blocked, MAX_OFFCPU_KEYS, OFFCPU_BUFFER, OFFCPU_FRAMES, OFFCPU_TIME, OFFCPU_UNWIND_PROGRAMS,
        OffCpuKey, OffCpuTime, WaitState,
    },
    oncpu::SAMPLED_PROCESSES,
    unwind::{PROCESS_MAPPINGS, StackFrames, UNWIND_PAGES, UNWIND_ROWS},
};

use super::{
    Drain, Drained, Feature, Kernel, ProbeOptions, ProbeSpec,
    loader::{map, map_mut},
    oncpu::{EXEC, FLIP_GRACE, raw_stack},
    program::{Alternatives, Arg, Attach, Caller, Program, TASK, Tracepoint, tracepoint},
};

pub struct OffCpu;

const PROGRAMS: &[Alternatives] = &[
    // Before the switch: its first tail call needs it.
    &[Program {
        name: "offcpu_unwind",
        attach: Attach::TailCall {
            array: OFFCPU_UNWIND_PROGRAMS,
            index: 0,
            of: Caller::Tracepoint(Tracepoint { category: "sched", name: "sched_switch", args: &[] }),
        },
    }],
    &[
        // 5.18 and later pass the switched-out task's state; before, the program reads it from the task.
        Program {
            name: "offcpu_sched_switch",
            attach: tracepoint("sched", "sched_switch", &[Arg::Int(1), TASK, TASK, Arg::Int(4)]),
        },
        Program {
            name: "offcpu_sched_switch_task_state",
            attach: tracepoint("sched", "sched_switch", &[Arg::Int(1), TASK, TASK]),
        },
    ],
    &[EXEC],
];

impl ProbeSpec for OffCpu {
    fn name(&self) -> &'static str {
        "offcpu"
    }

    fn about(&self) -> &'static str {
        "where threads block, and for how long: kernel and user stacks at each blocking switch-out"
    }

    fn requires(&self) -> &'static [Feature] {
        &[Feature::BtfTracepoints, Feature::RingBuffer, Feature::StackTraces]
    }

    fn programs(&self) -> &'static [Alternatives] {
        PROGRAMS
    }

    fn own_maps(&self) -> &'static [&'static str] {
        &[
            OFFCPU_TIME[0],
            OFFCPU_TIME[1],
            OFFCPU_FRAMES,
            BLOCKED,
            SAMPLED_PROCESSES,
            UNWIND_ROWS,
            UNWIND_PAGES,
            PROCESS_MAPPINGS,
        ]
    }

    fn by_default(&self) -> bool {
        false
    }

    fn drain(&self, _options: &ProbeOptions) -> Box<dyn Drain> {
        Box::new(OffCpuDrain { active: 0, held: std::collections::HashMap::new() })
    }
}

/// Drains the two time maps in turn, as the cpu probe drains its sample maps. The frames stay in
/// their LRU map: a thread blocked now may run again after any number of drains.
struct OffCpuDrain {
    /// The index of the time map the probe writes.
    active: usize,
    /// The frames of the stacks of threads blocked at the last drain, read then: a thread blocked
    /// for long leaves its stacks untouched in the LRU map, the first to be evicted, and reading
    /// them from userspace does not count as a use.
    held: std::collections::HashMap<u64, Vec<u64>>,
}

impl Drain for OffCpuDrain {
    fn drain(&mut self, kernel: &mut Kernel<'_>, interval: &mut Drained) -> Result<()> {
        let draining = self.active;
        self.active = 1 - draining;
        let mut buffer: Array<_, u32> = Array::try_from(map_mut(kernel.ebpf, OFFCPU_BUFFER)?)?;
        buffer.set(0, self.active as u32, 0).context("cannot switch the off-CPU time maps")?;
        std::thread::sleep(FLIP_GRACE);

        let mut times: HashMap<_, OffCpuKey, OffCpuTime> =
            HashMap::try_from(map_mut(kernel.ebpf, OFFCPU_TIME[draining])?)?;
        let entries: Vec<(OffCpuKey, OffCpuTime)> = times.iter().collect::<Result<_, _>>()?;
        for (key, _) in &entries {
            times.remove(key)?;
        }
        interval.fills.push((OFFCPU_TIME[draining], entries.len() as f64 / f64::from(MAX_OFFCPU_KEYS)));
        // aya reads an LRU hash map as a hash map.
        let blocked: HashMap<_, u32, Blocked> = HashMap::try_from(map(kernel.ebpf, BLOCKED)?)?;
        let pending: Vec<u64> = blocked
            .iter()
            .filter_map(Result::ok)
            .flat_map(|(_, blocked)| [blocked.key.stack.kernel, blocked.key.stack.user])
            .filter(|&hash| hash != 0)
            .collect();
        let frames: HashMap<_, u64, StackFrames> = HashMap::try_from(map(kernel.ebpf, OFFCPU_FRAMES)?)?;
        let read = |hash: u64| {
            let stack = frames.get(&hash, 0).ok()?;
            Some(stack.frames[..(stack.len as usize).min(stack.frames.len())].to_vec())
        };
        let held = &self.held;
        let frames_of = |hash: u64| read(hash).or_else(|| held.get(&hash).cloned());
        let us_squared = entries.iter().fold(0u64, |sum, (_, time)| sum.saturating_add(time.us_squared));
        interval.recording.counters.offcpu_us_squared = us_squared;
        interval.offcpu.extend(entries.into_iter().map(|(key, time)| {
            let wait = WaitState::from_u32(key.state).unwrap_or(WaitState::Other);
            // Blocks taken as one in N are counted N times already, in the kernel.
            raw_stack(&key.stack, (time.ns, time.blocks), Some(wait), frames_of)
        }));
        let held: std::collections::HashMap<u64, Vec<u64>> =
            pending.into_iter().filter_map(|hash| Some((hash, frames_of(hash)?))).collect();
        self.held = held;
        Ok(())
    }
}

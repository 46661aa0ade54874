//! On-CPU sampling probe (`profiler-ebpf/src/oncpu.rs`): a perf_event program on every online CPU,
//! the exec tracepoint that re-announces a process after exec, and the drain of the stack maps.

use std::time::Duration;

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        PerfEvent,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
    util::online_cpus,
};
use profiler_common::{
    counters::{COUNTERS, Counter},
    offcpu::WaitState,
    oncpu::{MAX_STACKS, NEW_PROCESSES, SAMPLED_PROCESSES, STACK_BUFFER, STACK_FRAMES, STACK_SAMPLES, StackKey},
    unwind::{
        PROCESS_MAPPINGS, STACK_END_COUNTS, STACK_ENDS, StackEnd, StackFrames, UNWIND_PAGES, UNWIND_PROGRAMS,
        UNWIND_ROWS,
    },
};

use super::{
    Drain, Drained, Feature, Kernel, ProbeOptions, ProbeSpec, Probes,
    links::Links,
    loader::{map, map_mut},
    program::{Alternatives, Attach, Caller, Program, TASK, tracepoint},
    verifier,
};
use crate::symbolize::RawStack;

pub struct Cpu;

const PROGRAMS: &[Alternatives] = &[
    // Before the sampler: the sampler's first tail call needs it.
    &[Program {
        name: "oncpu_unwind",
        attach: Attach::TailCall { array: UNWIND_PROGRAMS, index: 0, of: Caller::PerfEvent },
    }],
    &[Program { name: "oncpu_sample", attach: Attach::CpuClock }],
    &[EXEC],
];

/// The exec tracepoint, which both stack probes need (it runs once if both do).
pub(super) const EXEC: Program =
    Program { name: "oncpu_sched_process_exec", attach: tracepoint("sched", "sched_process_exec", &[TASK]) };

/// How long a sample that read the old buffer index may still be counting into that buffer after
/// the flip: a perf_event program runs for microseconds, in interrupt context.
pub(super) const FLIP_GRACE: Duration = Duration::from_millis(5);

impl ProbeSpec for Cpu {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn about(&self) -> &'static str {
        "kernel and user stacks sampled on the CPU clock of every CPU"
    }

    fn requires(&self) -> &'static [Feature] {
        &[Feature::BtfTracepoints, Feature::RingBuffer, Feature::StackTraces]
    }

    fn programs(&self) -> &'static [Alternatives] {
        PROGRAMS
    }

    fn own_maps(&self) -> &'static [&'static str] {
        // Not the ring buffer: its size must be a power-of-two number of pages.
        &[
            STACK_FRAMES[0],
            STACK_FRAMES[1],
            STACK_SAMPLES[0],
            STACK_SAMPLES[1],
            SAMPLED_PROCESSES,
            UNWIND_ROWS,
            UNWIND_PAGES,
            PROCESS_MAPPINGS,
        ]
    }

    fn drain(&self, _options: &ProbeOptions) -> Box<dyn Drain> {
        Box::new(StackDrain { active: 0, ends: [0; STACK_ENDS as usize], entries_at_flip: 0 })
    }
}

/// Attaches the sampler to the software CPU clock of every online CPU. The software clock exists
/// everywhere, including VMs without a hardware PMU.
pub(super) fn attach_sampler(ebpf: &mut Ebpf, name: &str, options: &ProbeOptions, links: &mut Links) -> Result<()> {
    let keep_log = options.keep_verifier_log;
    let program: &mut PerfEvent =
        ebpf.program_mut(name).with_context(|| format!("program {name} missing from the eBPF object"))?.try_into()?;
    program.load().map_err(|e| verifier::explain(name, e, keep_log))?;
    let frequency_hz = u64::from(options.frequency_hz);
    let cpus = online_cpus().map_err(|(_, error)| error).context("cannot list online CPUs")?;
    for cpu in cpus {
        let link = program
            .attach(
                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Frequency(frequency_hz),
                false,
            )
            .map_err(|e| verifier::explain(name, e, keep_log))
            .with_context(|| format!("cannot open the CPU clock event on CPU {cpu}"))?;
        links.hold(program.take_link(link)?);
    }
    Ok(())
}

/// The ring buffer on which the kernel announces processes as their stacks are first taken, when
/// the cpu or offcpu probe runs.
pub fn new_processes(probes: &mut Probes) -> Result<Option<RingBuf<MapData>>> {
    if !probes.runs(Cpu.name()) && !probes.runs(super::offcpu::OffCpu.name()) {
        return Ok(None);
    }
    let map = probes.ebpf.take_map(NEW_PROCESSES).with_context(|| format!("map {NEW_PROCESSES} missing"))?;
    Ok(Some(RingBuf::try_from(map)?))
}

/// Drains the two pairs of sample and frame maps in turn: the sampler is pointed at the other
/// pair, and once no sample can still be writing into this one, it is read and emptied.
struct StackDrain {
    /// The index of the pair the sampler writes.
    active: usize,
    /// `STACK_END_COUNTS` at the last drain, summed over CPUs.
    ends: [u64; STACK_ENDS as usize],
    /// `Counter::StackEntries` when the sampler last moved to a freshly emptied frame map.
    entries_at_flip: u64,
}

impl Drain for StackDrain {
    fn drain(&mut self, kernel: &mut Kernel<'_>, interval: &mut Drained) -> Result<()> {
        let draining = self.active;
        self.active = 1 - draining;
        let mut buffer: Array<_, u32> = Array::try_from(map_mut(kernel.ebpf, STACK_BUFFER)?)?;
        buffer.set(0, self.active as u32, 0).context("cannot switch the sample maps")?;
        let counters: PerCpuArray<_, u64> = PerCpuArray::try_from(map(kernel.ebpf, COUNTERS)?)?;
        self.entries_at_flip = counters.get(&(Counter::StackEntries as u32), 0)?.iter().sum();
        std::thread::sleep(FLIP_GRACE);

        let mut samples: HashMap<_, StackKey, u64> = HashMap::try_from(map_mut(kernel.ebpf, STACK_SAMPLES[draining])?)?;
        let entries: Vec<(StackKey, u64)> = samples.iter().collect::<Result<_, _>>()?;
        for (key, _) in &entries {
            samples.remove(key)?;
        }
        let mut frames: HashMap<_, u64, StackFrames> =
            HashMap::try_from(map_mut(kernel.ebpf, STACK_FRAMES[draining])?)?;
        let stacks: std::collections::HashMap<u64, Vec<u64>> = frames
            .iter()
            .filter_map(Result::ok)
            .map(|(hash, stack)| (hash, stack.frames[..(stack.len as usize).min(stack.frames.len())].to_vec()))
            .collect();
        for hash in stacks.keys() {
            frames.remove(hash)?;
        }
        let frames_of = |hash: u64| stacks.get(&hash).cloned();
        interval.stacks.extend(entries.into_iter().map(|(key, count)| raw_stack(&key, (count, 0), None, frames_of)));
        self.drain_ends(kernel, interval)
    }

    fn fullest(&self, counters: &[u64]) -> f64 {
        self.frames_fill(counters)
    }
}

/// A stack as the kernel keyed it, with the frames of its hashes found by `frames_of`: a hash
/// whose frames are not there (a sample counted as the map was emptied, frames evicted) is a lost
/// stack, drawn as such, never as a stack without that half.
pub(super) fn raw_stack(
    key: &StackKey,
    (count, blocks): (u64, u64),
    wait: Option<WaitState>,
    frames_of: impl Fn(u64) -> Option<Vec<u64>>,
) -> RawStack {
    let frames_of = |hash: u64| match hash {
        0 => Some(Vec::new()),
        hash => frames_of(hash),
    };
    let (kernel, user) = (frames_of(key.kernel), frames_of(key.user));
    let end = match (&kernel, &user) {
        (Some(_), Some(_)) => StackEnd::from_u32(key.end).unwrap_or(StackEnd::Unsupported),
        _ => StackEnd::Lost,
    };
    RawStack {
        tgid: key.tgid,
        tid: key.tid,
        kernel: kernel.unwrap_or_default(),
        user: user.unwrap_or_default(),
        end,
        count,
        blocks,
        wait,
    }
}

impl StackDrain {
    /// How full the frame map being written is: stacks kept since it was emptied, over its size.
    fn frames_fill(&self, counters: &[u64]) -> f64 {
        let kept = counters[Counter::StackEntries as usize].saturating_sub(self.entries_at_flip);
        kept as f64 / f64::from(MAX_STACKS)
    }

    /// How the user stacks of the interval ended, by reason.
    fn drain_ends(&mut self, kernel: &mut Kernel<'_>, interval: &mut Drained) -> Result<()> {
        let counts: PerCpuArray<_, u64> = PerCpuArray::try_from(map(kernel.ebpf, STACK_END_COUNTS)?)?;
        for end in StackEnd::ALL {
            let now: u64 = counts.get(&(end as u32), 0)?.iter().sum();
            let growth = now.saturating_sub(self.ends[end as usize]);
            self.ends[end as usize] = now;
            if growth > 0 {
                interval.recording.counters.stack_ends.insert(stack_end_name(end).to_string(), growth);
            }
        }
        Ok(())
    }
}

/// How a stack's end is called in reports and frames.
pub fn stack_end_name(end: StackEnd) -> &'static str {
    match end {
        StackEnd::Complete => "complete",
        StackEnd::NoUserStack => "no user stack",
        StackEnd::FramePointers => "frame pointers (tables not loaded yet)",
        StackEnd::OutsideMapping => "address outside any mapping",
        StackEnd::NoRow => "no unwind information",
        StackEnd::Unsupported => "unsupported unwind rule",
        StackEnd::ReadFault => "stack read fault",
        StackEnd::DepthLimit => "depth limit",
        StackEnd::TailCallLimit => "tail-call limit",
        StackEnd::Lost => "lost (stack map full)",
    }
}

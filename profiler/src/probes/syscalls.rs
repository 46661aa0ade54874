//! Syscall probes (`profiler-ebpf/src/syscalls.rs`): `syscalls`, timed, and `syscall-counts`, which
//! counts from sys_exit alone; their programs and the drain of the maps they share.

use std::collections::{BTreeMap, HashMap};

use anyhow::Result;
use aya::maps::Array;
use profiler_common::{
    counters::Counter,
    histogram::Histogram,
    syscalls::{
        MAX_PROCESS_SYSCALLS, MAX_SYSCALL_ERRNOS, ProcessSyscall as StatsKey, SYSCALL_ERRNOS, SYSCALL_LATENCY,
        SYSCALL_STATS, SyscallErrno, SyscallStats,
    },
};

use super::{
    Drain, Drained, Feature, Kernel, ProbeSpec,
    counter_map::{CounterMap, Growth, Values, dense_growth},
    loader::map,
    program::{Alternatives, Arg, Program, TASK, tracepoint},
};
use crate::recording::{LatencyHistogram, ProcessSyscall, Syscalls as SyscallData};

pub struct Syscalls;

/// Counts and errors only: one program, no clock.
pub struct SyscallCounts;

// The programs read the syscall number from `struct pt_regs` at x86_64's offset of `orig_ax`.
#[cfg(not(target_arch = "x86_64"))]
compile_error!("the syscall probes read x86_64's struct pt_regs: give PT_REGS_ORIG_AX this architecture's offset");

/// sys_enter(struct pt_regs *regs, long id): the program reads the number.
const NUMBER: &[Arg] = &[Arg::Unread, Arg::Int(8)];
/// sys_exit(struct pt_regs *regs, long ret): the programs read the result, and the syscall number
/// from the registers where they have no entry of the call.
const REGS_AND_RESULT: &[Arg] = &[Arg::StructPtr("pt_regs"), Arg::Int(8)];

const PROGRAMS: &[Alternatives] = &[
    &[Program { name: "syscall_sys_enter", attach: tracepoint("raw_syscalls", "sys_enter", NUMBER) }],
    &[Program { name: "syscall_sys_exit", attach: tracepoint("raw_syscalls", "sys_exit", REGS_AND_RESULT) }],
    &[Program { name: "syscall_thread_exit", attach: tracepoint("sched", "sched_process_exit", &[TASK]) }],
];

const COUNT_PROGRAMS: &[Alternatives] =
    &[&[Program { name: "syscall_counts_sys_exit", attach: tracepoint("raw_syscalls", "sys_exit", REGS_AND_RESULT) }]];

/// The maps both probes fill.
const COUNT_MAPS: &[&str] = &[SYSCALL_STATS, SYSCALL_ERRNOS];

impl ProbeSpec for Syscalls {
    fn name(&self) -> &'static str {
        "syscalls"
    }

    fn about(&self) -> &'static str {
        "syscall counts, errors and latency from raw_syscalls sys_enter and sys_exit"
    }

    fn requires(&self) -> &'static [Feature] {
        &[Feature::BtfTracepoints]
    }

    fn programs(&self) -> &'static [Alternatives] {
        PROGRAMS
    }

    fn own_maps(&self) -> &'static [&'static str] {
        &[SYSCALL_STATS, SYSCALL_ERRNOS, SYSCALL_LATENCY]
    }

    fn drain(&self) -> Box<dyn Drain> {
        Box::new(SyscallDrain::new(true))
    }
}

impl ProbeSpec for SyscallCounts {
    fn name(&self) -> &'static str {
        "syscall-counts"
    }

    fn about(&self) -> &'static str {
        "syscall counts and errors only, from sys_exit alone: cheaper than syscalls, no latency"
    }

    fn requires(&self) -> &'static [Feature] {
        &[Feature::BtfTracepoints]
    }

    fn programs(&self) -> &'static [Alternatives] {
        COUNT_PROGRAMS
    }

    fn own_maps(&self) -> &'static [&'static str] {
        COUNT_MAPS
    }

    fn by_default(&self) -> bool {
        false
    }

    fn excludes(&self) -> &'static [&'static str] {
        &["syscalls"]
    }

    fn drain(&self) -> Box<dyn Drain> {
        Box::new(SyscallDrain::new(false))
    }
}

impl SyscallDrain {
    fn new(timed: bool) -> SyscallDrain {
        SyscallDrain {
            timed,
            latency: HashMap::new(),
            stats: CounterMap::new(
                SYSCALL_STATS,
                Values::PerCpu,
                MAX_PROCESS_SYSCALLS,
                Counter::SyscallProcessEntries,
                |key: &StatsKey| key.tgid,
            ),
            errnos: CounterMap::new(
                SYSCALL_ERRNOS,
                Values::Shared,
                MAX_SYSCALL_ERRNOS,
                Counter::SyscallErrnoEntries,
                |key: &SyscallErrno| key.tgid,
            ),
        }
    }
}

impl Growth for SyscallStats {
    fn since(self, before: Self) -> Self {
        SyscallStats {
            count: self.count.saturating_sub(before.count),
            errors: self.errors.saturating_sub(before.errors),
            total_ns: self.total_ns.saturating_sub(before.total_ns),
        }
    }

    fn plus(self, other: Self) -> Self {
        SyscallStats {
            count: self.count.saturating_add(other.count),
            errors: self.errors.saturating_add(other.errors),
            total_ns: self.total_ns.saturating_add(other.total_ns),
        }
    }

    fn is_zero(&self) -> bool {
        self.count == 0
    }
}

struct SyscallDrain {
    /// Whether calls are timed (`syscalls`) or only counted (`syscall-counts`).
    timed: bool,
    /// Each syscall's histogram at the last drain, for the syscalls seen so far.
    latency: HashMap<u32, Vec<u64>>,
    stats: CounterMap<StatsKey, SyscallStats>,
    errnos: CounterMap<SyscallErrno, u64>,
}

impl Drain for SyscallDrain {
    fn drain(&mut self, kernel: &mut Kernel<'_>, interval: &mut Drained) -> Result<()> {
        let latency = if self.timed { self.latency_growth(kernel.ebpf)? } else { BTreeMap::new() };
        let stats = self.stats.drain(kernel.ebpf, kernel.exits)?;
        let errnos = self.errnos.drain(kernel.ebpf, kernel.exits)?;
        interval.fills.extend([self.stats.fill(), self.errnos.fill()]);
        let per_process = rows(stats, errnos);
        interval.recording.syscalls = Some(SyscallData { latency, per_process, counts_only: !self.timed });
        Ok(())
    }

    fn fullest(&self, counters: &[u64]) -> f64 {
        self.stats.fill_now(counters).max(self.errnos.fill_now(counters))
    }
}

impl SyscallDrain {
    /// Each syscall's latency histogram's growth since the last drain.
    fn latency_growth(&mut self, ebpf: &aya::Ebpf) -> Result<BTreeMap<u32, LatencyHistogram>> {
        let latency_map: Array<_, Histogram> = Array::try_from(map(ebpf, SYSCALL_LATENCY)?)?;
        let mut latency = BTreeMap::new();
        for (nr, histogram) in latency_map.iter().enumerate() {
            let histogram = histogram?;
            let counts = histogram.counts();
            if counts.iter().all(|&n| n == 0) {
                continue;
            }
            let nr = nr as u32;
            let before = self.latency.get(&nr).map_or(&[][..], Vec::as_slice);
            let growth = LatencyHistogram::from_dense(&dense_growth(counts, before));
            self.latency.insert(nr, counts.to_vec());
            if !growth.is_empty() {
                latency.insert(nr, growth);
            }
        }
        Ok(latency)
    }
}

/// Per (process, syscall) rows, each with its errnos (commonest first), sorted by process. The two
/// maps are walked one after the other, so a call that failed between the walks has its errno in
/// this interval and its count in the next (or the other way round): such an errno gets a row of
/// its own, and the intervals add up.
fn rows(stats: Vec<(StatsKey, SyscallStats)>, errno_counts: Vec<(SyscallErrno, u64)>) -> Vec<ProcessSyscall> {
    let mut rows: BTreeMap<(u32, u32), ProcessSyscall> = stats
        .into_iter()
        .map(|(key, stats)| {
            let row = ProcessSyscall {
                tgid: key.tgid,
                nr: key.nr,
                count: stats.count,
                errors: stats.errors,
                total_ns: stats.total_ns,
                errnos: Vec::new(),
            };
            ((key.tgid, key.nr), row)
        })
        .collect();
    for (key, count) in errno_counts {
        let row = rows.entry((key.tgid, key.nr)).or_insert_with(|| ProcessSyscall {
            tgid: key.tgid,
            nr: key.nr,
            ..Default::default()
        });
        row.errnos.push((key.errno, count));
    }
    rows.into_values()
        .map(|mut row| {
            row.errnos.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            row
        })
        .collect()
}

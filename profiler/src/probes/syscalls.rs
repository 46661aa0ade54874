//! Syscall probes (`profiler-ebpf/src/syscalls.rs`): `syscalls`, timed, and `syscall-counts`, which
//! counts from sys_exit alone; their programs and the drain of the maps they share.

use std::{
    collections::{BTreeMap, HashMap},
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    ptr::{read_volatile, write_volatile},
    sync::atomic::{Ordering, fence},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{Ebpf, maps::Map};
use profiler_common::{
    counters::Counter,
    histogram::Histogram,
    syscalls::{
        MAX_PROCESS_SYSCALLS, MAX_SYSCALL_BUCKETS, MAX_SYSCALL_ERRNOS, MAX_SYSCALL_NR, ProcessSyscall as StatsKey,
        SYSCALL_ERRNOS, SYSCALL_LATENCY, SYSCALL_PROCESS_LATENCY, SYSCALL_SLOT_BITS_PER_CPU, SYSCALL_SLOT_CPUS,
        SYSCALL_SLOTS, SYSCALL_STATS, SyscallBucket, SyscallErrno, SyscallSlot, SyscallStats,
    },
};

use super::{
    Drain, Drained, Feature, Kernel, ProbeOptions, ProbeSpec,
    counter_map::{Beside, CounterMap, Growth, Values, dense_growth, histograms},
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

/// The maps both probes fill (and `SYSCALL_SLOTS`, global data, which no loader can shrink).
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
        &[SYSCALL_STATS, SYSCALL_ERRNOS, SYSCALL_PROCESS_LATENCY]
    }

    fn drain(&self, options: &ProbeOptions) -> Box<dyn Drain> {
        Box::new(SyscallDrain::new(true, options.syscall_one_in()))
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

    fn drain(&self, _options: &ProbeOptions) -> Box<dyn Drain> {
        Box::new(SyscallDrain::new(false, 1))
    }
}

impl SyscallDrain {
    fn new(timed: bool, sample_one_in: u32) -> SyscallDrain {
        SyscallDrain {
            timed,
            weight: u64::from(sample_one_in),
            latency: HashMap::new(),
            latency_table: None,
            slots: None,
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
            buckets: CounterMap::new(
                SYSCALL_PROCESS_LATENCY,
                Values::Shared,
                MAX_SYSCALL_BUCKETS,
                Counter::SyscallBucketEntries,
                |key: &SyscallBucket| key.tgid,
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
    /// How many calls a timed one stands for: the programs time one in this many
    /// (`--syscall-latency-sample`), and each syscall's histogram and each row's latency total are
    /// weighed here, off the hot path, into estimates of every call's.
    weight: u64,
    /// Each syscall's histogram at the last drain, for the syscalls seen so far.
    latency: HashMap<u32, Vec<u64>>,
    /// `SYSCALL_LATENCY`, opened at the first drain.
    latency_table: Option<GlobalData>,
    /// `SYSCALL_SLOTS`, opened at the first drain.
    slots: Option<Slots>,
    stats: CounterMap<StatsKey, SyscallStats>,
    errnos: CounterMap<SyscallErrno, u64>,
    /// Per (process, syscall) latency buckets; empty unless the programs were loaded to fill them.
    buckets: CounterMap<SyscallBucket, u64>,
}

impl Drain for SyscallDrain {
    fn drain(&mut self, kernel: &mut Kernel<'_>, interval: &mut Drained) -> Result<()> {
        let mut latency = if self.timed { self.latency_growth(kernel.ebpf)? } else { BTreeMap::new() };
        let slots = match &mut self.slots {
            Some(slots) => slots,
            None => self.slots.insert(Slots::new(kernel.ebpf)?),
        };
        let stats = self.stats.drain(kernel.ebpf, kernel.exits, slots)?;
        let errnos = self.errnos.drain(kernel.ebpf, kernel.exits, &mut ())?;
        interval.fills.extend([self.stats.fill(), self.errnos.fill()]);
        let buckets = if self.timed {
            interval.fills.push(self.buckets.fill());
            self.buckets.drain(kernel.ebpf, kernel.exits, &mut ())?
        } else {
            Vec::new()
        };
        let mut per_process = rows(stats, errnos, buckets);
        if self.weight > 1 {
            latency.values_mut().for_each(|histogram| *histogram = histogram.weighed(self.weight));
            // Per-process histograms stay the calls timed: `top` and the report rank their p99s
            // only from enough samples, which weighed counts would pretend to have.
            for row in &mut per_process {
                row.total_ns = row.total_ns.saturating_mul(self.weight);
            }
        }
        interval.recording.syscalls = Some(SyscallData { latency, per_process, counts_only: !self.timed });
        Ok(())
    }

    fn fullest(&self, counters: &[u64]) -> f64 {
        self.stats.fill_now(counters).max(self.errnos.fill_now(counters)).max(self.buckets.fill_now(counters))
    }
}

impl SyscallDrain {
    /// Each syscall's latency histogram's growth since the last drain.
    fn latency_growth(&mut self, ebpf: &Ebpf) -> Result<BTreeMap<u32, LatencyHistogram>> {
        let table = match &self.latency_table {
            Some(table) => table,
            None => self.latency_table.insert(GlobalData::new(ebpf, SYSCALL_LATENCY)?),
        };
        let len = MAX_SYSCALL_NR as usize;
        let memory = table.map(len * size_of::<Histogram>()).context("cannot map the syscall latency histograms")?;
        let histograms = memory.as_ptr().cast::<Histogram>();
        let mut latency = BTreeMap::new();
        for nr in 0..len {
            // SAFETY: `nr` < `len`, within the mapping; the programs add to the counts meanwhile,
            // so they are read as volatile, and a count read mid-drain is taken up by the next.
            let histogram = unsafe { read_volatile(histograms.add(nr)) };
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

/// The number of possible CPUs: the ids of those that may ever come online are below it.
fn possible_cpus() -> Result<u32> {
    aya::util::nr_cpus().map(|cpus| cpus as u32).map_err(|(path, error)| anyhow!("cannot read {path}: {error}"))
}

/// A table in the programs' global data (a `.bss` section's map of one value), mapped for one drain
/// at a time, so that only the pages read count in our RSS, only while the drain runs.
struct GlobalData(OwnedFd);

impl GlobalData {
    fn new(ebpf: &Ebpf, name: &str) -> Result<GlobalData> {
        let Some(Map::Array(data)) = ebpf.map(name) else { bail!("map {name} missing from the eBPF object") };
        Ok(GlobalData(data.fd().as_fd().try_clone_to_owned().with_context(|| format!("cannot hold map {name}"))?))
    }

    /// A shared mapping of the table's first `bytes`.
    fn map(&self, bytes: usize) -> std::io::Result<memmap2::MmapMut> {
        // SAFETY: a shared mapping of the array's memory, which the kernel's programs write
        // meanwhile: callers read and write it through volatile accesses only.
        unsafe { memmap2::MmapOptions::new().len(bytes).map_mut(self.0.as_raw_fd()) }
    }
}

/// `SYSCALL_SLOTS`, read and freed through a mapping of the table (one syscall, where copying its
/// thousands of slots out would undo the counts the programs make meanwhile when written back).
/// The mapping covers the slots in use.
struct Slots {
    data: GlobalData,
    len: usize,
}

impl Slots {
    fn new(ebpf: &Ebpf) -> Result<Slots> {
        // The CPUs' runs of slots, from the table's start; the rest of the table stays unused.
        let len = (possible_cpus()?.min(SYSCALL_SLOT_CPUS) as usize) << SYSCALL_SLOT_BITS_PER_CPU;
        Ok(Slots { data: GlobalData::new(ebpf, SYSCALL_SLOTS)?, len })
    }

    /// Calls `visit` with a pointer to each slot, in a mapping that lasts the call.
    fn each(&self, mut visit: impl FnMut(*mut SyscallSlot)) -> Result<()> {
        // `visit` allows for the programs' writes: volatile reads and writes, in an order the
        // programs' own writes agree with.
        let mut memory = self.data.map(self.len * size_of::<SyscallSlot>()).context("cannot map the syscall slots")?;
        let slots = memory.as_mut_ptr().cast::<SyscallSlot>();
        for index in 0..self.len {
            // SAFETY: `index` < `len`, within the mapping.
            visit(unsafe { slots.add(index) });
        }
        Ok(())
    }
}

/// A slot's key and counts, if it is taken. A program takes a free slot by writing its number and
/// then its owner, so an owner read first comes with its number.
fn read_slot(slot: *mut SyscallSlot) -> Option<(StatsKey, SyscallStats)> {
    // SAFETY: `slot` points into the mapping (`Slots::each`).
    let (tgid, nr, stats) = unsafe {
        let tgid = read_volatile(&raw const (*slot).tgid);
        fence(Ordering::Acquire);
        (tgid, read_volatile(&raw const (*slot).nr), read_volatile(&raw const (*slot).stats))
    };
    (tgid != 0).then_some((StatsKey { tgid, nr }, stats))
}

impl Beside<StatsKey, SyscallStats> for Slots {
    fn entries(&mut self) -> Result<Vec<(StatsKey, SyscallStats)>> {
        let mut entries = Vec::new();
        self.each(|slot| entries.extend(read_slot(slot)))?;
        Ok(entries)
    }

    /// Frees the slots of exited processes: their counts cleared first, the owner last, so a
    /// program never takes a slot that still holds another's counts.
    fn take(&mut self, gone: &dyn Fn(&StatsKey) -> bool) -> Result<Vec<(StatsKey, SyscallStats)>> {
        let mut taken = Vec::new();
        self.each(|slot| {
            if let Some((key, stats)) = read_slot(slot).filter(|(key, _)| gone(key)) {
                // SAFETY: as in `read_slot`.
                unsafe {
                    write_volatile(&raw mut (*slot).stats, SyscallStats::default());
                    fence(Ordering::Release);
                    write_volatile(&raw mut (*slot).tgid, 0);
                }
                taken.push((key, stats));
            }
        })?;
        Ok(taken)
    }
}

/// Per (process, syscall) rows, each with its errnos (commonest first) and latency histogram if
/// kept, sorted by process. The maps are walked one after the other, so a call made between the
/// walks has its errno or latency in this interval and its count in the next (or the other way
/// round): such a call gets a row of its own, and the intervals add up.
fn rows(
    stats: Vec<(StatsKey, SyscallStats)>,
    errno_counts: Vec<(SyscallErrno, u64)>,
    buckets: Vec<(SyscallBucket, u64)>,
) -> Vec<ProcessSyscall> {
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
                latency: None,
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
    for ((tgid, nr), histogram) in histograms(buckets.into_iter().map(|(key, n)| ((key.tgid, key.nr), key.bucket, n))) {
        let row = rows.entry((tgid, nr)).or_insert_with(|| ProcessSyscall { tgid, nr, ..Default::default() });
        row.latency = Some(histogram);
    }
    rows.into_values()
        .map(|mut row| {
            row.errnos.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            row
        })
        .collect()
}

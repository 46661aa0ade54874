//! Syscalls: count, errors (with errno) and latency per (process, syscall), and a latency histogram
//! per syscall. BTF tracepoints on raw_syscalls pass the syscall number and return value as
//! arguments, so the hot path reads no tracepoint record.
//!
//! Two probes share the maps: `syscalls` times each call (a hook on entry and exit, a clock read in
//! each); `syscall-counts` counts calls and errors from the exit alone, as libbpf-tools' syscount
//! does without -L, for machines whose syscall rate makes timing too dear. The loader runs one or
//! the other, never both.

use aya_ebpf::{
    Global,
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_prandom_u32, bpf_get_smp_processor_id},
    macros::{btf_tracepoint, map},
    maps::{HashMap, PerCpuHashMap},
    programs::BtfTracePointContext,
};
use profiler_common::{
    counters::Counter,
    histogram::{HISTOGRAM_SLOTS, Histogram, bucket_index_by_table},
    syscalls::{
        MAX_PROCESS_SYSCALLS, MAX_SYSCALL_BUCKETS, MAX_SYSCALL_ERRNOS, MAX_SYSCALL_NR, ProcessSyscall,
        SYSCALL_SLOT_BITS_PER_CPU, SYSCALL_SLOT_CPUS, SYSCALL_SLOT_TABLE_BITS, SyscallBucket, SyscallErrno,
        SyscallSlot, SyscallStats,
    },
};

use crate::shared::{
    BPF_F_NO_PREALLOC, BPF_NOEXIST, GlobalTable, GlobalThreadWords, PerThread, THREAD_VALUE_MASK, Taken, atomic_add,
    count, current_selected, histogram_slot, increment, note_process, now_ns, opaque, task_ids, thread_slots_shared,
};

/// When each thread last entered which syscall (0: none since the thread started or the probe
/// was attached), by thread id (see `PerThread`). One value per thread: the entry time shifted left
/// past the syscall number, which the slot keeps modulo 2^61, so the time is kept modulo 2^51 ns
/// (26 days), and differences of such times are exact for any latency shorter than that. In global
/// data, addressed without a lookup: these are the hottest words of the probe.
#[unsafe(link_section = ".bss.syscall_start")]
static SYSCALL_START: GlobalThreadWords = GlobalThreadWords::new(0);
const SYSCALL_STARTS: PerThread<GlobalThreadWords> = PerThread(&SYSCALL_START);

/// Bits of a `SYSCALL_START` value that hold the syscall number.
const NR_BITS: u32 = 10;
const NR_MASK: u64 = (1 << NR_BITS) - 1;
const _: () = assert!(MAX_SYSCALL_NR <= 1 << NR_BITS);
/// The entry time's bits in a `SYSCALL_START` value.
const TIME_MASK: u64 = THREAD_VALUE_MASK >> NR_BITS;

/// One value per CPU, so that a call is counted with plain adds, never an atomic instruction on a
/// cache line that the process's threads on other CPUs also write. Not preallocated: entries cost
/// their CPUs' values only once used, not capacity times CPUs up front.
#[map]
static SYSCALL_STATS: PerCpuHashMap<ProcessSyscall, SyscallStats> =
    PerCpuHashMap::with_max_entries(MAX_PROCESS_SYSCALLS, BPF_F_NO_PREALLOC);

/// The hot part of `SYSCALL_STATS`: each CPU its own run of slots, one (process, syscall) per slot,
/// found by a hash of the key. An address computed and a compare, where the hash map costs a call,
/// a hash and a bucket walk on every exit (5 % of a getppid loop's time under the probe), and an
/// array map's lookup a store and a load of the index on the exit's longest chain of dependent
/// instructions. A free slot goes to the first key that lands in it, for as long as its process
/// lives (the drain frees it); the keys that find their slot taken, and the CPUs past the table's,
/// go to the hash map. In global data, which the drain reads through a mapping.
#[unsafe(link_section = ".bss.syscall_slots")]
static SYSCALL_SLOTS: GlobalTable<SyscallSlot, { 1 << SYSCALL_SLOT_TABLE_BITS }> = GlobalTable::new(SyscallSlot::FREE);

#[map]
static SYSCALL_ERRNOS: HashMap<SyscallErrno, u64> = HashMap::with_max_entries(MAX_SYSCALL_ERRNOS, 0);

/// Latency histogram per syscall number, all processes together. In global data, addressed without
/// an array lookup (whose index passes through the stack): 1.4 % faster on a getppid loop than the
/// array map. The drain reads it through a mapping.
#[unsafe(link_section = ".bss.syscall_latency")]
static SYSCALL_LATENCY: GlobalTable<Histogram, { MAX_SYSCALL_NR as usize }> =
    GlobalTable::new(Histogram { buckets: [0; HISTOGRAM_SLOTS] });

/// Time one call in this many, drawn at random on entry (1: every call); counts and errors stay
/// exact. The drain weighs each timed call this many times, off the hot path. Read-only: with 1
/// the verifier prunes the draw.
#[unsafe(no_mangle)]
static SYSCALL_SAMPLE_ONE_IN: Global<u32> = Global::new(1);

/// Whether this call is one of those timed: all of them, or one in `SYSCALL_SAMPLE_ONE_IN` at random.
#[inline(always)]
fn drawn_for_timing() -> bool {
    let one_in = SYSCALL_SAMPLE_ONE_IN.load();
    // SAFETY: the helper takes no arguments. `one_in` is above 1 where it divides.
    one_in <= 1 || unsafe { bpf_get_prandom_u32() } % one_in == 0
}

/// Non-zero: also a latency histogram per (process, syscall), in `SYSCALL_PROCESS_LATENCY`. A
/// read-only global, so the verifier prunes the hash update from the hot path when it is off.
#[unsafe(no_mangle)]
static LATENCY_PER_PROCESS: Global<u8> = Global::new(0);

/// One entry per non-empty (process, syscall, bucket), allocated as used.
#[map]
static SYSCALL_PROCESS_LATENCY: HashMap<SyscallBucket, u64> =
    HashMap::with_max_entries(MAX_SYSCALL_BUCKETS, BPF_F_NO_PREALLOC);

/// The kernel returns errors as -errno with errno below 4096.
const MAX_ERRNO: i64 = 4095;

/// `struct pt_regs.orig_ax` on x86_64, in 8-byte words: the syscall number, which sys_exit does not
/// pass. The layout is the ptrace ABI's (`user_regs_struct`), fixed; the verifier checks the load
/// against the kernel's BTF of `pt_regs` all the same.
const PT_REGS_ORIG_AX: usize = 15;

/// TP_PROTO(struct pt_regs *regs, long id)
#[btf_tracepoint(function = "sys_enter")]
pub fn syscall_sys_enter(ctx: BtfTracePointContext) -> i32 {
    let nr: i64 = ctx.arg(1);
    let pid_tgid = bpf_get_current_pid_tgid();
    if !(0..MAX_SYSCALL_NR as i64).contains(&nr) || !current_selected((pid_tgid >> 32) as u32) || !drawn_for_timing() {
        // Not timed: the thread's last entry must not pass for this call's at its exit.
        SYSCALL_STARTS.forget(pid_tgid as u32);
        return 0;
    }
    SYSCALL_STARTS.store(pid_tgid as u32, (now_ns() << NR_BITS) | nr as u64);
    0
}

/// TP_PROTO(struct task_struct *p, ...): clears an exiting thread's entry. A thread that dies
/// inside a syscall (exit, or killed while blocked) never reaches sys_exit, and a new thread
/// reusing its id would start with its entry.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn syscall_thread_exit(ctx: BtfTracePointContext) -> i32 {
    if let Some((tid, _)) = task_ids(ctx.arg(0)) {
        SYSCALL_STARTS.forget(tid);
    }
    0
}

/// TP_PROTO(struct pt_regs *regs, long ret)
#[btf_tracepoint(function = "sys_exit")]
pub fn syscall_sys_exit(ctx: BtfTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // Every exit of a thread follows an entry of the thread that stored or forgot its word, but
    // for a new thread's return from fork, whose word its id's previous thread forgot at its
    // death. So the word is left in place, a store less on every call, unless threads share slots
    // (a stale word would count as overwritten when another thread's entry replaced it) or calls
    // are sampled (each untimed entry would clear the word the timed one left).
    let untimed_calls = thread_slots_shared() || SYSCALL_SAMPLE_ONE_IN.load() > 1;
    let entry = if untimed_calls { SYSCALL_STARTS.take(pid_tgid as u32) } else { SYSCALL_STARTS.read(pid_tgid as u32) };
    let start = match entry {
        Taken::Value(start) => start,
        // A thread that shares the slot (pid_max above 2^19) overwrote the entry time, which was
        // counted, and may have emptied the slot since: the call still counts, untimed.
        Taken::Lost => return count_untimed(&ctx, tgid),
        // Not drawn for timing, or its entry emptied by a slot-mate: still a call.
        Taken::Empty if untimed_calls => return count_untimed(&ctx, tgid),
        // Entered before the probe was attached, or a new thread's return from fork: not a call
        // of the recording's, as strace would not count it either.
        Taken::Empty => return 0,
    };
    let nr = (start & NR_MASK) as u32;
    let latency = now_ns().wrapping_sub(start >> NR_BITS) & TIME_MASK;
    let bucket = bucket_index_by_table(latency, opaque);
    atomic_add(histogram_slot(SYSCALL_LATENCY.at(nr as usize), bucket), 1);
    if LATENCY_PER_PROCESS.load() != 0
        && increment(&SYSCALL_PROCESS_LATENCY, &SyscallBucket { tgid, nr, bucket }, Counter::SyscallBucketDrops)
    {
        count(Counter::SyscallBucketEntries);
    }
    add_call(tgid, nr, ctx.arg(1), latency);
    0
}

/// TP_PROTO(struct pt_regs *regs, long ret): the `syscall-counts` probe, alone on sys_exit.
#[btf_tracepoint(function = "sys_exit")]
pub fn syscall_counts_sys_exit(ctx: BtfTracePointContext) -> i32 {
    count_untimed(&ctx, (bpf_get_current_pid_tgid() >> 32) as u32)
}

/// Counts the call that sys_exit reports, without its latency, if its process is recorded. A new
/// thread's or process's return from fork is not a call of its own (its parent's is counted), as
/// strace counts.
#[inline(always)]
fn count_untimed(ctx: &BtfTracePointContext, tgid: u32) -> i32 {
    let regs: *const u64 = ctx.arg(0);
    // SAFETY: a BTF tracepoint's pointer arguments are typed by the kernel's BTF: the verifier lets
    // this load through only if it reads a field of `struct pt_regs` (orig_ax), and turns a fault
    // into a zero.
    let nr = unsafe { *regs.add(PT_REGS_ORIG_AX) } as i64;
    let ret: i64 = ctx.arg(1);
    if !(0..MAX_SYSCALL_NR as i64).contains(&nr) || (ret == 0 && FORKS.contains(&nr)) || !current_selected(tgid) {
        return 0;
    }
    add_call(tgid, nr as u32, ret, 0);
    0
}

/// x86_64's clone, fork, vfork and clone3, which return 0 in the new thread or process.
const FORKS: [i64; 4] = [56, 57, 58, 435];

/// Counts one call of syscall `nr` by process `tgid` that returned `ret` and took `latency_ns`.
#[inline(always)]
fn add_call(tgid: u32, nr: u32, ret: i64, latency_ns: u64) {
    let errno = if (-MAX_ERRNO..0).contains(&ret) { (-ret) as u32 } else { 0 };
    let Some(stats) = slot_stats(tgid, nr).or_else(|| table_stats(tgid, nr)) else {
        count(Counter::SyscallProcessDrops);
        return;
    };
    // SAFETY: `stats` points to this CPU's slot or value in the map, live while the program runs;
    // programs do not migrate, and no other program writes either map: plain adds are race-free.
    unsafe {
        (*stats).count += 1;
        (*stats).total_ns += latency_ns;
    }
    if errno != 0 {
        // SAFETY: as above.
        unsafe { (*stats).errors += 1 };
        if increment(&SYSCALL_ERRNOS, &SyscallErrno { tgid, nr, errno, _pad: 0 }, Counter::SyscallErrnoDrops) {
            count(Counter::SyscallErrnoEntries);
        }
    }
}

/// This CPU's slot for (`tgid`, `nr`), taken for it if free; `None` if another key holds it, or if
/// the CPU has none.
#[inline(always)]
fn slot_stats(tgid: u32, nr: u32) -> Option<*mut SyscallStats> {
    // SAFETY: the helper takes no arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    if cpu >= SYSCALL_SLOT_CPUS {
        return None;
    }
    // Fibonacci hashing: the top bits of the product mix every bit of the key.
    let hash = (tgid ^ (nr << 22)).wrapping_mul(0x9E37_79B9) >> (32 - SYSCALL_SLOT_BITS_PER_CPU);
    let slot = SYSCALL_SLOTS.at(((cpu << SYSCALL_SLOT_BITS_PER_CPU) | hash) as usize);
    // SAFETY: `slot` points into the table, live while the program runs; only programs on this CPU
    // write its slots, and the drain frees a slot only once its process has exited.
    unsafe {
        if (*slot).tgid != tgid || (*slot).nr != nr {
            if (*slot).tgid != 0 {
                return None;
            }
            // The number before the owner: a reader that sees the owner sees its number.
            (*slot).nr = nr;
            (*slot).tgid = tgid;
            note_process(bpf_get_current_task() as *const u8, tgid);
        }
        Some(&raw mut (*slot).stats)
    }
}

/// This CPU's value for (`tgid`, `nr`) in the hash map, created if new; `None` if the map is full.
#[inline(always)]
fn table_stats(tgid: u32, nr: u32) -> Option<*mut SyscallStats> {
    let key = ProcessSyscall { tgid, nr };
    if let Some(stats) = SYSCALL_STATS.get_ptr_mut(key) {
        return Some(stats);
    }
    if SYSCALL_STATS.insert(key, SyscallStats::default(), BPF_NOEXIST).is_ok() {
        count(Counter::SyscallProcessEntries);
    }
    let stats = SYSCALL_STATS.get_ptr_mut(key)?;
    // SAFETY: the helper takes no arguments.
    note_process(unsafe { bpf_get_current_task() } as *const u8, tgid);
    Some(stats)
}

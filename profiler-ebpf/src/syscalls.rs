//! Syscalls: count, errors (with errno) and latency per (process, syscall), and a latency histogram
//! per syscall. BTF tracepoints on raw_syscalls pass the syscall number and return value as
//! arguments, so the hot path reads no tracepoint record.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap},
    programs::BtfTracePointContext,
};
use profiler_common::{
    counters::Counter,
    histogram::{Histogram, bucket_index},
    process::{DEFAULT_PID_MAX, MAX_HASHED_THREADS},
    syscalls::{MAX_PROCESS_SYSCALLS, MAX_SYSCALL_ERRNOS, MAX_SYSCALL_NR, ProcessSyscall, SyscallErrno, SyscallStats},
};

use crate::shared::{
    BPF_NOEXIST, PerThread, atomic_add, count, current_selected, histogram_slot, increment, note_process, now_ns,
    task_ids,
};

/// When each thread entered which syscall (0: not in a syscall), by thread id: one of these two maps,
/// the other sized to one entry by the loader (see `PerThread`). One word per thread: the entry time shifted left past the
/// syscall number, so the time is kept modulo 2^54 ns (208 days), and differences of such times
/// are exact for any latency shorter than that.
#[map]
static SYSCALL_START: Array<u64> = Array::with_max_entries(DEFAULT_PID_MAX, 0);
#[map]
static SYSCALL_START_BY_TID: HashMap<u32, u64> = HashMap::with_max_entries(MAX_HASHED_THREADS, 0);
const SYSCALL_STARTS: PerThread = PerThread { array: &SYSCALL_START, hash: &SYSCALL_START_BY_TID };

/// Bits of a `SYSCALL_START` word that hold the syscall number.
const NR_BITS: u32 = 10;
const NR_MASK: u64 = (1 << NR_BITS) - 1;
const _: () = assert!(MAX_SYSCALL_NR <= 1 << NR_BITS);

#[map]
static SYSCALL_STATS: HashMap<ProcessSyscall, SyscallStats> = HashMap::with_max_entries(MAX_PROCESS_SYSCALLS, 0);

#[map]
static SYSCALL_ERRNOS: HashMap<SyscallErrno, u64> = HashMap::with_max_entries(MAX_SYSCALL_ERRNOS, 0);

/// Latency histogram per syscall number, all processes together.
#[map]
static SYSCALL_LATENCY: Array<Histogram> = Array::with_max_entries(MAX_SYSCALL_NR, 0);

/// The kernel returns errors as -errno with errno below 4096.
const MAX_ERRNO: i64 = 4095;

/// TP_PROTO(struct pt_regs *regs, long id)
#[btf_tracepoint(function = "sys_enter")]
pub fn syscall_sys_enter(ctx: BtfTracePointContext) -> i32 {
    let nr: i64 = ctx.arg(1);
    if !(0..MAX_SYSCALL_NR as i64).contains(&nr) {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if !current_selected((pid_tgid >> 32) as u32) {
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
    let start = SYSCALL_STARTS.take(pid_tgid as u32);
    if start == 0 {
        return 0;
    }
    let nr = (start & NR_MASK) as u32;
    let latency = (now_ns() << NR_BITS).wrapping_sub(start & !NR_MASK) >> NR_BITS;
    let ret: i64 = ctx.arg(1);
    let errno = if (-MAX_ERRNO..0).contains(&ret) { (-ret) as u32 } else { 0 };
    let tgid = (pid_tgid >> 32) as u32;

    if let Some(histogram) = SYSCALL_LATENCY.get_ptr_mut(nr) {
        atomic_add(histogram_slot(histogram, bucket_index(latency)), 1);
    }

    let key = ProcessSyscall { tgid, nr };
    let stats = match SYSCALL_STATS.get_ptr_mut(key) {
        Some(stats) => stats,
        None => {
            if SYSCALL_STATS.insert(key, SyscallStats::default(), BPF_NOEXIST).is_ok() {
                count(Counter::SyscallProcessEntries);
            }
            let Some(stats) = SYSCALL_STATS.get_ptr_mut(key) else {
                count(Counter::SyscallProcessDrops);
                return 0;
            };
            // SAFETY: the helper takes no arguments.
            note_process(unsafe { bpf_get_current_task() } as *const u8, tgid);
            stats
        }
    };
    // SAFETY: `stats` points into the map's value, live while the program runs.
    unsafe {
        atomic_add(&raw mut (*stats).count, 1);
        atomic_add(&raw mut (*stats).total_ns, latency);
    }
    if errno != 0 {
        // SAFETY: as above.
        unsafe { atomic_add(&raw mut (*stats).errors, 1) };
        if increment(&SYSCALL_ERRNOS, &SyscallErrno { tgid, nr, errno, _pad: 0 }, Counter::SyscallErrnoDrops) {
            count(Counter::SyscallErrnoEntries);
        }
    }
    0
}

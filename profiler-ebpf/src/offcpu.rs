//! Off-CPU stacks: where threads wait, and for how long. On `sched_switch`, a thread that switches
//! out blocked (not preempted: that is run-queue latency) has its stacks taken as the cpu probe
//! takes a sample's (the user stack by the same unwinder, tail-called from here) and remembered
//! by thread id, since it may run again on another CPU. When it switches in, the time it was off
//! CPU is added to (process, stacks, state) in the kernel. Blocks shorter than `OFFCPU_MIN_NS`
//! are not added; with `OFFCPU_SAMPLE_ONE_IN` above 1, only that share of switch-outs is taken,
//! chosen at random (userspace scales the totals back up).

use aya_ebpf::{
    Global,
    helpers::{bpf_get_current_pid_tgid, bpf_get_prandom_u32},
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap, LruHashMap},
    programs::BtfTracePointContext,
};
use profiler_common::{
    counters::Counter,
    offcpu::{
        Blocked, EXACT_BLOCKS_PER_THREAD, MAX_BLOCKED, MAX_OFFCPU_KEYS, MAX_OFFCPU_STACKS, MAX_SQUARED_BLOCK_US,
        OffCpuKey, OffCpuTime, WaitState,
    },
    process::DEFAULT_PID_MAX,
    unwind::{OFF_CPU, StackEnd, StackFrames, UnwindState},
};

use crate::{
    oncpu::{announce, begin, saved_user_registers, seal, take_stacks},
    shared::{
        BPF_ANY, BPF_NOEXIST, PerThread, THREAD_SLOT_BITS, Taken, atomic_add, count, current_selected, now_ns,
        task_state, task_tid,
    },
    unwind::OFFCPU_UNWIND_PROGRAMS,
};

/// Blocks shorter than this many nanoseconds are not added (offcputime's `--min-block-time`).
#[unsafe(no_mangle)]
static OFFCPU_MIN_NS: Global<u64> = Global::new(1000);
/// Take the stacks of one blocking switch-out in this many, at random (1: all).
#[unsafe(no_mangle)]
static OFFCPU_SAMPLE_ONE_IN: Global<u32> = Global::new(1);

/// Written in turn like the cpu probe's sample maps: the probe adds to the one `OFFCPU_BUFFER`
/// names while userspace drains the other.
#[map]
static OFFCPU_TIME_A: HashMap<OffCpuKey, OffCpuTime> = HashMap::with_max_entries(MAX_OFFCPU_KEYS, 0);
#[map]
static OFFCPU_TIME_B: HashMap<OffCpuKey, OffCpuTime> = HashMap::with_max_entries(MAX_OFFCPU_KEYS, 0);
#[map]
static OFFCPU_BUFFER: Array<u32> = Array::with_max_entries(1, 0);
/// The frames of off-CPU stacks, by hash. A thread may stay blocked across drains, so its frames
/// must outlive them: never emptied, the least recently used go first.
#[map]
pub static OFFCPU_FRAMES: LruHashMap<u64, StackFrames> = LruHashMap::with_max_entries(MAX_OFFCPU_STACKS, 0);
/// The stacks, state and weight of each blocked thread whose stacks were taken, by thread id.
#[map]
static BLOCKED: LruHashMap<u32, Blocked> = LruHashMap::with_max_entries(MAX_BLOCKED, 0);
/// Blocks each thread made, by the low bits of its id (threads that share a slot share a count:
/// the chance a block is taken is still known when it is taken). Sized by the loader.
#[map]
static OFFCPU_THREAD_BLOCKS: Array<u32> = Array::with_max_entries(DEFAULT_PID_MAX, 0);
/// When each blocked thread whose stacks were taken switched out (0: none), by thread id: the
/// switch-in of every thread looks here first, an array index rather than a hash lookup.
#[map]
static OFFCPU_START: Array<u64> = Array::with_max_entries(DEFAULT_PID_MAX, 0);
const OFFCPU_STARTS: PerThread = PerThread(&OFFCPU_START);

/// Linux's task states (include/linux/sched.h).
const TASK_RUNNING: u32 = 0;
const TASK_INTERRUPTIBLE: u32 = 0x1;
const TASK_UNINTERRUPTIBLE: u32 = 0x2;
/// A thread's last switch-out: it never runs again (and its id may be reused).
const TASK_DEAD: u32 = 0x80;
/// With TASK_UNINTERRUPTIBLE: TASK_IDLE, a kernel thread waiting for work, not for I/O.
const TASK_NOLOAD: u32 = 0x400;

/// Linux 5.18 and later: TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next,
/// unsigned int prev_state).
#[btf_tracepoint(function = "sched_switch")]
pub fn offcpu_sched_switch(ctx: BtfTracePointContext) -> i32 {
    let prev_state: u32 = ctx.arg(3);
    switch(&ctx, ctx.arg::<u8>(0) != 0, ctx.arg(2), prev_state);
    0
}

/// Before Linux 5.18: TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next).
/// The switched-out task's state is read from the task.
#[btf_tracepoint(function = "sched_switch")]
pub fn offcpu_sched_switch_task_state(ctx: BtfTracePointContext) -> i32 {
    let prev_state = task_state(ctx.arg(1)).unwrap_or(TASK_RUNNING);
    switch(&ctx, ctx.arg::<u8>(0) != 0, ctx.arg(2), prev_state);
    0
}

/// The thread switched in stops waiting; the one switched out (the current task) starts, unless
/// it was preempted. The switch-in comes first: the switch-out may end in a tail call.
#[inline(always)]
fn switch(ctx: &BtfTracePointContext, preempt: bool, next: *const u8, prev_state: u32) {
    switch_in(next);
    if prev_state & TASK_DEAD != 0 {
        // Its last switch-out: a thread that reuses its id starts with its first blocks again.
        forget_blocks(bpf_get_current_pid_tgid() as u32);
    } else if !preempt && prev_state != TASK_RUNNING {
        block(ctx, prev_state);
    }
}

#[inline(always)]
fn block(ctx: &BtfTracePointContext, prev_state: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tid, tgid) = (pid_tgid as u32, (pid_tgid >> 32) as u32);
    if tid == 0 || !current_selected(tgid) {
        return;
    }
    let one_in = OFFCPU_SAMPLE_ONE_IN.load();
    let mut weight = 1;
    if one_in > 1 && !among_first_blocks(tid) {
        // SAFETY: the helper takes no arguments.
        if unsafe { bpf_get_prandom_u32() } % one_in != 0 {
            count(Counter::OffCpuSampledOut);
            return;
        }
        weight = one_in;
    }
    count(Counter::OffCpuBlocks);
    announce(tgid);
    let Some(state) = begin(tgid, tid, OFF_CPU) else {
        return;
    };
    state.wait_state = wait_state(prev_state) as u32;
    state.weight = weight;
    state.blocked_at = now_ns();
    take_stacks(ctx, state, saved_user_registers(), &OFFCPU_UNWIND_PROGRAMS);
}

/// The slot of `OFFCPU_THREAD_BLOCKS` that counts thread `tid`'s blocks.
#[inline(always)]
fn thread_blocks(tid: u32) -> Option<*mut u32> {
    OFFCPU_THREAD_BLOCKS.get_ptr_mut(tid & ((1 << THREAD_SLOT_BITS) - 1))
}

#[inline(always)]
fn forget_blocks(tid: u32) {
    if let Some(blocks) = thread_blocks(tid) {
        // SAFETY: the map's slot, live while the program runs; a plain store of a u32.
        unsafe { *blocks = 0 };
    }
}

/// Counts a block of thread `tid`; whether it is among the thread's first
/// `EXACT_BLOCKS_PER_THREAD`.
#[inline(always)]
fn among_first_blocks(tid: u32) -> bool {
    let Some(blocks) = thread_blocks(tid) else {
        return false;
    };
    // SAFETY: the map's slot, live while the program runs. Only this thread's switch-outs (one at
    // a time) and those of threads sharing its slot write it: a lost increment only delays sampling.
    unsafe {
        if *blocks >= EXACT_BLOCKS_PER_THREAD {
            return false;
        }
        *blocks += 1;
    }
    true
}

#[inline(always)]
fn wait_state(state: u32) -> WaitState {
    if state & TASK_UNINTERRUPTIBLE != 0 && state & TASK_NOLOAD == 0 {
        WaitState::Uninterruptible
    } else if state & TASK_INTERRUPTIBLE != 0 {
        WaitState::Sleeping
    } else {
        WaitState::Other
    }
}

/// Ends the stacks of a thread that blocks: remembers them and the time, by thread id.
#[inline(always)]
pub fn remember_blocked(state: &mut UnwindState, end: StackEnd) {
    seal(state, end);
    // The current task is still the thread that blocks (the unwinder's tail calls included).
    let tid = bpf_get_current_pid_tgid() as u32;
    let blocked = Blocked {
        key: OffCpuKey { stack: state.key, state: state.wait_state, _pad: 0 },
        weight: u64::from(state.weight),
    };
    if BLOCKED.insert(tid, blocked, BPF_ANY).is_err() {
        count(Counter::OffCpuBlockedDrops);
        return;
    }
    OFFCPU_STARTS.store(tid, state.blocked_at);
}

#[inline(always)]
fn switch_in(next: *const u8) {
    // Every switch-in passes here: one read of the task, its thread id only.
    let Some(tid) = task_tid(next) else {
        return;
    };
    if tid == 0 {
        return;
    }
    let Taken::Value(start) = OFFCPU_STARTS.take(tid) else {
        return;
    };
    // SAFETY: the value is copied out at once.
    let Some(blocked) = (unsafe { BLOCKED.get(tid) }).copied() else {
        // Evicted by other threads' blocks (the map was full).
        count(Counter::OffCpuBlockedDrops);
        return;
    };
    let _ = BLOCKED.remove(tid);
    let now = now_ns();
    if now < start || now - start < OFFCPU_MIN_NS.load() {
        return;
    }
    let times = match OFFCPU_BUFFER.get(0).copied() {
        Some(1) => &OFFCPU_TIME_B,
        _ => &OFFCPU_TIME_A,
    };
    add(times, &blocked, now - start);
}

/// Adds one block of `ns`, as much as its weight says, to the entry of its key.
#[inline(always)]
fn add(times: &HashMap<OffCpuKey, OffCpuTime>, blocked: &Blocked, ns: u64) {
    let (key, weight) = (&blocked.key, blocked.weight);
    let us = (ns / 1000).min(MAX_SQUARED_BLOCK_US);
    let squared = if weight > 1 { us * us } else { 0 };
    // A sampled block counts up to 2^43 ns (2.4 hours) times its weight (at most 2^20): the
    // product fits, with no 128-bit multiply (which BPF lacks) to check it.
    let ns = if weight > 1 { ns.min(1 << 43) * weight } else { ns };
    let add_to = |time: *mut OffCpuTime| {
        // SAFETY: the map's value, live while the program runs; other CPUs add atomically too.
        unsafe {
            atomic_add(&raw mut (*time).ns, ns);
            atomic_add(&raw mut (*time).blocks, weight);
            atomic_add(&raw mut (*time).us_squared, squared);
        }
    };
    if let Some(time) = times.get_ptr_mut(key) {
        add_to(time);
        return;
    }
    if times.insert(key, OffCpuTime { ns, blocks: weight, us_squared: squared }, BPF_NOEXIST).is_ok() {
        return;
    }
    // Another CPU created it between our lookup and insert, or the map is full.
    match times.get_ptr_mut(key) {
        Some(time) => add_to(time),
        None => count(Counter::OffCpuDrops),
    }
}

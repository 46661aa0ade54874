//! Run-queue latency: time from a thread becoming runnable (wakeup, new task, or preemption while
//! still runnable) until it runs on a CPU, kept in log-linear histograms system-wide, per CPU and per
//! process. BTF tracepoints hand us `task_struct` pointers, from which we read pid and tgid.

use aya_ebpf::{
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap, PerCpuArray},
    programs::BtfTracePointContext,
};
use profiler_common::{
    counters::Counter,
    histogram::{Histogram, bucket_index_by_table},
    process::DEFAULT_PID_MAX,
    runqlat::{MAX_PROCESS_BUCKETS, ProcessBucket},
};

use crate::shared::{
    PerThread, Taken, count, histogram_slot, increment, note_process, now_ns, opaque, task_ids, task_selected,
    task_state,
};

/// When each runnable thread was enqueued (0: not waiting), by thread id (see `PerThread`).
#[map]
static RUNQ_START: Array<u64> = Array::with_max_entries(DEFAULT_PID_MAX, 0);
const RUNQ_STARTS: PerThread = PerThread(&RUNQ_START);

/// Run-queue latency histogram, one per CPU (the CPU the thread ran on); their sum is system-wide.
#[map]
static RUNQ_LATENCY: PerCpuArray<Histogram> = PerCpuArray::with_max_entries(1, 0);

/// Per-process run-queue latency, one entry per non-empty (tgid, bucket).
#[map]
static RUNQ_PROCESS_LATENCY: HashMap<ProcessBucket, u64> = HashMap::with_max_entries(MAX_PROCESS_BUCKETS, 0);

/// Linux's TASK_RUNNING.
const TASK_RUNNING: u32 = 0;

#[inline(always)]
fn enqueue(task: *const u8) {
    let Some((pid, tgid)) = task_ids(task) else {
        return;
    };
    if pid == 0 || !task_selected(task, tgid) {
        return;
    }
    RUNQ_STARTS.store(pid, now_ns());
}

#[btf_tracepoint(function = "sched_wakeup")]
pub fn runq_sched_wakeup(ctx: BtfTracePointContext) -> i32 {
    count(Counter::Wakeups);
    enqueue(ctx.arg(0));
    0
}

#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn runq_sched_wakeup_new(ctx: BtfTracePointContext) -> i32 {
    count(Counter::Wakeups);
    enqueue(ctx.arg(0));
    0
}

/// Linux 5.18 and later: TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next,
/// unsigned int prev_state).
#[btf_tracepoint(function = "sched_switch")]
pub fn runq_sched_switch(ctx: BtfTracePointContext) -> i32 {
    let prev_state: u32 = ctx.arg(3);
    switch(ctx.arg::<u8>(0) != 0, ctx.arg(1), ctx.arg(2), prev_state)
}

/// Before Linux 5.18: TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next).
/// The switched-out task's state is read from the task.
#[btf_tracepoint(function = "sched_switch")]
pub fn runq_sched_switch_task_state(ctx: BtfTracePointContext) -> i32 {
    let prev: *const u8 = ctx.arg(1);
    let prev_state = task_state(prev).unwrap_or(TASK_RUNNING);
    switch(ctx.arg::<u8>(0) != 0, prev, ctx.arg(2), prev_state)
}

/// TP_PROTO(struct task_struct *p, ...): the exiting thread's start time is cleared, so a new
/// thread reusing its id starts clean.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn runq_thread_exit(ctx: BtfTracePointContext) -> i32 {
    if let Some((tid, _)) = task_ids(ctx.arg(0)) {
        RUNQ_STARTS.forget(tid);
    }
    0
}

/// A task switched out while still runnable (preempted, or its state still TASK_RUNNING) waits in
/// the run queue from now on; the task switched in stops waiting.
#[inline(always)]
fn switch(preempt: bool, prev: *const u8, next: *const u8, prev_state: u32) -> i32 {
    count(Counter::SchedSwitches);
    if preempt || prev_state == TASK_RUNNING {
        count(Counter::InvoluntarySwitches);
        enqueue(prev);
    }
    switch_in(next);
    0
}

#[inline(always)]
fn switch_in(next: *const u8) {
    let Some((pid, tgid)) = task_ids(next) else {
        return;
    };
    // The idle task never waits in a run queue.
    if pid == 0 {
        return;
    }
    let Taken::Value(ts) = RUNQ_STARTS.take(pid) else {
        return;
    };
    let now = now_ns();
    if now < ts {
        return;
    }
    let bucket = bucket_index_by_table(now - ts, opaque);
    if let Some(histogram) = RUNQ_LATENCY.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, and programs do not migrate while they run: a plain add is race-free.
        unsafe { *histogram_slot(histogram, bucket) += 1 };
    }
    if increment(&RUNQ_PROCESS_LATENCY, &ProcessBucket { tgid, bucket }, Counter::RunqProcessDrops) {
        count(Counter::RunqProcessEntries);
        note_process(next, tgid);
    }
}

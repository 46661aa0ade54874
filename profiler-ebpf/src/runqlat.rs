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
    histogram::{Histogram, NUM_BUCKETS, bucket_index},
    process::{DEFAULT_PID_MAX, MAX_HASHED_THREADS},
    runqlat::{MAX_PROCESS_BUCKETS, ProcessBucket},
};

use crate::shared::{PerThread, count, increment, note_process, now_ns, task_ids, task_selected};

/// When each runnable thread was enqueued (0: not waiting), by thread id: one of these two maps, the
/// other sized to one entry by the loader (see `PerThread`).
#[map]
static RUNQ_START: Array<u64> = Array::with_max_entries(DEFAULT_PID_MAX, 0);
#[map]
static RUNQ_START_BY_TID: HashMap<u32, u64> = HashMap::with_max_entries(MAX_HASHED_THREADS, 0);
const RUNQ_STARTS: PerThread = PerThread { array: &RUNQ_START, hash: &RUNQ_START_BY_TID };

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

#[inline(always)]
pub fn forget_thread(tid: u32) {
    RUNQ_STARTS.forget(tid);
}

#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup(ctx: BtfTracePointContext) -> i32 {
    count(Counter::Wakeups);
    enqueue(ctx.arg(0));
    0
}

#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: BtfTracePointContext) -> i32 {
    count(Counter::Wakeups);
    enqueue(ctx.arg(0));
    0
}

/// TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next, unsigned int prev_state)
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    count(Counter::SchedSwitches);
    let prev_state: u32 = ctx.arg(3);
    if prev_state == TASK_RUNNING {
        count(Counter::InvoluntarySwitches);
        enqueue(ctx.arg(1));
    }
    switch_in(ctx.arg(2));
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
    let ts = RUNQ_STARTS.take(pid);
    if ts == 0 {
        return;
    }
    let now = now_ns();
    if now < ts {
        return;
    }
    let bucket = bucket_index(now - ts);

    if let Some(histogram) = RUNQ_LATENCY.get_ptr_mut(0) {
        let index = bucket as usize;
        if index < NUM_BUCKETS {
            unsafe { (*histogram).buckets[index] += 1 };
        }
    }

    if increment(&RUNQ_PROCESS_LATENCY, &ProcessBucket { tgid, bucket }, Counter::RunqProcessDrops) {
        count(Counter::RunqProcessEntries);
        note_process(next, tgid);
    }
}

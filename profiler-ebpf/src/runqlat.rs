//! Run-queue latency: time from a thread becoming runnable (wakeup, new task, or preemption while
//! still runnable) until it runs on a CPU, kept in log-linear histograms system-wide, per CPU and per
//! process. BTF tracepoints hand us `task_struct` pointers, from which we read pid and tgid.

use aya_ebpf::{
    macros::{btf_tracepoint, map},
    maps::{HashMap, PerCpuArray},
    programs::BtfTracePointContext,
};
use profiler_common::{
    counters::Counter,
    histogram::{Histogram, NUM_BUCKETS, bucket_index},
    runqlat::{MAX_PROCESS_BUCKETS, MAX_RUNNABLE_THREADS, ProcessBucket, RunqStart},
};

use crate::shared::{count, increment, note_process, now_ns, store_start, task_ids, task_selected};

/// When each runnable thread was enqueued (ts 0: not waiting). Entries are updated in place rather
/// than inserted and deleted on every event, which would allocate and free in the kernel on the
/// hottest path; a thread's entry goes when the thread exits (`forget_thread`).
#[map]
static RUNQ_START: HashMap<u32, RunqStart> = HashMap::with_max_entries(MAX_RUNNABLE_THREADS, 0);

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
    store_start(&RUNQ_START, pid, RunqStart { ts: now_ns(), tgid, _pad: 0 });
}

/// Drops an exiting thread's entry.
#[inline(always)]
pub fn forget_thread(tid: u32) {
    let _ = RUNQ_START.remove(&tid);
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
    let Some((pid, _)) = task_ids(next) else {
        return;
    };
    let Some(start) = RUNQ_START.get_ptr_mut(&pid) else {
        return;
    };
    let (ts, tgid) = unsafe { ((*start).ts, (*start).tgid) };
    if ts == 0 {
        return;
    }
    unsafe { (*start).ts = 0 };
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
        note_process(next, tgid);
    }
}

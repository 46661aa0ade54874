//! Thread exit: the per-thread start times of the exiting thread are cleared (array) or removed
//! (hash map), so a new thread reusing its id starts clean and the hash maps hold only live threads.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::shared::task_ids;

/// TP_PROTO(struct task_struct *p, bool group_dead)
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> i32 {
    if let Some((tid, _)) = task_ids(ctx.arg(0)) {
        crate::runqlat::forget_thread(tid);
        crate::syscalls::forget_thread(tid);
    }
    0
}

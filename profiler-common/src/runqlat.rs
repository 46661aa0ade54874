//! Run-queue latency probe: map layouts.

/// Key of `RUNQ_PROCESS_LATENCY`: one bucket of one process's histogram.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProcessBucket {
    pub tgid: u32,
    pub bucket: u32,
}

crate::user_pod!(ProcessBucket);

/// Capacity of `RUNQ_PROCESS_LATENCY`; a busy process touches 30 to 100 buckets.
pub const MAX_PROCESS_BUCKETS: u32 = 131072;

/// Per-thread enqueue times: an array indexed by thread id (see `process::MAX_THREAD_SLOTS`).
pub const RUNQ_START: &str = "RUNQ_START";
/// Per-CPU array of one `histogram::Histogram`: each CPU's run-queue latency.
pub const RUNQ_LATENCY: &str = "RUNQ_LATENCY";
/// Hash map `ProcessBucket` -> count.
pub const RUNQ_PROCESS_LATENCY: &str = "RUNQ_PROCESS_LATENCY";

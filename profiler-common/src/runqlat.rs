//! Run-queue latency probe: map layouts.

/// Key of `RUNQ_PROCESS_LATENCY`: one bucket of one process's histogram.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProcessBucket {
    pub tgid: u32,
    pub bucket: u32,
}

/// Value of `RUNQ_START`, keyed by thread id: when the thread became runnable, and its process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RunqStart {
    pub ts: u64,
    pub tgid: u32,
    pub _pad: u32,
}

crate::user_pod!(ProcessBucket, RunqStart);

/// Capacity of `RUNQ_START`, an LRU hash so that threads which never run again cannot fill it.
pub const MAX_RUNNABLE_THREADS: u32 = 32768;
/// Capacity of `RUNQ_PROCESS_LATENCY`; a busy process touches 30 to 100 buckets.
pub const MAX_PROCESS_BUCKETS: u32 = 131072;

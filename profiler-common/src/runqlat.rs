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

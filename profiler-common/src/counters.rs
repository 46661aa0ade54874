//! Event and drop counters: one per-CPU array slot each, summed by userspace. What userspace can
//! derive (latencies measured, syscalls made: the histograms' counts) is not counted again here,
//! to keep the hot paths short.

/// Index of each counter in the `COUNTERS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// sched_switch events seen (all tasks, before filtering).
    SchedSwitches = 0,
    /// Switches where the outgoing task was still runnable (preempted), not sleeping.
    InvoluntarySwitches,
    /// sched_wakeup and sched_wakeup_new events that started a run-queue clock.
    Wakeups,
    /// Run-queue latencies not added to a per-process histogram because its map was full.
    RunqProcessDrops,
    /// Syscalls not added to the per-process table because its map was full.
    SyscallProcessDrops,
    /// Failed syscalls whose errno did not fit in the errno map.
    SyscallErrnoDrops,
    /// Per-thread start timestamps lost: overwritten by another thread's that shares their slot
    /// (only with `pid_max` above `MAX_THREAD_SLOTS`), or a thread id above the array's size.
    StartDrops,
    /// Processes whose name could not be stored in the process map.
    ProcessDrops,
    /// CPU samples of non-idle tasks that passed the filters.
    CpuSamples,
    /// CPU samples that found the CPU idle (the idle task, pid 0).
    IdleSamples,
    /// Stacks whose frames could not be kept (the frame map of the interval was full).
    StackErrors,
    /// CPU samples not counted because the sample map was full.
    SampleDrops,
    /// New processes not announced to userspace because the ring buffer was full.
    NewProcessDrops,
    /// Entries created in `RUNQ_PROCESS_LATENCY`. Entries created minus entries userspace removed
    /// tell how full a per-process map is without walking it.
    RunqProcessEntries,
    /// Entries created in `SYSCALL_STATS`.
    SyscallProcessEntries,
    /// Entries created in `SYSCALL_ERRNOS`.
    SyscallErrnoEntries,
    /// Stacks kept in the frame map being written (`STACK_FRAMES_A/B`): how full it is since the
    /// last drain, so that a fast-filling map is drained early instead of losing stacks.
    StackEntries,
    /// Syscall latencies not added to a per-process histogram because its map was full.
    SyscallBucketDrops,
    /// Entries created in `SYSCALL_PROCESS_LATENCY`.
    SyscallBucketEntries,
    /// Blocking switch-outs of selected threads whose stacks were taken (after sampling).
    OffCpuBlocks,
    /// Blocking switch-outs left out by sampling (`--offcpu-sample`).
    OffCpuSampledOut,
    /// Blocked times not added because the off-CPU time map was full.
    OffCpuDrops,
    /// Blocked threads whose stacks were forgotten before they ran again (`BLOCKED` full).
    OffCpuBlockedDrops,
}

/// Number of slots in the `COUNTERS` array.
pub const NUM_COUNTERS: u32 = Counter::OffCpuBlockedDrops as u32 + 1;

/// Per-CPU array of `NUM_COUNTERS` u64, indexed by `Counter`.
pub const COUNTERS: &str = "COUNTERS";

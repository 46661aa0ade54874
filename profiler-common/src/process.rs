//! Names of the processes the probes saw, captured in the kernel so that a process that exits before
//! userspace looks at /proc still has a name.

/// Length of a kernel task name (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Value of the `PROCESSES` map, keyed by tgid.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProcessName {
    pub comm: [u8; COMM_LEN],
}

crate::user_pod!(ProcessName);

/// LRU hash map tgid -> `ProcessName`, filled when a probe first sees a process.
pub const PROCESSES: &str = "PROCESSES";
/// Hash map tgid -> 1 of the processes `--pid` selects.
pub const FILTER_PIDS: &str = "FILTER_PIDS";
/// One-entry array: 1 while `FILTER_PIDS` applies, when the loader made the filter changeable.
pub const PID_FILTER_ON: &str = "PID_FILTER_ON";

/// Capacity of the `PROCESSES` map (an LRU: the oldest entries give way; userspace reads it often).
pub const MAX_PROCESSES: u32 = 16384;

/// Thread ids are below the kernel's `pid_max`; this is its default, and the size the per-thread
/// arrays (indexed by thread id) are built with unless the loader resizes them to the running
/// kernel's `/proc/sys/kernel/pid_max`.
pub const DEFAULT_PID_MAX: u32 = 32768;

/// Most slots of a per-thread table (4 MiB, the largest value an array map may have): with a larger
/// `pid_max` (systemd sets 4194304, which would make each array 32 MiB), threads whose ids differ
/// only above these bits share a slot, each value tagged with its thread's high bits (see
/// `PerThread` in profiler-ebpf).
pub const MAX_THREAD_SLOTS: u32 = 1 << 19;

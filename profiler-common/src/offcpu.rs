//! Off-CPU probe: map layouts.
//!
//! At a blocking switch-out the probe takes the thread's stacks (as the cpu probe does, into
//! `OFFCPU_FRAMES`) and remembers them by thread id; at its switch-in it adds the time it was off
//! CPU to (process, stacks, state) in the interval's `OFFCPU_TIME_A/B`. The frames map is not
//! emptied by the drains, since a thread may block across several of them: it is an LRU map, and a
//! stack whose frames it evicted is drawn as lost.

use crate::oncpu::StackKey;

/// The state a thread blocked in, as `ps` shows it.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitState {
    /// S: interruptible sleep (a futex, a pipe, a socket, a timer).
    Sleeping = 0,
    /// D: uninterruptible sleep, usually I/O.
    Uninterruptible,
    /// Stopped, traced, a kernel thread's idle wait (TASK_IDLE), or (before Linux 5.18, whose
    /// sched_switch passes the state the scheduler saw) a wait whose waker changed the state first.
    Other,
}

impl WaitState {
    pub const ALL: [WaitState; 3] = [WaitState::Sleeping, WaitState::Uninterruptible, WaitState::Other];

    pub fn from_u32(value: u32) -> Option<WaitState> {
        Self::ALL.get(value as usize).copied()
    }
}

/// Key of `OFFCPU_TIME_A/B`: a thread's stacks (the cpu probe's key) and its state.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OffCpuKey {
    pub stack: StackKey,
    /// A `WaitState`.
    pub state: u32,
    pub _pad: u32,
}

/// Value of `OFFCPU_TIME_A/B`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffCpuTime {
    /// Nanoseconds off CPU, summed.
    pub ns: u64,
    /// Times the thread blocked.
    pub blocks: u64,
    /// The lengths squared of the blocks taken as one in N (not of those counted once), in
    /// microseconds², each up to `MAX_SQUARED_BLOCK_US`: what the error of the total is estimated
    /// from.
    pub us_squared: u64,
}

/// Blocks count in `OffCpuTime::us_squared` up to this long (100 s): an entry's sum over one
/// drain interval has room for 1 800 of them.
pub const MAX_SQUARED_BLOCK_US: u64 = 100_000_000;

/// Value of `BLOCKED`: a blocked thread's key, and what its block counts for: 1, or N when it was
/// taken as one in N.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocked {
    pub key: OffCpuKey,
    pub weight: u64,
}

/// With sampling, each thread's first blocks are all taken (counted once), and only later ones one
/// in N: a thread that blocks a few times, each for long (a main thread joining, an idle worker),
/// is counted exactly rather than all or nothing.
pub const EXACT_BLOCKS_PER_THREAD: u32 = 16;

crate::user_pod!(OffCpuKey, OffCpuTime, Blocked);

/// Capacity of each of `OFFCPU_TIME_A` and `OFFCPU_TIME_B`.
pub const MAX_OFFCPU_KEYS: u32 = 32768;
/// Capacity of `OFFCPU_FRAMES` (1 KiB each).
pub const MAX_OFFCPU_STACKS: u32 = 8192;
/// Capacity of `BLOCKED`: threads blocked at once whose stacks are kept.
pub const MAX_BLOCKED: u32 = 32768;

/// The two time maps, `OffCpuKey` -> `OffCpuTime`, written in turn like the cpu probe's.
pub const OFFCPU_TIME: [&str; 2] = ["OFFCPU_TIME_A", "OFFCPU_TIME_B"];
/// Array of one u32: the index into `OFFCPU_TIME` the probe writes.
pub const OFFCPU_BUFFER: &str = "OFFCPU_BUFFER";
/// LRU hash map, hash -> `unwind::StackFrames`: the off-CPU stacks' frames.
pub const OFFCPU_FRAMES: &str = "OFFCPU_FRAMES";
/// LRU hash map, thread id -> `Blocked`: the stacks of each blocked thread.
pub const BLOCKED: &str = "BLOCKED";
/// Per-thread array of switch-out times (see the eBPF `PerThread`).
pub const OFFCPU_START: &str = "OFFCPU_START";
/// Array of u32 by thread id (its low bits): blocks each thread made, for `EXACT_BLOCKS_PER_THREAD`.
pub const OFFCPU_THREAD_BLOCKS: &str = "OFFCPU_THREAD_BLOCKS";
/// Program array: index 0 is the off-CPU unwinder.
pub const OFFCPU_UNWIND_PROGRAMS: &str = "OFFCPU_UNWIND_PROGRAMS";

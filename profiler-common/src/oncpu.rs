//! On-CPU stack sampling probe: map layouts.
//!
//! A sample's kernel and user stacks are kept by the hash of their frames, not by a stack-trace
//! map's bucket: no two stacks collide, and userspace empties the maps each interval (two of each,
//! the sampler writing one while userspace drains the other), so stacks are not lost however long
//! a recording runs.

/// Key of `STACK_SAMPLES_A/B`: how often one thread (or process) was seen on a CPU with one pair
/// of stacks.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StackKey {
    pub tgid: u32,
    /// Thread id with `--per-thread`, else 0.
    pub tid: u32,
    /// Hash of the kernel frames in `STACK_FRAMES_A/B`; 0: no kernel stack (a sample in user mode).
    pub kernel: u64,
    /// Hash of the user frames; 0: none.
    pub user: u64,
    /// Why the user stack ends where it does: a `unwind::StackEnd`.
    pub end: u32,
    /// Non-zero: the kernel stack could not be kept (its frame map was full), so the sample is
    /// drawn with a `[lost]` frame rather than as a stack with no kernel half.
    pub kernel_lost: u32,
}

crate::user_pod!(StackKey);

/// Capacity of each of `STACK_SAMPLES_A` and `STACK_SAMPLES_B`.
pub const MAX_STACK_KEYS: u32 = 65536;
/// Capacity of each of `STACK_FRAMES_A` and `STACK_FRAMES_B` (1 KiB each, preallocated: programs
/// that run in interrupt context may only use preallocated hash maps on older kernels).
pub const MAX_STACKS: u32 = 8192;
/// Capacity of `SAMPLED_PROCESSES`, the processes already announced to userspace.
pub const MAX_SAMPLED_PROCESSES: u32 = 16384;
/// Size of the `NEW_PROCESSES` ring buffer, which carries tgids (4 bytes + 8 of header each).
pub const NEW_PROCESSES_BYTES: u32 = 64 * 1024;

/// The two sample maps, `StackKey` -> count: the sampler counts into one while userspace drains
/// and empties the other, so every interval's samples are taken whole and none is lost to a race.
pub const STACK_SAMPLES: [&str; 2] = ["STACK_SAMPLES_A", "STACK_SAMPLES_B"];
/// The two frame maps, hash -> `unwind::StackFrames`, paired with the sample maps.
pub const STACK_FRAMES: [&str; 2] = ["STACK_FRAMES_A", "STACK_FRAMES_B"];
/// Array of one u32: the index into `STACK_SAMPLES` and `STACK_FRAMES` the sampler writes.
pub const STACK_BUFFER: &str = "STACK_BUFFER";
/// LRU hash map tgid -> 1: the processes already announced on `NEW_PROCESSES`.
pub const SAMPLED_PROCESSES: &str = "SAMPLED_PROCESSES";
/// Ring buffer of tgids (u32): processes sampled for the first time (or since their exec).
pub const NEW_PROCESSES: &str = "NEW_PROCESSES";

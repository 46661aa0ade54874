//! On-CPU stack sampling probe: map layouts.

/// Key of `STACK_SAMPLES`: how often one thread (or process) was seen on a CPU with one pair of
/// stacks. Stack ids index `STACKS`; a negative id is the error `bpf_get_stackid` returned (-EFAULT
/// for the kernel stack of a sample taken in user mode, which is normal).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StackKey {
    pub tgid: u32,
    /// Thread id with `--per-thread`, else 0.
    pub tid: u32,
    pub kernel_stack_id: i32,
    pub user_stack_id: i32,
}

crate::user_pod!(StackKey);

/// Capacity of the `STACKS` stack-trace map (each entry holds up to 127 frames).
pub const MAX_STACKS: u32 = 16384;
/// Capacity of each of `STACK_SAMPLES_A` and `STACK_SAMPLES_B`.
pub const MAX_STACK_KEYS: u32 = 65536;
/// Capacity of `SAMPLED_PROCESSES`, the processes already announced to userspace.
pub const MAX_SAMPLED_PROCESSES: u32 = 16384;
/// Size of the `NEW_PROCESSES` ring buffer, which carries tgids (4 bytes + 8 of header each).
pub const NEW_PROCESSES_BYTES: u32 = 64 * 1024;

/// Stack-trace map: stack id -> up to 127 instruction pointers.
pub const STACKS: &str = "STACKS";
/// The two sample maps, `StackKey` -> count: the sampler counts into one while userspace drains
/// and empties the other, so every interval's samples are taken whole and none is lost to a race.
pub const STACK_SAMPLES: [&str; 2] = ["STACK_SAMPLES_A", "STACK_SAMPLES_B"];
/// Array of one u32: the index into `STACK_SAMPLES` of the map the sampler counts into.
pub const STACK_BUFFER: &str = "STACK_BUFFER";
/// LRU hash map tgid -> 1: the processes already announced on `NEW_PROCESSES`.
pub const SAMPLED_PROCESSES: &str = "SAMPLED_PROCESSES";
/// Ring buffer of tgids (u32): processes sampled for the first time (or since their exec).
pub const NEW_PROCESSES: &str = "NEW_PROCESSES";

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
/// Capacity of `STACK_SAMPLES`.
pub const MAX_STACK_KEYS: u32 = 65536;
/// Capacity of `SAMPLED_PROCESSES`, the processes already announced to userspace.
pub const MAX_SAMPLED_PROCESSES: u32 = 16384;
/// Size of the `NEW_PROCESSES` ring buffer, which carries tgids (4 bytes + 8 of header each).
pub const NEW_PROCESSES_BYTES: u32 = 64 * 1024;

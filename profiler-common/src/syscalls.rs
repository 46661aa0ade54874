//! Syscall probe: map layouts.

/// Syscall numbers at or above this are not tracked (x86_64 has about 470).
pub const MAX_SYSCALL_NR: u32 = 512;

/// Key of `SYSCALL_STATS`: one syscall of one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProcessSyscall {
    pub tgid: u32,
    pub nr: u32,
}

/// Value of `SYSCALL_STATS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SyscallStats {
    pub count: u64,
    pub errors: u64,
    pub total_ns: u64,
}

/// Key of `SYSCALL_ERRNOS`: how often one syscall of one process failed with one errno.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SyscallErrno {
    pub tgid: u32,
    pub nr: u32,
    pub errno: u32,
    pub _pad: u32,
}

crate::user_pod!(ProcessSyscall, SyscallStats, SyscallErrno);

/// Capacity of `SYSCALL_STATS`.
pub const MAX_PROCESS_SYSCALLS: u32 = 32768;
/// Capacity of `SYSCALL_ERRNOS`.
pub const MAX_SYSCALL_ERRNOS: u32 = 8192;

/// Per-thread syscall entry words (time and number): an array indexed by thread id (see
/// `process::MAX_THREAD_SLOTS`).
pub const SYSCALL_START: &str = "SYSCALL_START";
/// Per-CPU hash map `ProcessSyscall` -> `SyscallStats`.
pub const SYSCALL_STATS: &str = "SYSCALL_STATS";
/// Hash map `SyscallErrno` -> count.
pub const SYSCALL_ERRNOS: &str = "SYSCALL_ERRNOS";
/// Array of `MAX_SYSCALL_NR` `histogram::Histogram`, by syscall number.
pub const SYSCALL_LATENCY: &str = "SYSCALL_LATENCY";

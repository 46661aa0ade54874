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

/// Element of `SYSCALL_SLOTS`: one (process, syscall)'s counts on one CPU. `tgid` 0: free (no
/// process of pid 0 makes syscalls).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SyscallSlot {
    pub tgid: u32,
    pub nr: u32,
    pub stats: SyscallStats,
}

impl SyscallSlot {
    pub const FREE: SyscallSlot =
        SyscallSlot { tgid: 0, nr: 0, stats: SyscallStats { count: 0, errors: 0, total_ns: 0 } };
}

/// Key of `SYSCALL_PROCESS_LATENCY`: how many calls of one syscall of one process took a latency
/// in one `histogram` bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SyscallBucket {
    pub tgid: u32,
    pub nr: u32,
    pub bucket: u32,
}

crate::user_pod!(ProcessSyscall, SyscallStats, SyscallErrno, SyscallSlot, SyscallBucket);

/// Capacity of `SYSCALL_STATS`.
pub const MAX_PROCESS_SYSCALLS: u32 = 32768;
/// `SYSCALL_SLOTS` holds 2^SYSCALL_SLOT_TABLE_BITS slots (4 MiB, the largest value of an array
/// map), 2^SYSCALL_SLOT_BITS_PER_CPU (32 KiB) for each of the first SYSCALL_SLOT_CPUS CPUs. The
/// numbers are constants of the programs, where values set at load time would cost the hottest
/// path a load and two shifts by a register; CPUs past the first 128 count in the hash map alone.
pub const SYSCALL_SLOT_TABLE_BITS: u32 = 17;
pub const SYSCALL_SLOT_BITS_PER_CPU: u32 = 10;
pub const SYSCALL_SLOT_CPUS: u32 = 1 << (SYSCALL_SLOT_TABLE_BITS - SYSCALL_SLOT_BITS_PER_CPU);

/// Capacity of `SYSCALL_ERRNOS`.
pub const MAX_SYSCALL_ERRNOS: u32 = 8192;
/// Capacity of `SYSCALL_PROCESS_LATENCY` (allocated as used): a busy process's syscalls fill some
/// tens of buckets each.
pub const MAX_SYSCALL_BUCKETS: u32 = 65536;

/// Per-thread syscall entry words (time and number), `process::MAX_THREAD_SLOTS` of them indexed
/// by thread id: the programs' global data, which the loader makes an array of one value, named
/// after its section.
pub const SYSCALL_START: &str = ".bss.syscall_start";
/// Per-CPU hash map `ProcessSyscall` -> `SyscallStats`.
pub const SYSCALL_STATS: &str = "SYSCALL_STATS";
/// `SyscallSlot`s, 2^SYSCALL_SLOT_BITS_PER_CPU for each CPU, CPU by CPU, in the programs' global
/// data (a mappable array of one value, named after its section).
pub const SYSCALL_SLOTS: &str = ".bss.syscall_slots";
/// Hash map `SyscallErrno` -> count.
pub const SYSCALL_ERRNOS: &str = "SYSCALL_ERRNOS";
/// Hash map `SyscallBucket` -> count: latency histograms per (process, syscall), filled only when
/// asked for (`top`, `record --syscall-latency-per-process`), as they cost a hash update per call.
pub const SYSCALL_PROCESS_LATENCY: &str = "SYSCALL_PROCESS_LATENCY";
/// `MAX_SYSCALL_NR` `histogram::Histogram`s, by syscall number, in the programs' global data (a
/// mappable array map of one value, 2 MiB, named after its section).
pub const SYSCALL_LATENCY: &str = ".bss.syscall_latency";

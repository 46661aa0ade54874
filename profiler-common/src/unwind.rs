//! Unwinding user stacks without frame pointers: the tables userspace builds from `.eh_frame`
//! (`profiler/src/unwind/`) and the eBPF unwinder (`profiler-ebpf/src/unwind.rs`) walks, and the
//! state the unwinder carries from one tail call to the next.
//!
//! A table covers one executable file, in that file's virtual addresses. Its rows are sorted and
//! grouped in pages of 64 KiB of code: a row keeps only the low 16 bits of its address, and a hash
//! map gives each (table, page) its range of rows (as lightswitch does), so a lookup is one hash
//! lookup and a binary search of a few hundred rows at most.

/// Bits of address a page covers.
pub const PAGE_BITS: u32 = 16;

/// How to find the caller's frame from one instruction on: the CFA (canonical frame address, the
/// stack pointer before the call), the return address at CFA - 8, and where RBP was saved.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindRow {
    /// The low `PAGE_BITS` bits of the first address the row covers.
    pub pc_low: u16,
    /// A `CFA_*` rule.
    pub cfa: u8,
    /// A `RBP_*` rule.
    pub rbp: u8,
    pub cfa_offset: u16,
    /// With `RBP_SAVED`: where RBP was saved, from the CFA. With `CFA_PLT`: the RIP & 15 from which
    /// the CFA is 8 bytes further.
    pub rbp_offset: i16,
}

/// CFA = RSP + cfa_offset.
pub const CFA_RSP: u8 = 0;
/// CFA = RBP + cfa_offset.
pub const CFA_RBP: u8 = 1;
/// A PLT stub: CFA = RSP + cfa_offset, 8 more once RIP & 15 >= rbp_offset (the stub's push).
pub const CFA_PLT: u8 = 2;
/// CFA = *(RSP + cfa_offset).
pub const CFA_DEREF_RSP: u8 = 3;
/// A signal trampoline (`__restore_rt`): the interrupted frame's registers are in the
/// `rt_sigframe` at RSP.
pub const CFA_SIGNAL: u8 = 4;
/// The return address is undefined: the outermost frame (`_start`, a thread's start).
pub const CFA_END: u8 = 5;
/// No unwind information covers the address (a gap between functions).
pub const CFA_NONE: u8 = 6;
/// A rule the unwinder does not evaluate (a DWARF expression of another shape).
pub const CFA_UNSUPPORTED: u8 = 7;

/// RBP is the caller's (not saved, or restored).
pub const RBP_SAME: u8 = 0;
/// The caller's RBP was saved at CFA + rbp_offset.
pub const RBP_SAVED: u8 = 1;

/// Where in `rt_sigframe` (at RSP in `__restore_rt`) the interrupted registers are, on x86_64:
/// the ucontext's `uc_mcontext` at 40, then r8..r15, rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip.
pub const SIGFRAME_RBP: u64 = 40 + 10 * 8;
pub const SIGFRAME_RSP: u64 = 40 + 15 * 8;
pub const SIGFRAME_RIP: u64 = 40 + 16 * 8;

/// Key of `UNWIND_PAGES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageKey {
    pub table: u32,
    /// The file address >> PAGE_BITS.
    pub page: u32,
}

/// Value of `UNWIND_PAGES`: the rows of one page, in `UNWIND_ROWS`. The first covers the page's
/// start (userspace repeats the row in force there).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageRows {
    pub first: u32,
    pub count: u32,
}

/// One executable mapping of a process, as the unwinder sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// An address minus this is the address in the file's own virtual address space, which its
    /// table indexes.
    pub bias: u64,
    /// The mapping's table; `NO_TABLE` for code without one (JIT, anonymous memory, a file whose
    /// table did not fit): walked with frame pointers.
    pub table: u32,
    pub _pad: u32,
}

pub const NO_TABLE: u32 = 0;

/// Executable mappings of one process the unwinder keeps at most (sorted by start). Libraries
/// beyond are walked with frame pointers.
pub const MAX_MAPPINGS: usize = 64;

/// Value of `PROCESS_MAPPINGS`, keyed by tgid.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessMappings {
    pub count: u32,
    pub _pad: u32,
    pub mappings: [Mapping; MAX_MAPPINGS],
}

/// Frames a stack holds at most, kernel or user (the kernel's own limit, perf_event_max_stack).
pub const MAX_FRAMES: usize = 127;
/// Slots of a stack's frame array: a power of two, so the eBPF side bounds an index with a mask.
pub const FRAME_SLOTS: usize = 128;

/// Value of `STACK_FRAMES_A/B`, keyed by the frames' hash.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StackFrames {
    pub len: u32,
    pub _pad: u32,
    pub frames: [u64; FRAME_SLOTS],
}

/// The hash a stack is kept by (FNV-1a over its frames' words); never 0, which means "none".
#[inline(always)]
pub fn hash_frames(frames: &[u64; FRAME_SLOTS], len: usize, salt: u64) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ salt;
    for (i, frame) in frames.iter().enumerate() {
        if i >= len {
            break;
        }
        hash = (hash ^ frame).wrapping_mul(0x0000_0100_0000_01b3);
    }
    if hash == 0 { 1 } else { hash }
}

/// Frames one run of the unwinder program walks before it tail-calls itself: the verifier checks
/// each program on its own, so a short loop keeps every kernel's verifier well within its limits.
pub const FRAMES_PER_PROGRAM: usize = 8;
/// Tail calls one sample's unwinding may take (the kernel allows 33 in all).
pub const MAX_TAIL_CALLS: u32 = 30;

/// Why the user half of a stack ends where it ends; kept in the sample key and counted.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackEnd {
    /// The outermost frame was reached (its return address is undefined).
    Complete = 0,
    /// A kernel thread, or a sample without user stack.
    NoUserStack,
    /// The process's tables were not loaded yet: the whole stack was walked with frame pointers.
    FramePointers,
    /// An address in no executable mapping of the process: the walk stops there, no junk frame.
    OutsideMapping,
    /// No row covers the address (code without unwind information), and frame pointers did not
    /// continue the walk.
    NoRow,
    /// A rule the unwinder does not evaluate.
    Unsupported,
    /// Reading the stack failed (a fault, a stack pointer outside the stack).
    ReadFault,
    /// `MAX_FRAMES` frames.
    DepthLimit,
    /// `MAX_TAIL_CALLS` tail calls.
    TailCallLimit,
    /// No room to keep the frames (the stack map was full).
    Lost,
}

pub const STACK_ENDS: u32 = StackEnd::Lost as u32 + 1;

impl StackEnd {
    pub const ALL: [StackEnd; STACK_ENDS as usize] = [
        StackEnd::Complete,
        StackEnd::NoUserStack,
        StackEnd::FramePointers,
        StackEnd::OutsideMapping,
        StackEnd::NoRow,
        StackEnd::Unsupported,
        StackEnd::ReadFault,
        StackEnd::DepthLimit,
        StackEnd::TailCallLimit,
        StackEnd::Lost,
    ];

    pub fn from_u32(value: u32) -> Option<StackEnd> {
        Self::ALL.get(value as usize).copied()
    }
}

/// The unwinder's per-CPU state, carried across its tail calls.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnwindState {
    /// The registers of the frame to unwind next.
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// The sample's key, filled as the unwinding goes.
    pub key: crate::oncpu::StackKey,
    /// The index of the sample and frame maps this sample goes to, or `OFF_CPU`: the stacks of a
    /// thread blocking, for the off-CPU probe.
    pub buffer: u32,
    pub tail_calls: u32,
    /// Non-zero: `ip` is where the frame was interrupted (the first frame, or one a signal
    /// interrupted), not a return address, whose call instruction is one byte before.
    pub exact_ip: u32,
    /// Off CPU: the `offcpu::WaitState` the thread blocks in.
    pub wait_state: u32,
    /// Off CPU: what the block counts for (`offcpu::Blocked::weight`).
    pub weight: u32,
    pub _pad: u32,
    /// Off CPU: when the thread switched out (before its stacks were walked, which takes long
    /// under emulation), in `bpf_ktime_get_ns` nanoseconds.
    pub blocked_at: u64,
    /// The frames so far; the kernel stack's, before the user stack's.
    pub stack: StackFrames,
}

/// `UnwindState::buffer` of a blocking thread's stacks (the cpu probe's buffers are 0 and 1).
pub const OFF_CPU: u32 = 2;

/// Per-CPU array of one `UnwindState`.
pub const UNWIND_STATE: &str = "UNWIND_STATE";
/// Mmapable array of `UnwindRow`, written by userspace through its mapping.
pub const UNWIND_ROWS: &str = "UNWIND_ROWS";
/// Hash map `PageKey` -> `PageRows`.
pub const UNWIND_PAGES: &str = "UNWIND_PAGES";
/// Hash map tgid -> `ProcessMappings`.
pub const PROCESS_MAPPINGS: &str = "PROCESS_MAPPINGS";
/// Program array: index 0 is the unwinder.
pub const UNWIND_PROGRAMS: &str = "UNWIND_PROGRAMS";
/// Per-CPU array of `STACK_ENDS` counters, indexed by `StackEnd`.
pub const STACK_END_COUNTS: &str = "STACK_END_COUNTS";

/// Rows `UNWIND_ROWS` holds: 8 bytes each, 32 MiB (libc needs 28 k, python3 65 k).
pub const MAX_ROWS: u32 = 4 << 20;
/// Pages `UNWIND_PAGES` holds (a page is 64 KiB of code).
pub const MAX_PAGES: u32 = 65536;
/// Processes `PROCESS_MAPPINGS` holds (2 KiB each, preallocated).
pub const MAX_UNWOUND_PROCESSES: u32 = 4096;

crate::user_pod!(UnwindRow, PageKey, PageRows, Mapping, ProcessMappings, StackFrames, UnwindState);

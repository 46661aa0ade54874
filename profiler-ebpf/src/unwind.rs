//! The user-stack unwinder: from a sample's user registers, frame by frame, with the tables
//! userspace built from each file's `.eh_frame` (`profiler_common::unwind`): find the mapping of
//! the address, the row of the address in its table, compute the CFA, read the return address and
//! the saved RBP. Code without a table (JIT, anonymous memory) is walked with frame pointers. An
//! address in no executable mapping ends the walk there: it never becomes a frame.
//!
//! A run of the program walks `FRAMES_PER_PROGRAM` frames and tail-calls itself for more, so each
//! program the verifier checks stays small on every kernel. A tail call stays within one program
//! type: the cpu probe's sampler (perf_event) and the off-CPU probe's switch (a BTF tracepoint on
//! sched_switch) each have an unwinder of their own type, with the same body.

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_probe_read_user,
    macros::{btf_tracepoint, map, perf_event},
    maps::{Array, HashMap, PerCpuArray, ProgramArray},
    programs::{BtfTracePointContext, PerfEventContext},
};
use profiler_common::unwind::{
    CFA_DEREF_RSP, CFA_END, CFA_NONE, CFA_PLT, CFA_RBP, CFA_RSP, CFA_SIGNAL, FRAME_SLOTS, FRAMES_PER_PROGRAM,
    MAX_FRAMES, MAX_MAPPINGS, MAX_PAGES, MAX_ROWS, MAX_TAIL_CALLS, MAX_UNWOUND_PROCESSES, Mapping, NO_TABLE, OFF_CPU,
    PAGE_BITS, PageKey, PageRows, ProcessMappings, RBP_SAVED, SIGFRAME_RBP, SIGFRAME_RIP, SIGFRAME_RSP, STACK_ENDS,
    StackEnd, UnwindRow, UnwindState,
};

use crate::{
    offcpu, oncpu,
    shared::{BPF_F_MMAPABLE, masked},
};

/// Mappable, so userspace writes the rows through a mapping, not a syscall each.
#[map]
static UNWIND_ROWS: Array<UnwindRow> = Array::with_max_entries(MAX_ROWS, BPF_F_MMAPABLE);
#[map]
static UNWIND_PAGES: HashMap<PageKey, PageRows> = HashMap::with_max_entries(MAX_PAGES, 0);
#[map]
pub static PROCESS_MAPPINGS: HashMap<u32, ProcessMappings> = HashMap::with_max_entries(MAX_UNWOUND_PROCESSES, 0);
#[map]
pub static UNWIND_STATE: PerCpuArray<UnwindState> = PerCpuArray::with_max_entries(1, 0);
/// Index 0: `oncpu_unwind`.
#[map]
pub static UNWIND_PROGRAMS: ProgramArray = ProgramArray::with_max_entries(1, 0);
/// Index 0: `offcpu_unwind`.
#[map]
pub static OFFCPU_UNWIND_PROGRAMS: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
static STACK_END_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STACK_ENDS, 0);

/// Counts a stack's end.
#[inline(always)]
pub fn count_end(end: StackEnd) {
    if let Some(slot) = STACK_END_COUNTS.get_ptr_mut(end as u32) {
        // SAFETY: a per-CPU slot of the map, and programs do not migrate while they run.
        unsafe { *slot += 1 };
    }
}

/// Starts unwinding the user stack of `state` (its registers set): tail-calls the unwinder in
/// `programs`, which must be of the caller's program type. Returns only if the tail call could
/// not be made.
#[inline(always)]
pub fn start<C: EbpfContext>(ctx: &C, programs: &ProgramArray) {
    // SAFETY: index 0 holds an unwinder of the caller's type (the loader puts it there).
    unsafe { programs.tail_call(ctx, 0) };
}

/// Ends a walk: hands the stacks to the probe that took them.
#[inline(always)]
pub fn finish(state: &mut UnwindState, end: StackEnd) {
    if state.buffer == OFF_CPU { offcpu::remember_blocked(state, end) } else { oncpu::count_sample(state, end) }
}

#[perf_event]
pub fn oncpu_unwind(ctx: PerfEventContext) -> u32 {
    unwind(&ctx, &UNWIND_PROGRAMS);
    0
}

/// Loaded against sched_switch, like the switch that tail-calls it; never attached.
#[btf_tracepoint(function = "sched_switch")]
pub fn offcpu_unwind(ctx: BtfTracePointContext) -> i32 {
    unwind(&ctx, &OFFCPU_UNWIND_PROGRAMS);
    0
}

#[inline(always)]
fn unwind<C: EbpfContext>(ctx: &C, programs: &ProgramArray) {
    let Some(state) = UNWIND_STATE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the map's per-CPU value, live while the program runs; nothing else on this CPU
    // touches it until the stack is finished (the sampler runs in the timer interrupt, the switch
    // with interrupts off).
    let state = unsafe { &mut *state };
    // SAFETY: the value is read while the program runs; userspace replaces it whole.
    let Some(mappings) = (unsafe { PROCESS_MAPPINGS.get(state.key.tgid) }) else {
        finish(state, StackEnd::FramePointers);
        return;
    };
    for _ in 0..FRAMES_PER_PROGRAM {
        if let Err(end) = step(state, mappings) {
            finish(state, end);
            return;
        }
    }
    if state.tail_calls >= MAX_TAIL_CALLS {
        finish(state, StackEnd::TailCallLimit);
        return;
    }
    state.tail_calls += 1;
    start(ctx, programs);
    finish(state, StackEnd::TailCallLimit);
}

/// Reads a u64 of user memory.
#[inline(always)]
fn read_user(address: u64) -> Result<u64, StackEnd> {
    // SAFETY: bpf_probe_read_user copies with fault handling: a bad address is an error.
    unsafe { bpf_probe_read_user(address as *const u64) }.map_err(|_| StackEnd::ReadFault)
}

/// Walks one frame: records `state.ip`, then finds the caller's registers.
#[inline(always)]
fn step(state: &mut UnwindState, mappings: &ProcessMappings) -> Result<(), StackEnd> {
    let len = state.stack.len as usize;
    if len >= MAX_FRAMES {
        return Err(StackEnd::DepthLimit);
    }
    // A return address is one past the call: its frame's rule is the call's.
    let lookup = if state.exact_ip != 0 { state.ip } else { state.ip.wrapping_sub(1) };
    let Some(mapping) = find_mapping(mappings, lookup) else {
        // With tables, a frame lands outside the known mappings when the process mapped more since
        // (a library loaded after its exec was announced, JIT code): its maps are read again.
        oncpu::reannounce(state.key.tgid);
        return Err(StackEnd::OutsideMapping);
    };
    state.stack.frames[masked(len, FRAME_SLOTS)] = state.ip;
    state.stack.len = len as u32 + 1;
    state.exact_ip = 0;
    let row = match mapping.table {
        NO_TABLE => None,
        table => find_row(table, lookup.wrapping_sub(mapping.bias)),
    };
    let Some(row) = row else {
        return frame_pointer_step(state);
    };
    let cfa = match row.cfa {
        CFA_RSP => state.sp.wrapping_add(u64::from(row.cfa_offset)),
        CFA_RBP => state.bp.wrapping_add(u64::from(row.cfa_offset)),
        CFA_PLT => {
            let pushed = if (state.ip & 15) >= row.rbp_offset as u64 { 8 } else { 0 };
            state.sp.wrapping_add(u64::from(row.cfa_offset) + pushed)
        }
        CFA_DEREF_RSP => read_user(state.sp.wrapping_add(u64::from(row.cfa_offset)))?,
        CFA_SIGNAL => return signal_frame(state),
        CFA_END => return Err(StackEnd::Complete),
        CFA_NONE => return frame_pointer_step(state),
        _ => return Err(StackEnd::Unsupported),
    };
    let return_address = read_user(cfa.wrapping_sub(8))?;
    if row.rbp == RBP_SAVED {
        state.bp = read_user(cfa.wrapping_add(row.rbp_offset as i64 as u64))?;
    }
    state.sp = cfa;
    state.ip = return_address;
    if return_address == 0 { Err(StackEnd::Complete) } else { Ok(()) }
}

/// Code without unwind information: the caller's frame pointer and return address are at RBP,
/// if RBP points into the stack above this frame.
#[inline(always)]
fn frame_pointer_step(state: &mut UnwindState) -> Result<(), StackEnd> {
    let bp = state.bp;
    if bp < state.sp || bp & 7 != 0 {
        return Err(StackEnd::NoRow);
    }
    let caller_bp = read_user(bp)?;
    let return_address = read_user(bp.wrapping_add(8))?;
    state.bp = caller_bp;
    state.sp = bp.wrapping_add(16);
    state.ip = return_address;
    if return_address == 0 { Err(StackEnd::Complete) } else { Ok(()) }
}

/// `__restore_rt`: the interrupted frame's registers are in the `rt_sigframe` at RSP, and its
/// address is exact (it was interrupted there, not called from there).
#[inline(always)]
fn signal_frame(state: &mut UnwindState) -> Result<(), StackEnd> {
    let frame = state.sp;
    state.ip = read_user(frame.wrapping_add(SIGFRAME_RIP))?;
    state.sp = read_user(frame.wrapping_add(SIGFRAME_RSP))?;
    state.bp = read_user(frame.wrapping_add(SIGFRAME_RBP))?;
    state.exact_ip = 1;
    Ok(())
}

/// The executable mapping holding `address`: a binary search of the sorted mappings.
#[inline(always)]
fn find_mapping(mappings: &ProcessMappings, address: u64) -> Option<&Mapping> {
    let (mut low, mut high) = (0usize, (mappings.count as usize).min(MAX_MAPPINGS));
    // log2(MAX_MAPPINGS) + 1 halvings find it.
    for _ in 0..7 {
        if low >= high {
            return None;
        }
        let middle = (low + high) / 2;
        let mapping = &mappings.mappings[masked(middle, MAX_MAPPINGS)];
        if address < mapping.start {
            high = middle;
        } else if address >= mapping.end {
            low = middle + 1;
        } else {
            return Some(mapping);
        }
    }
    None
}

/// The row of `table` in force at file address `address`: its page's rows, then the last whose
/// address is at or before it.
#[inline(always)]
fn find_row(table: u32, address: u64) -> Option<UnwindRow> {
    let key = PageKey { table, page: (address >> PAGE_BITS) as u32 };
    // SAFETY: the value is copied out at once; userspace writes a page's rows before its entry.
    let rows = unsafe { UNWIND_PAGES.get(key) }.copied()?;
    let low_bits = (address & ((1 << PAGE_BITS) - 1)) as u16;
    let (mut low, mut high) = (0u32, rows.count);
    // A page has at most 1 << PAGE_BITS rows: PAGE_BITS + 1 halvings.
    for _ in 0..=PAGE_BITS {
        if low >= high {
            break;
        }
        let middle = (low + high) / 2;
        let row = UNWIND_ROWS.get(rows.first.wrapping_add(middle))?;
        if row.pc_low <= low_bits {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    if low == 0 {
        return None;
    }
    UNWIND_ROWS.get(rows.first.wrapping_add(low - 1)).copied()
}

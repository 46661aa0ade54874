//! On-CPU stacks: a perf_event program on the CPU clock samples every CPU at a fixed frequency and
//! counts (process, thread, kernel stack, user stack) in the kernel, as bcc's `profile` does. The
//! kernel stack comes from `bpf_get_stack`; the user stack from the unwinder (`unwind.rs`), which
//! walks `.eh_frame` tables, or from frame pointers until the process's tables are loaded. Stacks
//! are kept by the hash of their frames in the maps of the current interval. The first sample of
//! each process is announced on a ring buffer, so userspace reads its memory maps (and builds its
//! tables) while it lives, however short its life.

use aya_ebpf::{
    EbpfContext, Global,
    bindings::{BPF_F_USER_STACK, pt_regs},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_task_btf, bpf_get_stack, bpf_probe_read_kernel,
        bpf_task_pt_regs,
    },
    macros::{btf_tracepoint, map, perf_event},
    maps::{Array, HashMap, LruHashMap, ProgramArray, RingBuf},
    programs::{BtfTracePointContext, PerfEventContext},
};
use profiler_common::{
    counters::Counter,
    oncpu::{MAX_SAMPLED_PROCESSES, MAX_STACK_KEYS, MAX_STACKS, NEW_PROCESSES_BYTES, StackKey},
    unwind::{FRAME_SLOTS, MAX_FRAMES, OFF_CPU, StackEnd, StackFrames, UnwindState, hash_frames},
};

use crate::{
    offcpu::OFFCPU_FRAMES,
    shared::{BPF_NOEXIST, count, current_selected, increment, note_process, read_field, task_ids, task_selected},
    unwind::{PROCESS_MAPPINGS, UNWIND_PROGRAMS, UNWIND_STATE, count_end, finish, start},
};

/// Non-zero: keep threads apart (`--per-thread`).
#[unsafe(no_mangle)]
static SAMPLE_PER_THREAD: Global<u8> = Global::new(0);
/// Non-zero: the kernel has `bpf_task_pt_regs` (5.15), which finds the user registers of a sample
/// taken in the kernel; else they are read from the top of the task's kernel stack.
#[unsafe(no_mangle)]
static HAS_TASK_PT_REGS: Global<u8> = Global::new(1);
/// `task_struct.stack`, and the size of a kernel stack (16 KiB on x86-64; 32 KiB with KASAN).
#[unsafe(no_mangle)]
static TASK_STACK_OFFSET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static THREAD_SIZE: Global<u32> = Global::new(16384);

/// Two of each: the sampler writes the pair `STACK_BUFFER` names while userspace drains and empties
/// the other.
#[map]
static STACK_SAMPLES_A: HashMap<StackKey, u64> = HashMap::with_max_entries(MAX_STACK_KEYS, 0);
#[map]
static STACK_SAMPLES_B: HashMap<StackKey, u64> = HashMap::with_max_entries(MAX_STACK_KEYS, 0);
#[map]
static STACK_FRAMES_A: HashMap<u64, StackFrames> = HashMap::with_max_entries(MAX_STACKS, 0);
#[map]
static STACK_FRAMES_B: HashMap<u64, StackFrames> = HashMap::with_max_entries(MAX_STACKS, 0);
#[map]
static STACK_BUFFER: Array<u32> = Array::with_max_entries(1, 0);

/// Processes announced on `NEW_PROCESSES`; removed on exec, so an exec is announced again.
#[map]
static SAMPLED_PROCESSES: LruHashMap<u32, u8> = LruHashMap::with_max_entries(MAX_SAMPLED_PROCESSES, 0);

#[map]
static NEW_PROCESSES: RingBuf = RingBuf::with_byte_size(NEW_PROCESSES_BYTES, 0);

/// The salts that keep a kernel stack and a user stack of the same addresses apart.
const KERNEL_SALT: u64 = 1;
const USER_SALT: u64 = 2;

#[perf_event]
pub fn oncpu_sample(ctx: PerfEventContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tid, tgid) = (pid_tgid as u32, (pid_tgid >> 32) as u32);
    if tid == 0 {
        count(Counter::IdleSamples);
        return 0;
    }
    if !current_selected(tgid) {
        return 0;
    }
    count(Counter::CpuSamples);
    announce(tgid);
    let buffer = match STACK_BUFFER.get(0).copied() {
        Some(1) => 1,
        _ => 0,
    };
    if let Some(state) = begin(tgid, tid, buffer) {
        take_stacks(&ctx, state, user_registers(&ctx), &UNWIND_PROGRAMS);
    }
    0
}

/// The unwinder's state, reset for a stack of thread `tid` of process `tgid` that goes to `buffer`.
#[inline(always)]
pub fn begin(tgid: u32, tid: u32, buffer: u32) -> Option<&'static mut UnwindState> {
    let state = UNWIND_STATE.get_ptr_mut(0)?;
    // SAFETY: the map's per-CPU value, live while the program runs.
    let state = unsafe { &mut *state };
    state.buffer = buffer;
    state.key = StackKey {
        tgid,
        tid: if SAMPLE_PER_THREAD.load() != 0 { tid } else { 0 },
        kernel: 0,
        user: 0,
        end: 0,
        kernel_lost: 0,
    };
    state.tail_calls = 0;
    Some(state)
}

/// Takes the current task's kernel stack, then its user stack from the user registers `regs`:
/// with the process's tables, by tail-calling the unwinder in `programs` (of the caller's program
/// type); without them yet, by frame pointers. The stacks end in `unwind::finish`.
#[inline(always)]
pub fn take_stacks<C: EbpfContext>(
    ctx: &C,
    state: &mut UnwindState,
    regs: Option<(u64, u64, u64)>,
    programs: &ProgramArray,
) {
    state.key.kernel = kernel_stack(ctx, state);
    state.stack.len = 0;
    let Some(regs) = regs else {
        finish(state, StackEnd::NoUserStack);
        return;
    };
    // SAFETY: only tested for presence.
    if unsafe { PROCESS_MAPPINGS.get(state.key.tgid) }.is_none() {
        // The process's tables are not loaded yet: the kernel's frame-pointer walk.
        let len = stack_into(ctx, state, BPF_F_USER_STACK as u64);
        state.stack.len = len;
        finish(state, StackEnd::FramePointers);
        return;
    }
    (state.ip, state.sp, state.bp) = regs;
    state.exact_ip = 1;
    start(ctx, programs);
    // The tail call failed: nothing of the user stack was walked.
    finish(state, StackEnd::TailCallLimit);
}

/// Announces a process the first time its stacks are taken (and after each exec).
#[inline(always)]
pub fn announce(tgid: u32) {
    if SAMPLED_PROCESSES.insert(tgid, 1, BPF_NOEXIST).is_ok() {
        // SAFETY: the helper takes no arguments.
        note_process(unsafe { bpf_get_current_task() } as *const u8, tgid);
        output(tgid);
    }
}

#[inline(always)]
fn output(tgid: u32) {
    if NEW_PROCESSES.output::<u32>(tgid, 0).is_err() {
        count(Counter::NewProcessDrops);
    }
}

/// Fills `state.stack` with a stack the kernel walks (`flags`: 0 kernel, or BPF_F_USER_STACK with
/// frame pointers); returns its length.
#[inline(always)]
fn stack_into<C: EbpfContext>(ctx: &C, state: &mut UnwindState, flags: u64) -> u32 {
    let buffer = (&raw mut state.stack.frames).cast();
    let size = (MAX_FRAMES * 8) as u32;
    // SAFETY: the buffer is the map value's array, at least `size` bytes long.
    let bytes = unsafe { bpf_get_stack(ctx.as_ptr(), buffer, size, flags) };
    if bytes <= 0 { 0 } else { (bytes as u32 / 8).min(MAX_FRAMES as u32) }
}

/// The kernel stack's hash, once its frames are kept; 0 for a sample taken in user mode.
#[inline(always)]
fn kernel_stack<C: EbpfContext>(ctx: &C, state: &mut UnwindState) -> u64 {
    let len = stack_into(ctx, state, 0);
    if len == 0 {
        return 0;
    }
    state.stack.len = len;
    let hash = keep(state, KERNEL_SALT);
    state.key.kernel_lost = u32::from(hash == 0);
    hash
}

/// Keeps `state.stack` in the frame map of its buffer; returns its hash, or 0 if it could not be
/// kept.
#[inline(always)]
fn keep(state: &mut UnwindState, salt: u64) -> u64 {
    let hash = hash_frames(&state.stack.frames, state.stack.len as usize, salt);
    // The maps differ in type (the off-CPU one is an LRU map): the same steps for each.
    macro_rules! keep_in {
        ($frames:expr $(, $kept:expr)?) => {{
            // SAFETY: only tested for presence.
            if unsafe { $frames.get(hash) }.is_some() {
                return hash;
            }
            // By reference: the frames are 1 KiB, twice the BPF stack.
            #[allow(clippy::needless_borrows_for_generic_args)]
            let kept = $frames.insert(hash, &state.stack, BPF_NOEXIST).is_ok();
            if kept {
                $($kept;)?
                return hash;
            }
            // SAFETY: as above; another CPU may have kept the same stack just now.
            match unsafe { $frames.get(hash) } {
                Some(_) => hash,
                None => {
                    count(Counter::StackErrors);
                    0
                }
            }
        }};
    }
    match state.buffer {
        OFF_CPU => keep_in!(OFFCPU_FRAMES),
        1 => keep_in!(STACK_FRAMES_B, count(Counter::StackEntries)),
        _ => keep_in!(STACK_FRAMES_A, count(Counter::StackEntries)),
    }
}

/// Keeps the user stack of a walk that ended for `end`, and sets the key's end: `Lost` if either
/// stack could not be kept.
#[inline(always)]
pub fn seal(state: &mut UnwindState, end: StackEnd) {
    let mut end = end;
    if state.stack.len > 0 {
        state.key.user = keep(state, USER_SALT);
        if state.key.user == 0 {
            end = StackEnd::Lost;
        }
    }
    if state.key.kernel_lost != 0 {
        end = StackEnd::Lost;
    }
    state.key.end = end as u32;
}

/// Ends a sample: keeps its user stack and counts it.
#[inline(always)]
pub fn count_sample(state: &mut UnwindState, end: StackEnd) {
    seal(state, end);
    count_end(StackEnd::from_u32(state.key.end).unwrap_or(end));
    let samples = match state.buffer {
        1 => &STACK_SAMPLES_B,
        _ => &STACK_SAMPLES_A,
    };
    increment(samples, &state.key, Counter::SampleDrops);
}

/// The user registers (ip, sp, bp) of the task the sample interrupted, or none (a kernel thread).
#[inline(always)]
fn user_registers(ctx: &PerfEventContext) -> Option<(u64, u64, u64)> {
    let regs = ctx.as_ptr() as *const pt_regs;
    // SAFETY: a perf_event program's context starts with the sampled registers, readable in place.
    let (cs, ip, sp, bp) = unsafe { ((*regs).cs, (*regs).rip, (*regs).rsp, (*regs).rbp) };
    if cs & 3 == 3 {
        return Some((ip, sp, bp));
    }
    saved_user_registers()
}

/// The user registers the current task entered the kernel with, or none (a kernel thread).
#[inline(always)]
pub fn saved_user_registers() -> Option<(u64, u64, u64)> {
    let saved = if HAS_TASK_PT_REGS.load() != 0 {
        // SAFETY: the helpers take the current task, which lives while the program runs.
        (unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) }) as *const pt_regs
    } else {
        // SAFETY: the helper takes no arguments.
        let task = unsafe { bpf_get_current_task() } as *const u8;
        let stack: *const u8 = read_field(task, TASK_STACK_OFFSET.load())?;
        // x86-64's task_pt_regs: the registers sit at the top of the kernel stack.
        stack.wrapping_add(THREAD_SIZE.load() as usize - size_of::<pt_regs>()).cast()
    };
    // SAFETY: bpf_probe_read_kernel copies with fault handling into a value of our own.
    let saved = unsafe { bpf_probe_read_kernel(saved) }.ok()?;
    (saved.cs & 3 == 3 && saved.rip != 0).then_some((saved.rip, saved.rsp, saved.rbp))
}

/// TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
#[btf_tracepoint(function = "sched_process_exec")]
pub fn oncpu_sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    let task: *const u8 = ctx.arg(0);
    if let Some((_, tgid)) = task_ids(task) {
        // The process has a new address space: its old tables no longer apply. A process that was
        // sampled before is announced again now (and named again), so that its new tables are
        // loaded while it starts, not after its first samples; one never sampled, at its first
        // sample.
        let _ = PROCESS_MAPPINGS.remove(tgid);
        // SAFETY: only tested for presence.
        if unsafe { SAMPLED_PROCESSES.get(tgid) }.is_some() && task_selected(task, tgid) {
            // Its name is the program's now.
            note_process(task, tgid);
            output(tgid);
        }
    }
    0
}

/// Asks userspace to read the process's maps again: its code moved (an exec), or the unwinder met
/// code in no mapping it knows (a library loaded since, JIT code).
#[inline(always)]
pub fn reannounce(tgid: u32) {
    let _ = SAMPLED_PROCESSES.remove(tgid);
}

const _: () = assert!(MAX_FRAMES < FRAME_SLOTS);

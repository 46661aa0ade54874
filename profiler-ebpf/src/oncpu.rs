//! On-CPU stacks: a perf_event program on the CPU clock samples every CPU at a fixed frequency and
//! counts (process, thread, kernel stack, user stack) in the kernel, as bcc's `profile` does. The
//! first sample of each process is announced on a ring buffer, so userspace can read the process's
//! memory maps while it lives, however short its life.

use aya_ebpf::{
    Global,
    bindings::BPF_F_USER_STACK,
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::{btf_tracepoint, map, perf_event},
    maps::{Array, HashMap, LruHashMap, RingBuf, StackTrace},
    programs::{BtfTracePointContext, PerfEventContext, tracing::StackIdContext as _},
};
use profiler_common::{
    counters::Counter,
    oncpu::{MAX_SAMPLED_PROCESSES, MAX_STACK_KEYS, MAX_STACKS, NEW_PROCESSES_BYTES, StackKey},
};

use crate::shared::{BPF_NOEXIST, count, current_selected, increment, note_process, task_ids};

/// Non-zero: keep threads apart (`--per-thread`).
#[unsafe(no_mangle)]
static SAMPLE_PER_THREAD: Global<u8> = Global::new(0);

#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(MAX_STACKS, 0);

/// Two sample maps: the sampler counts into the one `STACK_BUFFER` names while userspace drains and
/// empties the other.
#[map]
static STACK_SAMPLES_A: HashMap<StackKey, u64> = HashMap::with_max_entries(MAX_STACK_KEYS, 0);
#[map]
static STACK_SAMPLES_B: HashMap<StackKey, u64> = HashMap::with_max_entries(MAX_STACK_KEYS, 0);
#[map]
static STACK_BUFFER: Array<u32> = Array::with_max_entries(1, 0);

/// Processes announced on `NEW_PROCESSES`; removed on exec, so an exec is announced again.
#[map]
static SAMPLED_PROCESSES: LruHashMap<u32, u8> = LruHashMap::with_max_entries(MAX_SAMPLED_PROCESSES, 0);

#[map]
static NEW_PROCESSES: RingBuf = RingBuf::with_byte_size(NEW_PROCESSES_BYTES, 0);

const EEXIST: i32 = 17;
const EFAULT: i32 = 14;

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
    let key = StackKey {
        tgid,
        tid: if SAMPLE_PER_THREAD.load() != 0 { tid } else { 0 },
        kernel_stack_id: stack_id(&ctx, 0),
        user_stack_id: stack_id(&ctx, BPF_F_USER_STACK as u64),
    };
    match STACK_BUFFER.get(0).copied() {
        Some(1) => increment(&STACK_SAMPLES_B, &key, Counter::SampleDrops),
        _ => increment(&STACK_SAMPLES_A, &key, Counter::SampleDrops),
    };
    if SAMPLED_PROCESSES.insert(tgid, 1, BPF_NOEXIST).is_ok() {
        // SAFETY: the helper takes no arguments.
        note_process(unsafe { bpf_get_current_task() } as *const u8, tgid);
        if NEW_PROCESSES.output::<u32>(&tgid, 0).is_err() {
            count(Counter::NewProcessDrops);
        }
    }
    0
}

/// The stack id, or the negated error. -EFAULT means there is no such stack (the kernel stack of a
/// sample taken in user mode, the user stack of a kernel thread): normal, not counted.
#[inline(always)]
fn stack_id(ctx: &PerfEventContext, flags: u64) -> i32 {
    match ctx.get_stackid(&STACKS, flags) {
        Ok(id) => id as i32,
        Err(error) => {
            if error == -EEXIST {
                count(Counter::StackCollisions);
            } else if error != -EFAULT {
                count(Counter::StackErrors);
            }
            error
        }
    }
}

/// TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
#[btf_tracepoint(function = "sched_process_exec")]
pub fn oncpu_sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    if let Some((_, tgid)) = task_ids(ctx.arg(0)) {
        // The process has a new address space: announce it again on its next sample.
        let _ = SAMPLED_PROCESSES.remove(tgid);
    }
    0
}

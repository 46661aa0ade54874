//! What every probe shares: counters, the process filter, process names, and reading `task_struct`
//! at offsets that userspace found in the kernel's BTF (Rust eBPF has no CO-RE relocations).

use core::cell::UnsafeCell;

use aya_ebpf::{
    Global,
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_task, bpf_probe_read_kernel},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use profiler_common::{
    counters::{Counter, NUM_COUNTERS},
    histogram::{HISTOGRAM_SLOTS, Histogram},
    process::{COMM_LEN, MAX_PROCESSES, ProcessName},
};

/// Byte offsets inside kernel structs, set by the loader from /sys/kernel/btf/vmlinux.
#[unsafe(no_mangle)]
static TASK_PID_OFFSET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TASK_TGID_OFFSET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TASK_GROUP_LEADER_OFFSET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TASK_COMM_OFFSET: Global<u32> = Global::new(0);
/// `task_struct.__state` (Linux 5.14 and later) or `task_struct.state` (before).
#[unsafe(no_mangle)]
static TASK_STATE_OFFSET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TASK_CGROUPS_OFFSET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static CSS_SET_DFL_CGRP_OFFSET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static CGROUP_KN_OFFSET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static KERNFS_NODE_ID_OFFSET: Global<u32> = Global::new(0);
/// `kernfs_node.__parent` (Linux 6.15 and later) or `kernfs_node.parent` (before).
#[unsafe(no_mangle)]
static KERNFS_NODE_PARENT_OFFSET: Global<u32> = Global::new(0);

/// 0: every process is recorded; 1: only those listed in `FILTER_PIDS`; 2: only those listed
/// while `PID_FILTER_ON` holds 1 (`top` changes the set while attached). A read-only global, so the
/// verifier prunes the checks that `record` does not use.
#[unsafe(no_mangle)]
static FILTER_BY_PID: Global<u8> = Global::new(0);
/// The profiler's own process, left out of everything it records (0: kept, `--include-self`).
#[unsafe(no_mangle)]
static OWN_TGID: Global<u32> = Global::new(0);
/// Non-zero: only tasks in the cgroup (v2) with this id, or in a cgroup below it, are recorded.
#[unsafe(no_mangle)]
static FILTER_CGROUP_ID: Global<u64> = Global::new(0);

#[map]
static FILTER_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

#[map]
static PID_FILTER_ON: Array<u8> = Array::with_max_entries(1, 0);

/// Whether each cgroup met so far is `FILTER_CGROUP_ID` or below it (1) or not (0), by cgroup id:
/// the walk up the hierarchy is done once per cgroup, not per event. Ids are never reused.
#[map]
static CGROUP_SELECTED: LruHashMap<u64, u8> = LruHashMap::with_max_entries(4096, 0);

/// How many levels up from a task's cgroup the filter looks for `FILTER_CGROUP_ID` (systemd and
/// kubelet nest about 5 deep).
const MAX_CGROUP_LEVELS: usize = 16;

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(NUM_COUNTERS, 0);

#[map]
static PROCESSES: LruHashMap<u32, ProcessName> = LruHashMap::with_max_entries(MAX_PROCESSES, 0);

/// Create a map entry or overwrite it.
pub const BPF_ANY: u64 = 0;
/// Only create a map entry, never overwrite one.
pub const BPF_NOEXIST: u64 = 1;
/// A hash map that allocates entries as they are created.
pub const BPF_F_NO_PREALLOC: u32 = 1;
/// An array that userspace can map into its memory.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer is the map's, to a live per-CPU slot, and programs do not migrate
        // while they run: a plain add is race-free.
        unsafe { *slot += 1 };
    }
}

/// Adds to a counter that several CPUs may update at once.
#[inline(always)]
pub fn atomic_add(target: *mut u64, value: u64) {
    use core::intrinsics::{AtomicOrdering, atomic_xadd};
    // `AtomicU64::fetch_add` is not offered for the BPF target; the intrinsic lowers to BPF_ATOMIC_ADD.
    // SAFETY: callers pass pointers into map values, valid for the program's run.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(target, value) };
}

/// Adds one to a counting map's entry for `key`, creating it if needed. Returns whether this call
/// created it; counts `dropped` when the map is full.
#[inline(always)]
pub fn increment<K>(map: &HashMap<K, u64>, key: &K, dropped: Counter) -> bool {
    if let Some(slot) = map.get_ptr_mut(key) {
        atomic_add(slot, 1);
        return false;
    }
    if map.insert(key, 1, BPF_NOEXIST).is_ok() {
        return true;
    }
    // Another CPU created it between our lookup and insert, or the map is full.
    match map.get_ptr_mut(key) {
        Some(slot) => atomic_add(slot, 1),
        None => count(dropped),
    }
    false
}

/// `v`, with whatever the compiler knew of it forgotten: a mask applied to the result stays in the
/// program, for verifiers that do not carry a bound over from a copy of the register. Costs one
/// register copy, where `core::hint::black_box` stores the value to the stack and loads it back (an
/// empty template would do, but leaves two line-info records on one instruction, which the kernel
/// rejects).
#[inline(always)]
pub fn opaque(mut v: u64) -> u64 {
    // SAFETY: copies a register onto itself; no memory is touched.
    unsafe { core::arch::asm!("{0} = {0}", inout(reg) v, options(pure, nomem, nostack)) };
    v
}

/// `index` bounded to `slots` (a power of two) on the register that addresses the slot, which every
/// verifier from 5.10 on follows; `opaque` keeps LLVM from dropping a mask it can prove redundant.
#[inline(always)]
pub fn masked(index: usize, slots: usize) -> usize {
    opaque(index as u64) as usize & (slots - 1)
}

/// The slot of `histogram` that counts `bucket` (`bucket_index` is bounded, but see `masked`).
#[inline(always)]
pub fn histogram_slot(histogram: *mut Histogram, bucket: u32) -> *mut u64 {
    let index = masked(bucket as usize, HISTOGRAM_SLOTS);
    // SAFETY: `histogram` points into a map value; `index` < HISTOGRAM_SLOTS, the length of `buckets`.
    unsafe { (&raw mut (*histogram).buckets).cast::<u64>().add(index) }
}

/// Per-thread start values (a timestamp, 0 for none), in a table indexed by the thread id's low
/// `THREAD_SLOT_BITS` bits: an array lookup is a bounds check and an add that the verifier inlines,
/// where a hash lookup hashes the key and walks a bucket on the hottest path. Thread ids below
/// 2^THREAD_SLOT_BITS have a slot each; above that (systemd sets pid_max to 4194304), two threads
/// may share a slot: each word keeps the id's high bits as a tag, so a thread never takes another's
/// value; a value that overwrites another thread's is counted (`StartDrops`). Values are kept
/// modulo 2^61.
pub struct PerThread<W: ThreadWords + 'static = Array<u64>>(pub &'static W);

/// Where a `PerThread` keeps its words.
pub trait ThreadWords {
    /// The word of thread id `tid`'s slot, the one its low THREAD_SLOT_BITS bits index (masked
    /// here, once, on the register that addresses the word), if the table has that many.
    fn word(&self, tid: u32) -> Option<*mut u64>;
}

/// An array map that the loader sizes to kernel.pid_max, up to 2^THREAD_SLOT_BITS slots, and to
/// one slot when its probe does not run.
impl ThreadWords for Array<u64> {
    #[inline(always)]
    fn word(&self, tid: u32) -> Option<*mut u64> {
        self.get_ptr_mut(tid & ((1 << THREAD_SLOT_BITS) - 1))
    }
}

/// A table in the programs' global data: a `#[unsafe(link_section = ".bss.<name>")]` static, which
/// the loader makes a mappable array map of one value (the whole table, up to 4 MiB), there
/// whether its probe runs or not. A program addresses an element directly, where a map lookup
/// passes the index through the stack: on sys_enter and sys_exit, which run on every syscall, that
/// store and load are measurable. `N` is a power of two.
pub struct GlobalTable<T, const N: usize>(UnsafeCell<[T; N]>);

// SAFETY: the elements are only read and written by eBPF programs through raw pointers, as map
// values are; their users say how concurrent writers interleave.
unsafe impl<T, const N: usize> Sync for GlobalTable<T, N> {}

impl<T: Copy, const N: usize> GlobalTable<T, N> {
    pub const fn new(zero: T) -> GlobalTable<T, N> {
        GlobalTable(UnsafeCell::new([zero; N]))
    }

    /// The element at `index` modulo N (masked on the register that addresses it).
    #[inline(always)]
    pub fn at(&self, index: usize) -> *mut T {
        // SAFETY: the masked index is below the table's length.
        unsafe { self.0.get().cast::<T>().add(masked(index, N)) }
    }
}

/// Every thread's word, a slot per id's low THREAD_SLOT_BITS bits (see `PerThread::store` for how
/// threads that share a slot interleave).
pub type GlobalThreadWords = GlobalTable<u64, { 1 << THREAD_SLOT_BITS }>;

impl ThreadWords for GlobalThreadWords {
    #[inline(always)]
    fn word(&self, tid: u32) -> Option<*mut u64> {
        Some(self.at(tid as usize))
    }
}

/// Bits of a thread id that index a `PerThread` table: 2^19 words fill the largest value an array
/// map may have (4 MiB, KMALLOC_MAX_SIZE), which a `GlobalThreadWords` is.
pub const THREAD_SLOT_BITS: u32 = 19;

/// Non-zero when kernel.pid_max is above 2^THREAD_SLOT_BITS, so that threads may share slots.
#[unsafe(no_mangle)]
static THREAD_SLOTS_SHARED: Global<u8> = Global::new(0);

/// Whether a slot found empty may have been emptied by a thread sharing it (read-only data: the
/// verifier drops the branch not taken).
#[inline(always)]
pub fn thread_slots_shared() -> bool {
    THREAD_SLOTS_SHARED.load() != 0
}
/// Bits of a slot that hold the rest of the thread id (ids are below 2^22, Linux's PID_MAX_LIMIT).
const TAG_BITS: u32 = 22 - THREAD_SLOT_BITS;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
/// What survives of a value stored in a slot.
pub const THREAD_VALUE_MASK: u64 = u64::MAX >> TAG_BITS;

impl<W: ThreadWords> PerThread<W> {
    /// The thread's slot, and the tag that marks it as the thread's.
    #[inline(always)]
    fn slot(&self, tid: u32) -> Option<(*mut u64, u64)> {
        let slot = self.0.word(tid)?;
        Some((slot, u64::from(tid >> THREAD_SLOT_BITS) & TAG_MASK))
    }

    #[inline(always)]
    pub fn store(&self, tid: u32, value: u64) {
        let Some((slot, tag)) = self.slot(tid) else {
            // An id above the array's size: pid_max was raised after the arrays were sized.
            count(Counter::StartDrops);
            return;
        };
        // SAFETY: the slot is the table's, live while the program runs. A slot is shared only by
        // threads whose ids differ above THREAD_SLOT_BITS; a store may race another thread's, and
        // then one of the two values is lost, as when one overwrites the other.
        unsafe {
            // Only a shared slot can hold another thread's value: the load is left out otherwise.
            if thread_slots_shared() {
                let held = *slot;
                if held != 0 && held & TAG_MASK != tag {
                    count(Counter::StartDrops);
                }
            }
            *slot = (value << TAG_BITS) | tag;
        }
    }

    /// The thread's value, and its slot when it holds one.
    #[inline(always)]
    fn held(&self, tid: u32) -> (Taken, Option<*mut u64>) {
        let Some((slot, tag)) = self.slot(tid) else {
            // Its store was counted as lost.
            return (Taken::Lost, None);
        };
        // SAFETY: as in `store`.
        let held = unsafe { *slot };
        if held == 0 {
            return (Taken::Empty, None);
        }
        if held & TAG_MASK != tag {
            return (Taken::Lost, None);
        }
        (Taken::Value(held >> TAG_BITS), Some(slot))
    }

    /// The thread's value, left in place: for a slot that the thread's next start overwrites
    /// before anything reads it again.
    #[inline(always)]
    pub fn read(&self, tid: u32) -> Taken {
        self.held(tid).0
    }

    /// Takes the thread's value out, leaving none behind.
    #[inline(always)]
    pub fn take(&self, tid: u32) -> Taken {
        let (taken, slot) = self.held(tid);
        // Only a held slot is written: a store, even of the 0 already there, would pull the slot's
        // cache line away from the other CPUs.
        if let Some(slot) = slot {
            // SAFETY: as in `store`.
            unsafe { *slot = 0 };
        }
        taken
    }

    /// Forgets an exiting thread, so that a new thread reusing its id starts clean.
    #[inline(always)]
    pub fn forget(&self, tid: u32) {
        self.take(tid);
    }
}

/// What a thread's slot held for it.
pub enum Taken {
    Value(u64),
    /// Nothing was stored for the thread since the probe was attached.
    Empty,
    /// Another thread's value is there: the thread's own, if it stored one, was overwritten.
    Lost,
}

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: the helper takes no arguments.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }
}

/// Reads a `T` at `offset` bytes into the kernel object at `base`.
#[inline(always)]
pub fn read_field<T>(base: *const u8, offset: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel copies with fault handling: a bad address gives an error, never
    // a fault, and the copy goes into a value of our own.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }.ok()
}

/// Thread id of a task.
#[inline(always)]
pub fn task_tid(task: *const u8) -> Option<u32> {
    read_field::<i32>(task, TASK_PID_OFFSET.load()).map(|pid| pid as u32)
}

/// Thread id and process id of a task.
#[inline(always)]
pub fn task_ids(task: *const u8) -> Option<(u32, u32)> {
    let tgid: i32 = read_field(task, TASK_TGID_OFFSET.load())?;
    Some((task_tid(task)?, tgid as u32))
}

/// The scheduler state of a task (0: runnable), for kernels whose sched_switch does not pass it.
#[inline(always)]
pub fn task_state(task: *const u8) -> Option<u32> {
    // `state` was a long before 5.14: its low 32 bits (little-endian) hold every state bit.
    read_field(task, TASK_STATE_OFFSET.load())
}

/// The kernfs node of a task's cgroup v2: task->cgroups->dfl_cgrp->kn.
#[inline(always)]
fn task_cgroup_node(task: *const u8) -> Option<*const u8> {
    let css_set: *const u8 = read_field(task, TASK_CGROUPS_OFFSET.load())?;
    let cgroup: *const u8 = read_field(css_set, CSS_SET_DFL_CGRP_OFFSET.load())?;
    read_field(cgroup, CGROUP_KN_OFFSET.load())
}

/// Whether the cgroup with id `id` and kernfs node `node` (null: the current task's, found only
/// if needed) is the filter's cgroup or below it.
#[inline(always)]
fn cgroup_selected(id: u64, node: *const u8) -> bool {
    let wanted = FILTER_CGROUP_ID.load();
    if wanted == 0 || id == wanted {
        return true;
    }
    // SAFETY: the value is a plain byte, read while the program runs.
    if let Some(&selected) = unsafe { CGROUP_SELECTED.get(id) } {
        return selected != 0;
    }
    let mut node = node;
    if node.is_null() {
        // SAFETY: the helper takes no arguments.
        node = task_cgroup_node(unsafe { bpf_get_current_task() } as *const u8).unwrap_or(core::ptr::null());
    }
    // Every value defined on every path (`unwrap_or`): LLVM may keep an `Option`'s undefined
    // payload in a register across the loop, and the verifier refuses to read it.
    let mut selected = 0u8;
    for _ in 0..MAX_CGROUP_LEVELS {
        node = read_field(node, KERNFS_NODE_PARENT_OFFSET.load()).unwrap_or(core::ptr::null());
        if node.is_null() {
            break;
        }
        if read_field::<u64>(node, KERNFS_NODE_ID_OFFSET.load()).unwrap_or(0) == wanted {
            selected = 1;
            break;
        }
    }
    let _ = CGROUP_SELECTED.insert(id, selected, BPF_ANY);
    selected != 0
}

#[inline(always)]
fn pid_selected(tgid: u32) -> bool {
    if tgid == OWN_TGID.load() {
        return false;
    }
    let filtering = match FILTER_BY_PID.load() {
        0 => false,
        1 => true,
        _ => PID_FILTER_ON.get(0).is_some_and(|on| *on != 0),
    };
    // SAFETY: the value is only tested for presence, never read.
    !filtering || unsafe { FILTER_PIDS.get(tgid) }.is_some()
}

/// Whether a task (not necessarily the current one) passes the --pid and --cgroup filters.
#[inline(always)]
pub fn task_selected(task: *const u8, tgid: u32) -> bool {
    if !pid_selected(tgid) {
        return false;
    }
    if FILTER_CGROUP_ID.load() == 0 {
        return true;
    }
    let Some(node) = task_cgroup_node(task) else {
        return false;
    };
    read_field::<u64>(node, KERNFS_NODE_ID_OFFSET.load()).is_some_and(|id| cgroup_selected(id, node))
}

/// Whether the current task passes the --pid and --cgroup filters.
#[inline(always)]
pub fn current_selected(tgid: u32) -> bool {
    if !pid_selected(tgid) {
        return false;
    }
    if FILTER_CGROUP_ID.load() == 0 {
        return true;
    }
    // SAFETY: the helper takes no arguments.
    cgroup_selected(unsafe { bpf_get_current_cgroup_id() }, core::ptr::null())
}

/// Remembers the name of a task's process (its group leader's comm). Called only when a probe
/// creates a new per-process entry, so it stays off the common path. The name replaces the one
/// noted before: a forked child makes its first syscalls under its parent's name, and after its
/// exec its new ones (new entries, new notes) under the program's.
#[inline(always)]
pub fn note_process(task: *const u8, tgid: u32) {
    let Some(leader) = read_field::<*const u8>(task, TASK_GROUP_LEADER_OFFSET.load()) else {
        return;
    };
    let Some(comm) = read_field::<[u8; COMM_LEN]>(leader, TASK_COMM_OFFSET.load()) else {
        return;
    };
    if PROCESSES.insert(tgid, ProcessName { comm }, BPF_ANY).is_err() {
        count(Counter::ProcessDrops);
    }
}

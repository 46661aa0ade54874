//! The recording: everything one `profiler record` captured, self-contained so that it can be
//! analysed on another machine. `format` reads and writes it.

mod accumulate;
mod container;
mod format;
mod v1;

pub use accumulate::{Accumulator, FIRST_FOLDED_ID, FoldedNames};
pub use container::Container;

pub use format::{FORMAT_VERSION, MAGIC, RecordingError, frame, read, read_file, write, write_file, write_prepared};

use std::collections::BTreeMap;

use profiler_common::{
    histogram::{NUM_BUCKETS, bucket_bounds},
    offcpu::WaitState,
};
use serde::{Deserialize, Serialize};

/// One recording, as stored in the file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Recording {
    pub meta: Metadata,
    pub counters: Counters,
    /// Present when the `sched` probe ran.
    pub runq: Option<RunqLatency>,
    /// Present when the `syscalls` or `syscall-counts` probe ran.
    pub syscalls: Option<Syscalls>,
    /// Present when the `cpu` probe ran.
    pub stacks: Option<Stacks>,
    /// Present when the `offcpu` probe ran: where threads waited. Each stack's `count` is
    /// nanoseconds off CPU (scaled up when switch-outs were sampled), and its leaf frame the state
    /// the thread blocked in (`WAIT_STATE_FRAMES`).
    pub offcpu: Option<Stacks>,
    /// Names of every process that appears anywhere above, by tgid.
    pub processes: BTreeMap<u32, Process>,
}

impl Recording {
    /// Every process that appears in a probe's data.
    pub fn tgids(&self) -> std::collections::BTreeSet<u32> {
        let runq = self.runq.iter().flat_map(|r| r.per_process.keys().copied());
        let syscalls = self.syscalls.iter().flat_map(|s| s.per_process.iter().map(|row| row.tgid));
        let stacks = self.stacks.iter().chain(&self.offcpu).flat_map(|s| s.stacks.iter().map(|stack| stack.tgid));
        runq.chain(syscalls).chain(stacks).collect()
    }

    /// Sets the counts the kernel does not keep apart because the histograms and rows hold them:
    /// latencies measured and syscalls made.
    pub fn derive_counts(&mut self) {
        if let Some(runq) = &self.runq {
            let cpus = runq.per_cpu.iter().fold(0u64, |sum, h| sum.saturating_add(h.count()));
            self.counters.runq_latencies = cpus.max(runq.system.count());
        }
        if let Some(syscalls) = &self.syscalls {
            // Every call is in a row; not every one is timed (one that began before the probe
            // was attached), and none is with `syscall-counts`.
            self.counters.syscalls = syscalls.per_process.iter().fold(0u64, |sum, row| sum.saturating_add(row.count));
        }
    }

    pub fn process_name(&self, tgid: u32) -> &str {
        self.processes.get(&tgid).map_or("?", |p| p.comm.as_str())
    }

    /// What the process folds by when it exits (see `Process::fold_key`).
    pub fn fold_key(&self, tgid: u32) -> String {
        self.processes.get(&tgid).map_or_else(|| "?".to_string(), Process::fold_key)
    }

    /// How many processes an id stands for: 1, or the count of a per-name total of exited ones.
    pub fn process_count(&self, tgid: u32) -> usize {
        self.processes.get(&tgid).map_or(1, |p| p.folded.max(1) as usize)
    }
}

/// Where, when and how the recording was made.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Metadata {
    pub hostname: String,
    pub kernel_release: String,
    pub cpus: u32,
    /// Wall-clock start, nanoseconds since the Unix epoch.
    pub start_unix_ns: u64,
    pub duration_ns: u64,
    pub profiler_version: String,
    pub options: RecordOptions,
    /// Probes that were asked for (by default) but that this kernel cannot run, with the reason.
    pub left_out: Vec<LeftOutProbe>,
    /// What the kernel offered the probes (feature names, as `profiler record -v` logs them).
    pub kernel_features: Vec<String>,
    /// The unwind tables the cpu probe loaded, when it ran.
    pub unwind: Option<UnwindTables>,
}

/// The unwind tables in the kernel at the end of a recording.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UnwindTables {
    /// Files whose tables were loaded.
    pub tables: u32,
    pub rows: u32,
    pub row_capacity: u32,
    /// Files whose table did not fit.
    pub no_room: u32,
    /// Files without usable call frame information.
    pub no_table: u32,
    /// Processes with more executable mappings than the unwinder keeps.
    pub mappings_cut: u32,
    /// Time spent building tables, and bytes of files read for it.
    pub build_ns: u64,
    pub bytes_read: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeftOutProbe {
    pub probe: String,
    pub reason: String,
}

/// The `record` options that shape what the recording contains.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RecordOptions {
    pub probes: Vec<String>,
    pub pids: Vec<u32>,
    pub cgroup: Option<String>,
    pub duration_limit_ns: Option<u64>,
    /// Sampling frequency of the `cpu` probe, per CPU.
    pub frequency_hz: u32,
    pub per_thread: bool,
    /// The profiler's own process was left out (recordings before this field kept it).
    pub excluded_self: bool,
    /// Off-CPU blocks shorter than this were not counted (the `offcpu` probe).
    pub offcpu_min_ns: u64,
    /// One blocking switch-out in this many was taken, at random, and its time counted this many
    /// times: off-CPU totals are estimates when it is above 1.
    pub offcpu_sample_one_in: u32,
    /// One syscall in this many was timed, at random, and its latency counted this many times:
    /// syscall latency totals and histograms are estimates when it is above 1 (0: before the
    /// option, every call).
    pub syscall_sample_one_in: u32,
}

/// Event and drop counts, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    pub sched_switches: u64,
    pub involuntary_switches: u64,
    pub wakeups: u64,
    pub runq_latencies: u64,
    pub syscalls: u64,
    /// CPU samples of non-idle tasks (after filtering).
    pub cpu_samples: u64,
    /// CPU samples that found a CPU idle.
    pub idle_samples: u64,
    /// Blocking switch-outs whose stacks the offcpu probe took, and those sampling left out.
    pub offcpu_blocks: u64,
    pub offcpu_sampled_out: u64,
    /// The lengths of the blocks taken as one in N, squared, summed, in microseconds²: what the
    /// error of sampled totals is estimated from.
    pub offcpu_us_squared: u64,
    pub drops: Drops,
    /// How the user stacks of the samples ended, by reason ("complete", "depth limit", ...).
    pub stack_ends: BTreeMap<String, u64>,
}

impl Counters {
    pub fn events(&self) -> u64 {
        [
            self.sched_switches,
            self.wakeups,
            self.syscalls,
            self.cpu_samples,
            self.idle_samples,
            self.offcpu_blocks,
            self.offcpu_sampled_out,
        ]
        .into_iter()
        .fold(0u64, u64::saturating_add)
    }

    /// Adds another period's counts.
    pub fn add(&mut self, other: &Counters) {
        let Counters {
            sched_switches,
            involuntary_switches,
            wakeups,
            runq_latencies,
            syscalls,
            cpu_samples,
            idle_samples,
            offcpu_blocks,
            offcpu_sampled_out,
            offcpu_us_squared,
            drops,
            stack_ends,
        } = other;
        for (mine, theirs) in [
            (&mut self.sched_switches, sched_switches),
            (&mut self.involuntary_switches, involuntary_switches),
            (&mut self.wakeups, wakeups),
            (&mut self.runq_latencies, runq_latencies),
            (&mut self.syscalls, syscalls),
            (&mut self.cpu_samples, cpu_samples),
            (&mut self.idle_samples, idle_samples),
            (&mut self.offcpu_blocks, offcpu_blocks),
            (&mut self.offcpu_sampled_out, offcpu_sampled_out),
            (&mut self.offcpu_us_squared, offcpu_us_squared),
        ] {
            *mine = mine.saturating_add(*theirs);
        }
        for (mine, theirs) in self.drops.counts_mut().into_iter().zip(drops.counts()) {
            *mine = mine.saturating_add(theirs);
        }
        for (end, count) in stack_ends {
            let mine = self.stack_ends.entry(end.clone()).or_default();
            *mine = mine.saturating_add(*count);
        }
    }
}

/// What the kernel side could not keep, by reason. Nothing is lost silently.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Drops {
    /// Run-queue latencies missing from per-process histograms (map full).
    pub runq_process: u64,
    /// Syscalls missing from the per-process table (map full).
    pub syscall_process: u64,
    /// Failed syscalls whose errno was not kept (map full).
    pub syscall_errno: u64,
    /// Per-thread start timestamps that could not be stored.
    pub start: u64,
    /// Process names the kernel could not store.
    pub process_names: u64,
    /// Stacks lost to hash collisions in the kernel's stack map.
    pub stack_collisions: u64,
    /// Stacks the kernel could not store (stack map full).
    pub stack_errors: u64,
    /// CPU samples not counted (sample map full).
    pub samples: u64,
    /// New processes not announced to userspace in time (ring buffer full).
    pub new_processes: u64,
    /// Syscall latencies missing from per-process histograms (map full).
    pub syscall_latency_process: u64,
    /// Off-CPU times not counted (time map full).
    pub offcpu_times: u64,
    /// Blocked threads whose stacks were forgotten before they ran again (too many blocked).
    pub offcpu_blocked: u64,
}

impl Drops {
    /// Every count, in declaration order.
    fn counts(&self) -> [u64; 12] {
        self.clone().counts_mut().map(|count| *count)
    }

    fn counts_mut(&mut self) -> [&mut u64; 12] {
        let Drops {
            runq_process,
            syscall_process,
            syscall_errno,
            start,
            process_names,
            stack_collisions,
            stack_errors,
            samples,
            new_processes,
            syscall_latency_process,
            offcpu_times,
            offcpu_blocked,
        } = self;
        [
            runq_process,
            syscall_process,
            syscall_errno,
            start,
            process_names,
            stack_collisions,
            stack_errors,
            samples,
            new_processes,
            syscall_latency_process,
            offcpu_times,
            offcpu_blocked,
        ]
    }

    pub fn total(&self) -> u64 {
        self.counts().into_iter().fold(0u64, u64::saturating_add)
    }
}

/// Run-queue latency histograms.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunqLatency {
    pub system: LatencyHistogram,
    /// Indexed by CPU number.
    pub per_cpu: Vec<LatencyHistogram>,
    /// By tgid.
    pub per_process: BTreeMap<u32, LatencyHistogram>,
}

/// Syscall statistics.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Syscalls {
    /// Latency of each syscall, all processes together, by syscall number.
    pub latency: BTreeMap<u32, LatencyHistogram>,
    /// Per (process, syscall) counts.
    pub per_process: Vec<ProcessSyscall>,
    /// Calls were counted, not timed (the `syscall-counts` probe): `latency` is empty and every
    /// `total_ns` 0, not measured. Absent from older recordings, whose calls were all timed.
    pub counts_only: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessSyscall {
    pub tgid: u32,
    pub nr: u32,
    pub count: u64,
    pub errors: u64,
    pub total_ns: u64,
    /// (errno, count), commonest first.
    pub errnos: Vec<(u32, u64)>,
    /// The calls' latencies, where the recording kept them per process (`top`, `record
    /// --syscall-latency-per-process`); absent otherwise, and from older recordings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyHistogram>,
}

impl ProcessSyscall {
    /// Adds another row's counts (of the same syscall) to this one.
    pub fn absorb(&mut self, other: &ProcessSyscall) {
        self.count = self.count.saturating_add(other.count);
        self.errors = self.errors.saturating_add(other.errors);
        self.total_ns = self.total_ns.saturating_add(other.total_ns);
        for &(errno, n) in &other.errnos {
            match self.errnos.iter_mut().find(|(e, _)| *e == errno) {
                Some(slot) => slot.1 = slot.1.saturating_add(n),
                None => self.errnos.push((errno, n)),
            }
        }
        self.errnos.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        if let Some(theirs) = &other.latency {
            self.latency.get_or_insert_with(LatencyHistogram::default).merge(theirs);
        }
    }
}

/// On-CPU stacks, symbolized while the processes lived, with frames interned.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stacks {
    pub frames: Vec<Frame>,
    pub modules: Vec<Module>,
    pub stacks: Vec<Stack>,
}

impl Stacks {
    /// Samples in all.
    pub fn samples(&self) -> u64 {
        self.stacks.iter().fold(0u64, |sum, s| sum.saturating_add(s.count))
    }

    pub fn frame(&self, index: u32) -> Option<&Frame> {
        self.frames.get(index as usize)
    }

    pub fn module(&self, frame: &Frame) -> Option<&Module> {
        frame.module.and_then(|m| self.modules.get(m as usize))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Frame {
    /// The function, demangled; for a frame that could not be named, `module+0xoffset`.
    pub function: String,
    /// Index into `Stacks::modules`.
    pub module: Option<u32>,
    pub kernel: bool,
    /// Inlined into the frame below it (only with `--inline`).
    pub inlined: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Module {
    pub path: String,
    /// GNU build-id, hex, for offline symbolization elsewhere.
    pub build_id: Option<String>,
}

/// The leaf frame of an off-CPU stack: the state its thread blocked in, as `ps` shows it.
pub fn wait_state_frame(state: WaitState) -> &'static str {
    match state {
        WaitState::Sleeping => WAIT_STATE_FRAMES[0],
        WaitState::Uninterruptible => WAIT_STATE_FRAMES[1],
        WaitState::Other => WAIT_STATE_FRAMES[2],
    }
}

/// Every state's leaf frame, in `WaitState` order.
pub const WAIT_STATE_FRAMES: [&str; 3] = ["[S sleeping]", "[D uninterruptible]", "[other wait]"];

/// One distinct stack of one process (or thread) and how often it was sampled.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stack {
    pub tgid: u32,
    /// Thread id when recorded with `--per-thread`, else 0.
    pub tid: u32,
    /// Indices into `Stacks::frames`, leaf first: kernel frames, then user frames.
    pub frames: Vec<u32>,
    /// Samples; off CPU, nanoseconds blocked.
    pub count: u64,
    /// Off CPU: how many times threads blocked there (estimated, as `count`, when sampled).
    #[serde(skip_serializing_if = "is_zero")]
    pub blocks: u64,
}

impl Stack {
    /// Adds the counts of the same stack from another interval or process.
    pub fn absorb(&mut self, other: &Stack) {
        self.count = self.count.saturating_add(other.count);
        self.blocks = self.blocks.saturating_add(other.blocks);
    }
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Process {
    pub comm: String,
    /// The executable's path, when the process was alive long enough to read it.
    pub exe: Option<String>,
    pub cmdline: Option<String>,
    /// Non-zero: not one process but the total of this many exited processes of this name (the
    /// id is then no pid, but at or above `FIRST_FOLDED_ID`).
    pub folded: u32,
    /// The container and Kubernetes pod it ran in, from its cgroup.
    pub container: Option<Container>,
}

impl Process {
    /// What exited processes fold by: their name, within their container (one total per name and
    /// container, so that no container's processes are counted under another's).
    pub fn fold_key(&self) -> String {
        match &self.container {
            Some(container) => {
                format!("{}\0{}\0{}", self.comm, container.id, container.pod_uid.as_deref().unwrap_or(""))
            }
            None => self.comm.clone(),
        }
    }
}

/// A latency distribution in the kernel's log-linear buckets (nanoseconds), stored sparsely as
/// (bucket index, count) pairs in ascending index order. This is exact: the bucket counts the
/// kernel kept, nothing re-binned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LatencyHistogram {
    pub buckets: Vec<(u16, u64)>,
}

impl LatencyHistogram {
    pub fn from_dense(counts: &[u64]) -> Self {
        let buckets = counts
            .iter()
            .enumerate()
            .filter(|&(_, &count)| count > 0)
            .map(|(index, &count)| (index as u16, count))
            .collect();
        Self { buckets }
    }

    /// The histogram of individual values (nanoseconds), bucketed as the kernel does.
    pub fn from_values(values: impl IntoIterator<Item = u64>) -> Self {
        let mut dense = vec![0u64; NUM_BUCKETS];
        for v in values {
            dense[profiler_common::histogram::bucket_index(v) as usize] += 1;
        }
        Self::from_dense(&dense)
    }

    pub fn to_dense(&self) -> Vec<u64> {
        let mut dense = vec![0u64; NUM_BUCKETS];
        for &(index, count) in &self.buckets {
            if let Some(slot) = dense.get_mut(index as usize) {
                *slot = slot.saturating_add(count);
            }
        }
        dense
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().fold(0u64, |sum, &(_, count)| sum.saturating_add(count))
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Each count multiplied by `factor` (what a histogram of one value in `factor` estimates);
    /// `unweighed` divides it back.
    pub fn weighed(&self, factor: u64) -> LatencyHistogram {
        LatencyHistogram { buckets: self.buckets.iter().map(|&(index, n)| (index, n.saturating_mul(factor))).collect() }
    }

    /// Each count divided by `factor` (0, from a recording made before sampling, read as 1).
    pub fn unweighed(&self, factor: u64) -> LatencyHistogram {
        LatencyHistogram { buckets: self.buckets.iter().map(|&(index, n)| (index, n / factor.max(1))).collect() }
    }

    /// Adds another histogram's counts into this one.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        let mut dense = self.to_dense();
        for &(index, count) in &other.buckets {
            if let Some(slot) = dense.get_mut(index as usize) {
                *slot = slot.saturating_add(count);
            }
        }
        *self = Self::from_dense(&dense);
    }

    /// Buckets with their value ranges `[lower, upper)` in nanoseconds, ascending.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.buckets.iter().map(|&(index, count)| {
            let (lower, upper) = bucket_bounds(index as u32);
            (lower, upper, count)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_sparse_round_trip_and_merge() {
        let mut dense = vec![0; NUM_BUCKETS];
        dense[0] = 3;
        dense[100] = 7;
        dense[NUM_BUCKETS - 1] = 1;
        let histogram = LatencyHistogram::from_dense(&dense);
        assert_eq!(histogram.buckets, vec![(0, 3), (100, 7), ((NUM_BUCKETS - 1) as u16, 1)]);
        assert_eq!(histogram.to_dense(), dense);
        assert_eq!(histogram.count(), 11);
        let mut merged = histogram.clone();
        merged.merge(&histogram);
        assert_eq!(merged.count(), 22);
        assert_eq!(merged.buckets[1], (100, 14));
    }
}

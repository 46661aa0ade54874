//! Loading and attaching the eBPF programs, one module per probe (its programs and its drain).
//! At start the loader asks the kernel what it offers; each probe's programs are chosen to fit the
//! running kernel, and a probe that cannot run here is left out with the reason (or, when the user
//! asked for it by name, is an error).

mod btf;
mod features;
pub mod oncpu;
mod privileges;
pub mod program;
pub mod sched;
pub mod syscalls;
mod verifier;

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, PerCpuArray},
    programs::BtfTracePoint,
};
use profiler_common::{
    counters::{Counter, NUM_COUNTERS},
    process::{MAX_HASHED_THREADS, MAX_PID_MAX_FOR_ARRAYS, ProcessName},
};

use crate::recording::{Counters, Drops, LatencyHistogram, ProcessSyscall};
pub use btf::{KernelLayout, load_vmlinux};
pub use features::{Feature, KernelFeatures};
pub use program::tracepoint_type_id;
use program::{Alternatives, Attach, Program};

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profiler"));

/// A probe the user can choose with `--probes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Probe {
    /// Run-queue latency from sched_wakeup, sched_wakeup_new and sched_switch.
    Sched,
    /// Syscall counts, errors and latency from raw_syscalls sys_enter and sys_exit.
    Syscalls,
    /// Kernel and user stacks sampled on the CPU clock of every CPU.
    Cpu,
}

impl Probe {
    pub const ALL: [Probe; 3] = [Probe::Sched, Probe::Syscalls, Probe::Cpu];

    pub fn name(self) -> &'static str {
        match self {
            Probe::Sched => "sched",
            Probe::Syscalls => "syscalls",
            Probe::Cpu => "cpu",
        }
    }

    /// The probe's programs: one slot each, filled by the first alternative that fits the kernel.
    fn programs(self) -> &'static [Alternatives] {
        match self {
            Probe::Sched => sched::PROGRAMS,
            Probe::Syscalls => syscalls::PROGRAMS,
            Probe::Cpu => oncpu::PROGRAMS,
        }
    }

    /// The kernel features the probe cannot run without.
    fn requires(self) -> &'static [Feature] {
        match self {
            Probe::Sched => sched::REQUIRES,
            Probe::Syscalls => syscalls::REQUIRES,
            Probe::Cpu => oncpu::REQUIRES,
        }
    }

    /// The programs that run this probe on this kernel, or why it cannot run here.
    fn fit(self, features: &KernelFeatures, btf: &btf_rs::Btf) -> Result<Vec<&'static Program>, String> {
        if let Some(feature) = features.missing(self.requires()) {
            return Err(format!("this kernel ({}) lacks {}", features.release, feature.describe()));
        }
        self.programs()
            .iter()
            .map(|alternatives| program::choose(alternatives, btf))
            .collect::<Result<_>>()
            .map_err(|error| format!("{error:#} (kernel {})", features.release))
    }
}

/// Every program name of these probes, each variant included.
pub fn program_names(probes: &[Probe]) -> Vec<&'static str> {
    probes.iter().flat_map(|p| p.programs().iter().flat_map(|slot| slot.iter().map(|program| program.name))).collect()
}

/// How many programs these probes load: one per slot, whichever variant fills it.
pub fn program_count(probes: &[Probe]) -> usize {
    probes.iter().map(|p| p.programs().len()).sum()
}

/// The probes to run, and whether the user named them (then each must run) or took the default
/// (then a probe this kernel cannot host is left out).
#[derive(Clone, Debug)]
pub struct ProbeSelection {
    pub probes: Vec<Probe>,
    pub named: bool,
}

/// A probe left out because this kernel cannot run it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeftOut {
    pub probe: Probe,
    pub reason: String,
}

/// What to record: filters applied in the kernel, and how to sample.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// Processes (tgids) to record; empty means all.
    pub pids: Vec<u32>,
    /// A cgroup v2 directory whose tasks to record.
    pub cgroup: Option<PathBuf>,
    /// Samples per second on each CPU, for the `cpu` probe.
    pub frequency_hz: u32,
    /// Keep threads apart in stack samples.
    pub per_thread: bool,
    /// Save the whole verifier log of a rejected program to a file (`-v`).
    pub keep_verifier_log: bool,
}

/// The loaded eBPF object with the chosen probes attached. Dropping it detaches and unloads
/// everything (the kernel also does so if the process dies).
pub struct Probes {
    pub(crate) ebpf: Ebpf,
    probes: Vec<Probe>,
    /// The programs loaded, of every probe.
    programs: Vec<&'static Program>,
    left_out: Vec<LeftOut>,
    features: KernelFeatures,
    /// Entries userspace removed from each per-process map.
    removed: BTreeMap<&'static str, u64>,
}

/// What exited processes left in the per-process maps.
#[derive(Default)]
pub struct Exited {
    pub tgids: Vec<u32>,
    pub runq: BTreeMap<u32, LatencyHistogram>,
    pub syscalls: Vec<ProcessSyscall>,
}

/// A bounded per-process map. How full it is comes from the kernel's count of the entries it
/// created minus the entries userspace removed, so that nobody walks the map to find out.
struct PerProcessMap {
    name: &'static str,
    probe: Probe,
    capacity: u32,
    created: Counter,
}

const PER_PROCESS_MAPS: [PerProcessMap; 3] = {
    use profiler_common::{runqlat as rq, syscalls as sc};
    [
        PerProcessMap {
            name: "RUNQ_PROCESS_LATENCY",
            probe: Probe::Sched,
            capacity: rq::MAX_PROCESS_BUCKETS,
            created: Counter::RunqProcessEntries,
        },
        PerProcessMap {
            name: "SYSCALL_STATS",
            probe: Probe::Syscalls,
            capacity: sc::MAX_PROCESS_SYSCALLS,
            created: Counter::SyscallProcessEntries,
        },
        PerProcessMap {
            name: "SYSCALL_ERRNOS",
            probe: Probe::Syscalls,
            capacity: sc::MAX_SYSCALL_ERRNOS,
            created: Counter::SyscallErrnoEntries,
        },
    ]
};

/// Where the cgroup v2 hierarchy is mounted: /sys/fs/cgroup on unified systems,
/// /sys/fs/cgroup/unified on hybrid ones.
fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").context("cannot read /proc/self/mounts")?;
    mounts
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.get(2) == Some(&"cgroup2"))
        .and_then(|fields| fields.get(1).map(PathBuf::from))
        .ok_or_else(|| anyhow!("no cgroup v2 hierarchy is mounted: --cgroup needs cgroup v2"))
}

/// The cgroup v2 id of a cgroup directory (absolute, or relative to the cgroup v2 root): its inode
/// number on cgroupfs.
fn cgroup_id(path: &Path) -> Result<u64> {
    let path = if path.is_absolute() { path.to_path_buf() } else { cgroup2_root()?.join(path) };
    let stat = nix::sys::statfs::statfs(&path).with_context(|| format!("cgroup {}", path.display()))?;
    if stat.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC {
        bail!("{} is not a cgroup v2 directory (cgroup v1 is not supported)", path.display());
    }
    Ok(std::fs::metadata(&path)?.ino())
}

/// Decides which of the selected probes run here and with which programs.
fn plan(
    selection: &ProbeSelection,
    features: &KernelFeatures,
    btf: &btf_rs::Btf,
) -> Result<(Vec<Probe>, Vec<&'static Program>, Vec<LeftOut>)> {
    let (mut probes, mut programs, mut left_out) = (Vec::new(), Vec::new(), Vec::new());
    for &probe in &selection.probes {
        match probe.fit(features, btf) {
            Ok(chosen) => {
                probes.push(probe);
                programs.extend(chosen);
            }
            Err(reason) if selection.named => bail!("the {} probe cannot run here: {reason}", probe.name()),
            Err(reason) => left_out.push(LeftOut { probe, reason }),
        }
    }
    if probes.is_empty() {
        let reasons: Vec<String> = left_out.iter().map(|l| format!("{}: {}", l.probe.name(), l.reason)).collect();
        bail!("no probe can run on this kernel ({})", reasons.join("; "));
    }
    Ok((probes, programs, left_out))
}

impl Probes {
    /// Loads the programs of the selected probes that fit this kernel and attaches them, with the
    /// filters of `options` applied in the kernel.
    pub fn attach(selection: &ProbeSelection, options: &ProbeOptions) -> Result<Self> {
        privileges::check()?;
        let kernel = load_vmlinux()?;
        let features = KernelFeatures::probe(&kernel.btf, kernel.mapped);
        let (probes, programs, left_out) = plan(selection, &features, &kernel.btf)?;
        let layout = KernelLayout::from_btf(&kernel.btf)?;
        let cgroup_id = options.cgroup.as_deref().map(cgroup_id).transpose()?.unwrap_or(0);
        let filter_by_pid = u8::from(!options.pids.is_empty());
        let per_thread = u8::from(options.per_thread);

        let pid_max = pid_max()?;
        let tid_arrays = u8::from(pid_max <= MAX_PID_MAX_FOR_ARRAYS);
        let offsets = layout.globals();
        // No target BTF: the programs have no CO-RE relocations (the offsets above stand in for
        // them), and aya's parse of the kernel's BTF would be most of the recorder's peak memory.
        // aya skips CO-RE silently without one: a program that uses CO-RE needs
        // `loader.btf(Some(&aya::Btf::from_sys_fs()?))` here.
        let mut ebpf = {
            let mut loader = EbpfLoader::new();
            loader.btf(None);
            let (array_len, hash_len) = match tid_arrays {
                1 => (pid_max, 1),
                _ => (1, MAX_HASHED_THREADS),
            };
            for (array, hash) in PER_THREAD_MAPS {
                loader.map_max_entries(array, array_len);
                loader.map_max_entries(hash, hash_len);
            }
            loader.override_global("TID_ARRAYS", &tid_arrays, true);
            for (name, value) in &offsets {
                loader.override_global(name, value, true);
            }
            loader.override_global("FILTER_BY_PID", &filter_by_pid, true);
            loader.override_global("FILTER_CGROUP_ID", &cgroup_id, true);
            loader.override_global("SAMPLE_PER_THREAD", &per_thread, true);
            loader.load(EBPF_OBJECT).map_err(|error| match error {
                aya::EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. })
                    if verifier::is_permission_error(&io_error) =>
                {
                    verifier::permission_advice(&io_error)
                }
                other => anyhow::Error::new(other).context("cannot load the eBPF object"),
            })?
        };

        let mut pids: HashMap<_, u32, u8> = HashMap::try_from(map(&mut ebpf, "FILTER_PIDS")?)?;
        for &pid in &options.pids {
            pids.insert(pid, 1, 0).with_context(|| format!("cannot add pid {pid} to the filter"))?;
        }

        let tracepoints: Vec<&str> = programs.iter().filter_map(|p| p.tracepoint()).map(|tp| tp.name).collect();
        let aya_btf = btf::attach_targets(&kernel.btf, &tracepoints)?;
        drop(kernel);
        for program in &programs {
            let keep_log = options.keep_verifier_log;
            match &program.attach {
                Attach::Tracepoint(tp) => {
                    let loaded: &mut BtfTracePoint = ebpf
                        .program_mut(program.name)
                        .ok_or_else(|| anyhow!("program {} missing from the eBPF object", program.name))?
                        .try_into()?;
                    loaded.load(tp.name, &aya_btf).map_err(|e| verifier::explain(program.name, e, keep_log))?;
                    loaded.attach().map_err(|e| verifier::explain(program.name, e, keep_log)).with_context(|| {
                        format!("cannot attach program {} to {}:{}", program.name, tp.category, tp.name)
                    })?;
                }
                Attach::CpuClock => oncpu::attach_sampler(&mut ebpf, program.name, options)?,
            }
        }
        Ok(Self { ebpf, probes, programs, left_out, features, removed: BTreeMap::new() })
    }

    /// The probes running.
    pub fn probes(&self) -> &[Probe] {
        &self.probes
    }

    /// The selected probes this kernel cannot run.
    pub fn left_out(&self) -> &[LeftOut] {
        &self.left_out
    }

    /// What the kernel offers.
    pub fn features(&self) -> &KernelFeatures {
        &self.features
    }

    /// The names of the programs loaded.
    pub fn program_names(&self) -> Vec<&'static str> {
        self.programs.iter().map(|p| p.name).collect()
    }

    /// Detaches every program; maps stay readable until `self` is dropped.
    pub fn detach(&mut self) -> Result<()> {
        for program in &self.programs {
            let Some(loaded) = self.ebpf.program_mut(program.name) else { continue };
            match program.attach {
                Attach::Tracepoint(_) => <&mut BtfTracePoint>::try_from(loaded)?.unload()?,
                Attach::CpuClock => <&mut aya::programs::PerfEvent>::try_from(loaded)?.unload()?,
            }
        }
        Ok(())
    }

    /// The kernel's counters, summed over CPUs, indexed by `Counter`.
    fn counter_values(&self) -> Result<[u64; NUM_COUNTERS as usize]> {
        let array: PerCpuArray<_, u64> = PerCpuArray::try_from(self.map("COUNTERS")?)?;
        let mut values = [0u64; NUM_COUNTERS as usize];
        for (index, value) in values.iter_mut().enumerate() {
            *value = array.get(&(index as u32), 0)?.iter().sum();
        }
        Ok(values)
    }

    /// Event and drop counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        let values = self.counter_values()?;
        let get = |counter: Counter| values[counter as usize];
        Ok(Counters {
            sched_switches: get(Counter::SchedSwitches),
            involuntary_switches: get(Counter::InvoluntarySwitches),
            wakeups: get(Counter::Wakeups),
            // Filled in from the histograms when they are drained.
            runq_latencies: 0,
            syscalls: 0,
            cpu_samples: get(Counter::CpuSamples),
            idle_samples: get(Counter::IdleSamples),
            drops: Drops {
                runq_process: get(Counter::RunqProcessDrops),
                syscall_process: get(Counter::SyscallProcessDrops),
                syscall_errno: get(Counter::SyscallErrnoDrops),
                start: get(Counter::StartDrops),
                process_names: get(Counter::ProcessDrops),
                stack_collisions: get(Counter::StackCollisions),
                stack_errors: get(Counter::StackErrors),
                samples: get(Counter::SampleDrops),
                new_processes: get(Counter::NewProcessDrops),
            },
        })
    }

    /// Takes the process names the kernel noted since the last call, emptying the map.
    pub fn take_process_names(&mut self) -> Result<Vec<(u32, ProcessName)>> {
        let mut map: HashMap<_, u32, ProcessName> = HashMap::try_from(map(&mut self.ebpf, "PROCESSES")?)?;
        let entries: Vec<(u32, ProcessName)> = map.iter().filter_map(Result::ok).collect();
        for (tgid, _) in &entries {
            // The kernel re-adds a process only if it creates another entry for it; harmless.
            let _ = map.remove(tgid);
        }
        Ok(entries)
    }

    /// Programs attached now.
    pub fn programs_attached(&self) -> usize {
        self.programs.len()
    }

    /// How full each bounded per-process map of the running probes is (entries / capacity).
    pub fn map_fill(&self) -> Result<Vec<(&'static str, f64)>> {
        let values = self.counter_values()?;
        Ok(PER_PROCESS_MAPS
            .iter()
            .filter(|map| self.probes.contains(&map.probe))
            .map(|map| {
                let removed = self.removed.get(map.name).copied().unwrap_or(0);
                let entries = values[map.created as usize].saturating_sub(removed);
                (map.name, entries as f64 / f64::from(map.capacity))
            })
            .collect())
    }

    /// Takes what processes that have exited left in the per-process maps. Each map's keys are
    /// walked once; which processes exited is settled after that and before any value is read: a
    /// process that exits while the maps are being walked would otherwise lose the entries the walk
    /// passed before it wrote them.
    pub fn take_exited(&mut self) -> Result<Exited> {
        use profiler_common::{
            runqlat::ProcessBucket,
            syscalls::{ProcessSyscall as StatsKey, SyscallErrno, SyscallStats},
        };
        let (sched, syscalls) = (self.probes.contains(&Probe::Sched), self.probes.contains(&Probe::Syscalls));
        let runq_keys: Vec<ProcessBucket> = self.keys::<_, u64>("RUNQ_PROCESS_LATENCY", sched)?;
        let stats_keys: Vec<StatsKey> = self.keys::<_, SyscallStats>("SYSCALL_STATS", syscalls)?;
        let errno_keys: Vec<SyscallErrno> = self.keys::<_, u64>("SYSCALL_ERRNOS", syscalls)?;
        let seen: BTreeSet<u32> = runq_keys
            .iter()
            .map(|key| key.tgid)
            .chain(stats_keys.iter().map(|key| key.tgid))
            .chain(errno_keys.iter().map(|key| key.tgid))
            .collect();
        let gone: BTreeSet<u32> =
            seen.into_iter().filter(|tgid| !Path::new(&format!("/proc/{tgid}")).exists()).collect();
        if gone.is_empty() {
            return Ok(Exited::default());
        }
        let runq = self.take::<_, u64>("RUNQ_PROCESS_LATENCY", runq_keys, |key| gone.contains(&key.tgid))?;
        let stats = self.take::<_, SyscallStats>("SYSCALL_STATS", stats_keys, |key| gone.contains(&key.tgid))?;
        let errnos = self.take::<_, u64>("SYSCALL_ERRNOS", errno_keys, |key| gone.contains(&key.tgid))?;
        Ok(Exited {
            tgids: gone.into_iter().collect(),
            runq: sched::per_process(runq),
            syscalls: syscalls::rows(stats, errnos),
        })
    }

    /// The keys of hash map `name`, or none when its probe is off.
    fn keys<K: aya::Pod, V: aya::Pod>(&self, name: &str, probe_on: bool) -> Result<Vec<K>> {
        if !probe_on {
            return Ok(Vec::new());
        }
        let map: HashMap<_, K, V> = HashMap::try_from(self.map(name)?)?;
        Ok(map.keys().filter_map(Result::ok).collect())
    }

    /// Takes the entries of per-process map `name` whose keys pass `wanted`: each is read, then
    /// removed.
    fn take<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
        keys: Vec<K>,
        wanted: impl Fn(&K) -> bool,
    ) -> Result<Vec<(K, V)>> {
        let mut map: HashMap<_, K, V> = HashMap::try_from(map(&mut self.ebpf, name)?)?;
        let mut taken = Vec::new();
        for key in keys.into_iter().filter(|key| wanted(key)) {
            if let Ok(value) = map.get(&key, 0)
                && map.remove(&key).is_ok()
            {
                taken.push((key, value));
            }
        }
        *self.removed.entry(name).or_default() += taken.len() as u64;
        Ok(taken)
    }

    pub(crate) fn map(&self, name: &str) -> Result<&aya::maps::Map> {
        self.ebpf.map(name).ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
    }
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name).ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
}

/// Per-thread start times: an array indexed by thread id and a hash map by thread id, of which the
/// loader keeps one and shrinks the other to one entry (see `MAX_PID_MAX_FOR_ARRAYS`).
const PER_THREAD_MAPS: [(&str, &str); 2] =
    [("RUNQ_START", "RUNQ_START_BY_TID"), ("SYSCALL_START", "SYSCALL_START_BY_TID")];

/// The kernel's bound on thread ids.
fn pid_max() -> Result<u32> {
    let path = "/proc/sys/kernel/pid_max";
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    text.trim().parse().with_context(|| format!("{path} holds {:?}, not a number", text.trim()))
}

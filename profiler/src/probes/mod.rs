//! The probes: each is one kernel program module in `profiler-ebpf`, its map layouts in
//! `profiler-common`, and here its loader spec and its drain (libbpf-tools' shape: one tool, one
//! kernel program, one userspace program, one shared header). `REGISTRY` lists them; adding a probe
//! is its own modules plus one line there.
//!
//! At start the loader asks the kernel what it offers; each probe's programs are chosen to fit the
//! running kernel, and a probe that cannot run here is left out with the reason (or, when the user
//! asked for it by name, is an error).

mod btf;
pub mod cgroup;
mod counter_map;
mod features;
mod links;
mod loader;
pub mod offcpu;
pub mod oncpu;
mod privileges;
pub mod program;
pub mod sched;
pub mod syscalls;
mod verifier;

use std::path::PathBuf;

use anyhow::Result;

use crate::{recording::Recording, symbolize::RawStack};
pub use btf::{KernelLayout, load_vmlinux};
pub use counter_map::Exits;
pub use features::{Feature, KernelFeatures};
pub use loader::Probes;
use program::Alternatives;
pub use program::tracepoint_type_id;

/// A probe: what it is called, what it needs from the kernel, its programs, and a way to drain what
/// its maps aggregated.
pub trait ProbeSpec: Sync {
    /// The name `--probes` takes.
    fn name(&self) -> &'static str;
    /// One line for `--help`.
    fn about(&self) -> &'static str;
    /// Kernel features the probe cannot run without.
    fn requires(&self) -> &'static [Feature];
    /// The probe's programs: one slot each, filled by the first alternative that fits the kernel.
    fn programs(&self) -> &'static [Alternatives];
    /// The maps only this probe uses (not its per-thread start times, which the loader sizes):
    /// shrunk to one entry when it does not run, so they cost no kernel memory.
    fn own_maps(&self) -> &'static [&'static str];
    /// Whether the probe runs when none is named.
    fn by_default(&self) -> bool {
        true
    }
    /// Probes that cannot run beside this one (they fill the same maps).
    fn excludes(&self) -> &'static [&'static str] {
        &[]
    }
    /// A fresh drain for one session with these options.
    fn drain(&self, options: &ProbeOptions) -> Box<dyn Drain>;
}

/// Takes what a probe's maps aggregated since the last call.
pub trait Drain: Send {
    /// Adds the growth of the probe's maps since the last call to `interval`, and removes from the
    /// kernel maps what processes that exited left there (so the maps hold live processes only,
    /// however long the session). Called once per interval, and once more after detaching.
    fn drain(&mut self, kernel: &mut Kernel<'_>, interval: &mut Drained) -> Result<()>;

    /// How full the probe's fullest bounded map is now (0 to 1), from the kernel's counters
    /// (`COUNTERS`, indexed by `Counter`): the session drains early when a map fills faster than
    /// its interval empties it.
    fn fullest(&self, _counters: &[u64]) -> f64 {
        0.0
    }
}

/// What a drain reaches: the loaded object, and which processes have exited.
pub struct Kernel<'a> {
    pub ebpf: &'a mut aya::Ebpf,
    pub exits: &'a mut Exits,
}

/// One interval's growth, as the probes' drains leave it.
#[derive(Default)]
pub struct Drained {
    /// The probes' sections (counters, histograms, syscall rows) as a partial recording.
    pub recording: Recording,
    /// Stack samples, raw: the collector symbolizes them.
    pub stacks: Vec<RawStack>,
    /// Off-CPU stacks, raw, each with its blocked nanoseconds as its count.
    pub offcpu: Vec<RawStack>,
    /// How full each bounded map is (entries over capacity), by map name.
    pub fills: Vec<(&'static str, f64)>,
}

/// Every probe this build has.
pub static REGISTRY: [&dyn ProbeSpec; 5] =
    [&sched::Sched, &syscalls::Syscalls, &syscalls::SyscallCounts, &oncpu::Cpu, &offcpu::OffCpu];

/// A probe of the registry, by value: compared, ordered and printed by name.
#[derive(Clone, Copy)]
pub struct Probe(pub &'static dyn ProbeSpec);

impl Probe {
    pub fn name(self) -> &'static str {
        self.0.name()
    }

    /// Every probe of the registry, in its order.
    pub fn all() -> Vec<Probe> {
        REGISTRY.iter().map(|&spec| Probe(spec)).collect()
    }

    /// The probes that run when none is named.
    pub fn defaults() -> Vec<Probe> {
        Probe::all().into_iter().filter(|p| p.0.by_default()).collect()
    }

    /// The probe of the registry with this name.
    pub fn by_name(name: &str) -> Option<Probe> {
        REGISTRY.iter().find(|spec| spec.name() == name).map(|&spec| Probe(spec))
    }
}

impl PartialEq for Probe {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for Probe {}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `--probes` values: the registry's names, each with its help line.
#[derive(Clone)]
pub struct ProbeParser;

impl clap::builder::TypedValueParser for ProbeParser {
    type Value = Probe;

    fn parse_ref(
        &self,
        command: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Probe, clap::Error> {
        let names = clap::builder::PossibleValuesParser::new(self.possible_values().into_iter().flatten());
        let name = names.parse_ref(command, arg, value)?;
        Ok(Probe::by_name(&name).expect("a possible value names a probe"))
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(REGISTRY.iter().map(|spec| clap::builder::PossibleValue::new(spec.name()).help(spec.about()))))
    }
}

/// Every program name of these probes, each variant included.
pub fn program_names(probes: &[Probe]) -> Vec<&'static str> {
    probes.iter().flat_map(|p| p.0.programs().iter().flat_map(|slot| slot.iter().map(|program| program.name))).collect()
}

/// How many programs these probes load: one per slot, whichever variant fills it.
pub fn program_count(probes: &[Probe]) -> usize {
    probes.iter().map(|p| p.0.programs().len()).sum()
}

/// The probes to run, and whether the user named them (then each must run) or took the default
/// (then a probe this kernel cannot host is left out).
#[derive(Clone, Debug)]
pub struct ProbeSelection {
    pub probes: Vec<Probe>,
    pub named: bool,
}

impl ProbeSelection {
    /// The probes named on the command line, each once in registry order; `default` when none was.
    /// Probes that exclude each other are an error.
    pub fn from_args(named: &[Probe], default: &[Probe]) -> Result<Self> {
        let chosen = if named.is_empty() { default } else { named };
        let mut probes: Vec<Probe> = Probe::all().into_iter().filter(|p| chosen.contains(p)).collect();
        probes.dedup();
        for probe in &probes {
            if let Some(other) = probes.iter().find(|other| probe.0.excludes().contains(&other.name())) {
                anyhow::bail!(
                    "the {} and {} probes both count syscalls: choose one ({} also times them; {} costs less)",
                    other.name(),
                    probe.name(),
                    other.name(),
                    probe.name()
                );
            }
        }
        Ok(ProbeSelection { probes, named: !named.is_empty() })
    }
}

/// A probe left out because this kernel cannot run it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeftOut {
    pub probe: Probe,
    pub reason: String,
}

/// What to record: filters applied in the kernel, and how to sample.
#[derive(Clone, Debug, Default)]
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
    /// Record the profiler's own threads too; by default the kernel leaves them out, so its drains
    /// and symbolization do not show up as the machine's syscalls and waits.
    pub include_self: bool,
    /// The pid filter may change while the programs run (`top` focusing on a process), at the
    /// cost of one array lookup per event; otherwise the verifier prunes it.
    pub changeable_pid_filter: bool,
    /// Keep a syscall latency histogram per (process, syscall), not only per syscall: a hash
    /// update on every timed call, so only when asked for.
    pub syscall_latency_per_process: bool,
    /// Off-CPU blocks shorter than this are not counted (the `offcpu` probe).
    pub offcpu_min_ns: u64,
    /// Take the stacks of one blocking switch-out in this many, at random (0 or 1: all).
    pub offcpu_sample_one_in: u32,
    /// Time one syscall in this many, at random, each counted this many times in latency totals
    /// and histograms (0 or 1: all); every call is still counted.
    pub syscall_sample_one_in: u32,
}

impl ProbeOptions {
    /// One blocking switch-out in how many has its stacks taken (0, the default, read as 1).
    pub fn offcpu_one_in(&self) -> u32 {
        self.offcpu_sample_one_in.max(1)
    }

    /// One syscall in how many is timed (0, the default, read as 1).
    pub fn syscall_one_in(&self) -> u32 {
        self.syscall_sample_one_in.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_chosen_in_registry_order_and_once() {
        let by = |name| Probe::by_name(name).unwrap();
        let selection = ProbeSelection::from_args(&[by("cpu"), by("sched"), by("cpu")], &Probe::defaults()).unwrap();
        assert_eq!(selection.probes, [by("sched"), by("cpu")]);
        assert!(selection.named);
        let default = ProbeSelection::from_args(&[], &Probe::defaults()).unwrap();
        assert_eq!(default.probes, [by("sched"), by("syscalls"), by("cpu")]);
        assert!(!default.named);
        let both = ProbeSelection::from_args(&[by("syscall-counts"), by("syscalls")], &[]).unwrap_err();
        assert!(both.to_string().contains("choose one"), "{both}");
    }

    /// Every map name the loader and the drains use exists in the eBPF object.
    #[test]
    fn map_names_exist_in_the_object() {
        use profiler_common::{counters, offcpu, oncpu, process, runqlat, syscalls, unwind};
        let object = aya_obj::Object::parse(loader::EBPF_OBJECT).unwrap();
        let names = [
            counters::COUNTERS,
            process::PROCESSES,
            process::FILTER_PIDS,
            process::PID_FILTER_ON,
            runqlat::RUNQ_START,
            runqlat::RUNQ_LATENCY,
            runqlat::RUNQ_PROCESS_LATENCY,
            syscalls::SYSCALL_START,
            syscalls::SYSCALL_STATS,
            syscalls::SYSCALL_SLOTS,
            syscalls::SYSCALL_ERRNOS,
            syscalls::SYSCALL_LATENCY,
            syscalls::SYSCALL_PROCESS_LATENCY,
            oncpu::STACK_FRAMES[0],
            oncpu::STACK_FRAMES[1],
            oncpu::STACK_SAMPLES[0],
            oncpu::STACK_SAMPLES[1],
            oncpu::STACK_BUFFER,
            oncpu::SAMPLED_PROCESSES,
            oncpu::NEW_PROCESSES,
            unwind::UNWIND_STATE,
            unwind::UNWIND_ROWS,
            unwind::UNWIND_PAGES,
            unwind::PROCESS_MAPPINGS,
            unwind::UNWIND_PROGRAMS,
            unwind::STACK_END_COUNTS,
            offcpu::OFFCPU_TIME[0],
            offcpu::OFFCPU_TIME[1],
            offcpu::OFFCPU_BUFFER,
            offcpu::OFFCPU_FRAMES,
            offcpu::BLOCKED,
            offcpu::OFFCPU_START,
            offcpu::OFFCPU_THREAD_BLOCKS,
            offcpu::OFFCPU_UNWIND_PROGRAMS,
        ];
        for name in names {
            assert!(object.maps.contains_key(name), "map {name} is not in the eBPF object");
        }
        for name in program_names(&Probe::all()) {
            assert!(object.programs.contains_key(name), "program {name} is not in the eBPF object");
        }
    }
}

//! Loading the chosen probes' programs into the kernel, attaching them, and draining their maps.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, PerCpuArray},
    programs::BtfTracePoint,
};
use profiler_common::{
    counters::{COUNTERS, Counter, NUM_COUNTERS},
    offcpu::{OFFCPU_START, OFFCPU_THREAD_BLOCKS},
    process::{self, MAX_THREAD_SLOTS, ProcessName},
    runqlat,
};

use super::{
    Drain, Drained, Exits, Feature, Kernel, KernelFeatures, LeftOut, Probe, ProbeOptions, ProbeSelection, btf,
    btf::{KernelLayout, load_vmlinux},
    cgroup::cgroup_id,
    links::Links,
    oncpu, privileges,
    program::{self, Attach, Caller, Program},
    verifier,
};
use crate::recording::{Counters, Drops};

pub(super) static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profiler"));

/// The loaded eBPF object with the chosen probes attached. Dropping it detaches and unloads
/// everything (the kernel also does so if the process dies).
pub struct Probes {
    pub(crate) ebpf: Ebpf,
    probes: Vec<Probe>,
    /// The programs loaded, of every probe.
    programs: Vec<&'static Program>,
    left_out: Vec<LeftOut>,
    features: KernelFeatures,
    drains: Vec<Box<dyn Drain>>,
    /// `COUNTERS` at the last drain, summed over CPUs.
    counters: [u64; NUM_COUNTERS as usize],
    exits: Exits,
    links: Links,
    opened: Instant,
}

/// The programs that run `probe` on this kernel, or why it cannot run here.
fn fit(probe: Probe, features: &KernelFeatures, btf: &btf_rs::Btf) -> Result<Vec<&'static Program>, String> {
    if let Some(feature) = features.missing(probe.0.requires()) {
        return Err(format!("this kernel ({}) lacks {}", features.release, feature.describe()));
    }
    probe
        .0
        .programs()
        .iter()
        .map(|alternatives| program::choose(alternatives, btf))
        .collect::<Result<_>>()
        .map_err(|error| format!("{error:#} (kernel {})", features.release))
}

/// Decides which of the selected probes run here and with which programs.
fn plan(
    selection: &ProbeSelection,
    features: &KernelFeatures,
    btf: &btf_rs::Btf,
) -> Result<(Vec<Probe>, Vec<&'static Program>, Vec<LeftOut>)> {
    let (mut probes, mut programs, mut left_out) = (Vec::new(), Vec::new(), Vec::new());
    for &probe in &selection.probes {
        match fit(probe, features, btf) {
            Ok(chosen) => {
                probes.push(probe);
                // A program two probes need (the exec tracepoint of both stack probes) runs once.
                let new: Vec<_> =
                    chosen.into_iter().filter(|p| !programs.iter().any(|q: &&Program| q.name == p.name)).collect();
                programs.extend(new);
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
        let mut ebpf = load_object(&KernelLayout::from_btf(&kernel.btf)?, &features, options, &probes)?;
        set_pid_filter(&mut ebpf, &options.pids)?;
        let tracepoints: Vec<&str> = programs.iter().filter_map(|p| p.tracepoint()).map(|tp| tp.name).collect();
        let aya_btf = btf::attach_targets(&kernel.btf, &tracepoints)?;
        drop(kernel);
        let mut links = Links::default();
        for program in &programs {
            attach_program(&mut ebpf, program, &aya_btf, options, &mut links)?;
        }
        let opened = links.open();
        let drains = probes.iter().map(|probe| probe.0.drain(options)).collect();
        Ok(Self {
            ebpf,
            probes,
            programs,
            left_out,
            features,
            drains,
            counters: [0; NUM_COUNTERS as usize],
            exits: Exits::default(),
            links,
            opened,
        })
    }

    /// The probes running.
    pub fn probes(&self) -> &[Probe] {
        &self.probes
    }

    pub fn runs(&self, name: &str) -> bool {
        self.probes.iter().any(|p| p.name() == name)
    }

    /// The selected probes this kernel cannot run.
    pub fn left_out(&self) -> &[LeftOut] {
        &self.left_out
    }

    /// What the kernel offers.
    pub fn features(&self) -> &KernelFeatures {
        &self.features
    }

    /// Programs attached now.
    pub fn programs_attached(&self) -> usize {
        self.programs.len()
    }

    /// When the last program was attached: the recording's window opens then.
    pub fn opened(&self) -> Instant {
        self.opened
    }

    /// Detaches every program at `deadline`, from a thread of its own, however busy the caller is.
    pub fn detach_at(&self, deadline: Instant) {
        self.links.close_at(deadline);
    }

    /// Detaches every program (unless the deadline did already) and returns the window the
    /// programs were attached for; maps stay readable until `self` is dropped.
    pub fn detach(&mut self) -> Result<Duration> {
        let window = self.links.close();
        for program in std::mem::take(&mut self.programs) {
            let Some(loaded) = self.ebpf.program_mut(program.name) else { continue };
            match program.attach {
                Attach::Tracepoint(_) | Attach::TailCall { of: Caller::Tracepoint(_), .. } => {
                    <&mut BtfTracePoint>::try_from(loaded)?.unload()?;
                }
                Attach::CpuClock | Attach::TailCall { of: Caller::PerfEvent, .. } => {
                    <&mut aya::programs::PerfEvent>::try_from(loaded)?.unload()?;
                }
            }
        }
        Ok(window)
    }

    /// What the probes aggregated since the last drain, and the processes that exited meanwhile
    /// (their entries are gone from the kernel maps now).
    pub fn drain(&mut self) -> Result<(Drained, Vec<u32>)> {
        let mut drained = Drained::default();
        let now = self.counter_values()?;
        let growth: Vec<u64> = now.iter().zip(&self.counters).map(|(now, then)| now.saturating_sub(*then)).collect();
        self.counters = now;
        drained.recording.counters = counters(&growth);
        let mut kernel = Kernel { ebpf: &mut self.ebpf, exits: &mut self.exits };
        for drain in &mut self.drains {
            drain.drain(&mut kernel, &mut drained)?;
        }
        drained.recording.derive_counts();
        Ok((drained, self.exits.take_exited()))
    }

    /// The kernel's counters since the start, summed over CPUs (for progress, not for data), and
    /// how full the fullest bounded map is now (0 to 1).
    pub fn status(&self) -> Result<(Counters, f64)> {
        let values = self.counter_values()?;
        let fullest = self.drains.iter().map(|drain| drain.fullest(&values)).fold(0.0, f64::max);
        Ok((counters(&values), fullest))
    }

    /// The kernel's counters, summed over CPUs, indexed by `Counter`.
    fn counter_values(&self) -> Result<[u64; NUM_COUNTERS as usize]> {
        let array: PerCpuArray<_, u64> = PerCpuArray::try_from(map(&self.ebpf, COUNTERS)?)?;
        let mut values = [0u64; NUM_COUNTERS as usize];
        for (index, value) in values.iter_mut().enumerate() {
            *value = array.get(&(index as u32), 0)?.iter().sum();
        }
        Ok(values)
    }

    /// Records only `pids` from now on, or every process when it is empty; only with
    /// `ProbeOptions::changeable_pid_filter` (else the loaded programs ignore the change).
    pub fn refilter(&mut self, pids: &[u32]) -> Result<()> {
        set_pid_filter(&mut self.ebpf, pids)
    }

    /// Takes the process names the kernel noted since the last call, emptying the map.
    pub fn take_process_names(&mut self) -> Result<Vec<(u32, ProcessName)>> {
        let mut map: HashMap<_, u32, ProcessName> = HashMap::try_from(map_mut(&mut self.ebpf, process::PROCESSES)?)?;
        let entries: Vec<(u32, ProcessName)> = map.iter().filter_map(Result::ok).collect();
        for (tgid, _) in &entries {
            // The kernel re-adds a process only if it creates another entry for it; harmless.
            let _ = map.remove(tgid);
        }
        Ok(entries)
    }
}

/// Makes the kernel record only `pids`, or every process when it is empty; with a changeable
/// filter the set takes effect at once, else it is the set the programs were loaded with.
fn set_pid_filter(ebpf: &mut Ebpf, pids: &[u32]) -> Result<()> {
    // Off while the set changes: a moment of every process beats a moment of none.
    switch_pid_filter(ebpf, false)?;
    let mut map: HashMap<_, u32, u8> = HashMap::try_from(map_mut(ebpf, process::FILTER_PIDS)?)?;
    let listed: Vec<u32> = map.keys().filter_map(Result::ok).collect();
    for pid in listed.iter().filter(|pid| !pids.contains(pid)) {
        let _ = map.remove(pid);
    }
    for &pid in pids {
        map.insert(pid, 1, 0).with_context(|| format!("cannot add pid {pid} to the filter"))?;
    }
    switch_pid_filter(ebpf, !pids.is_empty())
}

fn switch_pid_filter(ebpf: &mut Ebpf, on: bool) -> Result<()> {
    let mut array: Array<_, u8> = Array::try_from(map_mut(ebpf, process::PID_FILTER_ON)?)?;
    array.set(0, u8::from(on), 0).context("cannot switch the pid filter")
}

/// Loads the object (its maps, not yet its programs) with the kernel's struct offsets and the
/// filters as read-only globals, and the maps of probes that do not run shrunk to one entry.
fn load_object(
    layout: &KernelLayout,
    features: &KernelFeatures,
    options: &ProbeOptions,
    running: &[Probe],
) -> Result<Ebpf> {
    let cgroup_id = options.cgroup.as_deref().map(cgroup_id).transpose()?.unwrap_or(0);
    let filter_by_pid = match (options.changeable_pid_filter, options.pids.is_empty()) {
        (true, _) => 2u8,
        (false, empty) => u8::from(!empty),
    };
    let own_tgid = if options.include_self { 0 } else { std::process::id() };
    let per_thread = u8::from(options.per_thread);
    let pid_max = pid_max()?;
    // No target BTF: the programs have no CO-RE relocations (the layout's offsets stand in for
    // them), and aya's parse of the kernel's BTF would be most of the recorder's peak memory. aya
    // skips CO-RE silently without one: a program that uses CO-RE needs
    // `loader.btf(Some(&aya::Btf::from_sys_fs()?))` here.
    let mut loader = EbpfLoader::new();
    loader.btf(None);
    let slots_shared = u8::from(pid_max > MAX_THREAD_SLOTS);
    loader.override_global("THREAD_SLOTS_SHARED", &slots_shared, true);
    let runs = |name: &str| running.iter().any(|p| p.name() == name);
    let per_thread_arrays =
        [("sched", runqlat::RUNQ_START), ("offcpu", OFFCPU_START), ("offcpu", OFFCPU_THREAD_BLOCKS)];
    for (probe, array) in per_thread_arrays {
        loader.map_max_entries(array, if runs(probe) { pid_max.min(MAX_THREAD_SLOTS) } else { 1 });
    }
    // A map two probes share keeps its size if either runs.
    let used: Vec<&str> = running.iter().flat_map(|p| p.0.own_maps().iter().copied()).collect();
    for probe in super::REGISTRY.iter().filter(|spec| !runs(spec.name())) {
        for map in probe.own_maps().iter().filter(|map| !used.contains(map)) {
            loader.map_max_entries(map, 1);
        }
    }
    let offsets = layout.globals();
    for (name, value) in &offsets {
        loader.override_global(name, value, true);
    }
    loader.override_global("FILTER_BY_PID", &filter_by_pid, true);
    loader.override_global("FILTER_CGROUP_ID", &cgroup_id, true);
    if cgroup_id == 0 {
        loader.map_max_entries("CGROUP_SELECTED", 1);
    }
    loader.override_global("OWN_TGID", &own_tgid, true);
    loader.override_global("SAMPLE_PER_THREAD", &per_thread, true);
    let latency_per_process = u8::from(options.syscall_latency_per_process);
    loader.override_global("LATENCY_PER_PROCESS", &latency_per_process, true);
    let has_task_pt_regs = u8::from(features.has(Feature::TaskPtRegs));
    loader.override_global("HAS_TASK_PT_REGS", &has_task_pt_regs, true);
    loader.override_global("THREAD_SIZE", &layout.thread_size, true);
    loader.override_global("OFFCPU_MIN_NS", &options.offcpu_min_ns, true);
    let (offcpu_one_in, syscall_one_in) = (options.offcpu_one_in(), options.syscall_one_in());
    loader.override_global("OFFCPU_SAMPLE_ONE_IN", &offcpu_one_in, true);
    loader.override_global("SYSCALL_SAMPLE_ONE_IN", &syscall_one_in, true);
    loader.load(EBPF_OBJECT).map_err(|error| match error {
        aya::EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. })
            if verifier::is_permission_error(&io_error) =>
        {
            verifier::permission_advice(&io_error)
        }
        other => anyhow::Error::new(other).context("cannot load the eBPF object"),
    })
}

/// Loads one program and attaches it where its spec says.
fn attach_program(
    ebpf: &mut Ebpf,
    program: &Program,
    btf: &aya::Btf,
    options: &ProbeOptions,
    links: &mut Links,
) -> Result<()> {
    let keep_log = options.keep_verifier_log;
    match &program.attach {
        Attach::Tracepoint(tp) => {
            let loaded: &mut BtfTracePoint = ebpf
                .program_mut(program.name)
                .ok_or_else(|| anyhow!("program {} missing from the eBPF object", program.name))?
                .try_into()?;
            loaded.load(tp.name, btf).map_err(|e| verifier::explain(program.name, e, keep_log))?;
            let link = loaded
                .attach()
                .map_err(|e| verifier::explain(program.name, e, keep_log))
                .with_context(|| format!("cannot attach program {} to {}:{}", program.name, tp.category, tp.name))?;
            links.hold(loaded.take_link(link)?);
            Ok(())
        }
        Attach::CpuClock => oncpu::attach_sampler(ebpf, program.name, options, links),
        Attach::TailCall { array, index, of } => {
            let loaded = ebpf
                .program_mut(program.name)
                .ok_or_else(|| anyhow!("program {} missing from the eBPF object", program.name))?;
            let fd = match of {
                Caller::PerfEvent => {
                    let loaded: &mut aya::programs::PerfEvent = loaded.try_into()?;
                    loaded.load().map_err(|e| verifier::explain(program.name, e, keep_log))?;
                    loaded.fd()?.try_clone()?
                }
                Caller::Tracepoint(tp) => {
                    let loaded: &mut BtfTracePoint = loaded.try_into()?;
                    loaded.load(tp.name, btf).map_err(|e| verifier::explain(program.name, e, keep_log))?;
                    loaded.fd()?.try_clone()?
                }
            };
            let mut programs = aya::maps::ProgramArray::try_from(map_mut(ebpf, array)?)?;
            programs.set(*index, &fd, 0).with_context(|| format!("cannot put program {} in {array}", program.name))?;
            Ok(())
        }
    }
}

/// Event and drop counters from `COUNTERS` values.
fn counters(values: &[u64]) -> Counters {
    let get = |counter: Counter| values[counter as usize];
    Counters {
        sched_switches: get(Counter::SchedSwitches),
        involuntary_switches: get(Counter::InvoluntarySwitches),
        wakeups: get(Counter::Wakeups),
        // Derived from the histograms when they are drained.
        runq_latencies: 0,
        syscalls: 0,
        cpu_samples: get(Counter::CpuSamples),
        idle_samples: get(Counter::IdleSamples),
        offcpu_blocks: get(Counter::OffCpuBlocks),
        offcpu_sampled_out: get(Counter::OffCpuSampledOut),
        // From the time maps, when they drain.
        offcpu_us_squared: 0,
        drops: Drops {
            runq_process: get(Counter::RunqProcessDrops),
            syscall_process: get(Counter::SyscallProcessDrops),
            syscall_errno: get(Counter::SyscallErrnoDrops),
            start: get(Counter::StartDrops),
            process_names: get(Counter::ProcessDrops),
            // Stacks are kept by the hash of their frames now: they do not collide.
            stack_collisions: 0,
            stack_errors: get(Counter::StackErrors),
            samples: get(Counter::SampleDrops),
            new_processes: get(Counter::NewProcessDrops),
            syscall_latency_process: get(Counter::SyscallBucketDrops),
            offcpu_times: get(Counter::OffCpuDrops),
            offcpu_blocked: get(Counter::OffCpuBlockedDrops),
        },
        // From the stack probe's own counters, when it drains.
        stack_ends: Default::default(),
    }
}

pub(crate) fn map<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a aya::maps::Map> {
    ebpf.map(name).ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
}

pub(crate) fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name).ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
}

/// The kernel's bound on thread ids.
fn pid_max() -> Result<u32> {
    let path = "/proc/sys/kernel/pid_max";
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    text.trim().parse().with_context(|| format!("{path} holds {:?}, not a number", text.trim()))
}

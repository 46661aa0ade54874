//! On-CPU sampling probe: a perf_event program on every online CPU, the exec tracepoint that
//! re-announces a process after exec, and the drain of the stack maps.

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, RingBuf, StackTraceMap},
    programs::{
        PerfEvent,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
    util::online_cpus,
};
use profiler_common::oncpu::StackKey;

use super::{
    Feature, ProbeOptions, Probes,
    program::{Alternatives, Attach, Program, TASK, tracepoint},
    verifier,
};
use crate::symbolize::RawStack;

pub const REQUIRES: &[Feature] = &[Feature::BtfTracepoints, Feature::RingBuffer, Feature::StackTraces];

pub const PROGRAMS: &[Alternatives] = &[
    &[Program { name: "oncpu_sample", attach: Attach::CpuClock }],
    &[Program { name: "oncpu_sched_process_exec", attach: tracepoint("sched", "sched_process_exec", &[TASK]) }],
];

/// Attaches the sampler to the software CPU clock of every online CPU. The software clock exists
/// everywhere, including VMs without a hardware PMU.
pub fn attach_sampler(ebpf: &mut Ebpf, name: &str, options: &ProbeOptions) -> Result<()> {
    let keep_log = options.keep_verifier_log;
    let program: &mut PerfEvent =
        ebpf.program_mut(name).with_context(|| format!("program {name} missing from the eBPF object"))?.try_into()?;
    program.load().map_err(|e| verifier::explain(name, e, keep_log))?;
    let frequency_hz = u64::from(options.frequency_hz);
    let cpus = online_cpus().map_err(|(_, error)| error).context("cannot list online CPUs")?;
    for cpu in cpus {
        program
            .attach(
                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Frequency(frequency_hz),
                false,
            )
            .map_err(|e| verifier::explain(name, e, keep_log))
            .with_context(|| format!("cannot open the CPU clock event on CPU {cpu}"))?;
    }
    Ok(())
}

/// The ring buffer on which the kernel announces processes as they are first sampled.
pub fn take_new_processes(probes: &mut Probes) -> Result<RingBuf<MapData>> {
    let map = probes.ebpf.take_map("NEW_PROCESSES").context("map NEW_PROCESSES missing")?;
    Ok(RingBuf::try_from(map)?)
}

/// Every sampled (process, thread, kernel stack, user stack) with its count.
pub fn drain(probes: &Probes) -> Result<Vec<RawStack>> {
    let samples: HashMap<_, StackKey, u64> = HashMap::try_from(probes.map("STACK_SAMPLES")?)?;
    let stacks = StackTraceMap::try_from(probes.map("STACKS")?)?;
    let frames = |id: i32| -> Vec<u64> {
        if id < 0 {
            return Vec::new();
        }
        stacks.get(&(id as u32), 0).map(|trace| trace.frames().iter().map(|f| f.ip).collect()).unwrap_or_default()
    };
    let mut raw = Vec::new();
    for entry in samples.iter() {
        let (key, count) = entry?;
        raw.push(RawStack {
            tgid: key.tgid,
            tid: key.tid,
            kernel: frames(key.kernel_stack_id),
            user: frames(key.user_stack_id),
            count,
        });
    }
    Ok(raw)
}

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

use super::{Probes, Tracepoint};
use crate::symbolize::RawStack;

/// The perf_event program.
pub const SAMPLER: &str = "on_cpu_sample";

pub const TRACEPOINTS: &[Tracepoint] = &[Tracepoint { category: "sched", name: "sched_process_exec", args: 3 }];

/// Attaches the sampler to the software CPU clock of every online CPU. The software clock exists
/// everywhere, including VMs without a hardware PMU.
pub fn attach_sampler(ebpf: &mut Ebpf, frequency_hz: u64) -> Result<()> {
    let program: &mut PerfEvent =
        ebpf.program_mut(SAMPLER).context("program on_cpu_sample missing from the eBPF object")?.try_into()?;
    program.load().context("cannot load the CPU sampling program")?;
    let cpus = online_cpus().map_err(|(_, error)| error).context("cannot list online CPUs")?;
    for cpu in cpus {
        program
            .attach(
                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Frequency(frequency_hz),
                false,
            )
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

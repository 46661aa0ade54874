//! Format version 1: the recording as postcard, which carries no field tags, so its layout is
//! frozen here, type by type as version 1 wrote it, and converted to today's model on reading.
//! Nothing writes it any more.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Deserialize)]
pub struct Recording {
    meta: Metadata,
    counters: Counters,
    runq: Option<RunqLatency>,
    syscalls: Option<Syscalls>,
    stacks: Option<Stacks>,
    processes: BTreeMap<u32, Process>,
}

#[derive(Deserialize)]
struct Metadata {
    hostname: String,
    kernel_release: String,
    cpus: u32,
    start_unix_ns: u64,
    duration_ns: u64,
    profiler_version: String,
    options: RecordOptions,
}

#[derive(Deserialize)]
struct RecordOptions {
    probes: Vec<String>,
    pids: Vec<u32>,
    cgroup: Option<String>,
    duration_limit_ns: Option<u64>,
    frequency_hz: u32,
    per_thread: bool,
}

#[derive(Deserialize)]
struct Counters {
    sched_switches: u64,
    involuntary_switches: u64,
    wakeups: u64,
    runq_latencies: u64,
    syscalls: u64,
    cpu_samples: u64,
    idle_samples: u64,
    drops: Drops,
}

#[derive(Deserialize)]
struct Drops {
    runq_process: u64,
    syscall_process: u64,
    syscall_errno: u64,
    start: u64,
    process_names: u64,
    stack_collisions: u64,
    stack_errors: u64,
    samples: u64,
    new_processes: u64,
}

#[derive(Deserialize)]
struct RunqLatency {
    system: Histogram,
    per_cpu: Vec<Histogram>,
    per_process: BTreeMap<u32, Histogram>,
}

#[derive(Deserialize)]
struct Syscalls {
    latency: BTreeMap<u32, Histogram>,
    per_process: Vec<ProcessSyscall>,
}

#[derive(Deserialize)]
struct ProcessSyscall {
    tgid: u32,
    nr: u32,
    count: u64,
    errors: u64,
    total_ns: u64,
    errnos: Vec<(u32, u64)>,
}

#[derive(Deserialize)]
struct Stacks {
    frames: Vec<Frame>,
    modules: Vec<Module>,
    stacks: Vec<Stack>,
}

#[derive(Deserialize)]
struct Frame {
    function: String,
    module: Option<u32>,
    kernel: bool,
    inlined: bool,
}

#[derive(Deserialize)]
struct Module {
    path: String,
    build_id: Option<String>,
}

#[derive(Deserialize)]
struct Stack {
    tgid: u32,
    tid: u32,
    frames: Vec<u32>,
    count: u64,
}

#[derive(Deserialize)]
struct Process {
    comm: String,
    exe: Option<String>,
    cmdline: Option<String>,
}

#[derive(Deserialize)]
struct Histogram {
    buckets: Vec<(u16, u64)>,
}

use super as now;

impl From<Recording> for now::Recording {
    fn from(old: Recording) -> Self {
        let Recording { meta, counters, runq, syscalls, stacks, processes } = old;
        now::Recording {
            meta: meta.into(),
            counters: counters.into(),
            runq: runq.map(Into::into),
            syscalls: syscalls.map(Into::into),
            stacks: stacks.map(Into::into),
            processes: processes.into_iter().map(|(tgid, p)| (tgid, p.into())).collect(),
        }
    }
}

impl From<Metadata> for now::Metadata {
    fn from(old: Metadata) -> Self {
        let Metadata { hostname, kernel_release, cpus, start_unix_ns, duration_ns, profiler_version, options } = old;
        let RecordOptions { probes, pids, cgroup, duration_limit_ns, frequency_hz, per_thread } = options;
        now::Metadata {
            hostname,
            kernel_release,
            cpus,
            start_unix_ns,
            duration_ns,
            profiler_version,
            options: now::RecordOptions { probes, pids, cgroup, duration_limit_ns, frequency_hz, per_thread },
            ..Default::default()
        }
    }
}

impl From<Counters> for now::Counters {
    fn from(old: Counters) -> Self {
        let Counters {
            sched_switches,
            involuntary_switches,
            wakeups,
            runq_latencies,
            syscalls,
            cpu_samples,
            idle_samples,
            drops,
        } = old;
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
        } = drops;
        now::Counters {
            sched_switches,
            involuntary_switches,
            wakeups,
            runq_latencies,
            syscalls,
            cpu_samples,
            idle_samples,
            drops: now::Drops {
                runq_process,
                syscall_process,
                syscall_errno,
                start,
                process_names,
                stack_collisions,
                stack_errors,
                samples,
                new_processes,
            },
        }
    }
}

impl From<Histogram> for now::LatencyHistogram {
    fn from(old: Histogram) -> Self {
        now::LatencyHistogram { buckets: old.buckets }
    }
}

impl From<RunqLatency> for now::RunqLatency {
    fn from(old: RunqLatency) -> Self {
        now::RunqLatency {
            system: old.system.into(),
            per_cpu: old.per_cpu.into_iter().map(Into::into).collect(),
            per_process: old.per_process.into_iter().map(|(tgid, h)| (tgid, h.into())).collect(),
        }
    }
}

impl From<Syscalls> for now::Syscalls {
    fn from(old: Syscalls) -> Self {
        now::Syscalls {
            latency: old.latency.into_iter().map(|(nr, h)| (nr, h.into())).collect(),
            per_process: old
                .per_process
                .into_iter()
                .map(|ProcessSyscall { tgid, nr, count, errors, total_ns, errnos }| now::ProcessSyscall {
                    tgid,
                    nr,
                    count,
                    errors,
                    total_ns,
                    errnos,
                })
                .collect(),
        }
    }
}

impl From<Stacks> for now::Stacks {
    fn from(old: Stacks) -> Self {
        now::Stacks {
            frames: old
                .frames
                .into_iter()
                .map(|Frame { function, module, kernel, inlined }| now::Frame { function, module, kernel, inlined })
                .collect(),
            modules: old.modules.into_iter().map(|Module { path, build_id }| now::Module { path, build_id }).collect(),
            stacks: old
                .stacks
                .into_iter()
                .map(|Stack { tgid, tid, frames, count }| now::Stack { tgid, tid, frames, count })
                .collect(),
        }
    }
}

impl From<Process> for now::Process {
    fn from(old: Process) -> Self {
        let Process { comm, exe, cmdline } = old;
        now::Process { comm, exe, cmdline }
    }
}

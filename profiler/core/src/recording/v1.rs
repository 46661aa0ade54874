//! Format version 1: the recording as postcard, which carries no field tags, so its layout is
//! frozen here, type by type as version 1 wrote it. Nothing writes it any more.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Deserialize, Serialize)]
pub struct Recording {
    meta: Metadata,
    counters: Counters,
    runq: Option<RunqLatency>,
    syscalls: Option<Syscalls>,
    stacks: Option<Stacks>,
    processes: BTreeMap<u32, Process>,
}

#[derive(Deserialize, Serialize)]
struct Metadata {
    hostname: String,
    kernel_release: String,
    cpus: u32,
    start_unix_ns: u64,
    duration_ns: u64,
    profiler_version: String,
    options: RecordOptions,
}

#[derive(Deserialize, Serialize)]
struct RecordOptions {
    probes: Vec<String>,
    pids: Vec<u32>,
    cgroup: Option<String>,
    duration_limit_ns: Option<u64>,
    frequency_hz: u32,
    per_thread: bool,
}

#[derive(Deserialize, Serialize)]
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

#[derive(Deserialize, Serialize)]
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

#[derive(Deserialize, Serialize)]
struct RunqLatency {
    system: Histogram,
    per_cpu: Vec<Histogram>,
    per_process: BTreeMap<u32, Histogram>,
}

#[derive(Deserialize, Serialize)]
struct Syscalls {
    latency: BTreeMap<u32, Histogram>,
    per_process: Vec<ProcessSyscall>,
}

#[derive(Deserialize, Serialize)]
struct ProcessSyscall {
    tgid: u32,
    nr: u32,
    count: u64,
    errors: u64,
    total_ns: u64,
    errnos: Vec<(u32, u64)>,
}

#[derive(Deserialize, Serialize)]
struct Stacks {
    frames: Vec<Frame>,
    modules: Vec<Module>,
    stacks: Vec<Stack>,
}

#[derive(Deserialize, Serialize)]
struct Frame {
    function: String,
    module: Option<u32>,
    kernel: bool,
    inlined: bool,
}

#[derive(Deserialize, Serialize)]
struct Module {
    path: String,
    build_id: Option<String>,
}

#[derive(Deserialize, Serialize)]
struct Stack {
    tgid: u32,
    tid: u32,
    frames: Vec<u32>,
    count: u64,
}

#[derive(Deserialize, Serialize)]
struct Process {
    comm: String,
    exe: Option<String>,
    cmdline: Option<String>,
}

#[derive(Deserialize, Serialize)]
struct Histogram {
    buckets: Vec<(u16, u64)>,
}

/// Today's recording from a version-1 one: re-encoded with field names, a version-1 recording
/// reads as today's format does, each field that version 1 lacks taking its default. A field that
/// is ever renamed needs its own line here.
pub fn upgrade(old: &Recording) -> Result<super::Recording, rmp_serde::decode::Error> {
    let named = rmp_serde::to_vec_named(old).expect("encoding into memory cannot fail");
    rmp_serde::from_slice(&named)
}

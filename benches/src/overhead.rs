//! Slowdown of a workload under each tracer: the workload alone and traced, interleaved
//! (A B A B ...), the ratio of each pair, and the median and range of those ratios.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::summarize;

/// A tracer: how to start it, or None for the untraced run.
struct Tracer {
    name: &'static str,
    command: Vec<String>,
}

struct Workload {
    name: &'static str,
    command: Vec<String>,
    tracers: Vec<Tracer>,
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

fn tracer(name: &'static str, command: &str) -> Tracer {
    Tracer { name, command: words(command) }
}

fn bpftrace(name: &'static str, program: &str) -> Tracer {
    Tracer { name, command: vec!["bpftrace".into(), "-e".into(), program.into()] }
}

fn workloads(bin: &Path) -> Vec<Workload> {
    let profiler = bin.join("profiler").display().to_string();
    let workload = bin.join("workload").display().to_string();
    let ours = |probes: &str| format!("{profiler} record -o /tmp/bench-profiler.rec --probes {probes}");
    let runqlat_bt = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/runqlat.bt");
    vec![
        Workload {
            name: "context switches: `taskset -c 1 perf bench sched pipe -l 200000`",
            command: words("taskset -c 1 perf bench sched pipe -l 200000"),
            tracers: vec![
                tracer("profiler --probes sched (tp_btf, 16x finer buckets, per process and CPU)", &ours("sched")),
                tracer("libbpf-tools runqlat", "runqlat"),
                tracer("bpftrace runqlat.bt", &format!("bpftrace {runqlat_bt}")),
                bpftrace(
                    "floor: empty bpftrace programs on the same tracepoints",
                    "tracepoint:sched:sched_switch,tracepoint:sched:sched_wakeup,tracepoint:sched:sched_wakeup_new {}",
                ),
            ],
        },
        Workload {
            name: "syscalls: `taskset -c 1 perf bench syscall basic -l 5000000`",
            command: words("taskset -c 1 perf bench syscall basic -l 5000000"),
            tracers: vec![
                tracer("profiler --probes syscalls (counts, errnos, latency histograms)", &ours("syscalls")),
                tracer("libbpf-tools syscount (counts)", "syscount"),
                tracer("libbpf-tools syscount -L (counts, mean latency)", "syscount -L"),
                bpftrace("bpftrace syscount", "tracepoint:raw_syscalls:sys_enter { @[args->id] = count(); }"),
                bpftrace(
                    "floor: empty bpftrace programs on sys_enter and sys_exit",
                    "tracepoint:raw_syscalls:sys_enter,tracepoint:raw_syscalls:sys_exit {}",
                ),
            ],
        },
        Workload {
            name: "CPU-bound: `workload burn --threads 2 --millions 1500`",
            command: vec![
                workload.clone(),
                "--no-wait".into(),
                "burn".into(),
                "--threads".into(),
                "2".into(),
                "--millions".into(),
                "1500".into(),
            ],
            tracers: vec![
                tracer(
                    "profiler --probes cpu -F 99 (kernel+user stacks, counted in kernel)",
                    &format!("{} -F 99", ours("cpu")),
                ),
                tracer("perf record -F 99 -g -a", "perf record -F 99 -g -a -o /tmp/bench-perf.data"),
                bpftrace("bpftrace profile:hz:99 stacks", "profile:hz:99 { @[kstack, ustack, comm] = count(); }"),
                bpftrace("floor: empty bpftrace profile:hz:99", "profile:hz:99 {}"),
            ],
        },
        Workload {
            name: "all probes: `taskset -c 1 perf bench sched pipe -l 200000`",
            command: words("taskset -c 1 perf bench sched pipe -l 200000"),
            tracers: vec![tracer(
                "profiler record (sched, syscalls, cpu)",
                &format!("{profiler} record -o /tmp/bench-profiler.rec"),
            )],
        },
    ]
}

fn time_workload(command: &[String]) -> Result<f64> {
    let started = Instant::now();
    let status = Command::new(&command[0])
        .args(&command[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {}", command[0]))?;
    if !status.success() {
        bail!("{} failed: {status}", command.join(" "));
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Starts a tracer and waits until it says it is attached (its first output line), then a little
/// more for the programs to be live everywhere.
fn start(tracer: &Tracer) -> Result<Child> {
    let mut child = Command::new(&tracer.command[0])
        .args(&tracer.command[1..])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", tracer.command[0]))?;
    let (tx, rx) = mpsc::channel();
    for stream in [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    // Tools that write to a pipe may buffer their banner: wait for it at most a few seconds.
    let _ = rx.recv_timeout(Duration::from_secs(4));
    std::thread::sleep(Duration::from_millis(500));
    if let Some(status) = child.try_wait()? {
        bail!("{} exited early: {status}", tracer.name);
    }
    Ok(child)
}

fn stop(mut child: Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub fn run(bin: &Path, pairs: usize) -> Result<String> {
    let mut out = String::from(
        "## Overhead: slowdown of the workload under each tracer\n\nEach row: the workload alone and under the tracer, interleaved, \
         as pairs; the ratio traced/alone of each pair; median and range of the ratios. 1.00 is no slowdown.\n\n",
    );
    for workload in workloads(bin) {
        out.push_str(&format!(
            "### {}\n\n| tracer | median slowdown | min–max | pairs |\n|---|---|---|---|\n",
            workload.name
        ));
        time_workload(&workload.command)?; // warm caches
        for tracer in &workload.tracers {
            let mut ratios = Vec::new();
            for _ in 0..pairs {
                let alone = time_workload(&workload.command)?;
                let child = match start(tracer) {
                    Ok(child) => child,
                    Err(error) => {
                        eprintln!("skipping {}: {error:#}", tracer.name);
                        break;
                    }
                };
                let traced = time_workload(&workload.command);
                stop(child);
                ratios.push(traced? / alone);
            }
            if ratios.is_empty() {
                out.push_str(&format!("| {} | not run | | 0 |\n", tracer.name));
                continue;
            }
            let n = ratios.len();
            let (median, min, max) = summarize(&mut ratios);
            eprintln!("{}: {median:.3}", tracer.name);
            out.push_str(&format!("| {} | {median:.2}× | {min:.2}–{max:.2} | {n} |\n", tracer.name));
        }
        out.push('\n');
    }
    Ok(out)
}

//! Slowdown of a workload under each tracer: the workload alone and traced, interleaved
//! (A B A B ...), the ratio of each pair, and the median and range of those ratios.

use std::{
    collections::VecDeque,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::summarize;

/// A tracer: how to start it, or None for the untraced run.
struct Tracer {
    name: &'static str,
    command: Vec<String>,
    /// kernel.pid_max while the tracer starts, restored once it has attached.
    pid_max: Option<u32>,
}

impl Tracer {
    /// The same tracer, started while kernel.pid_max is `value` (systemd sets 4194304, which puts
    /// the profiler's per-thread start times in hash maps instead of arrays).
    fn with_pid_max(self, value: u32) -> Tracer {
        Tracer { pid_max: Some(value), ..self }
    }
}

/// Sets kernel.pid_max until dropped.
struct PidMax(String);

impl PidMax {
    const PATH: &str = "/proc/sys/kernel/pid_max";

    fn set(value: u32) -> Result<PidMax> {
        let old = std::fs::read_to_string(Self::PATH).with_context(|| format!("cannot read {}", Self::PATH))?;
        std::fs::write(Self::PATH, value.to_string()).with_context(|| format!("cannot write {}", Self::PATH))?;
        Ok(PidMax(old.trim().to_string()))
    }
}

impl Drop for PidMax {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
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
    Tracer { name, command: words(command), pid_max: None }
}

fn bpftrace(name: &'static str, program: &str) -> Tracer {
    Tracer { name, command: vec!["bpftrace".into(), "-e".into(), program.into()], pid_max: None }
}

/// Minimal programs on BTF tracepoints, the profiler's own kind of hook (see floor.rs).
fn floor(name: &'static str, body: &str, tracepoints: &[&str]) -> Tracer {
    let runner = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "benches".into());
    let mut command = vec![runner, "floor".to_string(), "--body".into(), body.into()];
    command.extend(tracepoints.iter().map(|tp| tp.to_string()));
    Tracer { name, command, pid_max: None }
}

/// kernel.pid_max as systemd sets it.
const SYSTEMD_PID_MAX: u32 = 4_194_304;
/// kernel.pid_max as the kernel sets it on a machine of few CPUs.
const KERNEL_PID_MAX: u32 = 32_768;

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
                tracer(
                    "profiler --probes sched, kernel.pid_max 4194304 (threads share tagged start-time slots)",
                    &ours("sched"),
                )
                .with_pid_max(SYSTEMD_PID_MAX),
                tracer("libbpf-tools runqlat", "runqlat"),
                tracer(
                    "bcc runqlat-bpfcc (its task_struct offsets come from 6.1 headers: output wrong here, cost comparable)",
                    "runqlat-bpfcc",
                ),
                tracer("bpftrace runqlat.bt", &format!("bpftrace {runqlat_bt}")),
                bpftrace(
                    "floor: empty bpftrace programs on the same tracepoints (perf tracepoints)",
                    "tracepoint:sched:sched_switch,tracepoint:sched:sched_wakeup,tracepoint:sched:sched_wakeup_new {}",
                ),
                floor(
                    "floor: empty programs on the same tracepoints as BTF tracepoints (the profiler's hooks)",
                    "empty",
                    &["sched_switch", "sched_wakeup", "sched_wakeup_new"],
                ),
            ],
        },
        Workload {
            name: "syscalls: `taskset -c 1 perf bench syscall basic -l 5000000`",
            command: words("taskset -c 1 perf bench syscall basic -l 5000000"),
            tracers: vec![
                tracer(
                    "profiler --probes syscall-counts (counts, errnos), kernel.pid_max 32768",
                    &ours("syscall-counts"),
                )
                .with_pid_max(KERNEL_PID_MAX),
                tracer("profiler --probes syscall-counts, kernel.pid_max 4194304", &ours("syscall-counts"))
                    .with_pid_max(SYSTEMD_PID_MAX),
                tracer(
                    "profiler --probes syscalls (counts, errnos, latency histograms), kernel.pid_max 32768",
                    &ours("syscalls"),
                )
                .with_pid_max(KERNEL_PID_MAX),
                tracer(
                    "profiler --probes syscalls, kernel.pid_max 4194304 (threads share tagged start-time slots)",
                    &ours("syscalls"),
                )
                .with_pid_max(SYSTEMD_PID_MAX),
                tracer(
                    "profiler --probes syscalls --syscall-latency-sample 8 (every call counted, 1 in 8 timed), kernel.pid_max 32768",
                    &format!("{} --syscall-latency-sample 8", ours("syscalls")),
                )
                .with_pid_max(KERNEL_PID_MAX),
                tracer("libbpf-tools syscount (counts)", "syscount"),
                tracer("libbpf-tools syscount -L (counts, mean latency)", "syscount -L"),
                tracer("bcc syscount-bpfcc (counts)", "syscount-bpfcc"),
                bpftrace("bpftrace syscount", "tracepoint:raw_syscalls:sys_enter { @[args->id] = count(); }"),
                bpftrace(
                    "floor: empty bpftrace programs on sys_enter and sys_exit (perf tracepoints)",
                    "tracepoint:raw_syscalls:sys_enter,tracepoint:raw_syscalls:sys_exit {}",
                ),
                floor(
                    "floor: empty programs on sys_enter and sys_exit as BTF tracepoints (the profiler's hooks)",
                    "empty",
                    &["sys_enter", "sys_exit"],
                ),
                floor(
                    "floor with the clock: the same, each reading the clock once (what timing a syscall costs)",
                    "clock",
                    &["sys_enter", "sys_exit"],
                ),
                floor(
                    "floor of per-thread timing: the same, plus the thread id and its start time stored and read back (timing each call, keeping nothing)",
                    "thread-latency",
                    &["sys_enter", "sys_exit"],
                ),
            ],
        },
        Workload {
            name: "CPU-bound: `workload burn --threads 2 --millions 1500`",
            command: vec![
                workload,
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
                tracer("bcc profile-bpfcc -F 99 (kernel+user stacks)", "profile-bpfcc -F 99 -f"),
                bpftrace("bpftrace profile:hz:99 stacks", "profile:hz:99 { @[kstack, ustack, comm] = count(); }"),
                bpftrace("floor: empty bpftrace profile:hz:99", "profile:hz:99 {}"),
            ],
        },
        Workload {
            name: OFF_CPU,
            command: words("taskset -c 1 perf bench sched pipe -l 200000"),
            tracers: vec![
                tracer(
                    "profiler --probes offcpu --offcpu-sample 1 (stacks of every blocking switch-out)",
                    &format!("{} --offcpu-sample 1", ours("offcpu")),
                ),
                tracer("profiler --probes offcpu (default: stacks of 1 in 8, at random)", &ours("offcpu")),
                tracer(
                    "profiler --probes offcpu --offcpu-sample 32 (stacks of 1 in 32, at random)",
                    &format!("{} --offcpu-sample 32", ours("offcpu")),
                ),
                tracer("libbpf-tools offcputime (stacks of every switch-out)", "offcputime"),
                tracer("libbpf-tools runqlat (the target's reference)", "runqlat"),
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

/// Whether a process holds an attachment: a BPF link or a perf event (how every tracer here
/// attaches; bcc compiles for seconds first, and some tools print their banner before attaching).
fn holds_attachment(pid: u32) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok).filter_map(|fd| std::fs::read_link(fd.path()).ok()).any(|target| {
        let target = target.to_string_lossy();
        target.contains("bpf_link") || target.contains("perf_event")
    })
}

/// Starts a tracer and waits until it has attached, then a little more for all its programs to be
/// live everywhere.
fn start(tracer: &Tracer) -> Result<Child> {
    let _pid_max = tracer.pid_max.map(PidMax::set).transpose()?;
    let mut child = Command::new(&tracer.command[0])
        .args(&tracer.command[1..])
        .env("PYTHONUNBUFFERED", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", tracer.command[0]))?;
    // Keep the pipes drained, so that a chatty tracer never blocks on a full pipe, and keep the
    // last lines to say why a tracer that fails to start failed.
    let last_lines = Arc::new(Mutex::new(VecDeque::new()));
    for stream in [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let last_lines = Arc::clone(&last_lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let mut last = last_lines.lock().unwrap_or_else(|e| e.into_inner());
                if last.len() == 3 {
                    last.pop_front();
                }
                last.push_back(line);
            }
        });
    }
    let exited_early = |status| {
        let last = last_lines.lock().unwrap_or_else(|e| e.into_inner());
        anyhow::anyhow!("{} exited early ({status}): {}", tracer.name, Vec::from(last.clone()).join(" / "))
    };
    // The first attachment: a tool attaches all its programs within milliseconds of it.
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    while !holds_attachment(child.id()) {
        if let Some(status) = child.try_wait()? {
            // Let the reader threads take the last words.
            std::thread::sleep(Duration::from_millis(100));
            return Err(exited_early(status));
        }
        if Instant::now() > deadline {
            stop(child);
            bail!("{} did not attach within {ATTACH_TIMEOUT:?}", tracer.name);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    if let Some(status) = child.try_wait()? {
        return Err(exited_early(status));
    }
    Ok(child)
}

/// bcc compiles its programs at start: seconds, more on a busy machine.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);

fn stop(mut child: Child) {
    // SAFETY: kill has no memory effects; the child is not reaped until `try_wait` below.
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

/// tracefs, mounted for the peers while they run if it was not (libbpf-tools and bpftrace attach
/// perf tracepoints by the ids tracefs gives; the profiler needs none).
struct TraceFs {
    mounted_here: bool,
}

impl TraceFs {
    const PATH: &str = "/sys/kernel/tracing";

    fn ensure() -> Result<TraceFs> {
        if Path::new(Self::PATH).join("events").exists() {
            return Ok(TraceFs { mounted_here: false });
        }
        let status = Command::new("mount").args(["-t", "tracefs", "tracefs", Self::PATH]).status()?;
        if !status.success() {
            bail!("cannot mount tracefs at {} for the peers: {status}", Self::PATH);
        }
        Ok(TraceFs { mounted_here: true })
    }
}

impl Drop for TraceFs {
    fn drop(&mut self) {
        if self.mounted_here {
            let _ = Command::new("umount").arg(Self::PATH).status();
        }
    }
}

/// The off-CPU probe's rows, run by the `offcpu` part (with its sampling error), not by default.
pub const OFF_CPU: &str = "off-CPU: `taskset -c 1 perf bench sched pipe -l 200000`";

/// One pair: the workload alone, then under `tracer`; the ratio traced/alone, or None (said on
/// stderr) if the tracer cannot start, which leaves it out of the rounds that follow (the pairs it
/// gave still count).
fn time_pair(command: &[String], tracer: &Tracer) -> Result<Option<f64>> {
    let alone = time_workload(command)?;
    let child = match start(tracer) {
        Ok(child) => child,
        Err(error) => {
            eprintln!("skipping {}: {error:#}", tracer.name);
            return Ok(None);
        }
    };
    let traced = time_workload(command);
    stop(child);
    Ok(Some(traced? / alone))
}

/// `only`: the workloads whose name starts with it (all but the off-CPU rows if none).
pub fn run(bin: &Path, pairs: usize, only: Option<&str>) -> Result<String> {
    let _tracefs = TraceFs::ensure()?;
    let mut out = String::from(
        "## Overhead: slowdown of the workload under each tracer\n\nEach row: the workload alone and under the tracer, interleaved, \
         as pairs; the ratio traced/alone of each pair; median and range of the ratios. 1.00 is no slowdown. \
         The tracers take turns, a pair each per round, in an order rotated every round.\n\n",
    );
    let chosen = |w: &Workload| match only {
        Some(only) => w.name.starts_with(only),
        None => w.name != OFF_CPU,
    };
    for workload in workloads(bin).into_iter().filter(chosen) {
        out.push_str(&format!(
            "### {}\n\n| tracer | median slowdown | min–max | pairs |\n|---|---|---|---|\n",
            workload.name
        ));
        time_workload(&workload.command)?; // warm caches
        // Round-robin: each round takes one pair of every tracer, in an order that rotates from
        // round to round, so that the machine's drift over minutes (a shared VM's neighbours)
        // falls on every tracer alike and the rows compare with each other, not only with 1.00.
        let tracers = &workload.tracers;
        let mut ratios = vec![Vec::new(); tracers.len()];
        let mut skipped = vec![false; tracers.len()];
        for round in 0..pairs {
            for i in (0..tracers.len()).map(|k| (k + round) % tracers.len()) {
                if skipped[i] {
                    continue;
                }
                match time_pair(&workload.command, &tracers[i])? {
                    Some(ratio) => ratios[i].push(ratio),
                    None => skipped[i] = true,
                }
            }
        }
        for (tracer, mut ratios) in tracers.iter().zip(ratios) {
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

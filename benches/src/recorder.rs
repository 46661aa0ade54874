//! What each recorder costs the machine it watches: CPU time and peak RSS of the recording process
//! over a fixed time on a busy machine (both CPUs spinning), from the kernel's rusage.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result};

pub struct Usage {
    pub cpu_seconds: f64,
    pub max_rss_mb: f64,
}

impl Usage {
    /// Stops child `pid` with SIGINT, waits for it and returns its rusage (threads included).
    pub fn stop(pid: i32) -> Result<Usage> {
        // SAFETY: kill has no memory effects; `pid` is our child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let mut status = 0;
        // SAFETY: rusage is plain data, valid when zeroed.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are to live locals of the right types.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        anyhow::ensure!(rc == pid, "wait4 failed for pid {pid}");
        let seconds = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        Ok(Usage {
            cpu_seconds: seconds(usage.ru_utime) + seconds(usage.ru_stime),
            max_rss_mb: usage.ru_maxrss as f64 / 1024.0,
        })
    }
}

/// Runs `command` for `duration`, stops it with SIGINT and returns its rusage.
fn measure(command: &[String], duration: Duration) -> Result<Usage> {
    let child = Command::new(&command[0])
        .args(&command[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", command[0]))?;
    std::thread::sleep(duration);
    Usage::stop(child.id() as i32).with_context(|| command[0].clone())
}

pub fn run(bin: &Path, duration: Duration) -> Result<String> {
    let profiler = bin.join("profiler").display().to_string();
    let workload = bin.join("workload").display().to_string();
    let recorders: Vec<(&str, Vec<String>)> = vec![
        (
            "profiler record --probes cpu -F 99",
            vec![
                profiler.clone(),
                "record".into(),
                "-q".into(),
                "--probes".into(),
                "cpu".into(),
                "-o".into(),
                "/tmp/bench-cost.rec".into(),
            ],
        ),
        (
            "profiler record (sched, syscalls, cpu)",
            vec![profiler, "record".into(), "-q".into(), "-o".into(), "/tmp/bench-cost.rec".into()],
        ),
        (
            "perf record -F 99 -g -a",
            "perf record -q -F 99 -g -a -o /tmp/bench-cost.data".split(' ').map(String::from).collect(),
        ),
        (
            "bcc profile-bpfcc -F 99 (kernel+user stacks; includes compiling at start)",
            "profile-bpfcc -F 99 -f".split(' ').map(String::from).collect(),
        ),
        (
            "bpftrace profile:hz:99 stacks",
            vec!["bpftrace".into(), "-e".into(), "profile:hz:99 { @[kstack, ustack, comm] = count(); }".into()],
        ),
    ];
    let mut out = format!(
        "## Recorder cost over {} s on a busy machine (both CPUs spinning)\n\n| recorder | CPU seconds | % of one core | peak RSS |\n|---|---|---|---|\n",
        duration.as_secs()
    );
    for (name, command) in recorders {
        let busy = Command::new(&workload)
            .args(["--no-wait", "spin", "--threads", "2", "--seconds", &(duration.as_secs() + 10).to_string()])
            .spawn()?;
        let usage = measure(&command, duration);
        let mut busy = busy;
        let _ = busy.kill();
        let _ = busy.wait();
        match usage {
            Ok(u) => {
                let percent = u.cpu_seconds * 100.0 / duration.as_secs_f64();
                eprintln!("{name}: {:.2} s, {:.1} MB", u.cpu_seconds, u.max_rss_mb);
                out.push_str(&format!("| {name} | {:.2} | {percent:.2} % | {:.1} MB |\n", u.cpu_seconds, u.max_rss_mb));
            }
            Err(error) => out.push_str(&format!("| {name} | not run: {error:#} | | |\n")),
        }
    }
    Ok(out)
}

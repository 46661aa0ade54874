//! What a live view costs the machine it watches: `profiler top` at its default interval, drawn in
//! a real terminal (tmux, 160×45) beside the 70/30 workload, and perf top at the same sampling
//! rate in the same terminal. CPU time is read from /proc after start-up (loading programs,
//! reading kallsyms), so the row is what it costs to keep it open; peak RSS includes start-up.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Left out of the measurement: attaching, the first symbolization.
const START_UP: Duration = Duration::from_secs(5);

pub fn run(bin: &Path, duration: Duration) -> Result<String> {
    let profiler = bin.join("profiler").display().to_string();
    let workload = bin.join("workload").display().to_string();
    let tools = [
        ("profiler top (sched, syscalls, cpu at 99 Hz; 1 s interval)", format!("{profiler} top")),
        ("perf top -F 99 (cpu-clock)", "perf top -F 99".to_string()),
    ];
    let mut out = format!(
        "## Live view cost over {} s (tmux 160×45, beside the 70/30 workload)\n\n| tool | CPU seconds | % of one core | peak RSS |\n|---|---|---|---|\n",
        duration.as_secs()
    );
    for (name, command) in tools {
        let mut hot = Command::new(&workload)
            .args(["--no-wait", "hot", "--seconds", &(duration + START_UP * 3).as_secs().to_string()])
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start the workload")?;
        let result = measure(&command, duration);
        let _ = hot.kill();
        let _ = hot.wait();
        match result {
            Ok((cpu_seconds, peak_mb)) => {
                let percent = cpu_seconds * 100.0 / duration.as_secs_f64();
                eprintln!("{name}: {cpu_seconds:.2} s ({percent:.2} %), {peak_mb:.1} MB");
                out.push_str(&format!("| {name} | {cpu_seconds:.2} | {percent:.2} % | {peak_mb:.1} MB |\n"));
            }
            Err(error) => out.push_str(&format!("| {name} | not run: {error:#} | | |\n")),
        }
    }
    Ok(out)
}

/// Runs `command` in a tmux pane of its own; returns its CPU seconds over `duration` after
/// start-up, and its peak RSS in MB.
fn measure(command: &str, duration: Duration) -> Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("tmux.sock");
    let pid_file = dir.path().join("pid");
    let tmux = |args: &[&str]| -> Result<()> {
        let status = Command::new("tmux").arg("-S").arg(&socket).args(args).status().context("tmux (Debian's)")?;
        if !status.success() {
            bail!("tmux {args:?} failed");
        }
        Ok(())
    };
    let script = format!("echo $$ > {}; exec {command}", pid_file.display());
    tmux(&["new-session", "-d", "-x", "160", "-y", "45", "sh", "-c", &script])?;
    let result = (|| -> Result<(f64, f64)> {
        let started = Instant::now();
        let pid = loop {
            if let Some(pid) = std::fs::read_to_string(&pid_file).ok().and_then(|t| t.trim().parse::<u32>().ok()) {
                break pid;
            }
            if started.elapsed() > Duration::from_secs(5) {
                bail!("{command} did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        std::thread::sleep(START_UP);
        let before = cpu_seconds(pid)?;
        std::thread::sleep(duration);
        let after = cpu_seconds(pid)?;
        Ok((after - before, peak_rss_mb(pid)?))
    })();
    let _ = tmux(&["send-keys", "q"]);
    std::thread::sleep(Duration::from_secs(2));
    let _ = tmux(&["kill-server"]);
    result
}

/// User and system time of all the process's threads.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("the tool exited")?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(") ").map(|(_, rest)| rest).context("unreadable /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).context("unreadable /proc stat");
    // SAFETY: sysconf has no memory effects.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(11)? + ticks(12)?) as f64 / per_second)
}

fn peak_rss_mb(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("the tool exited")?;
    let kb = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .context("no VmHWM")?;
    Ok(kb / 1024.0)
}

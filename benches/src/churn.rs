//! The recorder's memory over a long recording of process churn: two shell loops start Debian's
//! own short-lived programs (sh, ls, gzip, xz, python3) as fast as they can, as a build loop does,
//! while `profiler record` runs with every default probe. The recorder's RSS is read every few
//! seconds, its peak from the kernel's rusage (finishing included), and the recording is checked
//! for samples without a single frame. The loops run in a cgroup of their own and the recording is
//! of that cgroup, so that whatever else the machine does meanwhile (a build) is not measured.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::recorder::Usage;

/// The peak the hardening issue asks for, over an hour of churn.
const TARGET_PEAK_MB: f64 = 64.0;
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

const CHURN_LOOP: &str = "while :; do sh -c 'ls /usr/bin > /dev/null'; gzip -c /etc/services > /dev/null; \
    xz -c /etc/services > /dev/null; /usr/bin/python3 -c 1; done";

pub fn run(bin: &Path, duration: Duration) -> Result<String> {
    let output = std::env::temp_dir().join("bench-churn.rec");
    let cgroup = Cgroup::new()?;
    let processes_before = processes_started()?;
    let mut churn: Vec<Child> = (0..2)
        .map(|_| Command::new("bash").args(["-c", CHURN_LOOP]).stdout(Stdio::null()).stderr(Stdio::null()).spawn())
        .collect::<std::io::Result<_>>()
        .context("cannot start the churn loops")?;
    for child in &churn {
        cgroup.add(child.id())?;
    }
    let recorder = Command::new(bin.join("profiler"))
        .args(["record", "-q", "--cgroup"])
        .arg(&cgroup.0)
        .arg("-o")
        .arg(&output)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the profiler")?;
    let pid = recorder.id() as i32;
    let started = Instant::now();
    let mut samples: Vec<(Duration, f64)> = Vec::new();
    while started.elapsed() < duration {
        std::thread::sleep(SAMPLE_EVERY.min(duration.saturating_sub(started.elapsed())));
        if let Some(rss) = rss_mb(pid) {
            samples.push((started.elapsed(), rss));
        }
    }
    let usage = Usage::stop(pid)?;
    for child in &mut churn {
        // SAFETY: kill has no memory effects; the loops are our children, not yet reaped. The
        // negative pid is not used: each loop is killed, and its last child finishes on its own.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
    }
    let processes = processes_started()?.saturating_sub(processes_before);
    let recording = profiler::recording::read_file(&output).context("the recording does not read back")?;
    let size_mb = std::fs::metadata(&output)?.len() as f64 / 1e6;
    let stacks = recording.stacks.as_ref().context("the recording has no stacks")?;
    let lost_frame = |f: &u32| stacks.frame(*f).is_some_and(|f| f.function == "[lost]");
    let frameless: u64 = stacks.stacks.iter().filter(|s| s.frames.is_empty()).map(|s| s.count).sum();
    let lost: u64 = stacks.stacks.iter().filter(|s| s.frames.iter().any(lost_frame)).map(|s| s.count).sum();

    let minutes = duration.as_secs_f64() / 60.0;
    let mut out = format!(
        "## Recorder memory under process churn ({minutes:.0} min)\n\n\
         Two shell loops of sh, ls, gzip, xz and python3 (Debian's), {processes} processes and threads \
         started on the machine ({:.0} a second); `profiler record --cgroup` of the loops' cgroup with \
         the default probes (sched, syscalls, cpu).\n\n\
         | after | RSS |\n|---|---|\n",
        processes as f64 / duration.as_secs_f64()
    );
    for fraction in [0.02, 0.1, 0.25, 0.5, 0.75, 1.0] {
        let at = duration.mul_f64(fraction);
        if let Some((when, rss)) = samples.iter().find(|(when, _)| *when >= at.saturating_sub(SAMPLE_EVERY)) {
            out.push_str(&format!("| {:.1} min | {rss:.1} MB |\n", when.as_secs_f64() / 60.0));
        }
    }
    let met = if usage.max_rss_mb <= TARGET_PEAK_MB { "met" } else { "**missed**" };
    out.push_str(&format!(
        "\nPeak RSS (rusage, finishing included): {:.1} MB (target ≤ {TARGET_PEAK_MB} MB: {met}); \
         recorder CPU {:.1} s ({:.2} % of one core); recording {size_mb:.1} MB, {} process entries; \
         {} samples, {frameless} without a frame, {lost} drawn as [lost].\n",
        usage.max_rss_mb,
        usage.cpu_seconds,
        usage.cpu_seconds * 100.0 / duration.as_secs_f64(),
        recording.processes.len(),
        stacks.samples(),
    ));
    Ok(out)
}

pub fn rss_mb(pid: i32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Processes (and threads) created since boot, from /proc/stat.
pub fn processes_started() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().find(|l| l.starts_with("processes ")).context("no processes line in /proc/stat")?;
    Ok(line[10..].trim().parse()?)
}

/// A cgroup v2 directory for the churn, removed when dropped.
struct Cgroup(std::path::PathBuf);

impl Cgroup {
    fn new() -> Result<Cgroup> {
        let mounts = std::fs::read_to_string("/proc/self/mounts")?;
        let root = mounts
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|fields| fields.get(2) == Some(&"cgroup2"))
            .and_then(|fields| fields.get(1).map(|root| root.to_string()))
            .context("no cgroup v2 hierarchy is mounted")?;
        let path = Path::new(&root).join(format!("profiler-bench-churn-{}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Cgroup(path))
    }

    fn add(&self, pid: u32) -> Result<()> {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).context("cannot move the churn into its cgroup")
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

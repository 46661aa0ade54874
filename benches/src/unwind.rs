//! What unwinding user stacks from `.eh_frame` costs, and how whole the stacks are, beside perf:
//! - the kernel unwinder's time per sample (`kernel.bpf_stats_enabled`: the sampler's run time,
//!   its tail calls included, over the workload's samples) for stacks of 10, 30 and 100 frames;
//! - the whole recorder at 99 Hz on both CPUs busy with deep stacks (CPU time, peak RSS);
//! - tables for N distinct binaries (peak RSS, kernel map memory, rows);
//! - table build time per MB of `.eh_frame`, on Debian's own libraries;
//! - depth and completeness against `perf record --call-graph dwarf` on gzip, xz, python3 and the
//!   C workload (gcc -O2 without frame pointers).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use object::{Object as _, ObjectSection as _};
use profiler::recording::Recording;

use crate::recorder::Usage;

const CHAINS_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/workload/native/chains.c");
/// Frames that mark a whole C stack: glibc's start of main.
const LIBC_START: &str = "__libc_start_call_main";

pub struct Parts {
    pub seconds: u64,
    pub binaries: usize,
}

pub fn run(bin: &Path, parts: &Parts) -> Result<String> {
    let dir = std::env::temp_dir().join(format!("bench-unwind-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let chains = compile_chains(&dir, "chains", None)?;
    let profiler = bin.join("profiler");
    let mut out = String::from("## Unwinding user stacks from .eh_frame\n\n");
    out.push_str(&per_sample_cost(&profiler, &chains, &dir)?);
    out.push_str(&recorder_cost(&profiler, &chains, &dir, Duration::from_secs(parts.seconds))?);
    out.push_str(&many_binaries(&profiler, &dir, parts.binaries)?);
    out.push_str(&build_speed()?);
    out.push_str(&against_perf(&profiler, &chains, &dir)?);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}

/// gcc -O2 -fomit-frame-pointer, as distributions build; `build_id` makes copies distinct tables.
fn compile_chains(dir: &Path, name: &str, build_id: Option<u32>) -> Result<PathBuf> {
    let binary = dir.join(name);
    let mut gcc = Command::new("gcc");
    gcc.args(["-O2", "-fomit-frame-pointer", "-o"]).arg(&binary).arg(CHAINS_SOURCE);
    if let Some(id) = build_id {
        gcc.arg(format!("-Wl,--build-id=0x{id:08x}{:024x}", 0xb0b));
    }
    let status = gcc.status().context("gcc")?;
    anyhow::ensure!(status.success(), "gcc failed");
    Ok(binary)
}

/// A workload started stopped at a shell's `read`, so that a recorder can attach to its pid first.
struct Stopped(Child);

impl Stopped {
    fn spawn(program: &Path, args: &[&str]) -> Result<Stopped> {
        let child = Command::new("sh")
            .args(["-c", "read go && exec \"$0\" \"$@\""])
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        Ok(Stopped(child))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn go(&mut self) -> Result<()> {
        use std::io::Write as _;
        self.0.stdin.take().context("go once")?.write_all(b"go\n")?;
        Ok(())
    }

    fn wait(mut self) -> Result<()> {
        let status = self.0.wait()?;
        anyhow::ensure!(status.success(), "the workload failed: {status}");
        Ok(())
    }
}

/// `profiler record -p PID --probes cpu`, until its target exits.
fn record(profiler: &Path, output: &Path, pid: u32, frequency: u32) -> Result<Child> {
    let child = Command::new(profiler)
        .args(["record", "-q", "--probes", "cpu", "-F", &frequency.to_string(), "-p", &pid.to_string(), "-o"])
        .arg(output)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // Attached once the sampler's program is loaded; it takes well under this.
    std::thread::sleep(Duration::from_secs(2));
    Ok(child)
}

/// `profiler record --probes cpu` of the whole machine, until stopped.
fn record_system_wide(profiler: &Path, output: &Path) -> Result<Child> {
    let child = Command::new(profiler)
        .args(["record", "-q", "--probes", "cpu", "-o"])
        .arg(output)
        .stderr(Stdio::null())
        .spawn()?;
    Ok(child)
}

fn finish(mut recorder: Child, output: &Path) -> Result<Recording> {
    let status = recorder.wait()?;
    anyhow::ensure!(status.success(), "profiler record failed: {status}");
    Ok(profiler::recording::read_file(output)?)
}

/// Depth and completeness of one process's user stacks.
struct Whole {
    samples: u64,
    median_depth: usize,
    /// Share of samples whose stack reaches `LIBC_START`.
    reach: f64,
}

fn whole(recording: &Recording, pid: u32) -> Whole {
    let Some(stacks) = recording.stacks.as_ref() else { return Whole { samples: 0, median_depth: 0, reach: 0.0 } };
    let mut depths: Vec<(usize, u64)> = Vec::new();
    let (mut samples, mut reached) = (0, 0);
    for stack in stacks.stacks.iter().filter(|s| s.tgid == pid) {
        let user: Vec<&str> = stack
            .frames
            .iter()
            .filter_map(|&f| stacks.frame(f))
            .filter(|f| !f.kernel && !f.function.starts_with('['))
            .map(|f| f.function.as_str())
            .collect();
        samples += stack.count;
        if user.contains(&LIBC_START) {
            reached += stack.count;
        }
        depths.push((user.len(), stack.count));
    }
    Whole { samples, median_depth: weighted_median(&mut depths), reach: share(reached, samples) }
}

fn weighted_median(values: &mut [(usize, u64)]) -> usize {
    values.sort_unstable();
    let total: u64 = values.iter().map(|(_, n)| n).sum();
    let mut seen = 0;
    for &(value, n) in values.iter() {
        seen += n;
        if seen * 2 >= total {
            return value;
        }
    }
    0
}

fn share(part: u64, total: u64) -> f64 {
    if total == 0 { 0.0 } else { part as f64 * 100.0 / total as f64 }
}

/// Sets a sysctl, restoring it when dropped.
struct Sysctl(&'static str, String);

impl Sysctl {
    fn set(path: &'static str, value: &str) -> Result<Sysctl> {
        let old = std::fs::read_to_string(path)?;
        std::fs::write(path, value).with_context(|| format!("cannot set {path}"))?;
        Ok(Sysctl(path, old.trim().to_string()))
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0, &self.1);
    }
}

/// Run time and runs of the sampler program a recorder holds, from its fdinfo.
fn sampler_stats(recorder: u32) -> Result<(u64, u64)> {
    let ids: Vec<u32> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some("oncpu_sample"))
        .map(|p| p.id())
        .collect();
    for fd in std::fs::read_dir(format!("/proc/{recorder}/fdinfo"))?.flatten() {
        let Ok(info) = std::fs::read_to_string(fd.path()) else { continue };
        let field = |name: &str| -> Option<u64> {
            info.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok())
        };
        if field("prog_id:").is_some_and(|id| ids.contains(&(id as u32))) {
            return Ok((field("run_time_ns:").unwrap_or(0), field("run_cnt:").unwrap_or(0)));
        }
    }
    bail!("the recorder holds no sampler program")
}

fn per_sample_cost(profiler: &Path, chains: &Path, dir: &Path) -> Result<String> {
    let _stats = Sysctl::set("/proc/sys/kernel/bpf_stats_enabled", "1")?;
    let mut out = String::from(
        "Kernel unwinder, per sample of the workload (sampler run time, tail calls included, over the \
         workload's samples at 999 Hz; the other CPU's idle samples are in the run time too):\n\n\
         | frames asked | median user frames | whole (reach main's caller) | per sample |\n|---|---|---|---|\n",
    );
    for depth in [10, 30, 100] {
        let mut workload = Stopped::spawn(chains, &["deep", &depth.to_string(), "6"])?;
        let pid = workload.pid();
        let output = dir.join(format!("deep-{depth}.rec"));
        let recorder = record(profiler, &output, pid, 999)?;
        workload.go()?;
        // The last read before the target exits and the recorder with it.
        let started = Instant::now();
        let mut stats = (0, 0);
        while started.elapsed() < Duration::from_millis(5800) {
            std::thread::sleep(Duration::from_millis(200));
            stats = sampler_stats(recorder.id()).unwrap_or(stats);
        }
        workload.wait()?;
        let recording = finish(recorder, &output)?;
        let whole = whole(&recording, pid);
        let per_sample = stats.0 as f64 / whole.samples.max(1) as f64 / 1000.0;
        eprintln!("unwind depth {depth}: {per_sample:.2} µs per sample, {} samples", whole.samples);
        out.push_str(&format!("| {depth} | {} | {:.1} % | {per_sample:.2} µs |\n", whole.median_depth, whole.reach));
    }
    Ok(out)
}

fn recorder_cost(profiler: &Path, chains: &Path, dir: &Path, duration: Duration) -> Result<String> {
    let seconds = (duration.as_secs() + 10).to_string();
    let mut busy: Vec<Child> = (0..2)
        .map(|_| Command::new(chains).args(["deep", "60", &seconds]).stdout(Stdio::null()).spawn())
        .collect::<std::io::Result<_>>()?;
    let output = dir.join("cost.rec");
    let recorder = record_system_wide(profiler, &output)?;
    std::thread::sleep(duration);
    let usage = Usage::stop(recorder.id() as i32)?;
    let pids: Vec<u32> = busy.iter().map(Child::id).collect();
    for child in &mut busy {
        let _ = child.kill();
        let _ = child.wait();
    }
    let recording = profiler::recording::read_file(&output)?;
    let wholes: Vec<Whole> = pids.iter().map(|&pid| whole(&recording, pid)).collect();
    let samples: u64 = wholes.iter().map(|w| w.samples).sum();
    let reach = wholes.iter().map(|w| w.reach * w.samples as f64).sum::<f64>() / samples.max(1) as f64;
    let percent = usage.cpu_seconds * 100.0 / duration.as_secs_f64();
    let met = if percent <= 1.0 { "met" } else { "**missed**" };
    Ok(format!(
        "\nWhole recorder, `record --probes cpu` at 99 Hz for {} s, both CPUs running 60-deep stacks \
         without frame pointers: {:.2} CPU-s = {percent:.2} % of a core (target ≤ 1 %: {met}), peak RSS \
         {:.1} MB; {samples} samples of the workloads, median {} user frames, {reach:.1} % whole.\n",
        duration.as_secs(),
        usage.cpu_seconds,
        usage.max_rss_mb,
        wholes.first().map_or(0, |w| w.median_depth),
    ))
}

/// Kernel memory of the maps a process holds, from their fdinfo (each map once, however many of
/// its descriptors the process holds).
fn maps_memlock(pid: u32) -> u64 {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return 0 };
    let mut maps: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    for info in fds.flatten().filter_map(|fd| std::fs::read_to_string(fd.path()).ok()) {
        let field =
            |name: &str| info.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<u64>().ok());
        if let (Some(id), Some(memlock)) = (field("map_id:"), field("memlock:")) {
            maps.insert(id, memlock);
        }
    }
    maps.values().sum()
}

fn many_binaries(profiler: &Path, dir: &Path, count: usize) -> Result<String> {
    let copies: Vec<PathBuf> =
        (0..count).map(|i| compile_chains(dir, &format!("chains-{i}"), Some(i as u32 + 1))).collect::<Result<_>>()?;
    let output = dir.join("many.rec");
    let recorder = record_system_wide(profiler, &output)?;
    std::thread::sleep(Duration::from_secs(2));
    // Each copy spins a little and sleeps: every one is sampled, so every one gets its table.
    let mut children: Vec<Child> = copies
        .iter()
        .map(|binary| Command::new(binary).args(["deep", "5", "20"]).stdout(Stdio::null()).spawn())
        .collect::<std::io::Result<_>>()?;
    std::thread::sleep(Duration::from_secs(15));
    let memlock = maps_memlock(recorder.id());
    let usage = Usage::stop(recorder.id() as i32)?;
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    let recording = profiler::recording::read_file(&output)?;
    let tables = recording.meta.unwind.unwrap_or_default();
    let rss_met = if usage.max_rss_mb <= 50.0 { "met" } else { "**missed**" };
    let maps_mb = memlock as f64 / (1 << 20) as f64;
    let maps_met = if maps_mb <= 100.0 { "met" } else { "**missed**" };
    Ok(format!(
        "\nTables for {count} distinct binaries (the C workload built {count} times with distinct build-ids, \
         all running, recorded system-wide): peak RSS {:.1} MB (target ≤ 50 MB: {rss_met}), kernel maps \
         {maps_mb:.1} MB (target ≤ 100 MB: {maps_met}), {} tables, {} of {} rows, built in {:.0} ms.\n",
        usage.max_rss_mb,
        tables.tables,
        tables.rows,
        tables.row_capacity,
        tables.build_ns as f64 / 1e6,
    ))
}

fn build_speed() -> Result<String> {
    let mut out = String::from(
        "\nTable build, median of 3 (`profiler_unwind::build`, file already in the page cache):\n\n\
         | file | .eh_frame | build | per MB of .eh_frame |\n|---|---|---|---|\n",
    );
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/bin/python3.11",
        "/usr/bin/perl",
        "/usr/lib/x86_64-linux-gnu/libLLVM-14.so.1",
        "/usr/lib/x86_64-linux-gnu/libLLVM-15.so.1",
    ];
    for path in candidates.iter().filter(|p| Path::new(p).exists()) {
        let data = std::fs::read(path)?;
        let file = object::File::parse(&*data)?;
        let eh_frame = file.section_by_name(".eh_frame").map_or(0, |s| s.size());
        let mut times: Vec<f64> = (0..3)
            .map(|_| {
                let started = Instant::now();
                let built = profiler_unwind::build(&data);
                let elapsed = started.elapsed().as_secs_f64() * 1000.0;
                drop(built);
                elapsed
            })
            .collect();
        let (median, _, _) = crate::summarize(&mut times);
        let mb = eh_frame as f64 / 1e6;
        out.push_str(&format!("| {path} | {mb:.2} MB | {median:.1} ms | {:.1} ms |\n", median / mb.max(1e-9)));
    }
    Ok(out)
}

/// Depth and completeness of the same run of each program, by us and by perf's DWARF mode.
fn against_perf(profiler: &Path, chains: &Path, dir: &Path) -> Result<String> {
    // Text that compresses slowly: gzip -9 takes seconds on the large one, xz on the small one.
    let lines =
        |n: u32| -> String { (0..n).map(|i| format!("{} {}\n", i.wrapping_mul(2_654_435_761), i % 977)).collect() };
    let (large, small) = (dir.join("large.txt"), dir.join("small.txt"));
    std::fs::write(&large, lines(1_500_000))?;
    std::fs::write(&small, lines(300_000))?;
    // Each run directly (its output to /dev/null): the pid recorded is the program's own.
    let (large, small) = (large.display().to_string(), small.display().to_string());
    let python = "import time\nend = time.time() + 3\nwhile time.time() < end: sum(i * i for i in range(1000))";
    let chains = chains.display().to_string();
    let programs: [(&str, &str, Vec<&str>); 4] = [
        ("gzip -9 (Debian)", "gzip", vec!["-9", "-c", &large]),
        ("xz -6 (Debian)", "xz", vec!["-6", "-T1", "-c", &small]),
        ("python3 (Debian)", "/usr/bin/python3", vec!["-c", python]),
        ("C, gcc -O2 -fomit-frame-pointer", &chains, vec!["chains", "3"]),
    ];
    let mut out = String::from(
        "\nBeside `perf record --call-graph dwarf` (8 KiB of stack per sample), each on its own run of \
         the same program at 499 Hz: share of samples whose user stack reaches `__libc_start_call_main`, \
         and the median user depth:\n\n\
         | program | profiler: whole | depth | perf DWARF: whole | depth |\n|---|---|---|---|---|\n",
    );
    for (name, program, args) in &programs {
        let mut ours = Stopped::spawn(Path::new(program), args)?;
        let pid = ours.pid();
        let output = dir.join("vs-perf.rec");
        let recorder = record(profiler, &output, pid, 499)?;
        ours.go()?;
        ours.wait()?;
        let recording = finish(recorder, &output)?;
        let mine = whole(&recording, pid);
        let theirs = perf_dwarf(program, args, dir)?;
        eprintln!(
            "{name}: ours {:.1} % depth {}, perf {:.1} % depth {}",
            mine.reach, mine.median_depth, theirs.reach, theirs.median_depth
        );
        out.push_str(&format!(
            "| {name} | {:.1} % of {} | {} | {:.1} % of {} | {} |\n",
            mine.reach, mine.samples, mine.median_depth, theirs.reach, theirs.samples, theirs.median_depth
        ));
    }
    Ok(out)
}

fn perf_dwarf(program: &str, args: &[&str], dir: &Path) -> Result<Whole> {
    let data = dir.join("perf.data");
    let status = Command::new("perf")
        .args(["record", "-q", "-F", "499", "--call-graph", "dwarf,8192", "-o"])
        .arg(&data)
        .arg("--")
        .arg(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("perf (Debian's linux-perf)")?;
    anyhow::ensure!(status.success(), "perf record failed");
    let script_out = Command::new("perf").args(["script", "-F", "comm,ip,sym", "-i"]).arg(&data).output()?;
    let text = String::from_utf8_lossy(&script_out.stdout);
    let mut depths: Vec<(usize, u64)> = Vec::new();
    let (mut samples, mut reached) = (0u64, 0u64);
    for sample in text.split("\n\n").filter(|s| !s.trim().is_empty()) {
        let mut lines = sample.lines();
        let comm = lines.next().unwrap_or("").trim();
        if comm.starts_with("sh") || comm.starts_with("perf") {
            continue;
        }
        // User frames: perf names kernel frames with their kernel addresses (ffff...).
        let frames: Vec<&str> = lines.map(str::trim).filter(|l| !l.starts_with("ffff")).collect();
        samples += 1;
        if frames.iter().any(|f| f.contains(LIBC_START)) {
            reached += 1;
        }
        depths.push((frames.len(), 1));
    }
    Ok(Whole { samples, median_depth: weighted_median(&mut depths), reach: share(reached, samples) })
}

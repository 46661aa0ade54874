//! The off-CPU probe: its slowdown of a context-switch-bound workload beside offcputime and runqlat
//! (the overhead table's off-CPU rows), and the error of sampled totals against the unsampled
//! truth, measured on one run: recorders at each sampling setting record the same workload at once.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use profiler::recording::{Recording, Stacks};

use crate::overhead;

const OFFCPU_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/workload/native/offcpu.c");

/// Sampling settings measured against the unsampled truth.
const SETTINGS: [u32; 3] = [4, 8, 32];

/// The functions the workload's threads block in.
const FUNCTIONS: [&str; 3] = ["sleep_three_milliseconds", "wait_for_pipe", "pause_between_writes"];

pub fn run(bin: &Path, pairs: usize, seconds: u64) -> Result<String> {
    let mut out = overhead::run(bin, pairs, Some(overhead::OFF_CPU))?;
    out.push_str(&sampling_error(bin, seconds)?);
    Ok(out)
}

fn sampling_error(bin: &Path, seconds: u64) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let binary = dir.path().join("offcpu");
    let status = Command::new("gcc")
        .args(["-O2", "-fomit-frame-pointer", "-pthread", "-o"])
        .arg(&binary)
        .arg(OFFCPU_SOURCE)
        .status()
        .context("gcc")?;
    if !status.success() {
        bail!("gcc failed");
    }
    // Four sleepers, the pipe's reader and writer: about 1 000 blocks a second.
    let mut workload = Command::new(&binary)
        .args(["threads", &seconds.to_string(), "4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    let pid = workload.id();
    let settings: Vec<u32> = std::iter::once(1).chain(SETTINGS).collect();
    let mut recorders = Vec::new();
    for one_in in &settings {
        let output = dir.path().join(format!("sample-{one_in}.rec"));
        recorders.push((start(&bin.join("profiler"), &output, pid, *one_in)?, output));
    }
    {
        use std::io::Write as _;
        workload.stdin.take().context("stdin")?.write_all(b"go\n")?;
    }
    if !workload.wait()?.success() {
        bail!("the off-CPU workload failed");
    }
    let recordings: Vec<Recording> =
        recorders.into_iter().map(|(recorder, output)| finish(recorder, &output)).collect::<Result<_>>()?;
    let truth = &recordings[0];
    let mut out = format!(
        "\n### Off-CPU sampling: error of the totals against the unsampled truth\n\nOne {seconds} s run of \
         `offcpu threads {seconds} 4` (tests/workload/native/offcpu.c: four threads sleeping 3 ms after each 1 ms of \
         work, a pipe's reader and its writer, which sleeps 10 ms between writes), recorded at once by a recorder \
         taking every block and one at each setting. Error: (estimate − truth) / truth, of the process's total and of \
         each function's.\n\n| setting | blocks taken | total | {} | the report's ± |\n|---|---|---|---|---|---|---|\n",
        FUNCTIONS.join(" | ")
    );
    let truth_total = blocked(offcpu(truth)?, None);
    out.push_str(&format!(
        "| every block (truth) | {} | {:.3} s | {} | |\n",
        truth.counters.offcpu_blocks,
        truth_total,
        FUNCTIONS.map(|f| format!("{:.3} s", blocked(offcpu(truth).unwrap(), Some(f)))).join(" | ")
    ));
    for (one_in, recording) in settings.iter().zip(&recordings).skip(1) {
        let stacks = offcpu(recording)?;
        let error = |estimate: f64, truth: f64| format!("{:+.1} %", (estimate - truth) * 100.0 / truth);
        let functions: Vec<String> = FUNCTIONS
            .iter()
            .map(|f| error(blocked(stacks, Some(f)), blocked(offcpu(truth).unwrap(), Some(f))))
            .collect();
        let summary = profiler::analysis::waits::Waits::new(recording, stacks, 1);
        out.push_str(&format!(
            "| `--offcpu-sample {one_in}` | {} | {} | {} | ±{:.1} % |\n",
            recording.counters.offcpu_blocks,
            error(blocked(stacks, None), truth_total),
            functions.join(" | "),
            summary.estimate_error_percent.unwrap_or(0.0)
        ));
    }
    Ok(out)
}

fn offcpu(recording: &Recording) -> Result<&Stacks> {
    recording.offcpu.as_ref().context("no off-CPU stacks in the recording")
}

/// Seconds blocked in all, or under `function`.
fn blocked(stacks: &Stacks, function: Option<&str>) -> f64 {
    let ns: u64 = stacks
        .stacks
        .iter()
        .filter(|s| {
            function.is_none_or(|f| s.frames.iter().any(|&i| stacks.frame(i).is_some_and(|frame| frame.function == f)))
        })
        .map(|s| s.count)
        .sum();
    ns as f64 / 1e9
}

/// `profiler record --probes offcpu -p PID` at one sampling setting, started and attached.
fn start(profiler: &Path, output: &PathBuf, pid: u32, one_in: u32) -> Result<Child> {
    let mut child = Command::new(profiler)
        .args(["record", "--probes", "offcpu", "--offcpu-sample", &one_in.to_string(), "-p", &pid.to_string(), "-o"])
        .arg(output)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with("recording ") => break,
            Some(Ok(_)) if Instant::now() < deadline => continue,
            _ => bail!("profiler record --offcpu-sample {one_in} did not start"),
        }
    }
    // Keep draining its progress and warnings.
    std::thread::spawn(move || for _ in lines {});
    Ok(child)
}

/// The recorder ends with its -p process; its recording.
fn finish(mut recorder: Child, output: &Path) -> Result<Recording> {
    let status = recorder.wait()?;
    anyhow::ensure!(status.success(), "profiler record failed: {status}");
    Ok(profiler::recording::read_file(output)?)
}

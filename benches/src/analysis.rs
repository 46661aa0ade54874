//! Analysis speed on a large synthetic recording: 1 M samples over 100 k distinct stacks of 20 to
//! 60 frames, as `flamegraph`, `report` and `diff` see it, and inferno's own renderer on the same
//! stacks in folded form.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use profiler::recording::{Frame, Metadata, Module, Process, RecordOptions, Recording, Stack, Stacks};
use rand::{Rng as _, SeedableRng as _, rngs::SmallRng};

pub const SAMPLES: u64 = 1_000_000;
pub const DISTINCT_STACKS: usize = 100_000;

/// A recording with `SAMPLES` samples spread over `DISTINCT_STACKS` stacks. Stacks share prefixes,
/// as real ones do: each grows from a random earlier stack's root part.
pub fn synthetic(seed: u64) -> Recording {
    let mut rng = SmallRng::seed_from_u64(seed);
    let modules = vec![
        Module { path: "/usr/bin/app".into(), build_id: Some("00112233445566778899aabbccddeeff".into()) },
        Module { path: "[kernel.kallsyms]".into(), build_id: None },
    ];
    let frames: Vec<Frame> = (0..20_000)
        .map(|i| Frame {
            function: format!("app::module_{}::function_{i}", i % 97),
            module: Some(u32::from(i >= 18_000)),
            kernel: i >= 18_000,
            inlined: false,
        })
        .collect();
    let mut stacks: Vec<Stack> = Vec::with_capacity(DISTINCT_STACKS);
    for i in 0..DISTINCT_STACKS {
        let depth = rng.random_range(20..=60);
        let mut path: Vec<u32> = match i {
            0 => Vec::new(),
            _ => {
                let parent = &stacks[rng.random_range(0..i)].frames;
                let keep = rng.random_range(0..parent.len().min(depth));
                parent[parent.len() - keep..].to_vec()
            }
        };
        while path.len() < depth {
            path.insert(0, rng.random_range(0..18_000));
        }
        stacks.push(Stack { tgid: 1000 + (i % 50) as u32, tid: 0, frames: path, count: 1, blocks: 0 });
    }
    // Distribute the remaining samples with a heavy head, as profiles have.
    for _ in 0..SAMPLES - DISTINCT_STACKS as u64 {
        let index = (rng.random::<f64>().powi(3) * DISTINCT_STACKS as f64) as usize;
        stacks[index.min(DISTINCT_STACKS - 1)].count += 1;
    }
    let mut recording = Recording {
        meta: Metadata {
            hostname: "synthetic".into(),
            cpus: 64,
            duration_ns: 60_000_000_000,
            options: RecordOptions { probes: vec!["cpu".into()], frequency_hz: 99, ..Default::default() },
            ..Default::default()
        },
        stacks: Some(Stacks { frames, modules, stacks }),
        ..Default::default()
    };
    for tgid in 1000..1050 {
        recording.processes.insert(tgid, Process { comm: format!("app-{tgid}"), ..Default::default() });
    }
    recording.counters.cpu_samples = SAMPLES;
    recording
}

fn time(command: &mut Command) -> Result<f64> {
    let started = Instant::now();
    let status = command.stdout(Stdio::null()).status().with_context(|| format!("{command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(started.elapsed().as_secs_f64())
}

pub fn run(bin: &Path) -> Result<String> {
    let dir = std::env::temp_dir().join("profiler-bench-analysis");
    std::fs::create_dir_all(&dir)?;
    let (base, new) = (dir.join("base.rec"), dir.join("new.rec"));
    profiler::recording::write_file(&base, &synthetic(1))?;
    profiler::recording::write_file(&new, &synthetic(2))?;
    let profiler = bin.join("profiler");
    let svg = dir.join("out.svg");
    let folded = dir.join("folded.txt");
    let mut out = format!(
        "## Analysis speed: {SAMPLES} samples, {DISTINCT_STACKS} distinct stacks of 20–60 frames (recording {:.1} MB)\n\n| task | seconds (best of 3) |\n|---|---|\n",
        std::fs::metadata(&base)?.len() as f64 / 1e6
    );
    let best = |command: &mut dyn FnMut() -> Result<f64>| -> Result<f64> {
        let mut times = [command()?, command()?, command()?];
        times.sort_by(f64::total_cmp);
        Ok(times[0])
    };
    let flamegraph = best(&mut || time(Command::new(&profiler).args(["flamegraph"]).arg(&base).arg("-o").arg(&svg)))?;
    out.push_str(&format!("| `profiler flamegraph` (read, fold, render) | {flamegraph:.2} |\n"));
    let report = best(&mut || time(Command::new(&profiler).arg("report").arg(&base)))?;
    out.push_str(&format!("| `profiler report` (hot paths) | {report:.2} |\n"));
    let diff = best(&mut || time(Command::new(&profiler).arg("diff").arg(&base).arg(&new)))?;
    out.push_str(&format!("| `profiler diff` | {diff:.2} |\n"));
    let folded_out = Command::new(&profiler).args(["flamegraph", "--folded"]).arg(&base).output()?;
    std::fs::write(&folded, &folded_out.stdout)?;
    match Command::new("inferno-flamegraph").arg(&folded).stdout(Stdio::null()).status() {
        Ok(_) => {
            let inferno = best(&mut || time(Command::new("inferno-flamegraph").arg(&folded)))?;
            out.push_str(&format!(
                "| `inferno-flamegraph` alone, on the same stacks already folded ({:.0} MB) | {inferno:.2} |\n",
                folded_out.stdout.len() as f64 / 1e6
            ));
            let script = dir.join("perf-script.txt");
            write_perf_script(&synthetic(1), &script)?;
            let pipeline = format!("inferno-collapse-perf {} | inferno-flamegraph > /dev/null", script.display());
            let inferno_pipeline = time(Command::new("sh").args(["-c", &pipeline]))?;
            out.push_str(&format!(
                "| `inferno-collapse-perf` piped into `inferno-flamegraph`, on the same samples as `perf script` text ({:.1} GB) | {inferno_pipeline:.2} |\n",
                std::fs::metadata(&script)?.len() as f64 / 1e9
            ));
            std::fs::remove_file(&script)?;
        }
        Err(_) => out.push_str("| `inferno-flamegraph` | not installed (`cargo install inferno`) |\n"),
    }
    Ok(out)
}

/// The recording's samples as `perf script` prints them: one block per sample, leaf frame first.
fn write_perf_script(recording: &Recording, path: &Path) -> Result<()> {
    use std::io::Write as _;
    let stacks = recording.stacks.as_ref().expect("synthetic recordings have stacks");
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut time = 0u64;
    for stack in &stacks.stacks {
        let comm = recording.process_name(stack.tgid);
        for _ in 0..stack.count {
            time += 10_101;
            writeln!(
                out,
                "{comm} {} [000] {}.{:06}: 10101010 cpu-clock:pppH: ",
                stack.tgid,
                time / 1_000_000,
                time % 1_000_000
            )?;
            for &index in &stack.frames {
                let frame = &stacks.frames[index as usize];
                let module = stacks.module(frame).map_or("[unknown]", |m| m.path.as_str());
                writeln!(out, "\t{:x} {}+0x0 ({module})", 0x400000 + u64::from(index) * 16, frame.function)?;
            }
            writeln!(out)?;
        }
    }
    out.flush()?;
    Ok(())
}

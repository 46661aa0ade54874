//! The profiler's benchmarks, run by `cargo xtask bench`: the slowdown each tracer causes on
//! workloads where its hooks dominate, side by side with libbpf-tools, bpftrace and perf (runs
//! interleaved, medians of paired ratios), the recorder's own CPU and memory, and the speed of
//! analysing a large recording. Prints a Markdown table and writes it to benches/results/.

mod analysis;
mod churn;
mod floor;
mod offcpu;
mod overhead;
mod recorder;
mod serve;
mod top;
mod unwind;

use std::{path::PathBuf, time::Duration};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    /// Directory of the release binaries (profiler, workload).
    #[arg(long, default_value = "target/release")]
    bin: PathBuf,
    /// Where the Markdown results go.
    #[arg(long, default_value = "benches/results/RESULTS.md")]
    out: PathBuf,
    #[command(subcommand)]
    what: Option<What>,
}

#[derive(Subcommand, Clone)]
enum What {
    /// Slowdown of workloads under each tracer.
    Overhead {
        #[arg(long, default_value_t = 5)]
        pairs: usize,
        /// Only the workloads whose name starts with this (e.g. `syscalls`).
        #[arg(long)]
        only: Option<String>,
    },
    /// CPU time and peak RSS of each recorder over a recording on a busy machine.
    Recorder {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// flamegraph, report and diff on a large synthetic recording, against inferno.
    Analysis,
    /// The off-CPU probe: its slowdown of context switches beside offcputime and runqlat, and the
    /// error of sampled totals against the unsampled truth.
    Offcpu {
        #[arg(long, default_value_t = 5)]
        pairs: usize,
        /// Length of the run whose totals are compared.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// CPU and memory of `profiler top` in a real terminal, beside perf top.
    Top {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// What unwinding user stacks costs and how whole they are, beside perf's DWARF mode.
    Unwind {
        /// Length of the whole-recorder measurement.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Distinct binaries for the memory measurement.
        #[arg(long, default_value_t = 200)]
        binaries: usize,
    },
    /// `serve` for minutes as a fleet runs it (Prometheus scraping, profiles pulled, processes
    /// starting), beside `record` on the same load (not in the default set: it takes 10 minutes).
    Serve {
        #[arg(long, default_value_t = 10)]
        minutes: u64,
    },
    /// The recorder's memory over a long recording of process churn (not in the default set:
    /// it takes an hour).
    Churn {
        #[arg(long, default_value_t = 60)]
        minutes: u64,
    },
    /// Attaches minimal programs to BTF tracepoints until interrupted (the overhead table's floor).
    #[command(hide = true)]
    Floor {
        /// What each program does besides being called.
        #[arg(long, value_enum, default_value = "empty")]
        body: floor::Body,
        tracepoints: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let whats = match cli.what {
        Some(what) => vec![what],
        None => vec![
            What::Overhead { pairs: 5, only: None },
            What::Recorder { seconds: 60 },
            What::Analysis,
            What::Top { seconds: 60 },
            What::Unwind { seconds: 60, binaries: 200 },
            What::Offcpu { pairs: 5, seconds: 20 },
        ],
    };
    let mut markdown = format!(
        "# Benchmarks\n\nRun {} on {} ({} CPUs, kernel {}), by `cargo xtask bench`. CPU: {}.\n\n",
        chrono_like_now(),
        hostname(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel(),
        cpu()
    );
    for what in whats {
        let section = match what {
            What::Overhead { pairs, only } => overhead::run(&cli.bin, pairs, only.as_deref())?,
            What::Recorder { seconds } => recorder::run(&cli.bin, Duration::from_secs(seconds))?,
            What::Analysis => analysis::run(&cli.bin)?,
            What::Offcpu { pairs, seconds } => offcpu::run(&cli.bin, pairs, seconds)?,
            What::Top { seconds } => top::run(&cli.bin, Duration::from_secs(seconds))?,
            What::Unwind { seconds, binaries } => unwind::run(&cli.bin, &unwind::Parts { seconds, binaries })?,
            What::Churn { minutes } => churn::run(&cli.bin, Duration::from_secs(minutes * 60))?,
            What::Serve { minutes } => serve::run(&cli.bin, Duration::from_secs(minutes * 60))?,
            What::Floor { body, tracepoints } => match floor::run(&tracepoints, body)? {},
        };
        println!("{section}");
        markdown.push_str(&section);
        markdown.push('\n');
    }
    if let Some(dir) = cli.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&cli.out, markdown)?;
    eprintln!("wrote {}", cli.out.display());
    Ok(())
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn chrono_like_now() -> String {
    command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
}

fn hostname() -> String {
    command_output("hostname", &[])
}

fn kernel() -> String {
    command_output("uname", &["-r"])
}

/// The CPU's model and its mitigations of return and indirect-branch speculation: they set what a
/// call and a return cost in the kernel, which weighs on tracers by how many calls each event makes
/// (libbpf's `syscount -L` cost 3.41x one day and 3.9x the next on this project's VMs, the floors
/// unchanged).
fn cpu() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name").and_then(|rest| rest.split_once(':')))
        .map_or("unknown", |(_, model)| model.trim());
    let mitigations: Vec<String> = ["spec_rstack_overflow", "retbleed", "spectre_v2"]
        .iter()
        .filter_map(|name| {
            let state = std::fs::read_to_string(format!("/sys/devices/system/cpu/vulnerabilities/{name}")).ok()?;
            let state = state.trim();
            (state != "Not affected").then(|| format!("{name}: {state}"))
        })
        .collect();
    if mitigations.is_empty() { model.to_string() } else { format!("{model} ({})", mitigations.join("; ")) }
}

/// Median and range of a sample.
pub fn summarize(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 };
    (median, values[0], values[n - 1])
}

//! Command-line interface (clap derive), with the option names perf and bcc users expect.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    analysis::fold::Selection,
    collector::SessionConfig,
    output::prometheus::ProcessSeries,
    probes::{Probe, ProbeOptions, ProbeParser, ProbeSelection, cgroup},
    serve::ServeConfig,
    top::{TopConfig, snapshot::SortKey},
};

/// Stack samples per second on each CPU, unless told otherwise (perf's default for `-a` is 4000;
/// bcc's `profile` and Parca take 49 or 99 Hz: off the timer tick, cheap enough to leave on).
pub const DEFAULT_FREQUENCY_HZ: u32 = 99;
/// How often `record` drains the kernel maps: each drain walks the per-process maps, so often
/// enough that exited processes leave them, seldom enough to cost nothing.
const RECORD_DRAIN_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Parser)]
#[command(name = "profiler", version, about = "eBPF profiler: run-queue latency, syscalls and on-CPU stacks")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More log output (-v info, -vv debug); also RUST_LOG.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Record system-wide (or filtered) activity into a recording file, then print a summary.
    Record(RecordArgs),
    /// Print the summary of a recording.
    Report(ReportArgs),
    /// Render a recording's CPU stacks as a flamegraph SVG (or folded stacks).
    Flamegraph(FlamegraphArgs),
    /// Compare two recordings and flag significant regressions (exit 1 with --fail-on-regression,
    /// 2 on error).
    #[command(after_help = crate::analysis::diff::METHOD)]
    Diff(DiffArgs),
    /// Export a recording for other tools: Prometheus text, pprof, folded stacks.
    #[command(subcommand)]
    Export(ExportCommand),
    /// A live view, redrawn every second: the hottest functions, and per process its CPU, run-queue
    /// latency and slowest syscall (keys: q quits, p pauses, c/r/s sort, Enter focuses).
    Top(TopArgs),
    /// Keep the probes attached and serve cumulative histograms and counters on /metrics for
    /// Prometheus, with the profiler's health and anomaly flags.
    Serve(ServeArgs),
    /// Write the man page or shell completions to standard output (for packagers).
    #[command(hide = true)]
    Generate {
        #[arg(value_enum)]
        what: Generated,
        /// For `man`: write profiler.1 and a page per subcommand (profiler-record.1, ...) here
        /// instead of profiler.1 to standard output.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// What `generate` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Generated {
    /// The man page, profiler(1), in roff.
    Man,
    Bash,
    Zsh,
    Fish,
    Elvish,
    Powershell,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; loopback unless told otherwise.
    #[arg(long, default_value = "127.0.0.1:9924")]
    pub listen: std::net::SocketAddr,
    #[command(flatten)]
    pub target: TargetArgs,
    /// How often the kernel maps are drained into the exposed metrics.
    #[arg(long, default_value = "10s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Per-process run-queue series for the N busiest process names (the rest as comm="other");
    /// off by default to bound label cardinality.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub top_processes: usize,
    #[command(flatten)]
    pub labels: SeriesLabelArgs,
    /// Intervals in the rolling baseline of the p99 anomaly detector.
    #[arg(long, default_value_t = 30)]
    pub baseline: usize,
}

/// A label that per-process series may carry besides the process name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SeriesLabel {
    /// `container_id`: the container's id.
    Container,
    /// `pod_uid`: the Kubernetes pod's uid.
    Pod,
}

#[derive(Debug, Args)]
pub struct SeriesLabelArgs {
    /// Tell the per-process series (--top-processes) apart by container and pod too, comma-separated:
    /// each (name, container, pod) is a series, still N at most.
    #[arg(long, value_delimiter = ',', value_name = "LABEL")]
    pub labels: Vec<SeriesLabel>,
}

impl SeriesLabelArgs {
    pub fn series(&self, top: usize) -> anyhow::Result<ProcessSeries> {
        if !self.labels.is_empty() && top == 0 {
            anyhow::bail!("--labels labels the per-process series: add --top-processes N");
        }
        Ok(ProcessSeries {
            top,
            container: self.labels.contains(&SeriesLabel::Container),
            pod: self.labels.contains(&SeriesLabel::Pod),
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// Prometheus text exposition of every histogram and counter (for node_exporter's textfile
    /// collector).
    Prometheus {
        file: PathBuf,
        /// Where to write; default: standard output.
        #[arg(short, long, value_name = "OUT.prom")]
        output: Option<PathBuf>,
        /// Per-process run-queue series for the N busiest processes (the rest as comm="other").
        #[arg(long, default_value_t = 0, value_name = "N")]
        top_processes: usize,
        #[command(flatten)]
        labels: SeriesLabelArgs,
    },
    /// The CPU stacks as a gzipped pprof profile (`go tool pprof` reads it).
    Pprof {
        file: PathBuf,
        #[arg(short, long, value_name = "OUT.pb.gz")]
        output: PathBuf,
        /// The off-CPU stacks instead (the offcpu probe's): sample type off_cpu, in nanoseconds,
        /// with each thread's blocked state as the label thread_state.
        #[arg(long)]
        off_cpu: bool,
    },
    /// Folded stacks, as `flamegraph --folded`.
    Folded { file: PathBuf },
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The baseline recording.
    pub base: PathBuf,
    /// The recording to judge.
    pub new: PathBuf,
    /// Smallest relative change, in percent, that is flagged.
    #[arg(long, default_value_t = 10.0, value_parser = parse_threshold)]
    pub threshold: f64,
    /// Confidence a change must reach to be flagged (0.5 to 0.9999).
    #[arg(long, default_value_t = 0.99, value_parser = parse_confidence)]
    pub confidence: f64,
    /// Exit with status 1 when any regression is flagged.
    #[arg(long)]
    pub fail_on_regression: bool,
    /// Print the comparison as JSON.
    #[arg(long)]
    pub json: bool,
    /// Rows per table.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Also write a differential flamegraph (red: grew, blue: shrank).
    #[arg(long, value_name = "OUT.svg")]
    pub flamegraph: Option<PathBuf>,
}

fn parse_confidence(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(c) if (0.5..=0.9999).contains(&c) => Ok(c),
        _ => Err("the confidence is a number from 0.5 to 0.9999, e.g. 0.99".into()),
    }
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// How long to record (e.g. 10, 10s, 2m, 500ms); default: until Ctrl-C or SIGTERM.
    #[arg(short, long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Where to write the recording.
    #[arg(short, long, default_value = "profiler.rec")]
    pub output: PathBuf,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Keep threads apart in stack samples.
    #[arg(long)]
    pub per_thread: bool,
    /// Keep a latency histogram per process and syscall (p50/p99 in the report), not only per
    /// syscall: one more hash update in the kernel per timed call.
    #[arg(long)]
    pub syscall_latency_per_process: bool,
    /// Name inlined functions as frames of their own (needs DWARF debug info).
    #[arg(long)]
    pub inline: bool,
    /// Also look for debug files of stripped binaries here (by build-id, `DIR/.build-id/xx/...`,
    /// and by debug link), before /usr/lib/debug (repeatable). Debuginfod servers in
    /// DEBUGINFOD_URLS are asked too.
    #[arg(long = "debug-dir", value_name = "DIR")]
    pub debug_dirs: Vec<PathBuf>,
    /// Also write a flamegraph of the recording's stacks.
    #[arg(long, value_name = "OUT.svg")]
    pub flamegraph: Option<PathBuf>,
    /// Print nothing but errors; no summary at the end.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub report: ReportOptions,
}

/// What to record and how, as `record` and `top` take it.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// Only this process (repeatable); filtered in the kernel.
    #[arg(short, long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Only tasks of this cgroup v2 and the cgroups below it (a path, absolute or relative to the
    /// cgroup v2 root); filtered in the kernel.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["container", "pod"])]
    pub cgroup: Option<PathBuf>,
    /// Only this container's tasks, by its id (12 to 64 hex digits, as `docker ps` or `crictl ps`
    /// show it); filtered in the kernel by its cgroup.
    #[arg(long, value_name = "ID", conflicts_with = "pod")]
    pub container: Option<String>,
    /// Only this Kubernetes pod's tasks, by its uid; filtered in the kernel by its cgroup.
    #[arg(long, value_name = "UID")]
    pub pod: Option<String>,
    /// Probes to run, comma-separated; default: sched, syscalls and cpu.
    #[arg(long, value_delimiter = ',', value_name = "PROBE", value_parser = ProbeParser)]
    pub probes: Vec<Probe>,
    /// Stack samples per second on each CPU.
    #[arg(short = 'F', long, default_value_t = DEFAULT_FREQUENCY_HZ, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub frequency: u32,
    /// Also record the profiler's own process (left out by default, in the kernel).
    #[arg(long)]
    pub include_self: bool,
    /// The offcpu probe counts blocks at least this long (e.g. 1us, 500us, 2ms), as offcputime's
    /// --min-block-time.
    #[arg(long, value_name = "DURATION", default_value = "1us", value_parser = parse_block_time)]
    pub offcpu_min: Duration,
    /// The offcpu probe takes the stacks of one blocking switch-out in N, chosen at random, and
    /// counts its time N times: totals are estimates (the report gives their standard error), at
    /// a fraction of the cost. 1 takes every block, exact, and costs about twice as much as 8 on
    /// a machine that switches often.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_OFFCPU_SAMPLE, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub offcpu_sample: u32,
    /// The syscalls probe times one call in N, chosen at random on entry, and counts its latency
    /// N times: latency totals, means and histograms are estimates (the report says so), counts
    /// and errors stay exact, and a call costs little more than with `--probes syscall-counts`.
    /// Per-process histograms (`--syscall-latency-per-process`, `top`) hold the calls timed.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub syscall_latency_sample: u32,
}

/// `profiler top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// How often the screen is redrawn from the kernel's aggregates.
    #[arg(short = 'i', long, default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    /// What orders the processes at first (keys c, r, s change it).
    #[arg(long, value_enum, default_value_t = SortKey::Cpu)]
    pub sort: SortKey,
    /// Print this many snapshots, then stop (when standard output is not a terminal).
    #[arg(short = 'n', long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub iterations: Option<u64>,
    /// Also keep a recording of the whole run, as `record -o` writes it.
    #[arg(short, long, value_name = "FILE.rec")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A recording made by `profiler record`.
    pub file: PathBuf,
    #[command(flatten)]
    pub report: ReportOptions,
}

#[derive(Debug, Args)]
pub struct FlamegraphArgs {
    /// A recording made by `profiler record`.
    pub file: PathBuf,
    /// Where to write the SVG; default: standard output.
    #[arg(short, long, value_name = "OUT.svg")]
    pub output: Option<PathBuf>,
    /// Only these processes (repeatable).
    #[arg(short, long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Kernel frames only.
    #[arg(long, conflicts_with = "user_only")]
    pub kernel_only: bool,
    /// User frames only.
    #[arg(long)]
    pub user_only: bool,
    /// The title above the graph; default: "CPU flamegraph", or "Off-CPU time flamegraph".
    #[arg(long)]
    pub title: Option<String>,
    /// Print folded stacks (`comm;root;...;leaf count`) instead of an SVG.
    #[arg(long)]
    pub folded: bool,
    /// Where threads waited (the offcpu probe's stacks), not where they ran: widths are time off
    /// CPU, and folded counts microseconds (as `offcputime -f` prints them). Each stack's leaf is
    /// the state the thread blocked in.
    #[arg(long)]
    pub off_cpu: bool,
}

#[derive(Clone, Debug, Args)]
pub struct ReportOptions {
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also print latency histograms, runqlat style.
    #[arg(long)]
    pub histogram: bool,
    /// Rows in each top-N table.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
}

impl TargetArgs {
    fn options(&self, verbose: bool) -> anyhow::Result<ProbeOptions> {
        let cgroup = match (&self.cgroup, &self.container, &self.pod) {
            (Some(path), _, _) => Some(path.clone()),
            (None, Some(id), _) => Some(cgroup::container_cgroup(id)?),
            (None, None, Some(uid)) => Some(cgroup::pod_cgroup(uid)?),
            (None, None, None) => None,
        };
        Ok(ProbeOptions {
            pids: self.pids.clone(),
            cgroup,
            frequency_hz: self.frequency,
            per_thread: false,
            keep_verifier_log: verbose,
            include_self: self.include_self,
            changeable_pid_filter: false,
            syscall_latency_per_process: false,
            offcpu_min_ns: self.offcpu_min.as_nanos() as u64,
            offcpu_sample_one_in: self.offcpu_sample,
            syscall_sample_one_in: self.syscall_latency_sample,
        })
    }
}

impl RecordArgs {
    pub fn session_config(&self, verbose: bool) -> anyhow::Result<SessionConfig> {
        let probes = ProbeSelection::from_args(&self.target.probes, &Probe::defaults())?;
        if self.flamegraph.is_some() && !probes.probes.iter().any(|p| p.name() == "cpu") {
            anyhow::bail!("--flamegraph draws CPU stacks: add the cpu probe (--probes ...,cpu)");
        }
        if self.syscall_latency_per_process && !probes.probes.iter().any(|p| p.name() == "syscalls") {
            anyhow::bail!(
                "--syscall-latency-per-process times syscalls: add the syscalls probe (--probes ...,syscalls)"
            );
        }
        Ok(SessionConfig {
            probes,
            options: ProbeOptions {
                per_thread: self.per_thread,
                syscall_latency_per_process: self.syscall_latency_per_process,
                ..self.target.options(verbose)?
            },
            duration: self.duration,
            interval: RECORD_DRAIN_INTERVAL,
            inline: self.inline,
            debug_dirs: self.debug_dirs.clone(),
            progress: !self.quiet,
        })
    }
}

impl TopArgs {
    pub fn config(self, verbose: bool) -> anyhow::Result<TopConfig> {
        let session = SessionConfig {
            probes: ProbeSelection::from_args(&self.target.probes, &Probe::defaults())?,
            // Enter focuses on one process, in the kernel; each process's slowest syscall is ranked
            // by its p99, which needs its own histograms.
            options: ProbeOptions {
                changeable_pid_filter: true,
                syscall_latency_per_process: true,
                ..self.target.options(verbose)?
            },
            duration: None,
            interval: self.interval,
            inline: false,
            debug_dirs: Vec::new(),
            progress: false,
        };
        Ok(TopConfig { session, sort: self.sort, iterations: self.iterations, output: self.output })
    }
}

impl ServeArgs {
    pub fn config(self, verbose: bool) -> anyhow::Result<ServeConfig> {
        Ok(ServeConfig {
            listen: self.listen,
            probes: ProbeSelection::from_args(&self.target.probes, &Probe::defaults())?,
            options: self.target.options(verbose)?,
            interval: self.interval,
            processes: self.labels.series(self.top_processes)?,
            baseline: self.baseline,
        })
    }
}

impl FlamegraphArgs {
    pub fn selection(&self) -> Selection {
        Selection {
            pids: self.pids.clone(),
            kernel_only: self.kernel_only,
            user_only: self.user_only,
            count_unit: if self.off_cpu { NS_PER_US } else { 1 },
        }
    }
}

const NS_PER_US: u64 = 1000;

/// One blocking switch-out in 8: `perf bench sched pipe` slows 1.26× (every one: 2.23×), within
/// 1.1× of libbpf runqlat's 1.25× (benches/results/OFFCPU.md).
const DEFAULT_OFFCPU_SAMPLE: u32 = 8;

/// The longest duration taken: past a month, a number is a typo, not a plan (`serve` is the mode
/// that runs for good).
const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Plain numbers are seconds (as in perf and bcc tools); anything else is a humantime duration.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds > 0.0 => {
            Duration::try_from_secs_f64(seconds).map_err(|_| too_long())?
        }
        Ok(_) => return Err("the duration must be positive".into()),
        Err(_) => humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 10, 10s, 2m, 500ms)"))?,
    };
    if duration > MAX_DURATION {
        return Err(too_long());
    }
    if duration.is_zero() {
        return Err("the duration must be positive".into());
    }
    Ok(duration)
}

fn too_long() -> String {
    format!("the duration must be at most {}", humantime::format_duration(MAX_DURATION))
}

/// A minimum block time: 0 counts every block; more than a minute would count almost none.
fn parse_block_time(text: &str) -> Result<Duration, String> {
    let duration = match text.parse::<f64>() {
        Ok(0.0) => Duration::ZERO,
        _ => parse_duration(text)?,
    };
    if duration > Duration::from_secs(60) {
        return Err("the minimum block time must be at most 1m".into());
    }
    Ok(duration)
}

/// A drain interval: short enough to be useful, long enough that draining is not all it does.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = parse_duration(text)?;
    if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&interval) {
        return Err("the interval must be from 100ms to 1h".into());
    }
    Ok(interval)
}

fn parse_threshold(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(t) if t.is_finite() && (0.0..=10_000.0).contains(&t) => Ok(t),
        _ => Err("the threshold is a percentage from 0 to 10000, e.g. 10".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("-3").is_err());
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_duration("1e20").unwrap_err(), "the duration must be at most 30days");
        assert!(parse_duration("99999999999999999999").is_err());
        assert!(parse_duration("inf").is_err() && parse_duration("NaN").is_err());
        assert!(parse_duration("400days").is_err());
        assert!(parse_interval("99999999999999999999").is_err() && parse_interval("1ms").is_err());
        assert_eq!(parse_interval("10s").unwrap(), Duration::from_secs(10));
        assert!(parse_threshold("NaN").is_err() && parse_threshold("-1").is_err() && parse_threshold("inf").is_err());
        assert_eq!(parse_threshold("12.5").unwrap(), 12.5);
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

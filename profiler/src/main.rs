use std::{io::Write as _, path::Path, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::Parser as _;
use profiler::{
    analysis::{
        diff::{self, DiffOptions},
        summary::Summary,
    },
    atomic_file,
    cli::{
        Cli, Command, DiffArgs, ExportCommand, FlamegraphArgs, Generated, RecordArgs, ReportArgs, ReportOptions,
        ServeArgs,
    },
    collector::{self, RecordConfig},
    output::{
        self,
        flamegraph::{self, Selection},
        pprof,
        prometheus::{Exposition, ProcessSeries},
        report,
    },
    probes::{Probe, ProbeOptions, ProbeSelection},
    recording::{self, Recording},
    serve::ServeConfig,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    // `diff` keeps 1 for "regression found", so its errors exit with 2.
    let error_code = if matches!(cli.command, Command::Diff(_)) { 2 } else { 1 };
    match run(cli.command, cli.verbose > 0) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("profiler: error: {error:#}");
            ExitCode::from(error_code)
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn run(command: Command, verbose: bool) -> Result<ExitCode> {
    match command {
        Command::Record(args) => record(args, verbose).map(|()| ExitCode::SUCCESS),
        Command::Report(args) => report(args).map(|()| ExitCode::SUCCESS),
        Command::Flamegraph(args) => render_flamegraph(args).map(|()| ExitCode::SUCCESS),
        Command::Diff(args) => compare(args),
        Command::Export(command) => export(command).map(|()| ExitCode::SUCCESS),
        Command::Serve(args) => serve(args, verbose).map(|()| ExitCode::SUCCESS),
        Command::Generate { what } => generate(what).map(|()| ExitCode::SUCCESS),
    }
}

fn generate(what: Generated) -> Result<()> {
    use clap::CommandFactory as _;
    use clap_complete::Shell;
    let mut command = Cli::command();
    let mut out = std::io::stdout().lock();
    let shell = match what {
        Generated::Man => return Ok(clap_mangen::Man::new(command).render(&mut out)?),
        Generated::Bash => Shell::Bash,
        Generated::Zsh => Shell::Zsh,
        Generated::Fish => Shell::Fish,
        Generated::Elvish => Shell::Elvish,
        Generated::Powershell => Shell::PowerShell,
    };
    clap_complete::generate(shell, &mut command, "profiler", &mut out);
    Ok(())
}

fn serve(args: ServeArgs, verbose: bool) -> Result<()> {
    let named = !args.probes.is_empty();
    let probes = match named {
        true => args.probes.into_iter().filter(|p| *p != Probe::Cpu).collect(),
        false => vec![Probe::Sched, Probe::Syscalls],
    };
    let config = ServeConfig {
        listen: args.listen,
        probes: ProbeSelection { probes, named },
        options: ProbeOptions {
            pids: args.pids,
            cgroup: args.cgroup,
            frequency_hz: 99,
            per_thread: false,
            keep_verifier_log: verbose,
        },
        interval: args.interval,
        processes: ProcessSeries { top: args.top_processes },
        baseline: args.baseline,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(profiler::serve::serve(config))
}

fn export(command: ExportCommand) -> Result<()> {
    match command {
        ExportCommand::Prometheus { file, output, top_processes } => {
            let recording = read_recording(&file)?;
            let text = Exposition::new(&recording, ProcessSeries { top: top_processes }).render();
            match output {
                Some(path) => atomic_file::write(&path, |out| Ok(out.write_all(text.as_bytes())?)),
                None => Ok(std::io::stdout().lock().write_all(text.as_bytes())?),
            }
        }
        ExportCommand::Pprof { file, output } => {
            let recording = read_recording(&file)?;
            let profile = pprof::encode(&recording, recording_stacks(&recording)?);
            atomic_file::write(&output, |out| Ok(out.write_all(&profile)?))
        }
        ExportCommand::Folded { file } => render_flamegraph(FlamegraphArgs {
            file,
            output: None,
            pids: Vec::new(),
            kernel_only: false,
            user_only: false,
            title: String::new(),
            folded: true,
        }),
    }
}

fn compare(args: DiffArgs) -> Result<ExitCode> {
    let base = read_recording(&args.base)?;
    let new = read_recording(&args.new)?;
    let options = DiffOptions { threshold_percent: args.threshold, confidence: args.confidence, top: args.top };
    let result = diff::diff(&base, &new, &options);
    if let Some(path) = &args.flamegraph {
        let stacks = |r: &Recording| recording_stacks(r).map(|s| flamegraph::folded(r, s, &Selection::default()));
        let (before, after) = (stacks(&base)?, stacks(&new)?);
        atomic_file::write(path, |out| {
            flamegraph::differential_svg(&before, &after, "Differential CPU flamegraph", out)
        })?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print!("{}", output::diff::text(&result));
    }
    Ok(if args.fail_on_regression && !result.regressions.is_empty() { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn record(args: RecordArgs, verbose: bool) -> Result<()> {
    let named = !args.probes.is_empty();
    let mut probes = if named { args.probes.clone() } else { Probe::ALL.to_vec() };
    probes.sort();
    probes.dedup();
    if args.flamegraph.is_some() && !probes.contains(&Probe::Cpu) {
        anyhow::bail!("--flamegraph draws CPU stacks: add the cpu probe (--probes ...,cpu)");
    }
    let config = RecordConfig {
        probes: ProbeSelection { probes, named },
        options: ProbeOptions {
            pids: args.pids.clone(),
            cgroup: args.cgroup.clone(),
            frequency_hz: args.frequency,
            per_thread: args.per_thread,
            keep_verifier_log: verbose,
        },
        duration: args.duration,
        quiet: args.quiet,
        inline: args.inline,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let recording = runtime.block_on(collector::record(&config))?;
    recording::write_file(&args.output, &recording)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    // A quiet machine may give no samples at all: the recording stands, the graph is skipped.
    let svg = match &args.flamegraph {
        Some(path) if recording.stacks.as_ref().is_some_and(|s| !s.stacks.is_empty()) => {
            write_flamegraph(&recording, &Selection::default(), "CPU flamegraph", path)?;
            Some(path)
        }
        Some(_) => {
            eprintln!("profiler: no CPU samples were taken, so no flamegraph was written");
            None
        }
        None => None,
    };
    if !args.quiet {
        print_report(&recording, &args.report)?;
        eprintln!("wrote {}", args.output.display());
        if let Some(svg) = svg {
            eprintln!("wrote {}", svg.display());
        }
    }
    Ok(())
}

fn render_flamegraph(args: FlamegraphArgs) -> Result<()> {
    let recording = read_recording(&args.file)?;
    let selection = Selection { pids: args.pids, kernel_only: args.kernel_only, user_only: args.user_only };
    if args.folded {
        let stacks = recording_stacks(&recording)?;
        let mut out = std::io::stdout().lock();
        for line in flamegraph::folded(&recording, stacks, &selection) {
            writeln!(out, "{line}")?;
        }
        return Ok(());
    }
    match &args.output {
        Some(path) => write_flamegraph(&recording, &selection, &args.title, path),
        None => {
            let lines = flamegraph::folded(&recording, recording_stacks(&recording)?, &selection);
            flamegraph::svg(&lines, &args.title, std::io::stdout().lock())
        }
    }
}

fn recording_stacks(recording: &Recording) -> Result<&profiler::recording::Stacks> {
    recording.stacks.as_ref().context("the recording has no stacks: record with the cpu probe (--probes cpu)")
}

/// Renders to a temporary file renamed into place, so a failed render leaves no partial SVG.
fn write_flamegraph(recording: &Recording, selection: &Selection, title: &str, path: &Path) -> Result<()> {
    let lines = flamegraph::folded(recording, recording_stacks(recording)?, selection);
    if lines.is_empty() {
        anyhow::bail!("no stacks to draw: no samples match");
    }
    atomic_file::write(path, |out| flamegraph::svg(&lines, title, out))
}

fn report(args: ReportArgs) -> Result<()> {
    let recording = read_recording(&args.file)?;
    print_report(&recording, &args.report)
}

fn read_recording(path: &Path) -> Result<Recording> {
    recording::read_file(path).with_context(|| format!("{}", path.display()))
}

fn print_report(recording: &Recording, options: &ReportOptions) -> Result<()> {
    let summary = Summary::new(recording, options.top);
    if options.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", report::text(&summary));
        if options.histogram {
            print!("{}", report::histograms(recording, options.top));
        }
    }
    Ok(())
}

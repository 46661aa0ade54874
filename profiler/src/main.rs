use std::{path::Path, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::Parser as _;
use profiler::{
    analysis::summary::Summary,
    cli::{Cli, Command, RecordArgs, ReportArgs, ReportOptions},
    collector::{self, RecordConfig},
    output::report,
    probes::{Filter, Probe},
    recording::{self, Recording},
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("profiler: error: {error:#}");
            ExitCode::FAILURE
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

fn run(command: Command) -> Result<()> {
    match command {
        Command::Record(args) => record(args),
        Command::Report(args) => report(args),
    }
}

fn record(args: RecordArgs) -> Result<()> {
    let mut probes = if args.probes.is_empty() { Probe::ALL.to_vec() } else { args.probes.clone() };
    probes.sort();
    probes.dedup();
    let config = RecordConfig {
        probes,
        filter: Filter { pids: args.pids.clone(), cgroup: args.cgroup.clone() },
        duration: args.duration,
        quiet: args.quiet,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let recording = runtime.block_on(collector::record(&config))?;
    recording::write_file(&args.output, &recording)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    if !args.quiet {
        print_report(&recording, &args.report)?;
        eprintln!("wrote {}", args.output.display());
    }
    Ok(())
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

//! What each subcommand does, from its configuration (`cli` turns arguments into it) to its output.

use std::{io::Write as _, path::Path, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;

use crate::{
    analysis::{
        diff::{self, DiffOptions},
        fold::{Selection, folded},
        summary::Summary,
    },
    atomic_file::{self, Access, Prepared},
    cli::{Cli, Command, DiffArgs, ExportCommand, FlamegraphArgs, Generated, RecordArgs, ReportArgs, ReportOptions},
    collector::{RecordingSink, Session},
    output::{self, flamegraph, pprof, prometheus::Exposition, report},
    recording::{self, Recording, Stacks},
};

pub fn run(command: Command, verbose: bool) -> Result<ExitCode> {
    match command {
        Command::Record(args) => record(&args, verbose).map(|()| ExitCode::SUCCESS),
        Command::Report(args) => report(&args).map(|()| ExitCode::SUCCESS),
        Command::Flamegraph(args) => render_flamegraph(&args).map(|()| ExitCode::SUCCESS),
        Command::Diff(args) => compare(&args),
        Command::Export(command) => export(command).map(|()| ExitCode::SUCCESS),
        Command::Serve(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(crate::serve::serve(args.config(verbose)?)).map(|()| ExitCode::SUCCESS)
        }
        Command::Top(args) => crate::top::run(args.config(verbose)?).map(|()| ExitCode::SUCCESS),
        Command::Generate { what, dir } => generate(what, dir.as_deref()).map(|()| ExitCode::SUCCESS),
    }
}

fn record(args: &RecordArgs, verbose: bool) -> Result<()> {
    let config = args.session_config(verbose)?;
    // Outputs are opened before anything is attached: a path that cannot be written fails now,
    // not when a long recording ends.
    let output = atomic_file::prepare(&args.output, Access::Private)?;
    let svg_output = args.flamegraph.as_deref().map(|path| atomic_file::prepare(path, Access::Shared)).transpose()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let recording = runtime.block_on(async {
        let session = Session::start(config).await?;
        if !args.quiet {
            let names: Vec<&str> = session.probes().probes().iter().map(|p| p.name()).collect();
            let until = match args.duration {
                Some(d) => format!("for {}", humantime::format_duration(d)),
                None => "until Ctrl-C".into(),
            };
            eprintln!("recording {} {until}", names.join(", "));
        }
        let mut sink = RecordingSink::default();
        let meta = session.run(&mut [&mut sink]).await?;
        anyhow::Ok(sink.finish(meta))
    })?;
    recording::write_prepared(output, &recording)?;
    // A quiet machine may give no samples at all: the recording stands, the graph is skipped.
    let stacks = recording.stacks.as_ref().filter(|s| !s.stacks.is_empty());
    let svg = match (svg_output, &args.flamegraph, stacks) {
        (Some(svg_output), Some(path), Some(stacks)) => {
            write_flamegraph(&recording, stacks, &Selection::default(), &Graph::CPU, svg_output)?;
            Some(path)
        }
        (Some(_), _, _) => {
            eprintln!("profiler: no CPU samples were taken, so no flamegraph was written");
            None
        }
        (None, _, _) => None,
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

fn report(args: &ReportArgs) -> Result<()> {
    print_report(&read_recording(&args.file)?, &args.report)
}

fn print_report(recording: &Recording, options: &ReportOptions) -> Result<()> {
    let summary = Summary::new(recording, options.top);
    if options.json {
        print(&format!("{}\n", serde_json::to_string_pretty(&summary)?))
    } else {
        print(&report::text(&summary))?;
        if options.histogram {
            print(&report::histograms(recording, options.top))?;
        }
        Ok(())
    }
}

/// Standard output that fails with an error (stdout on a full disk), not a panic as `print!` does.
/// A closed pipe ends the process quietly through SIGPIPE, as coreutils do (main keeps its default).
fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).context("cannot write to standard output")
}

fn render_flamegraph(args: &FlamegraphArgs) -> Result<()> {
    let recording = read_recording(&args.file)?;
    let selection = args.selection();
    let (stacks, graph) = match args.off_cpu {
        false => (recording_stacks(&recording)?, Graph::CPU),
        true => (recording_offcpu(&recording)?, Graph::OFF_CPU),
    };
    let graph = Graph { title: args.title.as_deref().unwrap_or(graph.title), ..graph };
    if args.folded {
        return print_folded(&recording, stacks, &selection);
    }
    match &args.output {
        Some(path) => {
            write_flamegraph(&recording, stacks, &selection, &graph, atomic_file::prepare(path, Access::Shared)?)
        }
        None => {
            let lines = folded(&recording, stacks, &selection);
            let mut out = std::io::stdout().lock();
            flamegraph::svg(&lines, graph.title, graph.count_name, &mut out)?;
            out.flush().context("cannot write to standard output")
        }
    }
}

/// What a flamegraph shows: its title, and what its widths count.
struct Graph<'a> {
    title: &'a str,
    count_name: &'static str,
}

impl Graph<'static> {
    const CPU: Graph<'static> = Graph { title: "CPU flamegraph", count_name: "samples" };
    const OFF_CPU: Graph<'static> = Graph { title: "Off-CPU time flamegraph", count_name: "us" };
}

fn print_folded(recording: &Recording, stacks: &Stacks, selection: &Selection) -> Result<()> {
    let mut text = String::new();
    for line in folded(recording, stacks, selection) {
        text.push_str(&line);
        text.push('\n');
    }
    print(&text)
}

/// Renders to a temporary file renamed into place, so a failed render leaves no partial SVG.
fn write_flamegraph(
    recording: &Recording,
    stacks: &Stacks,
    selection: &Selection,
    graph: &Graph<'_>,
    output: Prepared,
) -> Result<()> {
    let lines = folded(recording, stacks, selection);
    if lines.is_empty() {
        anyhow::bail!("no stacks to draw: no samples match");
    }
    output.write(|out| flamegraph::svg(&lines, graph.title, graph.count_name, out))
}

fn compare(args: &DiffArgs) -> Result<ExitCode> {
    let base = read_recording(&args.base)?;
    let new = read_recording(&args.new)?;
    let options = DiffOptions { threshold_percent: args.threshold, confidence: args.confidence, top: args.top };
    let result = diff::diff(&base, &new, &options);
    if let Some(path) = &args.flamegraph {
        let lines = |r: &Recording| recording_stacks(r).map(|s| folded(r, s, &Selection::default()));
        let (before, after) = (lines(&base)?, lines(&new)?);
        atomic_file::write(path, Access::Shared, |out| {
            flamegraph::differential_svg(&before, &after, "Differential CPU flamegraph", out)
        })?;
    }
    if args.json {
        print(&format!("{}\n", serde_json::to_string_pretty(&result)?))?;
    } else {
        print(&output::diff::text(&result))?;
    }
    Ok(if args.fail_on_regression && !result.regressions.is_empty() { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn export(command: ExportCommand) -> Result<()> {
    match command {
        ExportCommand::Prometheus { file, output, top_processes, labels } => {
            let series = labels.series(top_processes)?;
            let recording = read_recording(&file)?;
            let text = Exposition::new(&recording, series).render();
            match output {
                Some(path) => atomic_file::write(&path, Access::Shared, |out| Ok(out.write_all(text.as_bytes())?)),
                None => print(&text),
            }
        }
        ExportCommand::Pprof { file, output, off_cpu } => {
            let recording = read_recording(&file)?;
            let profile = match off_cpu {
                false => pprof::encode(&recording, recording_stacks(&recording)?),
                true => pprof::encode_off_cpu(&recording, recording_offcpu(&recording)?),
            };
            atomic_file::write(&output, Access::Shared, |out| Ok(out.write_all(&profile)?))
        }
        ExportCommand::Folded { file } => {
            let recording = read_recording(&file)?;
            print_folded(&recording, recording_stacks(&recording)?, &Selection::default())
        }
    }
}

fn generate(what: Generated, dir: Option<&Path>) -> Result<()> {
    use clap_complete::Shell;
    let mut command = Cli::command();
    let mut out = std::io::stdout().lock();
    let shell = match (what, dir) {
        (Generated::Man, None) => return Ok(clap_mangen::Man::new(command).render(&mut out)?),
        (Generated::Man, Some(dir)) => return man_pages(command, dir),
        (_, Some(_)) => anyhow::bail!("--dir is for man pages; completions go to standard output"),
        (Generated::Bash, None) => Shell::Bash,
        (Generated::Zsh, None) => Shell::Zsh,
        (Generated::Fish, None) => Shell::Fish,
        (Generated::Elvish, None) => Shell::Elvish,
        (Generated::Powershell, None) => Shell::PowerShell,
    };
    clap_complete::generate(shell, &mut command, "profiler", &mut out);
    Ok(())
}

/// profiler(1), and a page per subcommand as git has them: profiler-record(1), ...
fn man_pages(command: clap::Command, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let command = command.disable_help_subcommand(true);
    let mut pages = vec![("profiler".to_string(), command.clone())];
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        pages.push((format!("profiler-{}", sub.get_name()), sub.clone().name(format!("profiler-{}", sub.get_name()))));
        for nested in sub.get_subcommands() {
            let name = format!("profiler-{}-{}", sub.get_name(), nested.get_name());
            pages.push((name.clone(), nested.clone().name(name)));
        }
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut file = std::fs::File::create(&path).with_context(|| format!("cannot write {}", path.display()))?;
        clap_mangen::Man::new(page).render(&mut file)?;
    }
    Ok(())
}

fn read_recording(path: &Path) -> Result<Recording> {
    recording::read_file(path).with_context(|| format!("{}", path.display()))
}

fn recording_stacks(recording: &Recording) -> Result<&Stacks> {
    recording.stacks.as_ref().context("the recording has no stacks: record with the cpu probe (--probes cpu)")
}

fn recording_offcpu(recording: &Recording) -> Result<&Stacks> {
    recording
        .offcpu
        .as_ref()
        .context("the recording has no off-CPU stacks: record with the offcpu probe (--probes offcpu)")
}

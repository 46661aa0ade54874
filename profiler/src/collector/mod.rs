//! `record`: attach the probes, poll while the recording runs, then drain everything into a
//! [`Recording`]. Ends on --duration, Ctrl-C or SIGTERM, always with a complete recording.

mod processes;

use std::{
    io::IsTerminal as _,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    probes::{self, Filter, Probe, Probes},
    recording::{Metadata, RecordOptions, Recording},
};
use processes::ProcessTable;

/// How often process names are collected and progress refreshed.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

pub struct RecordConfig {
    pub probes: Vec<Probe>,
    pub filter: Filter,
    pub duration: Option<Duration>,
    pub quiet: bool,
}

pub async fn record(config: &RecordConfig) -> Result<Recording> {
    // Install the handlers before loading anything, so a signal during start-up still ends cleanly.
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;

    let mut probes = Probes::attach(&config.probes, &config.filter)?;
    let started = Instant::now();
    let start_unix_ns = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    if !config.quiet {
        let names: Vec<&str> = config.probes.iter().map(|p| p.name()).collect();
        let until = match config.duration {
            Some(d) => format!("for {}", humantime::format_duration(d)),
            None => "until Ctrl-C".into(),
        };
        eprintln!("recording {} {until}", names.join(", "));
    }

    let progress = progress_bar(config.quiet);
    let mut table = ProcessTable::default();
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    let deadline = tokio::time::sleep(config.duration.unwrap_or(Duration::MAX / 4));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = ticker.tick() => {
                table.add_from_kernel(probes.take_process_names()?);
                if !progress.is_hidden() {
                    let counters = probes.counters()?;
                    progress.set_message(format!(
                        "{:.1}s · {} events · {} dropped",
                        started.elapsed().as_secs_f64(), counters.events(), counters.drops.total()
                    ));
                }
            }
        }
    }
    let duration = started.elapsed();
    probes.detach()?;
    progress.finish_and_clear();

    let mut recording = Recording {
        meta: metadata(config, start_unix_ns, duration),
        counters: probes.counters()?,
        runq: None,
        syscalls: None,
        processes: Default::default(),
    };
    table.add_from_kernel(probes.take_process_names()?);
    for probe in probes.probes() {
        match probe {
            Probe::Sched => recording.runq = Some(probes::sched::drain(&probes)?),
            Probe::Syscalls => recording.syscalls = Some(probes::syscalls::drain(&probes)?),
        }
    }
    recording.processes = table.finish(recording.tgids());
    Ok(recording)
}

fn progress_bar(quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} recording {msg}").expect("valid template"));
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

fn metadata(config: &RecordConfig, start_unix_ns: u64, duration: Duration) -> Metadata {
    let uname = nix::sys::utsname::uname().ok();
    Metadata {
        hostname: nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default(),
        kernel_release: uname.map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
        cpus: aya::util::online_cpus().map_or(0, |cpus| cpus.len() as u32),
        start_unix_ns,
        duration_ns: duration.as_nanos() as u64,
        profiler_version: env!("CARGO_PKG_VERSION").into(),
        options: RecordOptions {
            probes: config.probes.iter().map(|p| p.name().to_string()).collect(),
            pids: config.filter.pids.clone(),
            cgroup: config.filter.cgroup.as_ref().map(|p| p.display().to_string()),
            duration_limit_ns: config.duration.map(|d| d.as_nanos() as u64),
        },
    }
}

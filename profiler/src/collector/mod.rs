//! `record`: attach the probes, poll while the recording runs, then drain everything into a
//! [`Recording`]. Ends on --duration, Ctrl-C or SIGTERM, always with a complete recording.

mod evict;
mod processes;

use std::{
    io::IsTerminal as _,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    probes::{self, Probe, ProbeOptions, ProbeSelection, Probes},
    recording::{LeftOutProbe, Metadata, RecordOptions, Recording},
    symbolize::{StackSymbolizer, maps::MapsCache},
};
use evict::Evicted;
use processes::ProcessTable;
pub use processes::comm_to_string;

/// How often process names are collected and progress refreshed.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How often the memory maps of sampled processes are read again (they change: dlopen, JIT).
const MAPS_REFRESH_INTERVAL: Duration = Duration::from_secs(2);

pub struct RecordConfig {
    pub probes: ProbeSelection,
    pub options: ProbeOptions,
    pub duration: Option<Duration>,
    pub quiet: bool,
    /// Name inlined functions as frames of their own (needs DWARF).
    pub inline: bool,
}

/// Waits for the next announcements of newly sampled processes; never, without the `cpu` probe.
async fn new_processes(ring: &mut Option<AsyncFd<RingBuf<MapData>>>) -> std::io::Result<Vec<u32>> {
    let Some(ring) = ring else {
        return std::future::pending().await;
    };
    let mut guard = ring.readable_mut().await?;
    let mut tgids = Vec::new();
    while let Some(item) = guard.get_inner_mut().next() {
        if let Ok(bytes) = <[u8; 4]>::try_from(&item[..item.len().min(4)]) {
            tgids.push(u32::from_ne_bytes(bytes));
        }
    }
    guard.clear_ready();
    Ok(tgids)
}

/// Symbolization keeps one open file per mapped executable; allow as many as the hard limit.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

pub async fn record(config: &RecordConfig) -> Result<Recording> {
    // Install the handlers before loading anything, so a signal during start-up still ends cleanly.
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;

    raise_open_file_limit();
    let mut probes = Probes::attach(&config.probes, &config.options)?;
    if !config.quiet {
        report_left_out(&probes);
    }
    let mut ring = match probes.probes().contains(&Probe::Cpu) {
        // SAFETY: the ring buffer owns its fd and AsyncFd owns the ring buffer, so the fd stays
        // open and unchanged while registered.
        true => Some(
            unsafe {
                AsyncFd::register_with_interest(probes::oncpu::take_new_processes(&mut probes)?, Interest::READABLE)
            }
            .map_err(std::io::Error::from)
            .context("cannot watch the new-process ring buffer")?,
        ),
        false => None,
    };
    let mut maps = MapsCache::default();
    let started = Instant::now();
    let start_unix_ns = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    if !config.quiet {
        let names: Vec<&str> = probes.probes().iter().map(|p| p.name()).collect();
        let until = match config.duration {
            Some(d) => format!("for {}", humantime::format_duration(d)),
            None => "until Ctrl-C".into(),
        };
        eprintln!("recording {} {until}", names.join(", "));
    }

    let progress = progress_bar(config.quiet);
    let mut table = ProcessTable::default();
    let mut evicted = Evicted::default();
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    let mut maps_ticker = tokio::time::interval(MAPS_REFRESH_INTERVAL);
    let deadline = tokio::time::sleep(config.duration.unwrap_or(Duration::MAX / 4));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            tgids = new_processes(&mut ring) => {
                for tgid in tgids.context("cannot read the new-process ring buffer")? {
                    // The process may already be gone; its samples then keep module+offset frames.
                    let _ = maps.snapshot(tgid);
                }
            }
            _ = maps_ticker.tick() => maps.refresh(),
            _ = ticker.tick() => {
                table.add_from_kernel(probes.take_process_names()?);
                if let Err(error) = evicted.evict_if_full(&mut probes) {
                    // The entries stay in the kernel maps; at worst some are dropped when they fill.
                    tracing::warn!("cannot move exited processes out of the kernel maps: {error:#}");
                }
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
        meta: metadata(config, &probes, start_unix_ns, duration),
        counters: probes.counters()?,
        runq: None,
        syscalls: None,
        stacks: None,
        processes: Default::default(),
    };
    table.add_from_kernel(probes.take_process_names()?);
    for probe in probes.probes() {
        match probe {
            Probe::Sched => recording.runq = Some(probes::sched::drain(&probes)?),
            Probe::Syscalls => recording.syscalls = Some(probes::syscalls::drain(&probes)?),
            Probe::Cpu => {
                let raw = probes::oncpu::drain(&probes)?;
                maps.refresh();
                let unknown: std::collections::BTreeSet<u32> =
                    raw.iter().map(|s| s.tgid).filter(|&tgid| !maps.knows(tgid)).collect();
                for tgid in unknown {
                    let _ = maps.snapshot(tgid);
                }
                recording.stacks = Some(StackSymbolizer::new(config.inline).symbolize(&raw, &maps));
            }
        }
    }
    evicted.restore(&mut recording);
    recording.derive_counts();
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

/// One line per selected probe that this kernel cannot run.
pub fn report_left_out(probes: &Probes) {
    for left_out in probes.left_out() {
        eprintln!("profiler: leaving out the {} probe: {}", left_out.probe.name(), left_out.reason);
    }
}

fn metadata(config: &RecordConfig, probes: &Probes, start_unix_ns: u64, duration: Duration) -> Metadata {
    let uname = nix::sys::utsname::uname().ok();
    Metadata {
        hostname: nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default(),
        kernel_release: uname.map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
        cpus: aya::util::online_cpus().map_or(0, |cpus| cpus.len() as u32),
        start_unix_ns,
        duration_ns: duration.as_nanos() as u64,
        profiler_version: env!("CARGO_PKG_VERSION").into(),
        options: RecordOptions {
            probes: probes.probes().iter().map(|p| p.name().to_string()).collect(),
            pids: config.options.pids.clone(),
            cgroup: config.options.cgroup.as_ref().map(|p| p.display().to_string()),
            duration_limit_ns: config.duration.map(|d| d.as_nanos() as u64),
            frequency_hz: config.options.frequency_hz,
            per_thread: config.options.per_thread,
        },
        left_out: probes
            .left_out()
            .iter()
            .map(|l| LeftOutProbe { probe: l.probe.name().into(), reason: l.reason.clone() })
            .collect(),
        kernel_features: probes.features().names().into_iter().map(String::from).collect(),
    }
}

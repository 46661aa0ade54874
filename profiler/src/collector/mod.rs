//! The collector: one session attaches the probes, drains them every interval and hands each
//! interval's deltas (counters, histograms, syscall rows, named stacks, new processes) to its sinks:
//! the recording file for `record`, the metrics for `serve`. Signals, progress, process names and
//! the memory maps symbolization needs live here, once.

mod processes;
mod record;
mod runtimes;
mod stacks;

use std::{
    io::IsTerminal as _,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{Signal, SignalKind, signal},
};

use crate::{
    probes::{self, ProbeOptions, ProbeSelection, ProbeSpec as _, Probes},
    recording::{LeftOutProbe, Metadata, RecordOptions, Recording},
};
use processes::ProcessTable;
pub use processes::comm_to_string;
pub use record::RecordingSink;
use stacks::StackNaming;

/// How often process names are collected and progress refreshed.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How often the memory maps of sampled processes are read again (they change: dlopen, JIT).
const MAPS_REFRESH_INTERVAL: Duration = Duration::from_secs(2);
/// A bounded kernel map this full is drained at once, not at the end of the interval: processes
/// that start by the thousand (a build) would fill it first.
const EARLY_DRAIN_AT: f64 = 0.5;
/// After an early drain, the next waits until the fill has grown by this much: when live processes
/// are what fills a map, draining again would take nothing out.
const EARLY_DRAIN_STEP: f64 = 0.125;

pub struct SessionConfig {
    pub probes: ProbeSelection,
    pub options: ProbeOptions,
    /// Stop after this long; else at SIGINT, SIGTERM or SIGHUP.
    pub duration: Option<Duration>,
    /// How often the kernel maps are drained and the sinks fed.
    pub interval: Duration,
    /// Name inlined functions as frames of their own (needs DWARF).
    pub inline: bool,
    /// Where to look for debug files of stripped binaries, before the system's directories.
    pub debug_dirs: Vec<std::path::PathBuf>,
    /// Show a progress line on a terminal.
    pub progress: bool,
}

/// One interval, as every sink sees it.
pub struct Interval<'a> {
    /// What the probes aggregated during the interval, with stacks named and the processes first
    /// seen in it described.
    pub delta: &'a Recording,
    /// Processes that exited: the kernel maps no longer hold them.
    pub exited: &'a [u32],
    /// How full each bounded kernel map is (entries over capacity).
    pub fills: &'a [(&'static str, f64)],
    pub programs_attached: usize,
    /// From the session's start to the drain that ended this interval.
    pub elapsed: Duration,
}

/// Where intervals go.
pub trait Sink {
    fn interval(&mut self, interval: &Interval<'_>) -> Result<()>;
}

/// What the user of a running session may ask of it (`top`'s keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// End the session, as a signal does.
    Stop,
    /// Record only this process from now on (in the kernel); `None`: the processes the session
    /// started with. Needs `ProbeOptions::changeable_pid_filter`.
    Focus(Option<u32>),
    /// End the interval now and feed the sinks (a served profile's window opens and closes at a
    /// drain).
    Drain,
}

/// Where a session's controls come from; the session ends when every sender is gone.
pub type Controls = tokio::sync::mpsc::UnboundedReceiver<Control>;

/// The attached probes and what turns their drains into intervals.
pub struct Session {
    config: SessionConfig,
    probes: Probes,
    signals: [Signal; 3],
    new_processes: Option<AsyncFd<RingBuf<MapData>>>,
    /// With the cpu or offcpu probe.
    stacks: Option<StackNaming>,
    processes: ProcessTable,
    /// Processes seen exited at the last drain: their last samples may be in the next one, so
    /// their memory maps are forgotten one drain later.
    forget_next: Vec<u32>,
    /// Set for the feed after the probes are detached.
    last_feed: bool,
    started: Instant,
    start_unix_ns: u64,
}

impl Session {
    /// Attaches the probes. Signal handlers are installed first, so a signal during start-up still
    /// ends the session cleanly.
    pub async fn start(config: SessionConfig) -> Result<Session> {
        let signals = [
            signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            signal(SignalKind::hangup()).context("cannot handle SIGHUP")?,
        ];
        raise_open_file_limit();
        let mut probes = Probes::attach(&config.probes, &config.options)?;
        for left_out in probes.left_out() {
            eprintln!("profiler: leaving out the {} probe: {}", left_out.probe.name(), left_out.reason);
        }
        let new_processes = match probes::oncpu::new_processes(&mut probes)? {
            // SAFETY: the ring buffer owns its fd and AsyncFd owns the ring buffer, so the fd stays
            // open and unchanged while registered.
            Some(ring) => Some(
                unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
                    .map_err(std::io::Error::from)
                    .context("cannot watch the new-process ring buffer")?,
            ),
            None => None,
        };
        let mut stacks = match new_processes {
            Some(_) => Some(StackNaming::new(&probes.ebpf, config.inline, &config.debug_dirs)?),
            None => None,
        };
        if stacks.is_some() {
            warn_if_kernel_addresses_hidden();
        }
        // The processes asked for get their unwind tables before their first samples.
        if let Some(stacks) = stacks.as_mut() {
            for &pid in &config.options.pids {
                stacks.announce(&mut probes.ebpf, pid);
            }
        }
        // The window opened when the last program was attached, before the set-up that followed.
        let started = probes.opened();
        let start_unix_ns = (SystemTime::now() - started.elapsed()).duration_since(UNIX_EPOCH).unwrap_or_default();
        let start_unix_ns = start_unix_ns.as_nanos() as u64;
        Ok(Session {
            config,
            probes,
            signals,
            new_processes,
            stacks,
            processes: ProcessTable::default(),
            forget_next: Vec::new(),
            last_feed: false,
            started,
            start_unix_ns,
        })
    }

    pub fn probes(&self) -> &Probes {
        &self.probes
    }

    /// Runs until the duration ends or a signal comes, feeding `sinks` every interval and once
    /// more after the probes are detached; returns the session's metadata.
    pub async fn run(self, sinks: &mut [&mut dyn Sink]) -> Result<Metadata> {
        self.run_controlled(sinks, None).await
    }

    /// As `run`, and also ends at `Control::Stop` (or when the controls' senders are gone), and
    /// changes the pid filter at `Control::Focus`.
    pub async fn run_controlled(
        mut self,
        sinks: &mut [&mut dyn Sink],
        mut controls: Option<&mut Controls>,
    ) -> Result<Metadata> {
        let progress = progress_bar(!self.config.progress);
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        let mut maps_refresh = tokio::time::interval(MAPS_REFRESH_INTERVAL);
        let mut drain =
            tokio::time::interval_at(tokio::time::Instant::now() + self.config.interval, self.config.interval);
        let mut early_drain_at = EARLY_DRAIN_AT;
        // The programs are detached at the deadline exactly, by a thread of the probes'; the loop
        // ends at the same time unless it is busy, and then as soon as it is free.
        let deadline = match self.config.duration {
            Some(duration) => {
                self.probes.detach_at(self.started + duration);
                tokio::time::Instant::from_std(self.started + duration)
            }
            None => tokio::time::Instant::now() + Duration::from_secs(1 << 40),
        };
        let deadline = tokio::time::sleep_until(deadline);
        tokio::pin!(deadline);
        loop {
            let [interrupt, terminate, hangup] = &mut self.signals;
            tokio::select! {
                // Announcements first: a process's unwind tables are wanted before its samples.
                biased;
                _ = &mut deadline => break,
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
                _ = hangup.recv() => break,
                control = next_control(&mut controls) => match control {
                    None | Some(Control::Stop) => break,
                    Some(Control::Focus(pid)) => {
                        let pids = pid.map_or_else(|| self.config.options.pids.clone(), |pid| vec![pid]);
                        self.probes.refilter(&pids)?;
                    }
                    Some(Control::Drain) => {
                        self.feed(sinks)?;
                        drain.reset();
                    }
                },
                tgids = new_processes(&mut self.new_processes) => {
                    let tgids = tgids.context("cannot read the new-process ring buffer")?;
                    if let Some(stacks) = self.stacks.as_mut() {
                        for tgid in tgids {
                            stacks.announce(&mut self.probes.ebpf, tgid);
                        }
                    }
                }
                _ = maps_refresh.tick() => {
                    if let Some(stacks) = self.stacks.as_mut() {
                        let gone = stacks.refresh(&mut self.probes.ebpf);
                        self.forget_next.extend(gone);
                    }
                }
                _ = poll.tick() => {
                    if targets_exited(&self.config.options.pids) {
                        eprintln!("profiler: every process asked for with -p has exited: ending the recording");
                        break;
                    }
                    self.processes.add_from_kernel(self.probes.take_process_names()?);
                    let (counters, fullest) = self.probes.status()?;
                    progress.set_message(format!(
                        "{:.1}s · {} events · {} dropped",
                        self.started.elapsed().as_secs_f64(), counters.events(), counters.drops.total()
                    ));
                    if fullest >= early_drain_at {
                        self.feed(sinks)?;
                        drain.reset();
                        early_drain_at = EARLY_DRAIN_AT.max(self.probes.status()?.1 + EARLY_DRAIN_STEP);
                    }
                }
                _ = drain.tick() => {
                    self.feed(sinks)?;
                    // The next interval starts after this drain, however late the tick was served
                    // and however long the drain took: an interval is never shorter than asked.
                    drain.reset();
                }
            }
        }
        let duration = self.probes.detach()?;
        progress.finish_and_clear();
        if let Some(stacks) = self.stacks.as_mut() {
            stacks.refresh(&mut self.probes.ebpf);
        }
        self.last_feed = true;
        self.feed(sinks)?;
        Ok(self.metadata(duration))
    }

    /// Drains the probes into one interval and hands it to every sink.
    fn feed(&mut self, sinks: &mut [&mut dyn Sink]) -> Result<()> {
        let (drained, exited) = self.probes.drain()?;
        // The interval ends at the drain, not after the naming below, which may take long (a
        // process's first symbolization): else the next interval would seem that much shorter.
        let drained_at = self.started.elapsed();
        // After the drain: a program names a process just after it creates the process's entry.
        self.processes.add_from_kernel(self.probes.take_process_names()?);
        let mut delta = drained.recording;
        if let Some(stacks) = self.stacks.as_mut() {
            let (oncpu, offcpu) = stacks.name(&mut self.probes.ebpf, &drained.stacks, &drained.offcpu);
            delta.stacks = self.probes.runs(probes::oncpu::Cpu.name()).then_some(oncpu);
            delta.offcpu = self.probes.runs(probes::offcpu::OffCpu.name()).then_some(offcpu);
        }
        delta.processes = self.processes.describe(delta.tgids(), self.last_feed);
        let interval = Interval {
            delta: &delta,
            exited: &exited,
            fills: &drained.fills,
            programs_attached: self.probes.programs_attached(),
            elapsed: drained_at,
        };
        for sink in sinks.iter_mut() {
            sink.interval(&interval)?;
        }
        let forget = std::mem::replace(&mut self.forget_next, exited);
        if let Some(stacks) = self.stacks.as_mut() {
            stacks.forget(&mut self.probes.ebpf, &forget);
        }
        self.processes.forget(&forget);
        Ok(())
    }

    fn metadata(&self, duration: Duration) -> Metadata {
        let uname = nix::sys::utsname::uname().ok();
        let (config, probes) = (&self.config, &self.probes);
        Metadata {
            hostname: nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default(),
            kernel_release: uname.map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
            cpus: aya::util::online_cpus().map_or(0, |cpus| cpus.len() as u32),
            start_unix_ns: self.start_unix_ns,
            duration_ns: duration.as_nanos() as u64,
            profiler_version: env!("CARGO_PKG_VERSION").into(),
            options: RecordOptions {
                probes: probes.probes().iter().map(|p| p.name().to_string()).collect(),
                pids: config.options.pids.clone(),
                cgroup: config.options.cgroup.as_ref().map(|p| p.display().to_string()),
                duration_limit_ns: config.duration.map(|d| d.as_nanos() as u64),
                frequency_hz: config.options.frequency_hz,
                per_thread: config.options.per_thread,
                excluded_self: !config.options.include_self,
                offcpu_min_ns: config.options.offcpu_min_ns,
                offcpu_sample_one_in: config.options.offcpu_one_in(),
                syscall_sample_one_in: config.options.syscall_one_in(),
            },
            left_out: probes
                .left_out()
                .iter()
                .map(|l| LeftOutProbe { probe: l.probe.name().into(), reason: l.reason.clone() })
                .collect(),
            kernel_features: probes.features().names().into_iter().map(String::from).collect(),
            unwind: self.stacks.as_ref().map(StackNaming::tables),
        }
    }
}

/// The next control; never, for a session run without them.
async fn next_control(controls: &mut Option<&mut Controls>) -> Option<Control> {
    match controls {
        Some(controls) => controls.recv().await,
        None => std::future::pending().await,
    }
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

/// With `-p`, whether none of the processes is alive any more (a zombie counts as exited): the
/// recording then ends, as perf's does.
fn targets_exited(pids: &[u32]) -> bool {
    let alive = |pid: &u32| {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
        // The state follows the command name, which may itself hold ") ".
        let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
        !matches!(state, Some('Z' | 'X') | None)
    };
    !pids.is_empty() && !pids.iter().any(alive)
}

/// Without CAP_SYSLOG, or with kernel.kptr_restrict set, /proc/kallsyms shows every address as 0
/// and no kernel frame can be named: the user hears it once, at the start, not from a graph of
/// hex addresses.
fn warn_if_kernel_addresses_hidden() {
    let Ok(file) = std::fs::File::open("/proc/kallsyms") else { return };
    let mut first = String::new();
    if std::io::BufRead::read_line(&mut std::io::BufReader::new(file), &mut first).is_err() {
        return;
    }
    let address = first.split_whitespace().next().unwrap_or("");
    if !address.is_empty() && address.bytes().all(|b| b == b'0') {
        let restrict = std::fs::read_to_string("/proc/sys/kernel/kptr_restrict").unwrap_or_default();
        eprintln!(
            "profiler: kernel addresses are hidden (kernel.kptr_restrict = {}, or no CAP_SYSLOG): kernel frames will be unnamed addresses",
            restrict.trim()
        );
    }
}

/// Symbolization keeps one open file per mapped executable; allow as many as the hard limit.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn progress_bar(hidden: bool) -> ProgressBar {
    if hidden || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} recording {msg}").expect("valid template"));
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

//! `profiler top`: the live view, one more sink of the same session as `record` and `serve`. Each
//! interval's drain becomes a snapshot (`snapshot`), drawn on the terminal (`screen`) or, when
//! standard output is not a terminal, printed as plain lines for scripts.

mod screen;
pub mod snapshot;

use std::{collections::HashMap, io::IsTerminal as _, io::Write as _, sync::mpsc, time::Duration};

use anyhow::{Context as _, Result};
use tokio::sync::mpsc::UnboundedSender;

use crate::{
    atomic_file::{self, Access},
    collector::{Control, Interval, RecordingSink, Session, SessionConfig, Sink},
    recording,
};
use screen::Screen;
use snapshot::{Context, Snapshot, SortKey};

/// Rows of each table in a plain-text snapshot.
const TEXT_ROWS: usize = 20;

pub struct TopConfig {
    pub session: SessionConfig,
    pub sort: SortKey,
    /// Stop after this many snapshots (plain text only, as top's `-n`).
    pub iterations: Option<u64>,
    /// Also keep a recording of the whole run here.
    pub output: Option<std::path::PathBuf>,
}

pub fn run(config: TopConfig) -> Result<()> {
    let TopConfig { session, sort, iterations, output } = config;
    let prepared = output.as_deref().map(|path| atomic_file::prepare(path, Access::Private)).transpose()?;
    let on_terminal = std::io::stdout().is_terminal();
    if on_terminal && iterations.is_some() {
        anyhow::bail!("--iterations is for plain-text output: redirect standard output, or press q to stop");
    }
    let frequency_hz = session.options.frequency_hz;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let recording = runtime.block_on(async {
        // Attached before the screen takes the terminal, so what start-up says stays readable.
        let session = Session::start(session).await?;
        let probes: Vec<&'static str> = session.probes().probes().iter().map(|p| p.name()).collect();
        let (controls_sender, mut controls) = tokio::sync::mpsc::unbounded_channel();
        let (screen, destination) = if on_terminal {
            let (snapshots_sender, snapshots) = mpsc::channel();
            (Some(Screen::start(snapshots, controls_sender, sort)?), Output::Screen(snapshots_sender))
        } else {
            (None, Output::Text { sort, iterations, controls: controls_sender })
        };
        let mut view = TopSink::new(destination, probes, frequency_hz);
        let mut whole_run = prepared.is_some().then(RecordingSink::default);
        let meta = {
            let mut sinks: Vec<&mut dyn Sink> = vec![&mut view];
            if let Some(sink) = whole_run.as_mut() {
                sinks.push(sink);
            }
            session.run_controlled(&mut sinks, Some(&mut controls)).await
        };
        // The screen ends when the snapshots' sender is gone, and then gives the terminal back.
        drop(view);
        if let Some(screen) = screen {
            screen.finish()?;
        }
        let meta = meta?;
        anyhow::Ok(whole_run.map(|sink| sink.finish(meta)))
    })?;
    if let (Some(prepared), Some(recording)) = (prepared, recording) {
        recording::write_prepared(prepared, &recording)?;
    }
    Ok(())
}

/// Where snapshots go.
enum Output {
    Screen(mpsc::Sender<Snapshot>),
    /// Printed to standard output; with a count of iterations, the session is stopped after that
    /// many. Holding the controls' sender keeps the session running.
    Text {
        sort: SortKey,
        iterations: Option<u64>,
        controls: UnboundedSender<Control>,
    },
}

/// Turns intervals into snapshots, keeping the process names across them.
struct TopSink {
    output: Output,
    probes: Vec<&'static str>,
    frequency_hz: u32,
    cpus: usize,
    names: HashMap<u32, String>,
    /// Processes that exited at the last interval: their names are kept for one more.
    exited: Vec<u32>,
    last_elapsed: Duration,
    printed: u64,
}

impl TopSink {
    fn new(output: Output, probes: Vec<&'static str>, frequency_hz: u32) -> TopSink {
        TopSink {
            output,
            probes,
            frequency_hz,
            cpus: aya::util::online_cpus().map_or(0, |cpus| cpus.len()),
            names: HashMap::new(),
            exited: Vec::new(),
            last_elapsed: Duration::ZERO,
            printed: 0,
        }
    }
}

impl Sink for TopSink {
    fn interval(&mut self, interval: &Interval<'_>) -> Result<()> {
        for (&tgid, process) in &interval.delta.processes {
            self.names.insert(tgid, process.comm.clone());
        }
        let context = Context {
            elapsed: interval.elapsed,
            length: interval.elapsed.saturating_sub(self.last_elapsed),
            cpus: self.cpus,
            frequency_hz: self.frequency_hz,
            programs: interval.programs_attached,
            probes: &self.probes,
            names: &self.names,
        };
        let snapshot = Snapshot::new(interval.delta, &context);
        self.last_elapsed = interval.elapsed;
        for tgid in std::mem::replace(&mut self.exited, interval.exited.to_vec()) {
            self.names.remove(&tgid);
        }
        match &self.output {
            // The screen may have ended (its thread failed): the session then ends by its controls.
            Output::Screen(sender) => {
                let _ = sender.send(snapshot);
            }
            Output::Text { sort, iterations, controls } => {
                // The interval after the last one asked for (the probes' final drain) is not shown.
                if iterations.is_some_and(|count| self.printed >= count) {
                    return Ok(());
                }
                let mut out = std::io::stdout().lock();
                out.write_all(snapshot.text(*sort, TEXT_ROWS).as_bytes())
                    .and_then(|()| out.flush())
                    .context("cannot write to standard output")?;
                self.printed += 1;
                if iterations.is_some_and(|count| self.printed >= count) {
                    let _ = controls.send(Control::Stop);
                }
            }
        }
        Ok(())
    }
}

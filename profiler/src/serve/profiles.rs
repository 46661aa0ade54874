//! CPU profiles over HTTP, as Go's net/http/pprof serves them: `GET /debug/pprof/profile?seconds=N`
//! answers after N seconds with a gzipped pprof of the stacks sampled meanwhile, which
//! `go tool pprof`, Parca and Pyroscope (through Alloy) pull.
//!
//! Every request is a window on the one session: a request asks for a drain when it arrives, the
//! window opens at that drain and ends N seconds later, at a drain the request asks for then; each
//! interval drained in between goes to every window open then. So concurrent requests share the
//! in-kernel aggregation, and with no request open an interval's stacks are dropped at once:
//! memory follows the open windows (at most `MAX_WINDOWS`, each at most `MAX_SECONDS` long, and
//! gone as soon as its client is), not how long `serve` has run.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Result;
use axum::{
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use tokio::sync::{mpsc::UnboundedSender, oneshot};

use crate::{
    collector::{Control, Interval, Sink},
    output::pprof,
    recording::{Accumulator, Metadata, Process, Recording},
};

/// Go's default window.
const DEFAULT_SECONDS: u64 = 30;
/// The longest window served: its stacks are held in memory until it ends.
pub const MAX_SECONDS: u64 = 300;
/// Windows open at once; more requests get 503 until one ends (a profile store asks for one at a
/// time per target).
const MAX_WINDOWS: usize = 8;

/// A request's window.
struct Window {
    seconds: u64,
    /// Set at the drain that opens the window: when it ends, for the request to ask for the drain
    /// that closes it.
    opened_reply: Option<oneshot::Sender<Instant>>,
    /// When the window opened: the session's clock at that drain, and the wall clock.
    opened: Option<(Duration, SystemTime)>,
    ends: Option<Instant>,
    stacks: Accumulator,
    reply: oneshot::Sender<Recording>,
}

type Windows = Arc<Mutex<Vec<Window>>>;

/// The sink that hands each open window its share of the intervals.
pub struct ProfileSink {
    windows: Windows,
    drain_asked: Arc<AtomicBool>,
    frequency_hz: u32,
    /// Every live process's description: an interval describes only the processes first seen in
    /// it, and a window names the processes of all its stacks.
    processes: HashMap<u32, Process>,
    /// Processes that exited in the last interval: their last samples may come in this one, so
    /// they are forgotten one interval later.
    exited: Vec<u32>,
}

/// What the HTTP handler holds: where to open windows and how to ask for drains.
#[derive(Clone)]
pub struct Profiles {
    windows: Windows,
    /// A drain is asked for and not yet done: requests that come meanwhile share it.
    drain_asked: Arc<AtomicBool>,
    controls: UnboundedSender<Control>,
}

/// A sink and its handle, sharing the open windows.
pub fn profiles(controls: UnboundedSender<Control>, frequency_hz: u32) -> (ProfileSink, Profiles) {
    let (windows, drain_asked) = (Windows::default(), Arc::new(AtomicBool::new(false)));
    let sink = ProfileSink {
        windows: windows.clone(),
        drain_asked: drain_asked.clone(),
        frequency_hz,
        processes: HashMap::new(),
        exited: Vec::new(),
    };
    (sink, Profiles { windows, drain_asked, controls })
}

impl Sink for ProfileSink {
    fn interval(&mut self, interval: &Interval<'_>) -> Result<()> {
        self.drain_asked.store(false, Ordering::SeqCst);
        for (&tgid, process) in &interval.delta.processes {
            self.processes.entry(tgid).or_insert_with(|| process.clone());
        }
        let now = Instant::now();
        let mut windows = self.windows.lock().expect("windows lock");
        // A window whose client has gone is dropped with its stacks.
        windows.retain(|window| !window.reply.is_closed());
        for window in windows.iter_mut() {
            match window.opened {
                // The interval that opens a window ended as the request came: none of it is in.
                None => {
                    let ends = now + Duration::from_secs(window.seconds);
                    window.opened = Some((interval.elapsed, SystemTime::now()));
                    window.ends = Some(ends);
                    if let Some(opened) = window.opened_reply.take() {
                        let _ = opened.send(ends);
                    }
                }
                Some(_) => {
                    window.stacks.add_stacks(interval.delta);
                    // Named as they are added: a process may exit before the window ends.
                    add_descriptions(&mut window.stacks, interval.delta, &self.processes);
                }
            }
        }
        let (done, open): (Vec<Window>, Vec<Window>) =
            windows.drain(..).partition(|window| window.ends.is_some_and(|ends| ends <= now));
        *windows = open;
        drop(windows);
        for window in done {
            let (opened, opened_unix) = window.opened.expect("a closed window was opened");
            let mut recording = window.stacks.finish();
            recording.meta = Metadata {
                start_unix_ns: opened_unix.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64,
                // From drain to drain, on the session's clock.
                duration_ns: interval.elapsed.saturating_sub(opened).as_nanos() as u64,
                ..Metadata::default()
            };
            recording.meta.options.frequency_hz = self.frequency_hz;
            // The client may have gone.
            let _ = window.reply.send(recording);
        }
        for tgid in std::mem::replace(&mut self.exited, interval.exited.to_vec()) {
            self.processes.remove(&tgid);
        }
        Ok(())
    }
}

/// Describes in `window` the processes of `delta`'s stacks.
fn add_descriptions(window: &mut Accumulator, delta: &Recording, processes: &HashMap<u32, Process>) {
    for stack in delta.stacks.iter().flat_map(|stacks| &stacks.stacks) {
        if let Some(process) = processes.get(&stack.tgid) {
            window.describe(stack.tgid, process);
        }
    }
}

impl Drop for ProfileSink {
    /// The session is over: requests still waiting get their answer (503) now.
    fn drop(&mut self) {
        self.windows.lock().expect("windows lock").clear();
    }
}

impl Profiles {
    /// Asks the session for a drain, unless one is asked for already.
    fn ask_for_drain(&self) -> bool {
        if self.drain_asked.swap(true, Ordering::SeqCst) {
            return true;
        }
        self.controls.send(Control::Drain).is_ok()
    }
}

/// `GET /debug/pprof/profile?seconds=N`.
pub async fn profile(
    State(profiles): State<Option<Profiles>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(profiles) = profiles else {
        return (StatusCode::NOT_FOUND, "no CPU profiles: the cpu probe is not running (serve --probes ...,cpu)\n")
            .into_response();
    };
    let seconds = match query.get("seconds").map(|s| s.parse::<u64>()) {
        None => DEFAULT_SECONDS,
        Some(Ok(seconds)) if (1..=MAX_SECONDS).contains(&seconds) => seconds,
        Some(_) => {
            let message = format!("seconds must be a whole number from 1 to {MAX_SECONDS}\n");
            return (StatusCode::BAD_REQUEST, message).into_response();
        }
    };
    let (opened_reply, opened) = oneshot::channel();
    let (reply, mut answer) = oneshot::channel();
    {
        let mut windows = profiles.windows.lock().expect("windows lock");
        if windows.len() >= MAX_WINDOWS {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "10")],
                format!("{MAX_WINDOWS} profiles are being taken already\n"),
            )
                .into_response();
        }
        let window = Window {
            seconds,
            opened_reply: Some(opened_reply),
            opened: None,
            ends: None,
            stacks: Accumulator::default(),
            reply,
        };
        windows.push(window);
    }
    let stopping = || (StatusCode::SERVICE_UNAVAILABLE, "the profiler is stopping\n").into_response();
    if !profiles.ask_for_drain() {
        return stopping();
    }
    // The window ends N seconds after the drain that opened it; the session may end first.
    let Ok(ends) = opened.await else { return stopping() };
    let answered = tokio::select! {
        _ = tokio::time::sleep_until(ends.into()) => None,
        // A drain of the session's own at the end, or the session's end.
        answered = &mut answer => Some(answered),
    };
    let answered = match answered {
        Some(answered) => answered,
        None if !profiles.ask_for_drain() => return stopping(),
        None => answer.await,
    };
    let Ok(recording) = answered else { return stopping() };
    let empty = Default::default();
    let body = pprof::encode(&recording, recording.stacks.as_ref().unwrap_or(&empty));
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CONTENT_DISPOSITION, "attachment; filename=\"profile\""),
        ],
        body,
    )
        .into_response()
}

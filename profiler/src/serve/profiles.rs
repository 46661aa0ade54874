//! CPU profiles over HTTP, as Go's net/http/pprof serves them: `GET /debug/pprof/profile?seconds=N`
//! answers after N seconds with a gzipped pprof of the stacks sampled meanwhile, which
//! `go tool pprof`, Parca and Pyroscope (through Alloy) pull.
//!
//! Every request is a window on the one session: a request asks for a drain when it arrives and
//! another when its time is up, and each interval drained in between goes to every window open
//! then. So concurrent requests share the in-kernel aggregation, and with no request open an
//! interval's stacks are dropped at once: memory follows the open windows (at most one per
//! connection, each at most `MAX_SECONDS` long), not how long `serve` has run.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
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

/// A request's window.
struct Window {
    /// When the window ends: the first drain at or after this closes it.
    ends: Instant,
    /// When its first drain came (the window starts after it); none until then.
    opened: Option<(Instant, SystemTime)>,
    stacks: Accumulator,
    reply: oneshot::Sender<Recording>,
}

type Windows = Arc<Mutex<Vec<Window>>>;

/// The sink that hands each open window its share of the intervals.
pub struct ProfileSink {
    windows: Windows,
    frequency_hz: u32,
    /// Every live process's description: an interval describes only the processes first seen in
    /// it, and a window names the processes of all its stacks.
    processes: HashMap<u32, Process>,
    /// Processes that exited in the last interval: their last samples may come in the next one,
    /// so they are forgotten one interval later.
    exited: Vec<u32>,
}

/// What the HTTP handler holds: where to open windows and how to ask for drains.
#[derive(Clone)]
pub struct Profiles {
    windows: Windows,
    controls: UnboundedSender<Control>,
}

/// A sink and its handle, sharing the open windows.
pub fn profiles(controls: UnboundedSender<Control>, frequency_hz: u32) -> (ProfileSink, Profiles) {
    let windows = Windows::default();
    let sink = ProfileSink { windows: windows.clone(), frequency_hz, processes: HashMap::new(), exited: Vec::new() };
    (sink, Profiles { windows, controls })
}

impl Sink for ProfileSink {
    fn interval(&mut self, interval: &Interval<'_>) -> Result<()> {
        for tgid in std::mem::replace(&mut self.exited, interval.exited.to_vec()) {
            self.processes.remove(&tgid);
        }
        for (&tgid, process) in &interval.delta.processes {
            self.processes.entry(tgid).or_insert_with(|| process.clone());
        }
        let now = Instant::now();
        let mut windows = self.windows.lock().expect("windows lock");
        for window in windows.iter_mut() {
            match window.opened {
                // The interval that opens a window ended as the request came: none of it is in.
                None => window.opened = Some((now, SystemTime::now())),
                Some(_) => window.stacks.add_stacks(interval.delta),
            }
        }
        let (done, open): (Vec<Window>, Vec<Window>) =
            windows.drain(..).partition(|window| window.opened.is_some() && window.ends <= now);
        *windows = open;
        drop(windows);
        for window in done {
            let (opened, opened_unix) = window.opened.expect("a closed window was opened");
            let mut recording = window.stacks.finish();
            for tgid in recording.tgids() {
                if let Some(process) = self.processes.get(&tgid) {
                    recording.processes.entry(tgid).or_insert_with(|| process.clone());
                }
            }
            recording.meta = Metadata {
                start_unix_ns: opened_unix.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64,
                duration_ns: now.duration_since(opened).as_nanos() as u64,
                ..Metadata::default()
            };
            recording.meta.options.frequency_hz = self.frequency_hz;
            // The client may have gone.
            let _ = window.reply.send(recording);
        }
        Ok(())
    }
}

impl Drop for ProfileSink {
    /// The session is over: requests still waiting get their answer (503) now.
    fn drop(&mut self) {
        self.windows.lock().expect("windows lock").clear();
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
    let ends = Instant::now() + Duration::from_secs(seconds);
    let (reply, answer) = oneshot::channel();
    profiles.windows.lock().expect("windows lock").push(Window {
        ends,
        opened: None,
        stacks: Accumulator::default(),
        reply,
    });
    let stopping = || (StatusCode::SERVICE_UNAVAILABLE, "the profiler is stopping\n").into_response();
    if profiles.controls.send(Control::Drain).is_err() {
        return stopping();
    }
    tokio::time::sleep_until(ends.into()).await;
    if profiles.controls.send(Control::Drain).is_err() {
        return stopping();
    }
    let Ok(recording) = answer.await else {
        return stopping();
    };
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

//! The attachments of the programs, held apart from the programs so that they can be cut at an
//! exact instant: `record -d 10` must record 10 s, not 10 s plus however long the session's loop
//! was busy (symbolizing, draining) when the deadline passed. A thread of its own drops the links
//! at the deadline; the window is measured from the last attachment to the last detachment.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// A link to the kernel (a BPF link or perf event fd): dropping it detaches its program.
type Link = Box<dyn Send>;

#[derive(Default)]
pub struct Links {
    held: Arc<Mutex<Held>>,
}

#[derive(Default)]
struct Held {
    links: Vec<Link>,
    opened: Option<Instant>,
    closed: Option<Instant>,
}

impl Links {
    pub fn hold(&mut self, link: impl Send + 'static) {
        self.held.lock().expect("links lock").links.push(Box::new(link));
    }

    /// Marks every program attached: the window opens now.
    pub fn open(&mut self) -> Instant {
        *self.held.lock().expect("links lock").opened.get_or_insert_with(Instant::now)
    }

    /// Detaches everything at `deadline`, whatever the caller is doing then.
    pub fn close_at(&self, deadline: Instant) {
        let held = Arc::clone(&self.held);
        let spawned = std::thread::Builder::new().name("deadline".into()).spawn(move || {
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
            close(&held);
        });
        if let Err(error) = spawned {
            // The session's own deadline still ends the recording, a little later.
            tracing::warn!("cannot start the deadline thread: {error}");
        }
    }

    /// Detaches everything now, unless the deadline did already; the window's length.
    pub fn close(&self) -> Duration {
        let closed = close(&self.held);
        let held = self.held.lock().expect("links lock");
        held.opened.map_or(Duration::ZERO, |opened| closed.saturating_duration_since(opened))
    }
}

fn close(held: &Mutex<Held>) -> Instant {
    let mut held = held.lock().expect("links lock");
    if let Some(closed) = held.closed {
        return closed;
    }
    held.links.clear();
    *held.closed.insert(Instant::now())
}

//! The sink of `record`: every interval added up into one recording.
//!
//! A busy machine starts hundreds of processes a second (a build, a shell loop): kept apart, their
//! rows would grow the recording, and the recorder's memory, without bound. The first processes
//! of each name that exit keep their own rows; later ones fold into one total per name ("sh, 29710
//! processes"), so memory follows the names seen, not the processes.

use std::collections::HashMap;

use anyhow::Result;

use super::{Interval, Sink};
use crate::recording::{Accumulator, FoldedNames, Metadata, Recording};

/// Exited processes of one name kept apart before the rest of that name fold into its total.
const KEPT_PER_NAME: u32 = 16;

#[derive(Default)]
pub struct RecordingSink {
    accumulator: Accumulator,
    folded: FoldedNames,
    /// Exited processes kept apart so far, by name (within a container).
    kept: HashMap<String, u32>,
    /// Processes that exited in the last interval: their last waits and calls may come in the next
    /// one, so they fold one interval later.
    exited: Vec<u32>,
}

impl Sink for RecordingSink {
    fn interval(&mut self, interval: &Interval<'_>) -> Result<()> {
        self.accumulator.add(interval.delta);
        let exited = std::mem::replace(&mut self.exited, interval.exited.to_vec());
        self.fold(&exited);
        Ok(())
    }
}

impl RecordingSink {
    fn fold(&mut self, exited: &[u32]) {
        let mut moves = HashMap::new();
        for &tgid in exited {
            let key = self.accumulator.recording().fold_key(tgid);
            let kept = self.kept.entry(key.clone()).or_default();
            if *kept < KEPT_PER_NAME {
                *kept += 1;
            } else {
                moves.insert(tgid, self.folded.id(&key));
            }
        }
        self.accumulator.fold(&moves);
    }

    /// The whole recording, described by the session's metadata.
    pub fn finish(mut self, meta: Metadata) -> Recording {
        let exited = std::mem::take(&mut self.exited);
        self.fold(&exited);
        let mut recording = self.accumulator.finish();
        recording.meta = meta;
        recording
    }
}

//! The sink of `record`: every interval added up into one recording.

use anyhow::Result;

use super::{Interval, Sink};
use crate::recording::{Accumulator, Metadata, Recording};

#[derive(Default)]
pub struct RecordingSink {
    accumulator: Accumulator,
}

impl Sink for RecordingSink {
    fn interval(&mut self, interval: &Interval<'_>) -> Result<()> {
        self.accumulator.add(interval.delta);
        Ok(())
    }
}

impl RecordingSink {
    /// The whole recording, described by the session's metadata.
    pub fn finish(self, meta: Metadata) -> Recording {
        let mut recording = self.accumulator.finish();
        recording.meta = meta;
        recording
    }
}

//! Exited processes' entries, moved out of the kernel's per-process maps once one of them is half
//! full, and added back at the end: a long recording on a machine that starts many processes (a
//! build, a CI runner) keeps every process instead of dropping the ones that came late.

use std::collections::BTreeMap;

use anyhow::Result;

use crate::{
    probes::Probes,
    recording::{LatencyHistogram, ProcessSyscall, Recording},
};

/// Fill of the fullest per-process map at which exited processes are moved out.
const EVICT_AT: f64 = 0.5;
/// After moving them out, wait until the fill has grown by this much before walking the maps again:
/// when live processes are what fills them, another walk would find nothing to move.
const EVICT_STEP: f64 = 0.125;

#[derive(Default)]
pub struct Evicted {
    runq: BTreeMap<u32, LatencyHistogram>,
    syscalls: BTreeMap<(u32, u32), ProcessSyscall>,
    next_at: f64,
}

fn fullest(probes: &Probes) -> Result<f64> {
    Ok(probes.map_fill()?.into_iter().map(|(_, fill)| fill).fold(0.0, f64::max))
}

impl Evicted {
    /// If a per-process map is full enough, moves out the entries of processes that exited.
    pub fn evict_if_full(&mut self, probes: &mut Probes) -> Result<()> {
        if fullest(probes)? < self.next_at.max(EVICT_AT) {
            return Ok(());
        }
        let exited = probes.take_exited()?;
        for (tgid, histogram) in exited.runq {
            self.runq.entry(tgid).or_default().merge(&histogram);
        }
        for row in exited.syscalls {
            absorb(&mut self.syscalls, row);
        }
        self.next_at = fullest(probes)? + EVICT_STEP;
        Ok(())
    }

    /// Adds what was moved out back into the final recording.
    pub fn restore(self, recording: &mut Recording) {
        if let Some(runq) = recording.runq.as_mut() {
            for (tgid, histogram) in self.runq {
                runq.per_process.entry(tgid).or_default().merge(&histogram);
            }
        }
        if let Some(syscalls) = recording.syscalls.as_mut() {
            let mut rows = self.syscalls;
            for row in std::mem::take(&mut syscalls.per_process) {
                absorb(&mut rows, row);
            }
            syscalls.per_process = rows.into_values().collect();
        }
    }
}

/// Adds a row to a table keyed by (tgid, syscall); a tgid the kernel reused sums with the earlier
/// process of that id, as the kernel's own maps would have.
fn absorb(rows: &mut BTreeMap<(u32, u32), ProcessSyscall>, row: ProcessSyscall) {
    match rows.get_mut(&(row.tgid, row.nr)) {
        Some(existing) => existing.absorb(&row),
        None => {
            rows.insert((row.tgid, row.nr), row);
        }
    }
}

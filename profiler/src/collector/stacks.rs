//! What the collector keeps to turn the kernel's stacks into named ones: each sampled process's
//! memory maps (read while it lives), the unwind tables its files need in the kernel, and the
//! symbolizer, which remembers what it named.

use std::{collections::HashSet, path::PathBuf};

use anyhow::Result;
use aya::Ebpf;

use crate::{
    recording::{Stacks, UnwindTables},
    symbolize::{RawStack, StackSymbolizer, maps::MapsCache},
    unwind::{UnwindStats, Unwinder},
};

pub struct StackNaming {
    maps: MapsCache,
    unwinder: Unwinder,
    symbolizer: StackSymbolizer,
    /// Processes whose maps are read again at each refresh: those sampled in the last interval
    /// and those announced since.
    active: HashSet<u32>,
    announced: HashSet<u32>,
}

impl StackNaming {
    pub fn new(ebpf: &Ebpf, inline: bool, debug_dirs: &[PathBuf]) -> Result<Self> {
        Ok(StackNaming {
            maps: MapsCache::default(),
            unwinder: Unwinder::new(ebpf)?,
            symbolizer: StackSymbolizer::new(inline, debug_dirs),
            active: HashSet::new(),
            announced: HashSet::new(),
        })
    }

    /// A process sampled for the first time (or after an exec): its maps are read and its files'
    /// tables loaded, so the unwinder walks its stacks from its next sample on.
    pub fn announce(&mut self, ebpf: &mut Ebpf, tgid: u32) {
        self.announced.insert(tgid);
        self.active.insert(tgid);
        // The process may already be gone; its samples then keep module+offset frames.
        if self.maps.snapshot(tgid).is_ok()
            && let Err(error) = self.unwinder.load_process(ebpf, tgid, &self.maps)
        {
            tracing::warn!("cannot load the unwind tables of process {tgid}: {error:#}");
        }
    }

    /// Reads every known process's maps again (dlopen, JIT), loading the tables of new files;
    /// returns the processes that are gone.
    pub fn refresh(&mut self, ebpf: &mut Ebpf) -> Vec<u32> {
        let refreshed = self.maps.refresh(&self.active);
        for tgid in refreshed.changed {
            if let Err(error) = self.unwinder.load_process(ebpf, tgid, &self.maps) {
                tracing::warn!("cannot load the unwind tables of process {tgid}: {error:#}");
            }
        }
        refreshed.gone
    }

    /// Names an interval's stacks: its CPU samples and its off-CPU blocks.
    pub fn name(&mut self, ebpf: &mut Ebpf, oncpu: &[RawStack], offcpu: &[RawStack]) -> (Stacks, Stacks) {
        self.active = oncpu.iter().chain(offcpu).map(|stack| stack.tgid).chain(self.announced.drain()).collect();
        for stack in oncpu.iter().chain(offcpu) {
            if !self.maps.knows(stack.tgid) {
                self.announce(ebpf, stack.tgid);
            }
        }
        let oncpu = self.symbolizer.symbolize(oncpu, &self.maps, Some(&self.unwinder));
        let offcpu = self.symbolizer.symbolize(offcpu, &self.maps, Some(&self.unwinder));
        self.symbolizer.end_interval(&self.maps);
        (oncpu, offcpu)
    }

    /// Forgets processes whose last samples are named.
    pub fn forget(&mut self, ebpf: &mut Ebpf, tgids: &[u32]) {
        self.maps.forget(tgids);
        self.symbolizer.forget(tgids);
        if let Err(error) = self.unwinder.forget(ebpf, tgids) {
            tracing::warn!("cannot forget exited processes' unwind tables: {error:#}");
        }
    }

    /// What the unwind tables cost, for the recording.
    pub fn tables(&self) -> UnwindTables {
        let UnwindStats { tables, rows, row_capacity, no_room, no_table, mappings_cut, build_time, bytes_read } =
            self.unwinder.stats.clone();
        UnwindTables {
            tables,
            rows,
            row_capacity,
            no_room,
            no_table,
            mappings_cut,
            build_ns: build_time.as_nanos() as u64,
            bytes_read,
        }
    }
}

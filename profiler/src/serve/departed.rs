//! Processes that exited, folded into per-name totals so that the cumulative metrics never go
//! down while their entries leave the kernel maps (which would otherwise fill up over days).

use std::collections::{BTreeMap, HashMap};

use anyhow::Result;

use crate::{
    probes::Probes,
    recording::{LatencyHistogram, Process, ProcessSyscall, Recording},
};

/// Synthetic ids of folded names start above any pid (pid_max is at most 2^22).
const FIRST_ID: u32 = 1 << 31;
/// Names kept apart at most; beyond, exited processes fold into "other".
const MAX_NAMES: usize = 4096;

#[derive(Default)]
pub struct Departed {
    ids: HashMap<String, u32>,
    /// Names of live processes, read while they live.
    names: HashMap<u32, String>,
    runq: BTreeMap<u32, LatencyHistogram>,
    syscalls: BTreeMap<(u32, u32), ProcessSyscall>,
    live: usize,
}

fn proc_comm(tgid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{tgid}/comm")).ok().map(|c| c.trim_end().to_string())
}

impl Departed {
    pub fn live(&self) -> usize {
        self.live
    }

    fn id_for(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let name = if self.ids.len() >= MAX_NAMES { "other" } else { name };
        let next = FIRST_ID + self.ids.len() as u32;
        *self.ids.entry(name.to_string()).or_insert(next)
    }

    /// Moves the data of processes that no longer exist out of `current` and the kernel maps.
    pub fn fold_exited(&mut self, current: &mut Recording, probes: &mut Probes) -> Result<()> {
        for (tgid, name) in probes.take_process_names()? {
            let comm = proc_comm(tgid).unwrap_or_else(|| crate::collector::comm_to_string(&name.comm));
            self.names.insert(tgid, comm);
        }
        let tgids = current.tgids();
        for &tgid in &tgids {
            if !self.names.contains_key(&tgid)
                && let Some(comm) = proc_comm(tgid)
            {
                self.names.insert(tgid, comm);
            }
        }
        let exited = probes.take_exited()?;
        for &tgid in &exited.tgids {
            let name = self.names.remove(&tgid).unwrap_or_else(|| "?".to_string());
            let id = self.id_for(&name);
            // The kernel's rows, read after the process was known to be gone, are complete; the
            // snapshot in `current` may have been read while it still ran.
            if let Some(runq) = current.runq.as_mut() {
                runq.per_process.remove(&tgid);
            }
            if let Some(histogram) = exited.runq.get(&tgid) {
                self.runq.entry(id).or_default().merge(histogram);
            }
            if let Some(syscalls) = current.syscalls.as_mut() {
                syscalls.per_process.retain(|r| r.tgid != tgid);
            }
            for row in exited.syscalls.iter().filter(|r| r.tgid == tgid) {
                let folded = self.syscalls.entry((id, row.nr)).or_insert_with(|| ProcessSyscall {
                    tgid: id,
                    nr: row.nr,
                    ..Default::default()
                });
                folded.absorb(row);
            }
        }
        let exited = exited.tgids;
        self.names.retain(|tgid, _| !exited.contains(tgid));
        self.live = tgids.iter().filter(|tgid| !exited.contains(tgid)).count();
        current.processes = tgids
            .iter()
            .filter_map(|tgid| {
                self.names.get(tgid).map(|comm| (*tgid, Process { comm: comm.clone(), ..Default::default() }))
            })
            .collect();
        Ok(())
    }

    /// `current` plus the folded totals, as one recording.
    pub fn merged_with(&self, current: &Recording) -> Recording {
        let mut merged = current.clone();
        for (name, &id) in &self.ids {
            merged.processes.insert(id, Process { comm: name.clone(), ..Default::default() });
        }
        if let Some(runq) = merged.runq.as_mut() {
            for (&id, histogram) in &self.runq {
                runq.per_process.insert(id, histogram.clone());
            }
        }
        if let Some(syscalls) = merged.syscalls.as_mut() {
            syscalls.per_process.extend(self.syscalls.values().cloned());
        }
        merged
    }
}

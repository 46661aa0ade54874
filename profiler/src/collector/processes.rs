//! Names of the processes the probes saw. The kernel notes each new process's comm; we read its
//! executable, command line and container from /proc within a poll interval, while it most likely
//! still lives.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    fs,
};

use profiler_common::process::ProcessName;

use super::runtimes::RuntimeNames;
use crate::recording::{Container, Process};

#[derive(Default)]
pub struct ProcessTable {
    runtimes: RuntimeNames,
    /// Named by the kernel, not yet handed to the sinks.
    processes: BTreeMap<u32, Process>,
    /// Handed to the sinks already.
    described: HashSet<u32>,
    /// Seen in the probes' data, but neither the kernel nor /proc has named them yet.
    pending: BTreeSet<u32>,
}

impl ProcessTable {
    /// Adds processes the kernel reported. A name reported again (the process exec'd since)
    /// replaces the one not yet handed to the sinks; one handed to them stays.
    pub fn add_from_kernel(&mut self, names: Vec<(u32, ProcessName)>) {
        for (tgid, name) in names {
            if self.described.contains(&tgid) {
                continue;
            }
            let mut process = self.read_proc(tgid).unwrap_or_default();
            if process.comm.is_empty() {
                process.comm = comm_to_string(&name.comm);
            }
            // Named again as it exits (its last calls make new entries), a process has no exe,
            // command line or cgroup left to read: what was read while it lived says more.
            if process.exe.is_none() && self.processes.get(&tgid).is_some_and(|known| known.comm == process.comm) {
                continue;
            }
            self.processes.insert(tgid, process);
        }
    }

    /// Descriptions of the given tgids (and of those still pending) not described before: from
    /// what the kernel named, else from /proc (the kernel's map was full). One that neither names
    /// waits for the kernel's name, which may come a moment after its data; at the `last` call it
    /// is "?".
    pub fn describe(&mut self, tgids: BTreeSet<u32>, last: bool) -> BTreeMap<u32, Process> {
        let mut result = BTreeMap::new();
        let candidates: BTreeSet<u32> = std::mem::take(&mut self.pending).into_iter().chain(tgids).collect();
        for tgid in candidates {
            if self.described.contains(&tgid) {
                continue;
            }
            let process = match self.processes.remove(&tgid).or_else(|| self.read_proc(tgid)) {
                Some(process) => process,
                None if last => Process { comm: "?".into(), ..Default::default() },
                None => {
                    self.pending.insert(tgid);
                    continue;
                }
            };
            self.described.insert(tgid);
            result.insert(tgid, process);
        }
        result
    }

    /// A process as /proc describes it, with its container's names.
    fn read_proc(&mut self, tgid: u32) -> Option<Process> {
        let mut process = read_proc(tgid)?;
        if let Some(container) = process.container.as_mut() {
            self.runtimes.name(container);
        }
        Some(process)
    }

    /// Forgets processes that exited.
    pub fn forget(&mut self, tgids: &[u32]) {
        for tgid in tgids {
            self.processes.remove(tgid);
            self.described.remove(tgid);
        }
    }
}

pub fn comm_to_string(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

fn read_proc(tgid: u32) -> Option<Process> {
    if tgid == 0 {
        return Some(Process { comm: "swapper".into(), ..Default::default() });
    }
    let dir = format!("/proc/{tgid}");
    let comm = fs::read_to_string(format!("{dir}/comm")).ok()?.trim_end().to_string();
    let exe = fs::read_link(format!("{dir}/exe")).ok().map(|p| p.display().to_string());
    let cmdline = fs::read(format!("{dir}/cmdline"))
        .ok()
        .filter(|raw| !raw.is_empty())
        .map(|raw| String::from_utf8_lossy(&raw).trim_end_matches('\0').replace('\0', " "));
    let container = fs::read_to_string(format!("{dir}/cgroup")).ok().as_deref().and_then(Container::from_proc_cgroup);
    Some(Process { comm, exe, cmdline, folded: 0, container })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_this_process_from_proc() {
        let me = std::process::id();
        let mut table = ProcessTable::default();
        table.add_from_kernel(vec![(me, ProcessName { comm: *b"kernel-name\0\0\0\0\0" })]);
        assert!(table.describe([u32::MAX].into(), false).is_empty(), "an unnamed process waits");
        let processes = table.describe([me].into(), true);
        assert!(table.describe([me].into(), true).is_empty(), "each process is described once");
        let this = &processes[&me];
        assert!(!this.comm.is_empty() && this.comm != "kernel-name", "/proc wins while the process lives");
        assert!(this.exe.as_deref().is_some_and(|exe| exe.starts_with('/')));
        assert_eq!(processes[&u32::MAX].comm, "?");
    }

    #[test]
    fn a_process_named_again_as_it_exits_keeps_what_was_read_while_it_lived() {
        // No such process: /proc has nothing to read, as for one that is exiting.
        let gone = u32::MAX - 1;
        let lived = Process { comm: "app".into(), exe: Some("/usr/bin/app".into()), ..Default::default() };
        let mut table = ProcessTable::default();
        table.processes.insert(gone, lived.clone());
        table.add_from_kernel(vec![(gone, ProcessName { comm: *b"app\0\0\0\0\0\0\0\0\0\0\0\0\0" })]);
        assert_eq!(table.processes[&gone], lived, "the living description stays");
        // Another name: the process exec'd another program since.
        table.add_from_kernel(vec![(gone, ProcessName { comm: *b"other\0\0\0\0\0\0\0\0\0\0\0" })]);
        assert_eq!(table.processes[&gone].comm, "other");
    }

    #[test]
    fn kernel_comm_is_cut_at_nul() {
        assert_eq!(comm_to_string(b"bash\0\0garbage\0\0\0"), "bash");
        assert_eq!(comm_to_string(b"sixteen-chars-xx"), "sixteen-chars-xx");
    }
}

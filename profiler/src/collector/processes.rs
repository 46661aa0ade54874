//! Names of the processes the probes saw. The kernel notes each new process's comm; we read its
//! executable and command line from /proc within a poll interval, while it most likely still lives.

use std::{collections::BTreeMap, fs};

use profiler_common::process::ProcessName;

use crate::recording::Process;

#[derive(Default)]
pub struct ProcessTable {
    processes: BTreeMap<u32, Process>,
}

impl ProcessTable {
    /// Adds processes the kernel reported; ones already known keep their first entry.
    pub fn add_from_kernel(&mut self, names: Vec<(u32, ProcessName)>) {
        for (tgid, name) in names {
            self.processes.entry(tgid).or_insert_with(|| {
                let mut process = read_proc(tgid).unwrap_or_default();
                if process.comm.is_empty() {
                    process.comm = comm_to_string(&name.comm);
                }
                process
            });
        }
    }

    /// The table for the given tgids: every one gets an entry, from /proc if the kernel never
    /// named it (its map was full), else "?".
    pub fn finish(mut self, tgids: impl IntoIterator<Item = u32>) -> BTreeMap<u32, Process> {
        let mut result = BTreeMap::new();
        for tgid in tgids {
            let process = self
                .processes
                .remove(&tgid)
                .or_else(|| read_proc(tgid))
                .unwrap_or_else(|| Process { comm: "?".into(), ..Default::default() });
            result.insert(tgid, process);
        }
        result
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
    Some(Process { comm, exe, cmdline })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_this_process_from_proc() {
        let me = std::process::id();
        let mut table = ProcessTable::default();
        table.add_from_kernel(vec![(me, ProcessName { comm: *b"kernel-name\0\0\0\0\0" })]);
        let processes = table.finish([me, u32::MAX]);
        let this = &processes[&me];
        assert!(!this.comm.is_empty() && this.comm != "kernel-name", "/proc wins while the process lives");
        assert!(this.exe.as_deref().is_some_and(|exe| exe.starts_with('/')));
        assert_eq!(processes[&u32::MAX].comm, "?");
    }

    #[test]
    fn kernel_comm_is_cut_at_nul() {
        assert_eq!(comm_to_string(b"bash\0\0garbage\0\0\0"), "bash");
        assert_eq!(comm_to_string(b"sixteen-chars-xx"), "sixteen-chars-xx");
    }
}

//! Folded stacks (Brendan Gregg's format): one line per distinct path, `comm;root;...;leaf count`,
//! with the process name as the root frame. Flamegraphs, the differential graph and `diff`'s call
//! paths are drawn from them.

use std::collections::HashMap;

use crate::recording::{Recording, Stacks};

/// Which stacks and frames go into a flamegraph.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Only these processes; empty means all.
    pub pids: Vec<u32>,
    pub kernel_only: bool,
    pub user_only: bool,
    /// Each path's count is divided by this (1000: off-CPU nanoseconds to microseconds), after
    /// the paths are merged; paths that come to 0 are left out. 0 or 1: counts as they are.
    pub count_unit: u64,
}

/// Folded stacks, one line per distinct path: `comm;root;...;leaf count`, sorted.
pub fn folded(recording: &Recording, stacks: &Stacks, selection: &Selection) -> Vec<String> {
    // Each frame's text is built once, not once per stack it appears in.
    let names: Vec<String> = stacks
        .frames
        .iter()
        .map(|frame| {
            let suffix = if frame.kernel {
                "_[k]"
            } else if frame.inlined {
                "_[i]"
            } else {
                ""
            };
            format!("{}{suffix}", sanitize(&frame.function))
        })
        .collect();
    let keep = |frame: &crate::recording::Frame| {
        !((selection.kernel_only && !frame.kernel) || (selection.user_only && frame.kernel))
    };
    let mut comms: HashMap<u32, String> = HashMap::new();
    let mut lines: Vec<(String, u64)> = Vec::with_capacity(stacks.stacks.len());
    for stack in &stacks.stacks {
        if !selection.pids.is_empty() && !selection.pids.contains(&stack.tgid) {
            continue;
        }
        let comm = comms.entry(stack.tgid).or_insert_with(|| sanitize(recording.process_name(stack.tgid)));
        let mut line = String::with_capacity(comm.len() + stack.frames.len() * 32);
        line.push_str(comm);
        for &index in stack.frames.iter().rev() {
            if let (Some(frame), Some(name)) = (stacks.frame(index), names.get(index as usize))
                && keep(frame)
            {
                line.push(';');
                line.push_str(name);
            }
        }
        lines.push((line, stack.count));
    }
    // Sorting brings equal paths together (processes sharing a name, filtered frames): merge them.
    // Cheaper than hashing lines of a kilobyte each.
    lines.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    lines.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            kept.1 = kept.1.saturating_add(later.1);
        }
        same
    });
    let unit = selection.count_unit.max(1);
    lines
        .into_iter()
        .filter(|&(_, count)| count / unit > 0)
        .map(|(mut line, count)| {
            use std::fmt::Write as _;
            let _ = write!(line, " {}", count / unit);
            line
        })
        .collect()
}

/// Frame names must not contain the separators of the folded format.
/// A frame or process name as one field of a folded line: `;` separates frames, and control
/// characters are escaped (a newline would split the line, and XML cannot carry most of them).
fn sanitize(name: &str) -> String {
    crate::text::shown(name).replace(';', ":")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::recording::{Frame, Module, Process, Stack};

    pub(crate) fn recording() -> (Recording, Stacks) {
        let user = |name: &str| Frame { function: name.into(), module: Some(0), kernel: false, inlined: false };
        let kernel = |name: &str| Frame { function: name.into(), module: Some(1), kernel: true, inlined: false };
        let stacks = Stacks {
            frames: vec![user("main"), user("read_file"), kernel("entry_SYSCALL_64"), kernel("vfs_read")],
            modules: vec![
                Module { path: "/bin/app".into(), build_id: None },
                Module { path: "[kernel.kallsyms]".into(), build_id: None },
            ],
            stacks: vec![
                Stack { tgid: 7, tid: 0, frames: vec![3, 2, 1, 0], count: 5, blocks: 0 },
                Stack { tgid: 7, tid: 0, frames: vec![1, 0], count: 2, blocks: 0 },
            ],
        };
        let mut recording = Recording::default();
        recording.processes.insert(7, Process { comm: "app".into(), ..Default::default() });
        (recording, stacks)
    }

    #[test]
    fn folded_lines_root_first_with_kernel_annotations() {
        let (recording, stacks) = recording();
        let lines = folded(&recording, &stacks, &Selection::default());
        assert_eq!(lines, ["app;main;read_file 2", "app;main;read_file;entry_SYSCALL_64_[k];vfs_read_[k] 5"]);
        let user = folded(&recording, &stacks, &Selection { user_only: true, ..Default::default() });
        assert_eq!(user, ["app;main;read_file 7"]);
        let kernel = folded(&recording, &stacks, &Selection { kernel_only: true, ..Default::default() });
        assert_eq!(kernel, ["app 2", "app;entry_SYSCALL_64_[k];vfs_read_[k] 5"]);
        assert!(folded(&recording, &stacks, &Selection { pids: vec![8], ..Default::default() }).is_empty());
        // Nanoseconds to microseconds, after merging: 7 and 2 ns are 0 us, left out.
        assert!(folded(&recording, &stacks, &Selection { count_unit: 1000, ..Default::default() }).is_empty());
        let halves = folded(&recording, &stacks, &Selection { count_unit: 2, user_only: true, ..Default::default() });
        assert_eq!(halves, ["app;main;read_file 3"]);
    }
}

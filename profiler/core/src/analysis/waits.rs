//! Where threads waited off CPU (the `offcpu` probe): blocked time by state, by process, by the
//! user functions they blocked in, and the heaviest blocking paths, as offcputime shows them.

use std::collections::HashMap;

use serde::Serialize;

use super::{hotpaths::function_shares, percent};
use crate::recording::{Recording, Stacks, WAIT_STATE_FRAMES};

#[derive(Debug, Serialize)]
pub struct Waits {
    /// Nanoseconds off CPU in all: threads blocked at the same time each count.
    pub blocked_ns: u64,
    /// Blocks whose stacks were taken (after sampling).
    pub blocks: u64,
    /// Blocks shorter than this were not counted.
    pub min_block_ns: u64,
    /// One blocking switch-out in this many was taken: above 1, every time is an estimate.
    pub sample_one_in: u32,
    /// With sampling, the total's relative standard error in percent, estimated from the lengths
    /// of the blocks taken: a few long blocks, each taken or missed whole, make it large.
    pub estimate_error_percent: Option<f64>,
    pub states: Vec<StateWait>,
    pub processes: Vec<ProcessWait>,
    /// User functions by the time threads were blocked under them.
    pub functions: Vec<FunctionWait>,
    pub heaviest_paths: Vec<PathWait>,
}

#[derive(Debug, Serialize)]
pub struct StateWait {
    /// As the stacks' leaf frames name it: "[S sleeping]", "[D uninterruptible]", ...
    pub state: String,
    pub ns: u64,
    pub percent: f64,
}

#[derive(Debug, Serialize)]
pub struct ProcessWait {
    pub tgid: u32,
    /// Processes the id stands for (more than 1: a total of exited processes of that name).
    pub processes: usize,
    pub comm: String,
    pub ns: u64,
    pub percent: f64,
    /// Of which in uninterruptible sleep (D): usually I/O.
    pub uninterruptible_ns: u64,
}

#[derive(Debug, Serialize)]
pub struct FunctionWait {
    pub function: String,
    pub module: Option<String>,
    pub ns: u64,
    pub percent: f64,
}

#[derive(Debug, Serialize)]
pub struct PathWait {
    pub comm: String,
    pub tgid: u32,
    pub processes: usize,
    /// The user frames, root first.
    pub user: Vec<String>,
    /// The kernel frames, from the syscall (or interrupt) entry to the scheduler.
    pub kernel: Vec<String>,
    /// The state the thread blocked in, as its leaf frame names it.
    pub state: String,
    pub ns: u64,
    pub percent: f64,
}

impl Waits {
    pub fn new(recording: &Recording, stacks: &Stacks, top: usize) -> Self {
        let (blocked_ns, functions) = function_shares(stacks);
        let state_of = |stack: &crate::recording::Stack| {
            stack.frames.first().and_then(|&f| stacks.frame(f)).map(|f| f.function.as_str()).unwrap_or("")
        };
        let mut states: Vec<StateWait> = WAIT_STATE_FRAMES
            .iter()
            .map(|&state| {
                let ns = stacks.stacks.iter().filter(|s| state_of(s) == state).map(|s| s.count).sum();
                StateWait { state: state.to_string(), ns, percent: percent(ns, blocked_ns) }
            })
            .filter(|state| state.ns > 0)
            .collect();
        states.sort_by_key(|state| std::cmp::Reverse(state.ns));

        let mut per_process: HashMap<u32, (u64, u64)> = HashMap::new();
        for stack in &stacks.stacks {
            let (all, uninterruptible) = per_process.entry(stack.tgid).or_default();
            *all = all.saturating_add(stack.count);
            if state_of(stack) == WAIT_STATE_FRAMES[1] {
                *uninterruptible = uninterruptible.saturating_add(stack.count);
            }
        }
        let mut processes: Vec<ProcessWait> = per_process
            .into_iter()
            .map(|(tgid, (ns, uninterruptible_ns))| ProcessWait {
                tgid,
                processes: recording.process_count(tgid),
                comm: recording.process_name(tgid).to_string(),
                ns,
                percent: percent(ns, blocked_ns),
                uninterruptible_ns,
            })
            .collect();
        processes.sort_by(|a, b| b.ns.cmp(&a.ns).then(a.tgid.cmp(&b.tgid)));
        processes.truncate(top);

        // Kernel functions are the same few for every wait (schedule, the syscall entry), and the
        // state frames are no functions: the user code that blocked is what tells waits apart.
        let mut functions: Vec<FunctionWait> = functions
            .into_iter()
            .filter(|f| !f.kernel && !WAIT_STATE_FRAMES.contains(&f.function.as_str()))
            .map(|f| FunctionWait {
                function: f.function,
                module: f.module,
                ns: f.total_samples,
                percent: f.total_percent,
            })
            .collect();
        functions.sort_by(|a, b| b.ns.cmp(&a.ns).then_with(|| a.function.cmp(&b.function)));
        functions.truncate(top);

        let mut heaviest: Vec<&crate::recording::Stack> = stacks.stacks.iter().collect();
        heaviest.sort_by_key(|stack| std::cmp::Reverse(stack.count));
        let heaviest_paths = heaviest
            .into_iter()
            .take(top)
            .map(|stack| {
                let frames = || stack.frames.iter().skip(1).rev().filter_map(|&f| stacks.frame(f));
                PathWait {
                    comm: recording.process_name(stack.tgid).to_string(),
                    tgid: stack.tgid,
                    processes: recording.process_count(stack.tgid),
                    user: frames().filter(|f| !f.kernel).map(|f| f.function.clone()).collect(),
                    kernel: frames().filter(|f| f.kernel).map(|f| f.function.clone()).collect(),
                    state: state_of(stack).to_string(),
                    ns: stack.count,
                    percent: percent(stack.count, blocked_ns),
                }
            })
            .collect();

        let options = &recording.meta.options;
        let sample_one_in = options.offcpu_sample_one_in.max(1);
        let blocks = recording.counters.offcpu_blocks;
        // A block of length b taken with probability 1/N is counted N times: the total's variance
        // is (N - 1)·Σb² over all such blocks, estimated as N·(N - 1)·Σb² over those taken (the
        // counter sums them only; each thread's first blocks are all taken, and add nothing).
        let estimate_error_percent = (sample_one_in > 1 && blocked_ns > 0).then(|| {
            let n = f64::from(sample_one_in);
            let variance_us2 = n * (n - 1.0) * recording.counters.offcpu_us_squared as f64;
            100.0 * variance_us2.sqrt() / (blocked_ns as f64 / 1e3)
        });
        Waits {
            blocked_ns,
            blocks,
            min_block_ns: options.offcpu_min_ns,
            sample_one_in,
            estimate_error_percent,
            states,
            processes,
            functions,
            heaviest_paths,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::{Frame, Process, Stack};

    #[test]
    fn blocked_time_by_state_process_function_and_path() {
        let user = |name: &str| Frame { function: name.into(), module: None, kernel: false, inlined: false };
        let kernel = |name: &str| Frame { kernel: true, ..user(name) };
        let stacks = Stacks {
            frames: vec![
                user(WAIT_STATE_FRAMES[0]),
                user(WAIT_STATE_FRAMES[1]),
                kernel("__schedule"),
                kernel("do_fsync"),
                user("save"),
                user("main"),
                kernel("futex_wait"),
                user("lock"),
            ],
            modules: Vec::new(),
            stacks: vec![
                // app: 3 s in D under save, 1 s in S under lock; db: 4 s in S under lock.
                Stack { tgid: 1, tid: 0, frames: vec![1, 2, 3, 4, 5], count: 3_000_000_000, blocks: 300 },
                Stack { tgid: 1, tid: 0, frames: vec![0, 2, 6, 7, 5], count: 1_000_000_000, blocks: 10 },
                Stack { tgid: 2, tid: 0, frames: vec![0, 2, 6, 7, 5], count: 4_000_000_000, blocks: 40 },
            ],
        };
        let mut recording = Recording::default();
        recording.processes.insert(1, Process { comm: "app".into(), ..Default::default() });
        recording.processes.insert(2, Process { comm: "db".into(), ..Default::default() });
        recording.counters.offcpu_blocks = 350;
        // The blocks taken: 75 of 10 ms, 12 of 100 ms, 5 of 1 s (their lengths squared, in µs²).
        recording.counters.offcpu_us_squared = 75 * 10_000u64.pow(2) + 12 * 100_000u64.pow(2) + 5 * 1_000_000u64.pow(2);
        recording.meta.options.offcpu_sample_one_in = 4;
        let waits = Waits::new(&recording, &stacks, 10);
        assert_eq!(waits.blocked_ns, 8_000_000_000);
        let states: Vec<(&str, u64)> = waits.states.iter().map(|s| (s.state.as_str(), s.ns)).collect();
        assert_eq!(states, [(WAIT_STATE_FRAMES[0], 5_000_000_000), (WAIT_STATE_FRAMES[1], 3_000_000_000)]);
        let processes: Vec<(&str, u64, u64)> =
            waits.processes.iter().map(|p| (p.comm.as_str(), p.ns, p.uninterruptible_ns)).collect();
        assert_eq!(processes, [("app", 4_000_000_000, 3_000_000_000), ("db", 4_000_000_000, 0)]);
        // User functions only, no state frames: main under everything, then lock, then save.
        let functions: Vec<(&str, u64)> = waits.functions.iter().map(|f| (f.function.as_str(), f.ns)).collect();
        assert_eq!(functions, [("main", 8_000_000_000), ("lock", 5_000_000_000), ("save", 3_000_000_000)]);
        let heaviest = &waits.heaviest_paths[0];
        assert_eq!((heaviest.comm.as_str(), heaviest.state.as_str()), ("db", WAIT_STATE_FRAMES[0]));
        assert_eq!(heaviest.user, ["main", "lock"]);
        assert_eq!(heaviest.kernel, ["futex_wait", "__schedule"]);
        // sqrt(4 · 3 · Σb²) over the 8 s blocked in all.
        let sum_of_squares: f64 = 75.0 * 1e8 + 12.0 * 1e10 + 5.0 * 1e12;
        let expected = 100.0 * (12.0 * sum_of_squares).sqrt() / 8e6;
        let error = waits.estimate_error_percent.unwrap();
        assert!((error - expected).abs() < 1e-9, "{error} against {expected}");
    }
}

//! Where the CPU time went: functions by self and total samples, the heaviest call paths, the
//! busiest processes and the idle share.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::percent;
use crate::recording::{Frame, Recording, Stacks};

#[derive(Debug, Serialize)]
pub struct HotPaths {
    /// Non-idle samples.
    pub samples: u64,
    /// Share of the machine's CPU time spent idle, in percent; only for unfiltered recordings.
    pub idle_percent: Option<f64>,
    pub frequency_hz: u32,
    pub by_self: Vec<FunctionShare>,
    pub by_total: Vec<FunctionShare>,
    pub heaviest_paths: Vec<PathShare>,
    pub processes: Vec<ProcessShare>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FunctionShare {
    pub function: String,
    pub module: Option<String>,
    pub kernel: bool,
    /// Samples with this function as the leaf.
    pub self_samples: u64,
    pub self_percent: f64,
    /// Samples with this function anywhere on the stack.
    pub total_samples: u64,
    pub total_percent: f64,
}

#[derive(Debug, Serialize)]
pub struct PathShare {
    pub comm: String,
    pub tgid: u32,
    /// Processes the id stands for (more than 1: a total of exited processes of that name).
    pub processes: usize,
    /// Root first.
    pub frames: Vec<String>,
    pub samples: u64,
    pub percent: f64,
}

#[derive(Debug, Serialize)]
pub struct ProcessShare {
    pub tgid: u32,
    /// Processes the id stands for (more than 1: a total of exited processes of that name).
    pub processes: usize,
    pub comm: String,
    pub samples: u64,
    pub percent: f64,
}

/// Adds to a tally; saturating, because a recording from elsewhere may hold any numbers.
fn tally<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u64>, key: K, count: u64) {
    let slot = map.entry(key).or_default();
    *slot = slot.saturating_add(count);
}

/// A function's identity across stacks: its name and module.
fn function_key(stacks: &Stacks, frame: &Frame) -> (String, Option<String>, bool) {
    (frame.function.clone(), stacks.module(frame).map(|m| m.path.clone()), frame.kernel)
}

/// Every function's self and total samples and shares, and the number of samples.
pub fn function_shares(stacks: &Stacks) -> (u64, Vec<FunctionShare>) {
    let samples = stacks.stacks.iter().fold(0u64, |sum, s| sum.saturating_add(s.count));
    let mut self_counts: HashMap<u32, u64> = HashMap::new();
    let mut total_counts: HashMap<u32, u64> = HashMap::new();
    for stack in &stacks.stacks {
        if let Some(&leaf) = stack.frames.first() {
            tally(&mut self_counts, leaf, stack.count);
        }
        let mut seen = HashSet::new();
        for &frame in &stack.frames {
            // Recursion must not count a stack twice for one function.
            if seen.insert(frame) {
                tally(&mut total_counts, frame, stack.count);
            }
        }
    }

    // Frames are interned per (function, module, kernel, inlined); merge to functions.
    let mut self_by_function = HashMap::new();
    let mut total_by_function = HashMap::new();
    for (&frame, &count) in &self_counts {
        if let Some(f) = stacks.frame(frame) {
            tally(&mut self_by_function, function_key(stacks, f), count);
        }
    }
    for (&frame, &count) in &total_counts {
        if let Some(f) = stacks.frame(frame) {
            tally(&mut total_by_function, function_key(stacks, f), count);
        }
    }
    let mut functions: HashMap<(String, Option<String>, bool), (u64, u64)> = HashMap::new();
    for (key, count) in self_by_function {
        functions.entry(key).or_default().0 = count;
    }
    for (key, count) in total_by_function {
        functions.entry(key).or_default().1 = count;
    }
    let shares = functions
        .into_iter()
        .map(|((function, module, kernel), (self_samples, total_samples))| FunctionShare {
            function,
            module,
            kernel,
            self_samples,
            self_percent: percent(self_samples, samples),
            // A function inlined at several depths may be counted under two frames.
            total_samples: total_samples.min(samples),
            total_percent: percent(total_samples.min(samples), samples),
        })
        .collect();
    (samples, shares)
}

impl HotPaths {
    pub fn new(recording: &Recording, stacks: &Stacks, top: usize) -> Self {
        let (samples, shares) = function_shares(stacks);
        let mut per_process: HashMap<u32, u64> = HashMap::new();
        for stack in &stacks.stacks {
            tally(&mut per_process, stack.tgid, stack.count);
        }
        let ranked = |key: fn(&FunctionShare) -> u64| {
            let mut sorted: Vec<FunctionShare> = shares.iter().filter(|f| key(f) > 0).cloned().collect();
            sorted.sort_by(|a, b| key(b).cmp(&key(a)).then_with(|| a.function.cmp(&b.function)));
            sorted.truncate(top);
            sorted
        };

        let mut heaviest: Vec<&crate::recording::Stack> = stacks.stacks.iter().collect();
        heaviest.sort_by_key(|stack| std::cmp::Reverse(stack.count));
        let heaviest_paths = heaviest
            .into_iter()
            .take(top)
            .map(|stack| PathShare {
                comm: recording.process_name(stack.tgid).to_string(),
                tgid: stack.tgid,
                processes: recording.process_count(stack.tgid),
                frames: stack
                    .frames
                    .iter()
                    .rev()
                    .filter_map(|&f| stacks.frame(f))
                    .map(|f| f.function.clone())
                    .collect(),
                samples: stack.count,
                percent: percent(stack.count, samples),
            })
            .collect();
        let mut processes: Vec<ProcessShare> = per_process
            .into_iter()
            .map(|(tgid, count)| ProcessShare {
                tgid,
                processes: recording.process_count(tgid),
                comm: recording.process_name(tgid).to_string(),
                samples: count,
                percent: percent(count, samples),
            })
            .collect();
        processes.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.tgid.cmp(&b.tgid)));
        processes.truncate(top);

        // A tickless idle CPU takes fewer clock samples than a busy one, so the idle share comes
        // from the samples a fully busy machine would have given, not from idle samples taken.
        let meta = &recording.meta;
        let unfiltered = meta.options.pids.is_empty() && meta.options.cgroup.is_none();
        let expected = meta.duration_ns as f64 / 1e9 * f64::from(meta.options.frequency_hz) * f64::from(meta.cpus);
        let idle_percent =
            (unfiltered && expected > 0.0).then(|| (100.0 * (1.0 - samples as f64 / expected)).clamp(0.0, 100.0));
        HotPaths {
            samples,
            idle_percent,
            frequency_hz: recording.meta.options.frequency_hz,
            by_self: ranked(|f| f.self_samples),
            by_total: ranked(|f| f.total_samples),
            heaviest_paths,
            processes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::{Module, Stack};

    #[test]
    fn self_and_total_shares_with_recursion() {
        let frame = |name: &str| Frame { function: name.into(), module: Some(0), kernel: false, inlined: false };
        let stacks = Stacks {
            frames: vec![frame("main"), frame("work"), frame("leaf")],
            modules: vec![Module { path: "/bin/app".into(), build_id: None }],
            stacks: vec![
                // leaf <- work <- work <- main (recursive work)
                Stack { tgid: 1, tid: 0, frames: vec![2, 1, 1, 0], count: 30, blocks: 0 },
                Stack { tgid: 1, tid: 0, frames: vec![1, 0], count: 70, blocks: 0 },
            ],
        };
        let mut recording = Recording::default();
        // 1 s at 50 Hz on 4 CPUs: 200 samples if never idle; 100 taken.
        recording.meta.duration_ns = 1_000_000_000;
        recording.meta.options.frequency_hz = 50;
        recording.meta.cpus = 4;
        let hot = HotPaths::new(&recording, &stacks, 10);
        assert_eq!(hot.samples, 100);
        assert_eq!(hot.idle_percent, Some(50.0));
        let work = hot.by_total.iter().find(|f| f.function == "work").unwrap();
        assert_eq!((work.self_samples, work.total_samples), (70, 100), "recursion counted once");
        assert_eq!(hot.by_self[0].function, "work");
        assert_eq!(hot.by_self[1].function, "leaf");
        assert_eq!(hot.heaviest_paths[0].frames, ["main", "work"]);
        assert_eq!(hot.processes[0].percent, 100.0);
    }
}

//! Off-CPU time: how long threads were blocked under each user function and in each state, per
//! second of recording (recordings may differ in length), compared by name.
//!
//! Blocked time is a sum of blocks, modelled as a compound Poisson process: blocks come at some
//! rate and each lasts a random time. Its variance is n·E[b²] for n blocks; with block lengths
//! spread as an exponential's (E[b²] = 2·mean²) that is 2T²/n. A side whose blocks were taken one
//! in N (and counted N times) adds the sampling's (N - 1)·Σb², (N - 1)·T²/n for blocks of equal
//! length: (N + 1)·T²/n in all (a little more than the truth, as each thread's first blocks are
//! all taken). The z statistic compares the two sides' rates T/d with those variances.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::{Finding, FindingKind, Findings, OffCpuComparison, stats::change_percent};
use crate::recording::{Recording, Stacks, WAIT_STATE_FRAMES};

/// Functions blocked under for less than this share of a side's off-CPU time on both sides are
/// too small to flag.
const MIN_OFFCPU_SHARE: f64 = 0.01;

/// One side: its length, how it sampled, its off-CPU total, and each subject's (nanoseconds,
/// blocks).
struct Side {
    seconds: f64,
    sample_one_in: u32,
    total_ns: u64,
    subjects: BTreeMap<String, (u64, u64)>,
}

impl Side {
    fn of(recording: &Recording, stacks: &Stacks) -> Self {
        let mut subjects: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut total_ns = 0u64;
        for stack in &stacks.stacks {
            total_ns = total_ns.saturating_add(stack.count);
            // User functions and the state: the kernel's frames (schedule, the syscall entry) are
            // in every wait. Each once per stack, however deep the recursion.
            let names: HashSet<&str> = stack
                .frames
                .iter()
                .filter_map(|&f| stacks.frame(f))
                .filter(|f| !f.kernel)
                .map(|f| f.function.as_str())
                .collect();
            for name in names {
                let (ns, blocks) = subjects.entry(name.to_string()).or_default();
                *ns = ns.saturating_add(stack.count);
                *blocks = blocks.saturating_add(stack.blocks);
            }
        }
        Side {
            seconds: (recording.meta.duration_ns as f64 / 1e9).max(1e-9),
            sample_one_in: recording.meta.options.offcpu_sample_one_in.max(1),
            total_ns,
            subjects,
        }
    }

    fn blocked(&self, subject: &str) -> (u64, u64) {
        self.subjects.get(subject).copied().unwrap_or_default()
    }

    /// Milliseconds blocked per second of recording, and the variance of that rate.
    fn rate(&self, subject: &str) -> (f64, f64) {
        let (ns, blocks) = self.blocked(subject);
        let ms = ns as f64 / 1e6;
        let spread = 1.0 + f64::from(self.sample_one_in);
        let variance = if blocks == 0 { 0.0 } else { spread * ms * ms / blocks as f64 };
        (ms / self.seconds, variance / (self.seconds * self.seconds))
    }
}

pub fn compare(
    (base, base_stacks): (&Recording, &Stacks),
    (new, new_stacks): (&Recording, &Stacks),
    top: usize,
    findings: &mut Findings,
) -> Vec<OffCpuComparison> {
    let (base, new) = (Side::of(base, base_stacks), Side::of(new, new_stacks));
    let big = |side: &Side, subject: &str| side.blocked(subject).0 as f64 >= side.total_ns as f64 * MIN_OFFCPU_SHARE;
    let subjects: BTreeSet<&String> = base.subjects.keys().chain(new.subjects.keys()).collect();
    let candidates: Vec<&String> = subjects.into_iter().filter(|s| big(&base, s) || big(&new, s)).collect();
    let z_crit = findings.critical_z(candidates.len());
    let mut comparisons: Vec<OffCpuComparison> = candidates
        .into_iter()
        .map(|subject| {
            let ((before, base_var), (after, new_var)) = (base.rate(subject), new.rate(subject));
            let spread = (base_var + new_var).sqrt();
            let z = if spread > 0.0 { (after - before) / spread } else { 0.0 };
            let comparison = OffCpuComparison {
                subject: subject.clone(),
                state: WAIT_STATE_FRAMES.contains(&subject.as_str()),
                base_ms_per_second: before,
                new_ms_per_second: after,
                z,
            };
            findings.flag_if(
                z.abs() > z_crit,
                Finding {
                    kind: FindingKind::OffCpu,
                    subject: subject.clone(),
                    metric: "blocked".into(),
                    base: before,
                    new: after,
                    unit: "ms/s".into(),
                    change_percent: change_percent(before, after),
                    detail: format!("z = {z:.1}"),
                },
            );
            comparison
        })
        .collect();
    comparisons.sort_by(|a, b| {
        let grow = |c: &OffCpuComparison| c.new_ms_per_second - c.base_ms_per_second;
        grow(b).abs().total_cmp(&grow(a).abs())
    });
    comparisons.truncate(top);
    comparisons
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        analysis::diff::{DiffOptions, diff},
        recording::{Frame, Stack},
    };

    /// A recording of `seconds` in which one thread blocked `blocks` times, each `ms` long, in
    /// `function` (interruptibly).
    fn blocked(seconds: u64, function: &str, blocks: u64, ms: u64) -> Recording {
        let frame = |name: &str| Frame { function: name.into(), module: None, kernel: false, inlined: false };
        let stacks = Stacks {
            frames: vec![frame(WAIT_STATE_FRAMES[0]), frame(function), frame("main")],
            modules: Vec::new(),
            stacks: vec![Stack { tgid: 1, tid: 0, frames: vec![0, 1, 2], count: blocks * ms * 1_000_000, blocks }],
        };
        let mut recording = Recording::default();
        recording.meta.duration_ns = seconds * 1_000_000_000;
        recording.offcpu = Some(stacks);
        recording
    }

    #[test]
    fn blocked_time_is_compared_per_second_and_flagged_when_it_grew() {
        let options = DiffOptions { threshold_percent: 10.0, confidence: 0.99, top: 10 };
        // The same 250 ms/s over 10 s and 20 s: nothing to flag.
        let d = diff(&blocked(10, "read_config", 500, 5), &blocked(20, "read_config", 1000, 5), &options);
        assert!(d.regressions.is_empty() && d.improvements.is_empty(), "{:?}", d.regressions);
        let read = d.offcpu.iter().find(|c| c.subject == "read_config").unwrap();
        assert!((read.base_ms_per_second - 250.0).abs() < 1e-9 && (read.new_ms_per_second - 250.0).abs() < 1e-9);
        // Blocks twice as long: flagged, under the function and in its state.
        let d = diff(&blocked(10, "read_config", 500, 5), &blocked(10, "read_config", 500, 10), &options);
        let flagged: Vec<&str> = d.regressions.iter().map(|f| f.subject.as_str()).collect();
        assert!(flagged.contains(&"read_config") && flagged.contains(&WAIT_STATE_FRAMES[0]), "{flagged:?}");
        assert!(d.regressions.iter().all(|f| f.kind == FindingKind::OffCpu && f.unit == "ms/s"));
        // A 10 % growth made of 3 blocks a side is noise.
        let d = diff(&blocked(10, "read_config", 3, 100), &blocked(10, "read_config", 3, 110), &options);
        assert!(d.regressions.is_empty(), "{:?}", d.regressions);
    }
}

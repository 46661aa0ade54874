//! Functions: each one's self and total share of the CPU samples, normalized by each side's total,
//! compared by name (module paths differ between machines).

use std::collections::{BTreeMap, BTreeSet};

use super::{
    Finding, FindingKind, Findings, FunctionComparison,
    stats::{change_percent, two_proportion_z},
};
use crate::{
    analysis::{hotpaths::function_shares, percent},
    recording::Stacks,
};

/// Functions below this share (percent of samples) on both sides are too small to flag.
const MIN_FUNCTION_SHARE: f64 = 1.0;

/// A function: its name, and whether it is the kernel's.
type Key = (String, bool);

/// One side: its samples, and each function's (self, total) samples.
struct Side {
    samples: u64,
    functions: BTreeMap<Key, (u64, u64)>,
}

impl Side {
    fn of(stacks: &Stacks) -> Self {
        let (samples, shares) = function_shares(stacks);
        let mut functions: BTreeMap<Key, (u64, u64)> = BTreeMap::new();
        for f in shares {
            let entry = functions.entry((f.function, f.kernel)).or_default();
            entry.0 = entry.0.saturating_add(f.self_samples);
            entry.1 = entry.1.saturating_add(f.total_samples).min(samples);
        }
        Side { samples, functions }
    }

    fn samples_of(&self, key: &Key) -> (u64, u64) {
        self.functions.get(key).copied().unwrap_or_default()
    }
}

pub fn compare(base: &Stacks, new: &Stacks, top: usize, findings: &mut Findings) -> Vec<FunctionComparison> {
    let (base, new) = (Side::of(base), Side::of(new));
    let keys: BTreeSet<&Key> = base.functions.keys().chain(new.functions.keys()).collect();
    let candidates: Vec<&Key> = keys
        .into_iter()
        .filter(|k| {
            percent(base.samples_of(k).1, base.samples) >= MIN_FUNCTION_SHARE
                || percent(new.samples_of(k).1, new.samples) >= MIN_FUNCTION_SHARE
        })
        .collect();
    let z_crit = findings.critical_z(candidates.len() * 2);
    let mut comparisons: Vec<FunctionComparison> = candidates
        .into_iter()
        .map(|key| {
            let comparison = comparison(key, &base, &new);
            flag(key, &comparison, z_crit, findings);
            comparison
        })
        .collect();
    comparisons.sort_by(|a, b| {
        let grow = |c: &FunctionComparison| c.new_self_percent - c.base_self_percent;
        grow(b).abs().total_cmp(&grow(a).abs())
    });
    comparisons.truncate(top);
    comparisons
}

fn comparison(key: &Key, base: &Side, new: &Side) -> FunctionComparison {
    let (b, n) = (base.samples_of(key), new.samples_of(key));
    FunctionComparison {
        function: key.0.clone(),
        kernel: key.1,
        base_self_percent: percent(b.0, base.samples),
        new_self_percent: percent(n.0, new.samples),
        base_total_percent: percent(b.1, base.samples),
        new_total_percent: percent(n.1, new.samples),
        self_z: two_proportion_z(b.0, base.samples, n.0, new.samples),
        total_z: two_proportion_z(b.1, base.samples, n.1, new.samples),
    }
}

fn flag(key: &Key, c: &FunctionComparison, z_crit: f64, findings: &mut Findings) {
    for (metric, before, after, z) in [
        ("self share", c.base_self_percent, c.new_self_percent, c.self_z),
        ("total share", c.base_total_percent, c.new_total_percent, c.total_z),
    ] {
        let change = change_percent(before, after);
        let hot_now = before < MIN_FUNCTION_SHARE / 2.0 && after >= MIN_FUNCTION_SHARE;
        findings.flag_if(
            z.abs() > z_crit && before.max(after) >= MIN_FUNCTION_SHARE,
            Finding {
                kind: FindingKind::Function,
                subject: format!("{}{}", key.0, if key.1 { " [k]" } else { "" }),
                metric: metric.into(),
                base: before,
                new: after,
                unit: "% of samples".into(),
                change_percent: change,
                detail: format!("z = {z:.1}{}", if hot_now { "; became hot" } else { "" }),
            },
        );
    }
}

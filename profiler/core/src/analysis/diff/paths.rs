//! Call paths: the folded stacks whose share of the samples grew most.

use std::collections::HashMap;

use super::PathComparison;
use crate::{
    analysis::{fold::folded, percent},
    recording::Recording,
};

/// A folded line's path and count.
fn split_folded(line: &str) -> Option<(&str, u64)> {
    line.rsplit_once(' ').map(|(path, count)| (path, count.parse().unwrap_or(0)))
}

fn lines(recording: &Recording) -> Vec<String> {
    match &recording.stacks {
        Some(stacks) => folded(recording, stacks, &Default::default()),
        None => Vec::new(),
    }
}

/// The `top` paths whose share grew most, from `base_samples` to `new_samples` in all.
pub fn growing(
    base: &Recording,
    new: &Recording,
    base_samples: u64,
    new_samples: u64,
    top: usize,
) -> Vec<PathComparison> {
    let (base_lines, new_lines) = (lines(base), lines(new));
    let before: HashMap<&str, u64> = base_lines.iter().filter_map(|line| split_folded(line)).collect();
    // Paths are long strings: rank borrowed slices, copy only the winners.
    let mut grown: Vec<(f64, &str, f64, f64)> = new_lines
        .iter()
        .filter_map(|line| split_folded(line))
        .map(|(path, count)| {
            let b = percent(before.get(path).copied().unwrap_or(0), base_samples);
            let n = percent(count, new_samples);
            (n - b, path, b, n)
        })
        .filter(|&(growth, ..)| growth > 0.0)
        .collect();
    grown.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    grown.truncate(top);
    grown
        .into_iter()
        .map(|(_, path, base_percent, new_percent)| PathComparison {
            path: path.to_string(),
            base_percent,
            new_percent,
        })
        .collect()
}

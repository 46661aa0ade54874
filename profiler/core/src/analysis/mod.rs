//! Turning a recording into numbers people read: percentiles and the summary behind `report`.

pub mod diff;
pub mod fold;
pub mod histogram;
pub mod hotpaths;
pub mod summary;
pub mod waits;

/// `part` as a percentage of `whole`; 0 when `whole` is 0.
pub fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 { 0.0 } else { part as f64 * 100.0 / whole as f64 }
}

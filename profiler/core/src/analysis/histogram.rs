//! Percentiles of the kernel's bucketed histograms, through hdrhistogram.
//!
//! Each bucket's count is recorded at the bucket's midpoint, so a percentile is exact to within half
//! a bucket: ±3.2 % of the value at most. The overflow bucket (>= 2^34 ns) is recorded at its lower
//! edge.

use profiler_common::histogram::{MAX_LOG2, OVERFLOW_BUCKET};
use serde::Serialize;

use crate::recording::LatencyHistogram;

/// Percentiles of one distribution, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean_ns: f64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

/// The value a bucket's samples are recorded at.
pub fn representative_value(index: u16, lower: u64, upper: u64) -> u64 {
    if index as u32 >= OVERFLOW_BUCKET { lower } else { lower + (upper - lower) / 2 }
}

pub fn to_hdr(histogram: &LatencyHistogram) -> hdrhistogram::Histogram<u64> {
    // 3 significant digits: far finer than our buckets, so hdrhistogram adds no error of its own.
    // The range covers every representative value, overflow included.
    let mut hdr =
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 1 << (MAX_LOG2 + 1), 3).expect("valid hdrhistogram bounds");
    for (&(index, _), (lower, upper, count)) in histogram.buckets.iter().zip(histogram.ranges()) {
        hdr.saturating_record_n(representative_value(index, lower, upper), count);
    }
    hdr
}

pub fn percentiles(histogram: &LatencyHistogram) -> Percentiles {
    let hdr = to_hdr(histogram);
    if hdr.is_empty() {
        return Percentiles::default();
    }
    // hdrhistogram reports the highest value equivalent to a recorded one; clamp it back to the
    // recorded value so results do not depend on its internal bucket width.
    let at = |q: f64| hdr.lowest_equivalent(hdr.value_at_quantile(q));
    Percentiles {
        count: hdr.len(),
        mean_ns: hdr.mean(),
        p50_ns: at(0.50),
        p90_ns: at(0.90),
        p99_ns: at(0.99),
        p999_ns: at(0.999),
        max_ns: hdr.lowest_equivalent(hdr.max()),
    }
}

/// Human-readable duration: 850ns, 12.3µs, 4.56ms, 1.23s.
pub fn format_ns(ns: u64) -> String {
    let ns_f = ns as f64;
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        format!("{:.1}µs", ns_f / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2}ms", ns_f / 1e6)
    } else {
        format!("{:.2}s", ns_f / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_a_bucket_of_the_truth() {
        // 1..=100_000 ns: the true p50 is 50_000, p99 99_000.
        let values: Vec<u64> = (1..=100_000).collect();
        let p = percentiles(&LatencyHistogram::from_values(values));
        assert_eq!(p.count, 100_000);
        for (got, truth) in [(p.p50_ns, 50_000f64), (p.p90_ns, 90_000.0), (p.p99_ns, 99_000.0), (p.max_ns, 100_000.0)] {
            let error = (got as f64 - truth).abs() / truth;
            assert!(error <= 0.0625, "got {got}, truth {truth}");
        }
        assert!((p.mean_ns - 50_000.0).abs() / 50_000.0 < 0.01);
    }

    #[test]
    fn exact_small_values_and_overflow() {
        let p = percentiles(&LatencyHistogram::from_values([0, 0, 0, 7]));
        assert_eq!((p.p50_ns, p.max_ns), (0, 7));
        let p = percentiles(&LatencyHistogram::from_values([u64::MAX]));
        assert_eq!(p.max_ns, 1 << 34);
        assert_eq!(percentiles(&LatencyHistogram::default()), Percentiles::default());
    }

    #[test]
    fn formats_durations() {
        assert_eq!(format_ns(850), "850ns");
        assert_eq!(format_ns(12_345), "12.3µs");
        assert_eq!(format_ns(4_560_000), "4.56ms");
        assert_eq!(format_ns(1_234_000_000), "1.23s");
    }
}

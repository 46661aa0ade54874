//! The statistics behind `diff`: confidence intervals of percentiles from bucketed data, and z
//! tests for proportions and Poisson rates, with the Bonferroni-corrected critical z.

use statrs::distribution::{ContinuousCDF, Normal};

use crate::recording::LatencyHistogram;

/// The two-sided critical z for `confidence`, Bonferroni-corrected for `tests` comparisons.
pub fn critical_z(confidence: f64, tests: usize) -> f64 {
    let alpha = (1.0 - confidence) / tests.max(1) as f64;
    Normal::standard().inverse_cdf(1.0 - alpha / 2.0)
}

pub fn change_percent(base: f64, new: f64) -> f64 {
    if base == 0.0 { if new == 0.0 { 0.0 } else { f64::INFINITY } } else { (new - base) / base * 100.0 }
}

/// Confidence interval of the q-quantile of a bucketed histogram: the buckets holding the ranks
/// n·q ∓ z·√(n·q·(1−q)), from the lower edge of the first to the upper edge of the second. A rank
/// that falls outside the samples leaves that side unbounded (0 or u64::MAX): too few samples to
/// bound it.
pub fn quantile_interval(histogram: &LatencyHistogram, q: f64, z: f64) -> Option<(u64, u64)> {
    let n = histogram.count();
    if n == 0 {
        return None;
    }
    let nf = n as f64;
    let spread = z * (nf * q * (1.0 - q)).sqrt();
    let (low_rank, high_rank) = ((nf * q - spread).floor(), (nf * q + spread).ceil());
    let mut low = (low_rank < 1.0).then_some(0);
    let mut high = (high_rank > nf).then_some(u64::MAX);
    let mut cumulative = 0u64;
    for (lower, upper, count) in histogram.ranges() {
        cumulative = cumulative.saturating_add(count);
        if low.is_none() && cumulative as f64 >= low_rank {
            low = Some(lower);
        }
        if high.is_none() && cumulative as f64 >= high_rank {
            high = Some(upper.saturating_sub(1));
        }
    }
    Some((low?, high?))
}

/// Two-proportion z statistic for x1/n1 → x2/n2 (positive when the proportion grew).
pub fn two_proportion_z(x1: u64, n1: u64, x2: u64, n2: u64) -> f64 {
    if n1 == 0 || n2 == 0 {
        return 0.0;
    }
    let (p1, p2) = (x1 as f64 / n1 as f64, x2 as f64 / n2 as f64);
    let pooled = (x1 as f64 + x2 as f64) / (n1 as f64 + n2 as f64);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1 as f64 + 1.0 / n2 as f64)).sqrt();
    if se == 0.0 { 0.0 } else { (p2 - p1) / se }
}

/// z statistic for the change of a Poisson rate: c1 events in t1 seconds → c2 in t2, from the
/// conditional binomial test (under equal rates, c2 ~ Bin(c1 + c2, t2 / (t1 + t2))).
pub fn rate_z(c1: u64, t1: f64, c2: u64, t2: f64) -> f64 {
    let n = c1 as f64 + c2 as f64;
    if n == 0.0 || t1 <= 0.0 || t2 <= 0.0 {
        return 0.0;
    }
    let p = t2 / (t1 + t2);
    (c2 as f64 - n * p) / (n * p * (1.0 - p)).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interval_brackets_the_truth() {
        let h = LatencyHistogram::from_values(1..=10_000u64);
        let (low, high) = quantile_interval(&h, 0.5, 2.576).unwrap();
        assert!(low <= 5000 && high >= 5000 && high - low < 1000, "[{low}, {high}]");
        // With few samples the interval is wide: too few to bound the p99 from above.
        let few = LatencyHistogram::from_values([100, 200, 300, 400, 500]);
        assert_eq!(quantile_interval(&few, 0.99, 2.576).unwrap().1, u64::MAX);
        assert_eq!(quantile_interval(&LatencyHistogram::from_values([100]), 0.5, 2.576), Some((0, u64::MAX)));
        assert_eq!(quantile_interval(&LatencyHistogram::default(), 0.5, 2.0), None);
    }

    #[test]
    fn z_tests() {
        assert!(two_proportion_z(300, 1000, 460, 1000) > 7.0);
        assert!(two_proportion_z(300, 1000, 310, 1000).abs() < 1.0);
        // The same rate over different lengths is no change.
        assert!(rate_z(1000, 10.0, 2000, 20.0).abs() < 1e-9);
        assert!(rate_z(1000, 10.0, 1500, 10.0) > 5.0);
        assert!((critical_z(0.99, 1) - 2.5758).abs() < 1e-3);
        assert!(critical_z(0.99, 100) > critical_z(0.99, 1));
    }
}

//! Anomaly flags for `serve`: each interval's p99 of a histogram against a rolling baseline of the
//! previous intervals' p99s, as a z-score. |z| > 3 marks the interval anomalous.

use std::collections::{BTreeMap, VecDeque};

use crate::{analysis::histogram::percentiles, recording::LatencyHistogram};

/// |z| above this is anomalous.
pub const ANOMALY_Z: f64 = 3.0;
/// Intervals with fewer samples than this give no p99 (too noisy to judge).
const MIN_INTERVAL_SAMPLES: u64 = 20;
/// Intervals needed in the baseline before z-scores are given.
const MIN_BASELINE: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Score {
    pub p99_ns: u64,
    pub z: f64,
}

impl Score {
    pub fn anomalous(&self) -> bool {
        self.z.abs() > ANOMALY_Z
    }
}

/// Rolling baselines, one per histogram, keyed by a label such as "runqueue" or "syscall:read".
pub struct Detector {
    baseline_len: usize,
    previous: BTreeMap<String, Vec<u64>>,
    baselines: BTreeMap<String, VecDeque<f64>>,
    pub scores: BTreeMap<String, Score>,
}

impl Detector {
    pub fn new(baseline_len: usize) -> Self {
        Self {
            baseline_len: baseline_len.max(MIN_BASELINE),
            previous: BTreeMap::new(),
            baselines: BTreeMap::new(),
            scores: BTreeMap::new(),
        }
    }

    /// Feeds a cumulative histogram; scores the interval since the last call.
    pub fn observe(&mut self, key: &str, cumulative: &LatencyHistogram) {
        let dense = cumulative.to_dense();
        let interval = match self.previous.get(key) {
            Some(before) => dense.iter().zip(before).map(|(now, then)| now.saturating_sub(*then)).collect(),
            None => dense.clone(),
        };
        self.previous.insert(key.to_string(), dense);
        let interval = LatencyHistogram::from_dense(&interval);
        let p = percentiles(&interval);
        if p.count < MIN_INTERVAL_SAMPLES {
            return;
        }
        let baseline = self.baselines.entry(key.to_string()).or_default();
        if baseline.len() >= MIN_BASELINE {
            let n = baseline.len() as f64;
            let mean = baseline.iter().sum::<f64>() / n;
            let std = (baseline.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
            // A perfectly flat baseline has no spread: any change is then infinitely unusual, which
            // says more about the baseline than the interval; use 1 % of the mean as a floor.
            let z = (p.p99_ns as f64 - mean) / std.max(mean * 0.01).max(1.0);
            self.scores.insert(key.to_string(), Score { p99_ns: p.p99_ns, z });
        }
        baseline.push_back(p.p99_ns as f64);
        while baseline.len() > self.baseline_len {
            baseline.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use profiler_common::histogram::{NUM_BUCKETS, bucket_index};

    use super::*;

    #[test]
    fn a_jump_in_p99_is_anomalous_and_steady_intervals_are_not() {
        let mut detector = Detector::new(10);
        let mut cumulative = vec![0u64; NUM_BUCKETS];
        let mut feed = |detector: &mut Detector, latency_ns: u64| {
            for i in 0..100u64 {
                cumulative[bucket_index(latency_ns + i * latency_ns / 200) as usize] += 1;
            }
            detector.observe("runqueue", &LatencyHistogram::from_dense(&cumulative));
        };
        for round in 0..10 {
            feed(&mut detector, 10_000 + (round % 3) * 300);
        }
        assert!(!detector.scores["runqueue"].anomalous(), "{:?}", detector.scores);
        feed(&mut detector, 80_000);
        let score = detector.scores["runqueue"];
        assert!(score.anomalous() && score.z > 0.0, "{score:?}");
    }
}

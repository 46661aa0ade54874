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
    baselines: BTreeMap<String, VecDeque<f64>>,
    pub scores: BTreeMap<String, Score>,
}

impl Detector {
    pub fn new(baseline_len: usize) -> Self {
        Self { baseline_len: baseline_len.max(MIN_BASELINE), baselines: BTreeMap::new(), scores: BTreeMap::new() }
    }

    /// Scores one interval's histogram against the baseline, then adds it to the baseline.
    pub fn observe(&mut self, key: &str, interval: &LatencyHistogram) {
        let p = percentiles(interval);
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
    use super::*;

    #[test]
    fn a_jump_in_p99_is_anomalous_and_steady_intervals_are_not() {
        let mut detector = Detector::new(10);
        let feed = |detector: &mut Detector, latency_ns: u64| {
            let interval = LatencyHistogram::from_values((0..100u64).map(|i| latency_ns + i * latency_ns / 200));
            detector.observe("runqueue", &interval);
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

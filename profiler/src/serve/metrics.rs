//! The sink of `serve`: intervals added up into cumulative metrics (stacks left out: they go to
//! the profile windows), with the processes that exited folded into per-name totals (so the
//! metrics never go down while the kernel maps and our memory hold live processes only), the
//! anomaly detector fed each interval's histograms, and the page rendered for scrapes.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Result;

use super::anomaly::Detector;
use crate::{
    analysis::summary::syscall_name,
    collector::{Interval, Sink},
    output::prometheus::{Exposition, Gauge, ProcessSeries, SeriesLabels, prometheus_text},
    recording::{Accumulator, FIRST_FOLDED_ID, FoldedNames, LatencyHistogram, Recording},
};

/// Per-process run-queue series for `--top-processes`: the first N processes (by name, and by
/// container and pod with `--labels`) to be busiest keep their series for good, and each
/// interval's waits go to the series their process belongs to then. A series only ever grows,
/// whatever the processes do later (exit, rename, fall out of the top): a Prometheus counter must
/// never decrease, and "other" did when membership moved with rank.
#[derive(Default)]
struct ProcessHistograms {
    processes: ProcessSeries,
    members: BTreeSet<SeriesLabels>,
    series: BTreeMap<SeriesLabels, LatencyHistogram>,
}

impl ProcessHistograms {
    /// Adds an interval's waits; `known` names the processes (an interval describes only the
    /// processes first seen in it).
    fn add(&mut self, delta: &Recording, known: &Recording) {
        let Some(runq) = delta.runq.as_ref().filter(|_| self.processes.top > 0) else { return };
        let mut by_labels: BTreeMap<SeriesLabels, LatencyHistogram> = BTreeMap::new();
        for (&tgid, h) in &runq.per_process {
            by_labels.entry(self.processes.labels(known, tgid)).or_default().merge(h);
        }
        let other = self.processes.other();
        let mut ranked: Vec<(&SeriesLabels, u64)> = by_labels.iter().map(|(labels, h)| (labels, h.count())).collect();
        ranked.sort_by_key(|&(labels, count)| (std::cmp::Reverse(count), labels));
        for (labels, _) in ranked {
            if self.members.len() >= self.processes.top {
                break;
            }
            // A process called "other" shares the series of the rest.
            if labels.first() != other.first() {
                self.members.insert(labels.clone());
            }
        }
        for (labels, h) in by_labels {
            let series = if self.members.contains(&labels) { labels } else { other.clone() };
            self.series.entry(series).or_default().merge(&h);
        }
    }
}

/// The rendered exposition of the last interval, in both formats.
#[derive(Default)]
pub struct Page {
    pub openmetrics: String,
    pub prometheus: String,
}

pub struct MetricsSink {
    totals: Accumulator,
    folded: FoldedNames,
    detector: Detector,
    /// The detector judges one `--interval` at a time, whatever drains the profiles ask for in
    /// between: what was drained since it last judged, and when that was (session clock).
    unjudged: Accumulator,
    judged_at: Duration,
    judge_every: Duration,
    /// How many calls a timed syscall stands for (`--syscall-latency-sample`): the detector
    /// judges a syscall's p99 from the calls timed, not from their weighed counts.
    syscall_weight: u64,
    processes: ProcessHistograms,
    page: Arc<Mutex<Page>>,
    /// Processes that exited in the last interval: their last waits and calls may come in the
    /// next one, so they fold one interval later.
    exited: Vec<u32>,
}

impl MetricsSink {
    pub fn new(
        processes: ProcessSeries,
        baseline: usize,
        interval: Duration,
        syscall_one_in: u32,
        page: Arc<Mutex<Page>>,
    ) -> Self {
        Self {
            totals: Accumulator::default(),
            folded: FoldedNames::default(),
            detector: Detector::new(baseline),
            unjudged: Accumulator::default(),
            judged_at: Duration::ZERO,
            judge_every: interval,
            syscall_weight: u64::from(syscall_one_in),
            processes: ProcessHistograms { processes, ..Default::default() },
            page,
            exited: Vec::new(),
        }
    }

    /// Feeds the detector once a whole `--interval` has been drained since it was last fed (a
    /// drain of the profiles' may end an interval early; a drain comes a little after its tick).
    fn observe(&mut self, interval: &Interval<'_>) {
        self.unjudged.add_metrics(interval.delta);
        if interval.elapsed.saturating_sub(self.judged_at) < self.judge_every.mul_f64(0.9) {
            return;
        }
        self.judged_at = interval.elapsed;
        let unjudged = std::mem::take(&mut self.unjudged);
        let delta = unjudged.recording();
        if let Some(runq) = &delta.runq {
            self.detector.observe("runqueue", &runq.system);
        }
        if let Some(syscalls) = &delta.syscalls {
            for (nr, histogram) in &syscalls.latency {
                self.detector
                    .observe(&format!("syscall:{}", syscall_name(*nr)), &histogram.unweighed(self.syscall_weight));
            }
        }
    }

    fn anomaly_gauges(&self) -> Vec<Gauge> {
        let mut gauges = Vec::new();
        for (key, score) in &self.detector.scores {
            let labels = match key.split_once(':') {
                Some((kind, name)) => {
                    vec![("histogram".to_string(), kind.to_string()), ("syscall".to_string(), name.to_string())]
                }
                None => vec![("histogram".to_string(), key.clone())],
            };
            gauges.push(Gauge {
                name: "profiler_latency_p99_zscore".into(),
                help: "z-score of the last interval's p99 against the rolling baseline".into(),
                labels: labels.clone(),
                value: score.z,
            });
            gauges.push(Gauge {
                name: "profiler_latency_anomalous".into(),
                help: "1 when the last interval's p99 z-score exceeds 3 in magnitude".into(),
                labels,
                value: f64::from(u8::from(score.anomalous())),
            });
        }
        gauges
    }
}

impl Sink for MetricsSink {
    fn interval(&mut self, interval: &Interval<'_>) -> Result<()> {
        let started = Instant::now();
        self.totals.add_metrics(interval.delta);
        self.processes.add(interval.delta, self.totals.recording());
        let exited = std::mem::replace(&mut self.exited, interval.exited.to_vec());
        let moves: HashMap<u32, u32> =
            exited.iter().map(|&tgid| (tgid, self.folded.id(&self.totals.recording().fold_key(tgid)))).collect();
        self.totals.fold(&moves);
        self.observe(interval);

        let totals = self.totals.recording();
        let mut exposition =
            Exposition::new(totals, ProcessSeries::default()).with_process_series(&self.processes.series);
        exposition.gauges.extend(self.anomaly_gauges());
        for &(map, fill) in interval.fills {
            exposition.gauges.push(Gauge {
                name: "profiler_map_fill_ratio".into(),
                help: "Entries in a kernel map over its capacity".into(),
                labels: vec![("map".into(), map.to_string())],
                value: fill,
            });
        }
        let live = totals.tgids().into_iter().filter(|&tgid| tgid < FIRST_FOLDED_ID).count();
        let health: [(&str, &str, f64); 4] = [
            ("profiler_programs_attached", "eBPF programs attached", interval.programs_attached as f64),
            ("profiler_events", "Events seen by the probes since start", totals.counters.events() as f64),
            ("profiler_tracked_processes", "Live processes in the kernel maps", live as f64),
            (
                "profiler_drain_duration_seconds",
                "Time the last interval took to add up and render",
                started.elapsed().as_secs_f64(),
            ),
        ];
        for (name, help, value) in health {
            exposition.gauges.push(Gauge { name: name.into(), help: help.into(), labels: Vec::new(), value });
        }
        let openmetrics = exposition.render_openmetrics();
        *self.page.lock().expect("page lock") = Page { prometheus: prometheus_text(&openmetrics), openmetrics };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::{Container, Process, RunqLatency};

    fn interval(waits: &[(u32, &str, u64)]) -> Recording {
        let mut delta = Recording { runq: Some(RunqLatency::default()), ..Default::default() };
        for &(tgid, comm, count) in waits {
            let runq = delta.runq.as_mut().unwrap();
            runq.per_process.insert(tgid, LatencyHistogram::from_values(std::iter::repeat_n(1000, count as usize)));
            delta.processes.insert(tgid, Process { comm: comm.into(), ..Default::default() });
        }
        delta
    }

    /// The churn that made comm="other" go down: names overtaking each other in rank, processes
    /// exiting and new ones arriving. Every series only grows.
    #[test]
    fn series_never_decrease_when_ranks_change() {
        let mut histograms =
            ProcessHistograms { processes: ProcessSeries { top: 2, ..Default::default() }, ..Default::default() };
        let mut last: BTreeMap<SeriesLabels, u64> = BTreeMap::new();
        let intervals = [
            vec![(1, "a", 10), (2, "b", 5), (3, "c", 1)],
            vec![(3, "c", 50), (4, "d", 40)],
            vec![(1, "a", 1), (5, "e", 100), (4, "d", 3)],
            vec![(6, "b", 7)],
        ];
        for waits in &intervals {
            let delta = interval(waits);
            histograms.add(&delta, &delta);
            for (labels, h) in &histograms.series {
                let before = last.insert(labels.clone(), h.count()).unwrap_or(0);
                assert!(h.count() >= before, "{labels:?} went from {before} to {}", h.count());
            }
        }
        let comm = |name: &str| vec![("comm".to_string(), name.to_string())];
        assert_eq!(histograms.members, [comm("a"), comm("b")].into());
        let count = |name: &str| histograms.series[&comm(name)].count();
        assert_eq!((count("a"), count("b"), count("other")), (11, 12, 194));
    }

    /// An interval describes only the processes first seen in it: a process's later waits still go
    /// to its own series (they went to comm="?").
    #[test]
    fn a_process_keeps_its_series_after_the_interval_that_described_it() {
        let mut histograms =
            ProcessHistograms { processes: ProcessSeries { top: 2, ..Default::default() }, ..Default::default() };
        let mut totals = Accumulator::default();
        let first = interval(&[(1, "nginx", 10)]);
        let mut second = interval(&[(1, "nginx", 5)]);
        second.processes.clear();
        for delta in [&first, &second] {
            totals.add_metrics(delta);
            histograms.add(delta, totals.recording());
        }
        let series: Vec<(&SeriesLabels, u64)> = histograms.series.iter().map(|(l, h)| (l, h.count())).collect();
        assert_eq!(series, [(&vec![("comm".to_string(), "nginx".to_string())], 15)]);
    }

    /// With `--labels container,pod`, processes of one name in different containers are series
    /// of their own.
    #[test]
    fn series_tell_containers_apart_when_asked() {
        let processes = ProcessSeries { top: 3, container: true, pod: true };
        let mut histograms = ProcessHistograms { processes, ..Default::default() };
        let mut delta = interval(&[(1, "nginx", 10), (2, "nginx", 20), (3, "nginx", 5)]);
        let container = |id: &str, pod: Option<&str>| Container {
            id: id.repeat(64),
            pod_uid: pod.map(String::from),
            ..Default::default()
        };
        delta.processes.get_mut(&1).unwrap().container = Some(container("a", Some("pod-1")));
        delta.processes.get_mut(&2).unwrap().container = Some(container("b", None));
        histograms.add(&delta, &delta);
        let labels = |id: &str, pod: &str| {
            vec![
                ("comm".to_string(), "nginx".to_string()),
                ("container_id".to_string(), id.repeat(64)),
                ("pod_uid".to_string(), pod.to_string()),
            ]
        };
        let count = |labels: &SeriesLabels| histograms.series[labels].count();
        assert_eq!(count(&labels("a", "pod-1")), 10);
        assert_eq!(count(&labels("b", "")[..2].to_vec()), 20, "no pod");
        assert_eq!(count(&labels("", "")[..1].to_vec()), 5, "outside any container");
    }
}

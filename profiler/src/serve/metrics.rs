//! The sink of `serve`: intervals added up into cumulative metrics, with the processes that exited
//! folded into per-name totals (so the metrics never go down while the kernel maps and our memory
//! hold live processes only), the anomaly detector fed each interval's histograms, and the page
//! rendered for scrapes.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::Result;

use super::anomaly::Detector;
use crate::{
    analysis::summary::syscall_name,
    collector::{Interval, Sink},
    output::prometheus::{Exposition, Gauge, ProcessSeries, prometheus_text},
    recording::Accumulator,
};

/// Synthetic ids of folded names start above any pid (pid_max is at most 2^22).
const FIRST_FOLDED_ID: u32 = 1 << 31;
/// Names kept apart at most; beyond, exited processes fold into "other".
const MAX_FOLDED_NAMES: usize = 4096;

/// The rendered exposition of the last interval, in both formats.
#[derive(Default)]
pub struct Page {
    pub openmetrics: String,
    pub prometheus: String,
}

pub struct MetricsSink {
    totals: Accumulator,
    folded_ids: HashMap<String, u32>,
    detector: Detector,
    processes: ProcessSeries,
    page: Arc<Mutex<Page>>,
}

impl MetricsSink {
    pub fn new(processes: ProcessSeries, baseline: usize, page: Arc<Mutex<Page>>) -> Self {
        Self {
            totals: Accumulator::default(),
            folded_ids: HashMap::new(),
            detector: Detector::new(baseline),
            processes,
            page,
        }
    }

    /// The id of the per-name total of exited processes called `name`.
    fn folded_id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.folded_ids.get(name) {
            return id;
        }
        let name = if self.folded_ids.len() >= MAX_FOLDED_NAMES { "other" } else { name };
        let next = FIRST_FOLDED_ID + self.folded_ids.len() as u32;
        *self.folded_ids.entry(name.to_string()).or_insert(next)
    }

    fn observe(&mut self, interval: &Interval<'_>) {
        if let Some(runq) = &interval.delta.runq {
            self.detector.observe("runqueue", &runq.system);
        }
        if let Some(syscalls) = &interval.delta.syscalls {
            for (nr, histogram) in &syscalls.latency {
                self.detector.observe(&format!("syscall:{}", syscall_name(*nr)), histogram);
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
        self.totals.add(interval.delta);
        for &tgid in interval.exited {
            let name = self.totals.recording().process_name(tgid).to_string();
            let id = self.folded_id(&name);
            self.totals.fold(tgid, id);
        }
        self.observe(interval);

        let totals = self.totals.recording();
        let mut exposition = Exposition::new(totals, self.processes);
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

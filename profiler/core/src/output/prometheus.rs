//! Prometheus exposition of a recording's histograms and counters, with prometheus-client. Used by
//! `export prometheus` (a file for node_exporter's textfile collector) and by `serve` (/metrics).
//!
//! Our log-linear buckets are coarsened to powers of two of nanoseconds, from 512 ns to 2^34 ns
//! (17.2 s), plus +Inf. Every power of two is an edge of the fine buckets, so each `le` bound is
//! an exact upper edge and the cumulative counts are exact. `_sum` is exact for syscalls (the
//! kernel adds up their latency) and estimated from bucket midpoints for run-queue latency.

use std::collections::BTreeMap;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use crate::{
    analysis::{
        histogram::representative_value,
        summary::{errno_name, syscall_name},
    },
    recording::{Counters, LatencyHistogram, Recording, RunqLatency, Syscalls},
};

/// Smallest and largest finite `le` bound, as powers of two of nanoseconds.
const FIRST_LE_LOG2: u32 = 9;
const LAST_LE_LOG2: u32 = 34;

/// Per-bucket (not cumulative) counts at the coarse `le` bounds in seconds, the last at +Inf
/// (`f64::INFINITY`, which the encoder writes as "+Inf"), as prometheus-client expects.
pub fn coarse_buckets(histogram: &LatencyHistogram) -> Vec<(f64, u64)> {
    let mut buckets: Vec<(f64, u64)> = (FIRST_LE_LOG2..=LAST_LE_LOG2).map(|k| ((1u64 << k) as f64 / 1e9, 0)).collect();
    buckets.push((f64::INFINITY, 0));
    for (_, upper, count) in histogram.ranges() {
        // The first bound at or above the bucket's upper edge holds all of its values.
        let index = (FIRST_LE_LOG2..=LAST_LE_LOG2).position(|k| upper <= 1u64 << k).unwrap_or(buckets.len() - 1);
        buckets[index].1 = buckets[index].1.saturating_add(count);
    }
    buckets
}

/// Σ count × bucket midpoint, in seconds.
fn estimated_sum_seconds(histogram: &LatencyHistogram) -> f64 {
    histogram
        .buckets
        .iter()
        .zip(histogram.ranges())
        .map(|(&(index, _), (lower, upper, count))| representative_value(index, lower, upper) as f64 * count as f64)
        .sum::<f64>()
        / 1e9
}

/// A histogram ready for encoding.
#[derive(Clone, Debug)]
struct ExposedHistogram {
    labels: Vec<(String, String)>,
    sum_seconds: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl ExposedHistogram {
    fn new(labels: Vec<(String, String)>, histogram: &LatencyHistogram, exact_sum_ns: Option<u64>) -> Self {
        Self {
            labels,
            sum_seconds: exact_sum_ns.map_or_else(|| estimated_sum_seconds(histogram), |ns| ns as f64 / 1e9),
            count: histogram.count(),
            buckets: coarse_buckets(histogram),
        }
    }
}

/// Which per-process series to expose: none by default; with `top` > 0, the `top` processes with
/// the most run-queue samples, the rest folded into comm="other". Bounded label cardinality.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessSeries {
    pub top: usize,
    /// Also tell processes of one name apart by container (`container_id`, and `container_name`
    /// where known) and pod (`pod_uid`, and `pod_name` and `pod_namespace` where known): each
    /// (name, container, pod) is a series of its own, still `top` at most (a name adds no series:
    /// it goes with its id). Not `container`, `pod`, `namespace`: the Prometheus Operator gives
    /// every scraped series those of the profiler's own pod.
    pub container: bool,
    pub pod: bool,
}

/// The labels of a per-process series.
pub type SeriesLabels = Vec<(String, String)>;

impl ProcessSeries {
    /// The labels of process `tgid`'s series: its name and, as asked, its container and pod (none
    /// outside any).
    pub fn labels(&self, recording: &Recording, tgid: u32) -> SeriesLabels {
        let mut labels = vec![("comm".to_string(), recording.process_name(tgid).to_string())];
        let container = recording.processes.get(&tgid).and_then(|p| p.container.as_ref());
        let mut push = |key: &str, value: Option<&String>| {
            if let Some(value) = value.filter(|v| !v.is_empty()) {
                labels.push((key.into(), value.clone()));
            }
        };
        if self.container {
            push("container_id", container.map(|c| &c.id));
            push("container_name", container.and_then(|c| c.name.as_ref()));
        }
        if self.pod {
            push("pod_uid", container.and_then(|c| c.pod_uid.as_ref()));
            push("pod_name", container.and_then(|c| c.pod_name.as_ref()));
            push("pod_namespace", container.and_then(|c| c.namespace.as_ref()));
        }
        labels
    }

    /// The labels of the series the processes outside the top go to.
    pub fn other(&self) -> SeriesLabels {
        vec![("comm".to_string(), "other".to_string())]
    }
}

/// Everything one exposition shows, computed from a recording.
#[derive(Debug, Default)]
pub struct Exposition {
    runq_per_cpu: Vec<ExposedHistogram>,
    runq_per_process: Vec<ExposedHistogram>,
    syscall_latency: Vec<ExposedHistogram>,
    syscalls: Vec<(String, u64)>,
    syscall_errors: Vec<((String, String), u64)>,
    counters: Vec<(&'static str, &'static str, u64)>,
    drops: Vec<(&'static str, u64)>,
    /// Extra gauges, such as the profiler's health in `serve`.
    pub gauges: Vec<Gauge>,
}

/// One gauge sample; samples with the same name form one family.
#[derive(Debug)]
pub struct Gauge {
    pub name: String,
    pub help: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Exposition {
    pub fn new(recording: &Recording, processes: ProcessSeries) -> Self {
        let mut exposition = Exposition::default();
        if let Some(runq) = &recording.runq {
            exposition.add_runq(recording, runq, processes);
        }
        if let Some(syscalls) = &recording.syscalls {
            exposition.add_syscalls(syscalls);
        }
        exposition.add_counters(&recording.counters);
        exposition
    }

    /// Run-queue histograms per CPU and, for the busiest process names, per process.
    fn add_runq(&mut self, recording: &Recording, runq: &RunqLatency, processes: ProcessSeries) {
        self.runq_per_cpu = runq
            .per_cpu
            .iter()
            .enumerate()
            .map(|(cpu, h)| ExposedHistogram::new(vec![("cpu".into(), cpu.to_string())], h, None))
            .collect();
        if processes.top > 0 {
            let mut by_labels: BTreeMap<SeriesLabels, LatencyHistogram> = BTreeMap::new();
            for (&tgid, h) in &runq.per_process {
                by_labels.entry(processes.labels(recording, tgid)).or_default().merge(h);
            }
            let mut ranked: Vec<(SeriesLabels, LatencyHistogram)> = by_labels.into_iter().collect();
            ranked.sort_by_key(|(_, h)| std::cmp::Reverse(h.count()));
            let mut other = LatencyHistogram::default();
            for (i, (labels, h)) in ranked.into_iter().enumerate() {
                if i < processes.top {
                    self.runq_per_process.push(ExposedHistogram::new(labels, &h, None));
                } else {
                    other.merge(&h);
                }
            }
            if !other.is_empty() {
                self.runq_per_process.push(ExposedHistogram::new(processes.other(), &other, None));
            }
        }
    }

    /// Per-process run-queue series added up by the caller (`serve`), replacing the ranking of
    /// one recording: series whose membership never changes, so their counters never go down.
    pub fn with_process_series(mut self, series: &BTreeMap<SeriesLabels, LatencyHistogram>) -> Self {
        self.runq_per_process =
            series.iter().map(|(labels, h)| ExposedHistogram::new(labels.clone(), h, None)).collect();
        self
    }

    /// Syscall latency histograms, call and error counters.
    fn add_syscalls(&mut self, syscalls: &Syscalls) {
        let mut counts: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        let mut errors: BTreeMap<(u32, u32), u64> = BTreeMap::new();
        for row in &syscalls.per_process {
            let entry = counts.entry(row.nr).or_default();
            entry.0 = entry.0.saturating_add(row.count);
            entry.1 = entry.1.saturating_add(row.total_ns);
            for &(errno, n) in &row.errnos {
                let slot = errors.entry((row.nr, errno)).or_default();
                *slot = slot.saturating_add(n);
            }
        }
        self.syscall_latency = syscalls
            .latency
            .iter()
            .map(|(nr, h)| {
                let exact = counts.get(nr).map(|&(_, total)| total);
                ExposedHistogram::new(vec![("syscall".into(), syscall_name(*nr))], h, exact)
            })
            .collect();
        self.syscalls = counts.iter().map(|(&nr, &(count, _))| (syscall_name(nr), count)).collect();
        self.syscall_errors =
            errors.into_iter().map(|((nr, errno), n)| ((syscall_name(nr), errno_name(errno)), n)).collect();
    }

    /// The probes' event and drop counters.
    fn add_counters(&mut self, c: &Counters) {
        self.counters = vec![
            ("profiler_context_switches", "Context switches seen", c.sched_switches),
            (
                "profiler_involuntary_context_switches",
                "Switches of a task that was still runnable",
                c.involuntary_switches,
            ),
            ("profiler_wakeups", "Task wakeups seen", c.wakeups),
            ("profiler_cpu_samples", "On-CPU stack samples of non-idle tasks", c.cpu_samples),
        ];
        let d = &c.drops;
        self.drops = vec![
            ("runq_process_map_full", d.runq_process),
            ("syscall_process_map_full", d.syscall_process),
            ("syscall_errno_map_full", d.syscall_errno),
            ("start_time_map", d.start),
            ("process_name_map", d.process_names),
            ("stack_collision", d.stack_collisions),
            ("stack_map_full", d.stack_errors),
            ("sample_map_full", d.samples),
            ("new_process_ring_full", d.new_processes),
            ("syscall_latency_process_map_full", d.syscall_latency_process),
            ("offcpu_time_map_full", d.offcpu_times),
            ("offcpu_blocked_map_full", d.offcpu_blocked),
        ];
    }

    /// OpenMetrics text, as prometheus-client writes it (Prometheus negotiates it when scraping).
    pub fn render_openmetrics(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("writing to a String cannot fail");
        text
    }

    /// The Prometheus text format (0.0.4), which node_exporter's textfile collector and promtool
    /// read: OpenMetrics without `# UNIT` and `# EOF`, and with counter families named by their
    /// `_total` samples.
    pub fn render(self) -> String {
        prometheus_text(&self.render_openmetrics())
    }
}

/// Converts prometheus-client's OpenMetrics text to the Prometheus text format.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        openmetrics.lines().filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

fn labels(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn encode_histograms(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    histograms: &[ExposedHistogram],
) -> Result<(), std::fmt::Error> {
    if histograms.is_empty() {
        return Ok(());
    }
    let mut family = encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    for h in histograms {
        let labels = labels(&h.labels);
        family.encode_family(&labels)?.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            h.sum_seconds,
            h.count,
            &h.buckets,
            None,
        )?;
    }
    Ok(())
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_histograms(
            &mut encoder,
            "profiler_runqueue_latency",
            "Time runnable tasks waited for a CPU, by the CPU they ran on",
            &self.runq_per_cpu,
        )?;
        encode_histograms(
            &mut encoder,
            "profiler_process_runqueue_latency",
            "Time runnable tasks waited for a CPU, by process name (top processes, the rest as other)",
            &self.runq_per_process,
        )?;
        encode_histograms(
            &mut encoder,
            "profiler_syscall_latency",
            "Syscall latency by syscall",
            &self.syscall_latency,
        )?;
        if !self.syscalls.is_empty() {
            let mut family =
                encoder.encode_descriptor("profiler_syscalls", "Syscalls made", None, MetricType::Counter)?;
            for (name, count) in &self.syscalls {
                ConstCounter::new(*count).encode(family.encode_family(&[("syscall", name.as_str())])?)?;
            }
        }
        if !self.syscall_errors.is_empty() {
            let mut family = encoder.encode_descriptor(
                "profiler_syscall_errors",
                "Failed syscalls by errno",
                None,
                MetricType::Counter,
            )?;
            for ((name, errno), count) in &self.syscall_errors {
                let labels = [("syscall", name.as_str()), ("errno", errno.as_str())];
                ConstCounter::new(*count).encode(family.encode_family(&labels)?)?;
            }
        }
        for &(name, help, value) in &self.counters {
            ConstCounter::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "profiler_dropped_events",
            "Events the kernel side could not keep, by reason",
            None,
            MetricType::Counter,
        )?;
        for &(reason, value) in &self.drops {
            ConstCounter::new(value).encode(family.encode_family(&[("reason", reason)])?)?;
        }
        let mut families: BTreeMap<&str, Vec<&Gauge>> = BTreeMap::new();
        for gauge in &self.gauges {
            families.entry(&gauge.name).or_default().push(gauge);
        }
        for (name, series) in families {
            let mut family = encoder.encode_descriptor(name, &series[0].help, None, MetricType::Gauge)?;
            match series.as_slice() {
                [only] if only.labels.is_empty() => ConstGauge::new(only.value).encode(family)?,
                _ => {
                    for gauge in series {
                        ConstGauge::new(gauge.value).encode(family.encode_family(&labels(&gauge.labels))?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn le_bounds_are_exact_upper_edges() {
        // 1023 ns is below 1024 ns = 2^10: counted in le=1.024e-6. 1024 ns is not: le=2.048e-6.
        let buckets = coarse_buckets(&LatencyHistogram::from_values([100, 1023, 1024, 2047, 2048, 1 << 40]));
        let find = |le: f64| buckets.iter().find(|b| b.0 == le).unwrap().1;
        assert_eq!(find(512e-9), 1, "100 ns");
        assert_eq!(find(1024e-9), 1, "1023 ns");
        assert_eq!(find(2048e-9), 2, "1024 and 2047 ns");
        assert_eq!(find(4096e-9), 1, "2048 ns");
        assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, 1), "beyond 2^34 ns: +Inf");
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), 6);
    }

    #[test]
    fn renders_cumulative_histograms_and_counters() {
        let recording = Recording {
            runq: Some(RunqLatency {
                per_cpu: vec![LatencyHistogram::from_values([1000, 3000]), LatencyHistogram::from_values([])],
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = Exposition::new(&recording, ProcessSeries::default()).render();
        assert!(text.contains("# TYPE profiler_runqueue_latency_seconds histogram"), "{text}");
        assert!(text.contains(r#"profiler_runqueue_latency_seconds_bucket{le="0.000001024",cpu="0"} 1"#), "{text}");
        assert!(text.contains(r#"profiler_runqueue_latency_seconds_bucket{le="0.000004096",cpu="0"} 2"#), "{text}");
        assert!(text.contains(r#"profiler_runqueue_latency_seconds_bucket{le="+Inf",cpu="0"} 2"#), "{text}");
        assert!(text.contains(r#"profiler_runqueue_latency_seconds_count{cpu="0"} 2"#), "{text}");
        assert!(
            text.contains("# TYPE profiler_context_switches_total counter\nprofiler_context_switches_total 0"),
            "{text}"
        );
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
    }
}

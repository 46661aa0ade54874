//! `serve`: probes stay attached; every interval the kernel maps are drained into cumulative
//! metrics that /metrics exposes (prometheus-client), with the profiler's own health and anomaly
//! flags. Scrapes read the last snapshot and never touch the kernel maps, so a flood of scrapes
//! cannot disturb the probes. Processes that exit are folded into per-name totals and removed from
//! the kernel maps, so memory stays flat however many processes come and go.

mod anomaly;
mod departed;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use axum::{
    Router,
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    output::prometheus::{Exposition, Gauge, ProcessSeries, prometheus_text},
    probes::{self, Probe, ProbeOptions, ProbeSelection, Probes},
    recording::{LatencyHistogram, Recording},
};
use anomaly::Detector;
use departed::Departed;

pub struct ServeConfig {
    pub listen: SocketAddr,
    pub probes: ProbeSelection,
    pub options: ProbeOptions,
    pub interval: Duration,
    pub processes: ProcessSeries,
    /// Intervals in the rolling baseline of the anomaly detector.
    pub baseline: usize,
}

/// The rendered exposition of the last drain, in both formats.
#[derive(Default)]
struct Page {
    openmetrics: String,
    prometheus: String,
}

pub async fn serve(config: ServeConfig) -> Result<()> {
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let mut probes = Probes::attach(&config.probes, &config.options)?;
    crate::collector::report_left_out(&probes);
    eprintln!("serving metrics on http://{}/metrics", listener.local_addr()?);

    let page = Arc::new(Mutex::new(Page::default()));
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/", get(|| async { "profiler: metrics at /metrics\n" }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(page.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
    });

    let mut state = State { departed: Departed::default(), detector: Detector::new(config.baseline) };
    let mut ticker = tokio::time::interval(config.interval);
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = ticker.tick() => {
                let rendered = state.drain(&mut probes, &config)?;
                *page.lock().expect("page lock") = rendered;
            }
        }
    }
    let _ = stop_tx.send(());
    let _ = server.await;
    probes.detach()?;
    Ok(())
}

async fn metrics(
    axum::extract::State(page): axum::extract::State<Arc<Mutex<Page>>>,
    headers: HeaderMap,
) -> impl IntoResponse {
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    let page = page.lock().expect("page lock");
    if wants_openmetrics {
        (
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            page.openmetrics.clone(),
        )
    } else {
        ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], page.prometheus.clone())
    }
}

struct State {
    departed: Departed,
    detector: Detector,
}

impl State {
    fn drain(&mut self, probes: &mut Probes, config: &ServeConfig) -> Result<Page> {
        let started = Instant::now();
        let mut current = Recording { counters: probes.counters()?, ..Default::default() };
        for probe in probes.probes() {
            match probe {
                Probe::Sched => current.runq = Some(probes::sched::drain(probes)?),
                Probe::Syscalls => current.syscalls = Some(probes::syscalls::drain(probes)?),
                Probe::Cpu => {}
            }
        }
        current.derive_counts();
        // Name every process while it lives; fold the ones that exited into per-name totals.
        self.departed.fold_exited(&mut current, probes)?;
        let merged = self.departed.merged_with(&current);

        if let Some(runq) = &merged.runq {
            let mut system = LatencyHistogram::default();
            for cpu in &runq.per_cpu {
                system.merge(cpu);
            }
            self.detector.observe("runqueue", &system);
        }
        if let Some(syscalls) = &merged.syscalls {
            for (nr, histogram) in &syscalls.latency {
                self.detector.observe(&format!("syscall:{}", crate::analysis::summary::syscall_name(*nr)), histogram);
            }
        }

        let mut exposition = Exposition::new(&merged, config.processes);
        for (key, score) in &self.detector.scores {
            let labels = match key.split_once(':') {
                Some((kind, name)) => {
                    vec![("histogram".to_string(), kind.to_string()), ("syscall".to_string(), name.to_string())]
                }
                None => vec![("histogram".to_string(), key.clone())],
            };
            exposition.gauges.push(Gauge {
                name: "profiler_latency_p99_zscore".into(),
                help: "z-score of the last interval's p99 against the rolling baseline".into(),
                labels: labels.clone(),
                value: score.z,
            });
            exposition.gauges.push(Gauge {
                name: "profiler_latency_anomalous".into(),
                help: "1 when the last interval's p99 z-score exceeds 3 in magnitude".into(),
                labels,
                value: f64::from(u8::from(score.anomalous())),
            });
        }
        for (map, fill) in probes.map_fill()? {
            exposition.gauges.push(Gauge {
                name: "profiler_map_fill_ratio".into(),
                help: "Entries in a kernel map over its capacity".into(),
                labels: vec![("map".into(), map.to_string())],
                value: fill,
            });
        }
        let health: [(&str, &str, f64); 4] = [
            ("profiler_programs_attached", "eBPF programs attached", probes.programs_attached() as f64),
            ("profiler_events", "Events seen by the probes since start", merged.counters.events() as f64),
            ("profiler_tracked_processes", "Live processes in the kernel maps", self.departed.live() as f64),
            (
                "profiler_drain_duration_seconds",
                "Time the last drain of the kernel maps took",
                started.elapsed().as_secs_f64(),
            ),
        ];
        for (name, help, value) in health {
            exposition.gauges.push(Gauge { name: name.into(), help: help.into(), labels: Vec::new(), value });
        }
        let openmetrics = exposition.render_openmetrics();
        Ok(Page { prometheus: prometheus_text(&openmetrics), openmetrics })
    }
}

//! `serve`: probes stay attached; a session drains them every interval into cumulative metrics
//! that /metrics exposes (prometheus-client), with the profiler's own health and anomaly flags,
//! and, with the cpu probe, into the windows of the CPU profiles asked for on
//! /debug/pprof/profile. Scrapes read the last rendered page and never touch the kernel maps, so a
//! flood of scrapes cannot disturb the probes.

mod anomaly;
mod http;
mod metrics;
mod profiles;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use axum::{
    Router,
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
    routing::get,
};

use crate::{
    collector::{Session, SessionConfig, Sink},
    output::prometheus::ProcessSeries,
    probes::{ProbeOptions, ProbeSelection},
};
use metrics::{MetricsSink, Page};

pub struct ServeConfig {
    pub listen: SocketAddr,
    pub probes: ProbeSelection,
    pub options: ProbeOptions,
    pub interval: Duration,
    pub processes: ProcessSeries,
    /// Intervals in the rolling baseline of the anomaly detector.
    pub baseline: usize,
}

pub async fn serve(config: ServeConfig) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let frequency_hz = config.options.frequency_hz;
    let syscall_one_in = config.options.syscall_one_in();
    let session = Session::start(SessionConfig {
        probes: config.probes,
        options: config.options,
        duration: None,
        interval: config.interval,
        inline: false,
        debug_dirs: Vec::new(),
        progress: false,
    })
    .await?;
    let has_stacks = session.probes().probes().iter().any(|probe| probe.name() == "cpu");
    let address = listener.local_addr()?;
    eprintln!("serving metrics on http://{address}/metrics");
    if has_stacks {
        eprintln!("serving CPU profiles on http://{address}/debug/pprof/profile?seconds=30");
    }

    // Requests for profiles ask the session for drains; the session ends at a signal, not when
    // they are gone.
    let (controls_sender, mut controls) = tokio::sync::mpsc::unbounded_channel();
    let (mut profile_sink, profiles) = match has_stacks {
        true => {
            let (sink, profiles) = profiles::profiles(controls_sender.clone(), frequency_hz);
            (Some(sink), Some(profiles))
        }
        false => (None, None),
    };
    let page = Arc::new(Mutex::new(Page::default()));
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(page.clone())
        .merge(Router::new().route("/debug/pprof/profile", get(profiles::profile)).with_state(profiles))
        .route("/", get(|| async { "profiler: metrics at /metrics, CPU profiles at /debug/pprof/profile\n" }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(http::run(listener, app, http::Limits::default(), stopped));
    let mut metrics_sink = MetricsSink::new(config.processes, config.baseline, config.interval, syscall_one_in, page);
    let mut sinks: Vec<&mut dyn Sink> = vec![&mut metrics_sink];
    if let Some(sink) = profile_sink.as_mut() {
        sinks.push(sink);
    }
    let result = session.run_controlled(&mut sinks, Some(&mut controls)).await;
    // Requests still waiting for a window are answered now (503): no drain will come.
    controls.close();
    drop(controls_sender);
    drop(sinks);
    drop(profile_sink);
    // The probes are detached by now; the server closes what clients still hold open.
    let _ = stop.send(true);
    let _ = server.await;
    result.map(|_| ())
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

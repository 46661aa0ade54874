//! `serve`: probes stay attached; a session drains them every interval into cumulative metrics
//! that /metrics exposes (prometheus-client), with the profiler's own health and anomaly flags.
//! Scrapes read the last rendered page and never touch the kernel maps, so a flood of scrapes
//! cannot disturb the probes.

mod anomaly;
mod http;
mod metrics;

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
    collector::{Session, SessionConfig},
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
    eprintln!("serving metrics on http://{}/metrics", listener.local_addr()?);

    let page = Arc::new(Mutex::new(Page::default()));
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/", get(|| async { "profiler: metrics at /metrics\n" }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(page.clone());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(http::run(listener, app, http::Limits::default(), stopped));
    let mut sink = MetricsSink::new(config.processes, config.baseline, page);
    let result = session.run(&mut [&mut sink]).await;
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

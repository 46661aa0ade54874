//! The HTTP side of `serve`, safe against clients that stall: a scraper is a peer on the network,
//! and one that sends half a request and waits must not keep the profiler attached to the kernel
//! after SIGTERM, nor a crowd of them exhaust it. Each connection has a deadline for its request
//! headers and for any read or write; connections beyond a cap are closed at once; at shutdown,
//! open connections get a short grace to finish and are then dropped.

use std::{pin::pin, sync::Arc, time::Duration};

use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
    task::JoinSet,
};
use tokio_io_timeout::TimeoutStream;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A request's headers must arrive within this, from the connection's first byte or from the
    /// end of the previous response (keep-alive).
    pub header_read: Duration,
    /// Any write that makes no progress for this long closes the connection.
    pub write_idle: Duration,
    /// Any read that gets nothing for this long closes it. Longer than the longest answer: while
    /// a request is answered (a CPU profile takes its whole window), hyper keeps a read pending to
    /// see the client close. A stalled request is closed sooner, by `header_read`.
    pub read_idle: Duration,
    /// Connections open at once; more are closed as they are accepted.
    pub connections: usize,
    /// At shutdown, how long open connections get to finish their response.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read: Duration::from_secs(5),
            write_idle: Duration::from_secs(10),
            read_idle: Duration::from_secs(super::profiles::MAX_SECONDS + 10),
            connections: 64,
            shutdown_grace: Duration::from_millis(500),
        }
    }
}

/// Serves `app` until `stop` turns true, then closes every connection within the grace.
/// `stop` is sent once, when the session has ended.
pub async fn run(listener: TcpListener, app: axum::Router, limits: Limits, mut stop: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(limits.connections));
    let (closing, closing_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        // Out of file descriptors, say: wait instead of spinning on accept.
                        tracing::warn!("cannot accept a connection: {error}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    tracing::debug!("closing a connection: {} already open", limits.connections);
                    continue;
                };
                let mut stream = TimeoutStream::new(stream);
                stream.set_read_timeout(Some(limits.read_idle));
                stream.set_write_timeout(Some(limits.write_idle));
                let io = TokioIo::new(Box::pin(stream));
                let service = TowerToHyperService::new(app.clone());
                let mut closing = closing_rx.clone();
                connections.spawn(async move {
                    let _permit = permit;
                    let mut connection = pin!(http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(limits.header_read)
                        .serve_connection(io, service));
                    tokio::select! {
                        _ = connection.as_mut() => {}
                        _ = closing.changed() => {
                            connection.as_mut().graceful_shutdown();
                            let _ = connection.await;
                        }
                    }
                });
            }
        }
    }
    drop(listener);
    let _ = closing.send(true);
    let finished = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.shutdown_grace, finished).await.is_err() {
        connections.abort_all();
    }
}

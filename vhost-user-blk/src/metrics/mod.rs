//! `--metrics ADDR`: Prometheus metrics over HTTP at `/metrics`, served on the control plane's
//! tokio runtime (never by a queue worker). The data path only adds to per-queue counters; a
//! scrape sums them ([`render`]). See docs/server.md ("Metrics") for the metric list.

pub mod addr;
pub mod http;
pub mod render;
pub mod series;

use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio::runtime::Handle;

pub use addr::MetricsAddr;
pub use series::Series;

use crate::server::serve::{bind_socket, SocketFile};
use crate::server::Daemon;

/// The running metrics endpoint; a Unix socket's file is removed when dropped (if the path
/// still names it).
pub struct MetricsServer {
    socket: Option<SocketFile>,
    addr: String,
}

impl MetricsServer {
    /// Bind `addr` and serve it on the runtime behind `rt`.
    pub fn start(addr: &MetricsAddr, daemon: Arc<Daemon>, rt: &Handle) -> Result<MetricsServer, String> {
        let _guard = rt.enter();
        let limiter = http::limiter();
        match addr {
            MetricsAddr::Tcp(sa) => {
                let std_listener = std::net::TcpListener::bind(sa).map_err(|e| format!("--metrics {addr}: {e}"))?;
                std_listener.set_nonblocking(true).map_err(|e| format!("--metrics {addr}: {e}"))?;
                let bound = std_listener.local_addr().map_err(|e| format!("--metrics {addr}: {e}"))?;
                let listener = TcpListener::from_std(std_listener).map_err(|e| format!("--metrics {addr}: {e}"))?;
                if !sa.ip().is_loopback() {
                    tracing::warn!(%bound, "metrics: listening on a non-loopback address as asked");
                }
                rt.spawn(async move {
                    loop {
                        match listener.accept().await {
                            Ok((stream, _)) => admit(&limiter, stream, &daemon),
                            Err(e) => accept_failed(e).await,
                        }
                    }
                });
                tracing::info!(address = %bound, "metrics listening at http://{bound}/metrics");
                Ok(MetricsServer { socket: None, addr: bound.to_string() })
            }
            MetricsAddr::Unix(path) => {
                let (std_listener, socket) = bind_socket(path).map_err(|e| format!("--metrics {addr}: {e}"))?;
                std_listener.set_nonblocking(true).map_err(|e| format!("--metrics {addr}: {e}"))?;
                let listener = UnixListener::from_std(std_listener).map_err(|e| format!("--metrics {addr}: {e}"))?;
                rt.spawn(async move {
                    loop {
                        match listener.accept().await {
                            Ok((stream, _)) => admit(&limiter, stream, &daemon),
                            Err(e) => accept_failed(e).await,
                        }
                    }
                });
                tracing::info!(socket = %path.display(), "metrics listening (HTTP at /metrics)");
                Ok(MetricsServer { socket: Some(socket), addr: addr.to_string() })
            }
        }
    }

    /// The address served (with the port the system chose for port 0).
    pub fn address(&self) -> &str {
        &self.addr
    }
}

/// Serve `stream` if a connection slot is free; else close it at once.
fn admit<S>(limiter: &Arc<tokio::sync::Semaphore>, stream: S, daemon: &Arc<Daemon>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Ok(permit) = limiter.clone().try_acquire_owned() else {
        tracing::debug!("metrics: connection limit reached; closing a new connection");
        return;
    };
    let daemon = daemon.clone();
    tokio::spawn(async move {
        http::serve(stream, daemon).await;
        drop(permit);
    });
}

async fn accept_failed(e: std::io::Error) {
    tracing::warn!("metrics: accept failed: {e}");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(s) = &self.socket {
            if !s.remove_if_ours() {
                tracing::warn!(socket = %s.path().display(), "metrics socket path now names another socket; left in place");
            }
        }
    }
}

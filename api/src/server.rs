//! The accept loop: hyper's HTTP/1 server with a header read timeout, so a client that sends
//! its headers slowly (or never) loses its connection instead of holding the server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::{router, ApiConfig, Backend, ServeError};

/// Serves the API on `listener` until the process ends.
pub async fn serve(
    listener: TcpListener,
    backend: Arc<dyn Backend>,
    config: ApiConfig,
) -> Result<(), ServeError> {
    serve_with_shutdown(listener, backend, config, std::future::pending()).await
}

/// Serves the API until `shutdown` completes, then lets open responses finish for up to
/// `config.shutdown_grace`.
pub async fn serve_with_shutdown(
    listener: TcpListener,
    backend: Arc<dyn Backend>,
    config: ApiConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let options = ServerOptions {
        header_read_timeout: config.header_read_timeout,
        shutdown_grace: config.shutdown_grace,
    };
    let app = router(backend, config)?;
    serve_router(listener, app, options, shutdown).await?;
    Ok(())
}

/// Connection settings for [`serve_router`].
#[derive(Debug, Clone, Copy)]
pub struct ServerOptions {
    pub header_read_timeout: Duration,
    pub shutdown_grace: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        let config = ApiConfig::default();
        ServerOptions {
            header_read_timeout: config.header_read_timeout,
            shutdown_grace: config.shutdown_grace,
        }
    }
}

/// Serves any router (the API's, possibly merged into the node's own) with the same
/// connection handling as [`serve`].
pub async fn serve_router(
    listener: TcpListener,
    app: Router,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "HTTP API listening");
    }
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let mut req = req.map(axum::body::Body::new);
            req.extensions_mut()
                .insert(ConnectInfo::<SocketAddr>(remote));
            app.clone().oneshot(req)
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // Header timeouts, resets and clients that leave: routine.
                debug!(%remote, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    info!("HTTP API shutting down");
    if tokio::time::timeout(options.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("open HTTP connections did not finish in time; dropping them");
    }
    Ok(())
}

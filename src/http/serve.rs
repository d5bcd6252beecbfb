//! The gateway's accept loop. It is hyper-util's connection builder with a timer rather than
//! `axum::serve`, because `axum::serve` installs no timer and so leaves hyper's header-read
//! timeout inert: a client trickling its headers a byte at a time (slowloris, RELIABILITY.md
//! E4) could hold a connection, and its task, for ever. Here a connection that has not sent a
//! whole header block within `header_read_timeout` is closed. Slow bodies are bounded by the
//! router's request timeout, since a handler reading the body runs under it.
//!
//! Each request carries the peer's [`ConnectInfo`], as `into_make_service_with_connect_info`
//! would give it, for the failed-authentication limiter.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::Service;

/// Serves `app` on `listener` until `stop` is cancelled; then stops accepting, lets every open
/// connection finish the request it is serving (idle ones close at once), and returns when
/// all are closed. The caller bounds that wait with its shutdown grace period.
pub async fn serve(
    app: Router,
    listener: TcpListener,
    header_read_timeout: Duration,
    stop: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(connection(
                        stream,
                        peer,
                        app.clone(),
                        header_read_timeout,
                        stop.clone(),
                    ));
                }
                Err(error) => {
                    // Out of descriptors and the like: wait a little rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            // Reaps finished connections so the set holds only open ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    header_read_timeout: Duration,
    stop: CancellationToken,
) {
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        async move { app.call(request).await }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = served {
        // A client that went away or was cut off by the header timeout: not the server's fault.
        tracing::debug!(%peer, %error, "connection closed with an error");
    }
}

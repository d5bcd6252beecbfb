//! The load generator: N keep-alive HTTP/1.1 connections, each sending one request after the
//! other (closed loop) for a warm-up and then a fixed measured window. A request counts when
//! it was sent inside the window; its latency is from send to the last byte of the body.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{AUTHORIZATION, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// What to ask for.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// Path and query, e.g. `/v1/vms?limit=100`.
    pub path: String,
    /// A bearer token, when the endpoint needs one.
    pub bearer: Option<String>,
}

/// How hard and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub connections: usize,
    pub warmup: Duration,
    pub measure: Duration,
}

/// What one measured window saw.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Requests sent in the window and answered 2xx.
    pub ok: usize,
    /// Answers other than 2xx, and connection failures, in the window.
    pub failed: usize,
    pub rps: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// The first non-2xx status seen, to say why a run failed.
    pub first_bad_status: Option<u16>,
}

struct ConnectionTally {
    latencies_us: Vec<u32>,
    failed: usize,
    first_bad_status: Option<u16>,
}

pub async fn run(target: &Target, shape: Shape) -> Result<Outcome, String> {
    let started = Instant::now();
    let window_start = started + shape.warmup;
    let window_end = window_start + shape.measure;
    let mut tasks = JoinSet::new();
    for _ in 0..shape.connections.max(1) {
        let target = target.clone();
        tasks.spawn(async move { connection(target, window_start, window_end).await });
    }
    let mut latencies = Vec::new();
    let mut outcome = Outcome::default();
    while let Some(joined) = tasks.join_next().await {
        let tally = joined.map_err(|e| format!("load connection task: {e}"))??;
        latencies.extend(tally.latencies_us);
        outcome.failed += tally.failed;
        outcome.first_bad_status = outcome.first_bad_status.or(tally.first_bad_status);
    }
    latencies.sort_unstable();
    outcome.ok = latencies.len();
    outcome.rps = latencies.len() as f64 / shape.measure.as_secs_f64();
    outcome.p50 = percentile(&latencies, 50.0);
    outcome.p99 = percentile(&latencies, 99.0);
    Ok(outcome)
}

/// The nearest-rank percentile of sorted microsecond samples.
fn percentile(sorted_us: &[u32], pct: f64) -> Duration {
    if sorted_us.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((pct / 100.0) * sorted_us.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted_us.len()) - 1;
    Duration::from_micros(u64::from(sorted_us[index]))
}

async fn connection(
    target: Target,
    window_start: Instant,
    window_end: Instant,
) -> Result<ConnectionTally, String> {
    let mut tally = ConnectionTally {
        latencies_us: Vec::with_capacity(1 << 16),
        failed: 0,
        first_bad_status: None,
    };
    let host = target.addr.to_string();
    let authorization = target.bearer.as_ref().map(|t| format!("Bearer {t}"));
    'reconnect: while Instant::now() < window_end {
        let stream = TcpStream::connect(target.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", target.addr))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (mut sender, driver) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(driver);
        loop {
            let sent = Instant::now();
            if sent >= window_end {
                break 'reconnect;
            }
            let in_window = sent >= window_start;
            if sender.ready().await.is_err() {
                tally.failed += usize::from(in_window);
                continue 'reconnect;
            }
            let mut request = Request::get(target.path.as_str()).header(HOST, host.as_str());
            if let Some(authorization) = &authorization {
                request = request.header(AUTHORIZATION, authorization.as_str());
            }
            let request = request
                .body(Empty::new())
                .map_err(|e| format!("request: {e}"))?;
            let answer = match sender.send_request(request).await {
                Ok(response) => {
                    let status = response.status();
                    response
                        .into_body()
                        .collect()
                        .await
                        .map(|body| (status, body.to_bytes()))
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            };
            let elapsed = sent.elapsed();
            match answer {
                Ok((status, _)) if status.is_success() => {
                    if in_window {
                        let micros = u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX);
                        tally.latencies_us.push(micros);
                    }
                }
                Ok((status, body)) => {
                    tally.failed += usize::from(in_window);
                    tally.first_bad_status.get_or_insert(status.as_u16());
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        // A limited key would measure the limiter, not the endpoint.
                        return Err(format!(
                            "{} answered 429: raise the rate limit ({})",
                            target.path,
                            String::from_utf8_lossy(&body)
                        ));
                    }
                }
                Err(_) => {
                    tally.failed += usize::from(in_window);
                    continue 'reconnect;
                }
            }
        }
    }
    Ok(tally)
}

//! E4 and G: clients that try to exhaust the gateway. E4 holds hundreds of connections open
//! by trickling header bytes (slowloris); G1 floods from one team against its per-team
//! quota while another team measures its latency; G2 sends keys from addresses that never
//! repeat and watches memory and the limiters' state.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Scenario;
use crate::report::{Row, percentile};
use crate::world::{Gateway, GatewayOptions, Suite, World};

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        id: "E4",
        invariant: "I6",
        run: |suite| Box::pin(e4(suite)),
    },
    Scenario {
        id: "G1",
        invariant: "I6",
        run: |suite| Box::pin(g1(suite)),
    },
    Scenario {
        id: "G2",
        invariant: "I6",
        run: |suite| Box::pin(g2(suite)),
    },
];

/// Gateways of this module log at `warn` (start-up at `info`, for its ready line): at `trace`, a flood of millions of requests would
/// write gigabytes that slow the gateway down and the J1 sweep with it. The floods carry no
/// secret the other scenarios do not already put through the same code at `trace`.
fn flood_gateway() -> GatewayOptions {
    GatewayOptions::default().with_env("RUST_LOG", "warn,fluence_gateway::startup=info")
}

/// For the latency figures (E4, G1): the gateway alone on CPU 0, so that the flood the suite
/// generates competes with it only through the requests it sends (RELIABILITY.md 4.4).
fn pinned_flood_gateway() -> GatewayOptions {
    flood_gateway().on_cpu(0)
}

/// `samples` sequential GETs of `path` with `key`, one every `gap`; latencies in seconds and
/// the number of answers other than 200.
async fn sample_latency(
    gateway: &Gateway,
    key: &str,
    path: &str,
    samples: usize,
    gap: Duration,
) -> (Vec<f64>, u64) {
    let mut latencies = Vec::with_capacity(samples);
    let mut failures = 0;
    let mut tick = tokio::time::interval(gap);
    for _ in 0..samples {
        tick.tick().await;
        let started = Instant::now();
        let response = gateway
            .http()
            .get(gateway.url(path))
            .bearer_auth(key)
            .send()
            .await;
        match response {
            Ok(response) => {
                failures += u64::from(response.status().as_u16() != 200);
                let _ = response.bytes().await;
            }
            Err(_) => failures += 1,
        }
        latencies.push(started.elapsed().as_secs_f64());
    }
    latencies.sort_by(f64::total_cmp);
    (latencies, failures)
}

fn ms(sorted: &[f64], p: f64) -> f64 {
    percentile(sorted, p) * 1000.0
}

/// E4 (full profile): 500 connections trickle header bytes one per second. Legitimate
/// requests are timed before (twice, an A/A control) and during; every slow connection must
/// be closed by the gateway within its header timeout + 1 s.
pub async fn e4(suite: Arc<Suite>) -> Vec<Row> {
    if suite.profile == crate::report::Profile::Quick {
        return Vec::new();
    }
    let connections = 500;
    let timeout_secs = 5u64;
    let mut row = Row::new(
        format!("E4 slowloris, {connections} connections"),
        "I6",
        suite.seed,
    );
    let world = World::new(&suite, "e4").await;
    let gateway = Arc::new(
        world
            .gateway(pinned_flood_gateway().with_env(
                "GATEWAY__SERVER__HEADER_READ_TIMEOUT_SECS",
                timeout_secs.to_string(),
            ))
            .await,
    );
    gateway.create_team("e4", "100", json!({})).await;
    let key = gateway.mint_key("e4", "viewer").await;
    let path = "/v1/teams/e4/budget";
    let gap = Duration::from_millis(20);
    let samples = 200;
    let (_, _) = sample_latency(&gateway, &key, path, 50, gap).await;
    let (before, before_failures) = sample_latency(&gateway, &key, path, samples, gap).await;
    let (control, _) = sample_latency(&gateway, &key, path, samples, gap).await;

    // The slow clients: each connects, then sends one header byte a second and records when
    // the gateway closed the connection, measured from its connect.
    let address: SocketAddr = gateway
        .address
        .parse()
        .unwrap_or_else(|e| panic!("address: {e}"));
    let header = b"GET /v1/teams/e4/budget HTTP/1.1\r\nhost: x\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let give_up = Duration::from_secs(timeout_secs + 10);
    let mut slow = Vec::new();
    for _ in 0..connections {
        slow.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(address).await.ok()?;
            let opened = Instant::now();
            let (mut reader, mut writer) = stream.into_split();
            let trickle = tokio::spawn(async move {
                for byte in header.iter() {
                    if writer.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
            let mut buffer = [0u8; 1024];
            // A close (end of stream or reset) or an answer (a 408) both end the hold.
            let closed = tokio::time::timeout(give_up, reader.read(&mut buffer)).await;
            trickle.abort();
            Some(closed.ok().map(|_| opened.elapsed()))
        }));
    }
    // Legitimate traffic while they hold on.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (during, during_failures) = sample_latency(
        &gateway,
        &key,
        path,
        samples.min((timeout_secs as usize * 1000 - 1000) / gap.as_millis() as usize),
        gap,
    )
    .await;
    let mut held = Vec::new();
    let (mut not_connected, mut never_freed) = (0u64, 0u64);
    for task in slow {
        match task.await.ok().flatten() {
            None => not_connected += 1,
            Some(None) => never_freed += 1,
            Some(Some(hold)) => held.push(hold.as_secs_f64()),
        }
    }
    held.sort_by(f64::total_cmp);
    let limit = (timeout_secs + 1) as f64;
    let late = held.iter().filter(|h| **h > limit).count() as u64;
    let (p99_before, p99_during) = (ms(&before, 99.0), ms(&during, 99.0));
    let change = 100.0 * (p99_during - p99_before) / p99_before.max(1e-9);
    row.runs = connections as u64;
    row.bad = late + never_freed + not_connected;
    row.figures = format!(
        "gateway pinned to CPU 0; legitimate p99 {p99_before:.1} ms before (A/A control {:.1} ms) vs {p99_during:.1} ms during = {change:+.0}% (target < +50%; p50 {:.1} vs {:.1} ms; n = {} / {}; failures {before_failures} / {during_failures}); slow connections freed {} of {connections}, hold p50 {:.1} s, max {:.1} s (header timeout {timeout_secs} s + 1 s), later than that {late}, never freed {never_freed}, refused at connect {not_connected}",
        ms(&control, 99.0),
        ms(&before, 50.0),
        ms(&during, 50.0),
        before.len(),
        during.len(),
        held.len(),
        percentile(&held, 50.0),
        held.last().copied().unwrap_or(0.0),
    );
    row.require(change < 50.0, "legitimate p99 rose 50% or more");
    row.require(
        before_failures + during_failures == 0,
        "legitimate requests failed",
    );
    vec![row]
}

/// G1 (full profile): one team floods at about 1000 requests a second against a per-team
/// quota; the quiet team's latency is timed alone, during the flood, and alone again.
pub async fn g1(suite: Arc<Suite>) -> Vec<Row> {
    if suite.profile == crate::report::Profile::Quick {
        return Vec::new();
    }
    let (per_second, burst) = (50u64, 50u64);
    let flood_rps = 1000u64;
    let flood_secs = 20u64;
    let mut row = Row::new(
        format!("G1 one team floods at {flood_rps} rps"),
        "I6",
        suite.seed,
    );
    let world = World::new(&suite, "g1").await;
    let gateway = Arc::new(
        world
            .gateway(
                pinned_flood_gateway()
                    .with_env(
                        "GATEWAY__RATE_LIMIT__PER_TEAM_PER_SECOND",
                        per_second.to_string(),
                    )
                    .with_env("GATEWAY__RATE_LIMIT__PER_TEAM_BURST", burst.to_string()),
            )
            .await,
    );
    gateway.create_team("flood", "100", json!({})).await;
    gateway.create_team("quiet", "100", json!({})).await;
    let flood_key = gateway.mint_key("flood", "viewer").await;
    let quiet_key = gateway.mint_key("quiet", "viewer").await;
    let path = "/v1/teams/quiet/budget";
    // 20 requests a second, well inside the quiet team's own quota.
    let gap = Duration::from_millis(50);
    let samples = 300;
    let _ = sample_latency(&gateway, &quiet_key, path, 40, gap).await;
    let (baseline, baseline_failures) =
        sample_latency(&gateway, &quiet_key, path, samples, gap).await;

    let stop = Arc::new(AtomicBool::new(false));
    let accepted_late = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let without_retry_after = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    // Past the burst: from here on, accepted requests measure the sustained quota.
    let settle = Duration::from_secs(2);
    let flood = {
        let gateway = gateway.clone();
        let (stop, accepted_late, accepted, refused, without_retry_after, other, sent) = (
            stop.clone(),
            accepted_late.clone(),
            accepted.clone(),
            refused.clone(),
            without_retry_after.clone(),
            other.clone(),
            sent.clone(),
        );
        tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / flood_rps));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let in_flight = Arc::new(tokio::sync::Semaphore::new(256));
            while !stop.load(Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(flood_secs)
            {
                tick.tick().await;
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    break;
                };
                sent.fetch_add(1, Ordering::Relaxed);
                let request = gateway
                    .http()
                    .get(gateway.url("/v1/teams/flood/budget"))
                    .bearer_auth(&flood_key);
                let (accepted_late, accepted, refused, without_retry_after, other) = (
                    accepted_late.clone(),
                    accepted.clone(),
                    refused.clone(),
                    without_retry_after.clone(),
                    other.clone(),
                );
                let late = started.elapsed() >= settle;
                tokio::spawn(async move {
                    let _permit = permit;
                    match request.send().await {
                        Ok(response) if response.status().as_u16() == 200 => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                            if late {
                                accepted_late.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(response) if response.status().as_u16() == 429 => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            if response.headers().get("retry-after").is_none() {
                                without_retry_after.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        _ => {
                            other.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
            // Let the last answers arrive.
            let _ = in_flight.acquire_many(256).await;
            started.elapsed()
        })
    };
    tokio::time::sleep(settle).await;
    let flood_samples =
        ((flood_secs - settle.as_secs() - 1) * 1000 / gap.as_millis() as u64) as usize;
    let (during, during_failures) =
        sample_latency(&gateway, &quiet_key, path, flood_samples, gap).await;
    let wall = flood.await.unwrap_or_default();
    stop.store(true, Ordering::Relaxed);
    let (control, control_failures) =
        sample_latency(&gateway, &quiet_key, path, samples, gap).await;

    let sustained_secs = wall.as_secs_f64() - settle.as_secs_f64();
    let sustained_rate = accepted_late.load(Ordering::Relaxed) as f64 / sustained_secs;
    let rate_error = 100.0 * (sustained_rate - per_second as f64) / per_second as f64;
    let sent = sent.load(Ordering::Relaxed);
    let offered = sent as f64 / wall.as_secs_f64();
    let (p99_base, p99_during) = (ms(&baseline, 99.0), ms(&during, 99.0));
    let change = 100.0 * (p99_during - p99_base) / p99_base.max(1e-9);
    let missing_retry_after = without_retry_after.load(Ordering::Relaxed);
    let others = other.load(Ordering::Relaxed);
    row.runs = sent;
    row.bad = missing_retry_after + others;
    row.figures = format!(
        "flood offered {offered:.0} rps for {:.1} s: accepted {} ({sustained_rate:.1}/s after the burst vs a quota of {per_second}/s, {rate_error:+.1}%), 429 {} (without Retry-After {missing_retry_after}), other {others}; gateway pinned to CPU 0; quiet team p99 {p99_base:.1} ms alone vs {p99_during:.1} ms during = {change:+.0}% (target < +25%; A/A control after {:.1} ms; p50 {:.1} / {:.1} ms; n = {} / {}; quiet failures {})",
        wall.as_secs_f64(),
        accepted.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        ms(&control, 99.0),
        ms(&baseline, 50.0),
        ms(&during, 50.0),
        baseline.len(),
        during.len(),
        baseline_failures + during_failures + control_failures,
    );
    row.require(
        rate_error.abs() <= 5.0,
        "accepted rate outside ±5% of the quota",
    );
    row.require(change < 25.0, "the quiet team's p99 rose 25% or more");
    row.require(
        baseline_failures + during_failures + control_failures == 0,
        "the quiet team was refused",
    );
    row.require(
        offered > 0.8 * flood_rps as f64,
        "the flood did not reach its rate",
    );
    vec![row]
}

/// `gateway_rate_limiter_entries` from /metrics, if served.
async fn limiter_entries(gateway: &Gateway) -> Option<u64> {
    let reply = gateway.admin(Method::GET, "/metrics", None).await;
    reply
        .text
        .lines()
        .find_map(|line| line.strip_prefix("gateway_rate_limiter_entries "))
        .and_then(|v| v.trim().parse().ok())
}

/// G2: every request comes from a loopback address never used before and carries a key never
/// used before. Memory is sampled throughout; the limiters must forget the addresses.
pub async fn g2(suite: Arc<Suite>) -> Vec<Row> {
    let target: u64 = suite.profile.pick(5_000, 10_000_000);
    let time_limit = Duration::from_secs(suite.profile.pick(60, 8 * 60));
    let mut row = Row::new("G2 distinct keys and addresses", "I6", suite.seed);
    let world = World::new(&suite, "g2").await;
    let gateway = Arc::new(
        world
            .gateway(flood_gateway().with_env("GATEWAY__RATE_LIMIT__PRUNE_INTERVAL_SECS", "1"))
            .await,
    );
    let address: SocketAddr = gateway
        .address
        .parse()
        .unwrap_or_else(|e| panic!("address: {e}"));
    let entries_before = limiter_entries(&gateway).await;
    let rss_before = gateway.memory_kib("VmRSS");
    let pid = gateway.pid();
    let peak_rss = Arc::new(AtomicU64::new(rss_before));
    let peak_entries = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak_rss, peak_entries, stop, gateway) = (
            peak_rss.clone(),
            peak_entries.clone(),
            stop.clone(),
            gateway.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak_rss.fetch_max(
                    crate::world::proc_status_kib(pid, "VmRSS"),
                    Ordering::Relaxed,
                );
                if let Some(entries) = limiter_entries(&gateway).await {
                    peak_entries.fetch_max(entries, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let next = Arc::new(AtomicU64::new(0));
    let statuses: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..64 {
        let (next, statuses, seed) = (next.clone(), statuses.clone(), suite.seed);
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= target || started.elapsed() > time_limit {
                    return;
                }
                // 127.0.0.0/8 minus 127.0.0.0/16: 2^24 - 2^16 addresses, each used once.
                let host = (n % ((1 << 24) - (1 << 16))) + (1 << 16);
                let source = Ipv4Addr::new(127, (host >> 16) as u8, (host >> 8) as u8, host as u8);
                let key = format!("fgw_{:016x}_{:043x}", n ^ seed, n.wrapping_mul(0x9e37_79b9));
                let class = match once(source, address, &key).await {
                    Some(401) => 0,
                    Some(429) => 1,
                    Some(_) => 2,
                    None => 3,
                };
                statuses[class].fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
    let flood_wall = started.elapsed();
    // The retention passes (every second here) forget an address once its bucket has refilled
    // (2 s for one failure at 30 a minute): wait for that, at most 30 s.
    let drained = Instant::now();
    let mut entries_after = limiter_entries(&gateway).await;
    while entries_after.is_none_or(|e| e >= 1000) && drained.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        entries_after = limiter_entries(&gateway).await;
    }
    let drain_secs = drained.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let rss_after = gateway.memory_kib("VmRSS");
    let sent: u64 = statuses.iter().map(|s| s.load(Ordering::Relaxed)).sum();
    let [unauthorized, limited, other, no_answer] =
        [0, 1, 2, 3].map(|i| statuses[i].load(Ordering::Relaxed));
    let mb = |kib: u64| kib as f64 / 1024.0;
    let growth_mb = mb(rss_after.saturating_sub(rss_before));
    let peak_growth_mb = mb(peak_rss.load(Ordering::Relaxed).saturating_sub(rss_before));
    row.runs = sent;
    row.bad = other;
    row.figures = format!(
        "{sent} distinct keys from {sent} distinct loopback addresses in {:.0} s ({:.0}/s; target {target}{}): 401 {unauthorized}, 429 {limited}, other {other}, no answer {no_answer}; RSS {:.1} MB before, peak +{peak_growth_mb:.1} MB, +{growth_mb:.1} MB after the retention pass (ceiling +50 MB); limiter entries {entries_before:?} before, peak {}, {entries_after:?} {drain_secs:.1} s after the flood",
        flood_wall.as_secs_f64(),
        sent as f64 / flood_wall.as_secs_f64(),
        if sent < target {
            ", cut by the time limit"
        } else {
            ""
        },
        mb(rss_before),
        peak_entries.load(Ordering::Relaxed),
    );
    row.require(peak_growth_mb < 50.0, "RSS grew 50 MB or more");
    row.require(other == 0, "a distinct key got neither 401 nor 429");
    row.require(
        no_answer * 100 <= sent,
        "more than 1% of the connections got no answer",
    );
    row.require(
        entries_after.is_some_and(|e| e < 1000),
        "the limiters still hold the flood's addresses after a retention pass",
    );
    vec![row]
}

/// One request on a fresh connection from `source`; its status.
async fn once(source: Ipv4Addr, to: SocketAddr, key: &str) -> Option<u16> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).ok()?;
    let mut stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(to))
        .await
        .ok()?
        .ok()?;
    let request = format!(
        "GET /v1/teams HTTP/1.1\r\nhost: {to}\r\nauthorization: Bearer {key}\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::with_capacity(512);
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace().nth(1)?.parse().ok()
}

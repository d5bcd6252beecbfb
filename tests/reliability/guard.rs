//! G4 and G6: the upstream guard against a hung and a dead Fluence. G4 keeps clients asking
//! while every estimate hangs, and watches the bulkhead hold the calls out to its size, the
//! refusals come fast, and the gateway's descriptors and threads come back to where they were.
//! G6 fails every Fluence endpoint for a while with jobs and deploys running, counts what still
//! reached Fluence, then brings it back and checks nothing was lost or left held.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::Scenario;
use crate::check::{self, Tally};
use crate::report::{Row, latency_summary};
use crate::world::{Gateway, GatewayOptions, Suite, World, deploy_body};

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        id: "G4",
        invariant: "I6",
        run: |suite| Box::pin(g4(suite)),
    },
    Scenario {
        id: "G6",
        invariant: "I5",
        run: |suite| Box::pin(g6(suite)),
    },
];

/// Every Fluence endpoint the gateway calls, as the simulator's fault table names them.
const ENDPOINTS: [&str; 9] = [
    "GET /vms/v3",
    "POST /vms/v3",
    "POST /vms/v3/estimate",
    "POST /marketplace/offers",
    "GET /marketplace/basic_configurations",
    "GET /marketplace/countries",
    "GET /marketplace/hardware",
    "GET /v1/marketplace/datacenters",
    "GET /vms/v3/default_images",
];

/// A gauge's value in a gateway's /metrics at `url`.
async fn gauge(http: &reqwest::Client, url: &str, name: &str) -> Option<u64> {
    let text = http.get(url).send().await.ok()?.text().await.ok()?;
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str())?.trim().parse().ok())
}

/// Open file descriptors of a process.
fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

fn threads(pid: u32) -> u64 {
    crate::world::proc_status_kib(pid, "Threads")
}

async fn dry_run(gateway: &Gateway, client: &reqwest::Client, team: &str) -> Option<u16> {
    client
        .post(gateway.url(&format!("/v1/deployments?dry_run=true&team={team}")))
        .bearer_auth(&gateway.admin_token)
        .json(&deploy_body("g", 1))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// Polls until a dry run is answered 200 again; the seconds it took.
async fn recovery(gateway: &Gateway, team: &str, bound: Duration) -> Option<f64> {
    let client = reqwest::Client::new();
    let began = Instant::now();
    while began.elapsed() < bound {
        if dry_run(gateway, &client, team).await == Some(200) {
            return Some(began.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// 32 clients asking for dry runs of `team` back to back for `length`: each answer's status
/// (0 for no answer) and how long it took.
async fn dry_run_load(gateway: &Gateway, team: &str, length: Duration) -> Vec<(u16, f64)> {
    let until = Instant::now() + length;
    let mut clients = Vec::new();
    for _ in 0..32 {
        let url = gateway.url(&format!("/v1/deployments?dry_run=true&team={team}"));
        let token = gateway.admin_token.clone();
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut answers = Vec::new();
            while Instant::now() < until {
                let asked = Instant::now();
                let status = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&deploy_body("g", 1))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                answers.push((status, asked.elapsed().as_secs_f64()));
            }
            answers
        }));
    }
    let mut all = Vec::new();
    for client in clients {
        all.extend(client.await.unwrap_or_default());
    }
    all
}

/// G4: Fluence hangs on every estimate while 32 clients keep asking for dry runs.
pub async fn g4(suite: Arc<Suite>) -> Vec<Row> {
    const MAX_IN_FLIGHT: u64 = 4;
    const OPEN_SECS: u64 = 1;
    let seconds = suite.profile.pick(4, 30);
    let mut row = Row::new(
        format!("G4 hung upstream, 32 clients for {seconds} s"),
        "I6",
        suite.seed,
    );
    let world = World::new(&suite, "g4").await;
    let gateway = world
        .gateway(
            GatewayOptions::default()
                .with_env(
                    "GATEWAY__UPSTREAM__MAX_IN_FLIGHT",
                    MAX_IN_FLIGHT.to_string(),
                )
                .with_env(
                    "GATEWAY__UPSTREAM__BREAKER_OPEN_SECS",
                    OPEN_SECS.to_string(),
                )
                .with_env("GATEWAY__UPSTREAM__REQUEST_TIMEOUT_MS", "3000"),
        )
        .await;
    gateway.create_team("g4", "1000", json!({})).await;
    // The same load against a healthy Fluence first: the database pool and the runtime's
    // threads grow to their working size, which is the baseline the hung run must return to.
    // Even healthy, 32 clients overfill a bulkhead of 4: those answers are fast 503s.
    let healthy = dry_run_load(&gateway, "g4", Duration::from_secs(1)).await;
    assert!(
        healthy
            .iter()
            .all(|(status, _)| matches!(status, 200 | 503)),
        "warm-up answers: {:?}",
        healthy
            .iter()
            .map(|(s, _)| s)
            .collect::<std::collections::BTreeSet<_>>()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = gateway.pid();
    let (fds_before, threads_before) = (descriptors(pid), threads(pid));

    world
        .sim
        .fault(
            json!({"endpoint": "POST /vms/v3/estimate", "fault": "delay",
                      "delay_ms": 30_000, "count": 1_000_000}),
        )
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        let url = gateway.url("/metrics");
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                let now = gauge(&http, &url, "gateway_upstream_in_flight").await;
                peak.fetch_max(now.unwrap_or(0), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let answers = dry_run_load(&gateway, "g4", Duration::from_secs(seconds)).await;
    let mut refused = Vec::new();
    let mut waited = Vec::new();
    let mut wrong = 0u64;
    for (status, seconds) in answers {
        match status {
            503 if seconds < 0.5 => refused.push(seconds),
            503 => waited.push(seconds),
            _ => wrong += 1,
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let requests = refused.len() + waited.len() + wrong as usize;

    world
        .sim
        .control(Method::DELETE, "/_sim/faults", None)
        .await;
    let recovered = recovery(&gateway, "g4", Duration::from_secs(30)).await;
    // Connections the load opened are closed by now; the gateway's own settle back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (fds_after, threads_after) = (descriptors(pid), threads(pid));
    let peak = peak.load(Ordering::Relaxed);

    row.runs = requests as u64;
    row.bad = wrong;
    let within = |before: usize, after: usize| after as f64 <= before as f64 * 1.05 + 1.0;
    row.figures = format!(
        "peak in-flight {peak} / max {MAX_IN_FLIGHT}; {} refused at once ({}), {} waited for the 3 s upstream timeout; \
         other answers {wrong}; descriptors {fds_before} -> {fds_after}, threads {threads_before} -> {threads_after}; \
         recovered {}",
        refused.len(),
        latency_summary(&mut refused),
        waited.len(),
        recovered.map_or("never".to_owned(), |s| format!("in {s:.2} s"))
    );
    row.require(
        peak <= MAX_IN_FLIGHT,
        "more calls out than the bulkhead allows",
    );
    row.require(
        !refused.is_empty(),
        "no call was refused: the bulkhead never filled",
    );
    row.require(
        within(fds_before, fds_after),
        "file descriptors did not come back",
    );
    row.require(
        threads_after <= threads_before + 1,
        "threads did not come back",
    );
    row.require(
        recovered.is_some_and(|s| s <= OPEN_SECS as f64 + 5.0),
        "no recovery within one breaker period + 5 s",
    );
    vec![row]
}

/// G6: every Fluence endpoint answers 503 for a while; jobs run every second and deploys come in.
pub async fn g6(suite: Arc<Suite>) -> Vec<Row> {
    const FAILURES: u64 = 5;
    const OPEN_SECS: u64 = 2;
    let seconds = suite.profile.pick(6, 300);
    let deploys = suite.profile.pick(4, 20);
    let mut row = Row::new(
        format!("G6 Fluence down {seconds} s, {deploys} deploys meanwhile"),
        "I5",
        suite.seed,
    );
    // Room for every deploy: the outage, not the market, is what this measures.
    let world = crate::hostile::roomy_world(&suite, "g6").await;
    let gateway = world
        .gateway(
            GatewayOptions::default()
                .with_env("GATEWAY__UPSTREAM__BREAKER_FAILURES", FAILURES.to_string())
                .with_env(
                    "GATEWAY__UPSTREAM__BREAKER_OPEN_SECS",
                    OPEN_SECS.to_string(),
                )
                .with_env("GATEWAY__JOBS__INVENTORY_INTERVAL_SECS", "1"),
        )
        .await;
    gateway.create_team("g6", "1000", json!({})).await;
    let member = gateway.mint_key("g6", "member").await;
    let client = reqwest::Client::new();
    // Warms the lists a deploy request is checked against, so deploys are accepted while
    // Fluence is down (they wait; nothing is sent).
    assert_eq!(dry_run(&gateway, &client, "g6").await, Some(200), "warm-up");

    let calls_before = calls(&world).await;
    for endpoint in ENDPOINTS {
        world
            .sim
            .fault(json!({"endpoint": endpoint, "fault": "error_before_commit",
                          "status": 503, "count": 1_000_000}))
            .await;
    }
    let down = Instant::now();
    let mut accepted = 0u64;
    let spacing = Duration::from_secs(seconds) / u32::try_from(deploys).unwrap_or(1);
    for i in 0..deploys {
        let reply = gateway
            .call(
                &member,
                Method::POST,
                "/v1/deployments",
                Some(&deploy_body(&format!("g6-{i}"), 1)),
                None,
            )
            .await;
        accepted += u64::from(reply.status == 202);
        tokio::time::sleep(spacing).await;
    }
    tokio::time::sleep_until((down + Duration::from_secs(seconds)).into()).await;
    let open_for = down.elapsed().as_secs_f64();
    let reached = calls(&world).await - calls_before;
    let sent_while_down = deploy_calls(&world).await;
    world
        .sim
        .control(Method::DELETE, "/_sim/faults", None)
        .await;
    let recovered = recovery(&gateway, "g6", Duration::from_secs(30)).await;
    check::quiesce(&world, &gateway).await;
    let mut tally = Tally::default();
    tally.add(&check::check(&world.db_path(), &world.sim.state().await).await);
    let deployments = gateway.deployments("g6").await;
    let deployed = deployments
        .iter()
        .filter(|d| d["status"] == "deployed")
        .count() as u64;
    let reserved = gateway
        .admin(Method::GET, "/v1/teams/g6/budget", None)
        .await
        .json["reserved"]
        .clone();

    // What may reach Fluence while it is down: the failures that open the breaker, a probe per
    // open period, and calls already out when it opened (the jobs and the deployer overlap).
    let allowed = FAILURES + (open_for / OPEN_SECS as f64).ceil() as u64 + 4;
    let per_minute = reached as f64 * 60.0 / open_for;
    row.runs = 1;
    row.bad = u64::from(reached > allowed) + u64::from(sent_while_down > 0) + tally.bad_runs;
    row.figures = format!(
        "calls reaching Fluence while down {reached} in {open_for:.0} s ({per_minute:.1}/min; probe rate {:.0}/min, bound {allowed}); \
         deploys sent while down {sent_while_down}; accepted {accepted}/{deploys}, deployed after recovery {deployed}; \
         recovered {}; reserved after quiescence {reserved}; checker: {}",
        60.0 / OPEN_SECS as f64,
        recovered.map_or("never".to_owned(), |s| format!("in {s:.2} s")),
        tally.figures()
    );
    row.require(
        accepted == deploys,
        "deploys were refused while Fluence was down",
    );
    row.require(
        deployed == deploys,
        "not every deploy went through after recovery",
    );
    row.require(reserved == "0", "a hold was left after recovery");
    row.require(recovered.is_some(), "never recovered");
    if let Some(failure) = tally.first_failure {
        row.require(false, failure);
    }
    // C4's estimator half: no deploy may be forwarded while no estimate can be had.
    let mut c4 = Row::new("C4 estimator down (from G6)", "I5", suite.seed);
    c4.runs = deploys;
    c4.bad = sent_while_down;
    c4.figures = format!(
        "upstream POSTs while the estimator was failing {sent_while_down}; {deploys} deploys waited and went through after"
    );
    c4.require(deployed == deploys, "not every waiting deploy went through");
    vec![row, c4]
}

async fn calls(world: &World) -> u64 {
    world.sim.state().await["calls"]
        .as_array()
        .map_or(0, |c| c.len() as u64)
}

/// Deploy calls that reached the simulator and were refused by its outage.
async fn deploy_calls(world: &World) -> u64 {
    world.sim.state().await["calls"]
        .as_array()
        .map_or(0, |calls| {
            calls
                .iter()
                .filter(|c| c["method"] == "POST" && c["path"] == "/vms/v3" && c["status"] == 503)
                .count() as u64
        })
}

//! B: process crashes and restarts (I1, I2, I8). The real binary is killed with SIGKILL at each
//! of the eight crash points of a deploy (B1), at random instants under load (B2), stopped with
//! SIGTERM while deploys are out (B3), and killed again while it recovers (B4); each time it is
//! restarted on the same SQLite file and judged by the invariant checker against the
//! simulator, which outlives every gateway and is the ground truth.
//!
//! Crash points inside the gateway are reached with `GATEWAY_FAILPOINTS=<name>=pause` (the test
//! build prints `FAILPOINT <name> reached` on stderr and parks the task); the two around the
//! upstream (4, 5) with simulator faults, watched through `/_sim/state`.
//!
//! Beyond the checker, every crash run proves what recovery owes the client: no manual action,
//! one settlement per deployment however often recovery ran, nothing held once all is final,
//! and a retried `Idempotency-Key` that yields exactly one deployment.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::{RwLock, Semaphore};

use crate::Scenario;
use crate::check::{self, Tally, Verdict};
use crate::report::{Build, Row, latency_summary};
use crate::upstream::{is_final, live_by_name, recorded, sends_by_name, text};
use crate::world::{Gateway, GatewayOptions, Stream, Suite, WAIT, World, deploy_body};

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        id: "B1",
        invariant: "I1, I2, I8",
        run: |suite| Box::pin(b1(suite)),
    },
    Scenario {
        id: "B2",
        invariant: "I1, I2, I3, I8",
        run: |suite| Box::pin(b2(suite)),
    },
    Scenario {
        id: "B3",
        invariant: "I1, I2",
        run: |suite| Box::pin(b3(suite)),
    },
    Scenario {
        id: "B4",
        invariant: "I1, I2, I8",
        run: |suite| Box::pin(b4(suite)),
    },
];

/// The seeded bug of the crash tests: start-up recovery re-sends a deploy that was out.
pub const RESEND_ON_RESTART: &str = "recovery.resend_deploying=sleep(0)";

const TEAM: &str = "ml";
const INSTANCES: u32 = 2;
/// With the 1 s upstream timeout, a lost deploy is declared "nothing created" 1.5 s after it
/// went out: recovery from points 3 and 4 takes about that long.
const BUSY_TIMEOUT_MS: &str = "500";
/// How long point 4's simulator holds the deploy call: past the kill, short of much waiting.
const HOLD_MS: u64 = 1500;
/// How long B2's gateway is down in the simulator's time, past its 10 s removal of a deleted
/// (Stopped) VM from the list.
const SIM_DOWNTIME_SECS: u64 = 15;
/// How many crash runs share the two cores at once.
const PARALLEL: usize = 3;

fn options(failpoints: Option<&str>) -> GatewayOptions {
    let options = match failpoints {
        Some(spec) => GatewayOptions::failpoints(spec),
        None => GatewayOptions::default(),
    };
    options.with_env("GATEWAY__DATABASE__BUSY_TIMEOUT_MS", BUSY_TIMEOUT_MS)
}

/// How the harness knows the gateway stands at the crash point.
#[derive(Debug, Clone, Copy)]
enum CrashAt {
    /// A failpoint paused the pipeline and said so on stderr.
    Failpoint(&'static str),
    /// The simulator has the deploy call and has not created anything yet (point 4).
    UpstreamHolding,
    /// The simulator created the VMs and will never answer (point 5).
    UpstreamCommitted,
}

impl CrashAt {
    fn failpoint(self) -> Option<String> {
        match self {
            CrashAt::Failpoint(name) => Some(format!("{name}=pause")),
            CrashAt::UpstreamHolding | CrashAt::UpstreamCommitted => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Case {
    label: String,
    /// Where each gateway before the clean one is killed: B1 one, B4 two (the second while
    /// recovering from the first).
    crashes: Vec<CrashAt>,
    /// A one-shot simulator fault armed before the deploy.
    fault: Option<Value>,
    /// Sends the deploy with this `Idempotency-Key`, and retries it after the restart.
    idempotency_key: Option<String>,
    /// How long after the kill the simulator may still act on the dead gateway's call.
    upstream_busy_for: Option<Duration>,
    /// The final status the point must end in, where only one is right.
    expect: Option<&'static str>,
    /// Failpoints of the gateway that recovers (the seeded bug), none on the shipped build.
    recovery_failpoints: Option<&'static str>,
}

/// The eight crash points of B1, as cases.
fn point(number: usize) -> Case {
    let at_failpoint = |name: &'static str, expect: &'static str| Case {
        label: format!("point {number}"),
        crashes: vec![CrashAt::Failpoint(name)],
        fault: None,
        idempotency_key: None,
        upstream_busy_for: None,
        expect: Some(expect),
        recovery_failpoints: None,
    };
    match number {
        // Before the deployment exists: the retry creates it, and it goes the whole way.
        1 => Case {
            idempotency_key: Some("b1-point-1".to_owned()),
            ..at_failpoint("idempotency.after_claim", "deployed")
        },
        // Admitted, nothing sent: the pipeline continues from the hold it already has.
        2 => at_failpoint("admission.after_commit", "deployed"),
        // The intent is durable but nothing left: reconciliation finds no VM and fails it; a
        // resend would be a guess.
        3 => at_failpoint("deploy.before_send", "failed"),
        // Whether the upstream creates the VMs once its client is gone is its own business, so
        // no outcome is expected: the gateway has to agree with the simulator afterwards.
        4 => Case {
            label: "point 4".to_owned(),
            crashes: vec![CrashAt::UpstreamHolding],
            fault: Some(
                json!({"endpoint": "POST /vms/v3", "fault": "delay", "delay_ms": HOLD_MS, "count": 1}),
            ),
            idempotency_key: None,
            upstream_busy_for: Some(Duration::from_millis(HOLD_MS + 500)),
            expect: None,
            recovery_failpoints: None,
        },
        5 => Case {
            label: "point 5".to_owned(),
            crashes: vec![CrashAt::UpstreamCommitted],
            fault: Some(
                json!({"endpoint": "POST /vms/v3", "fault": "commit_then_hang", "count": 1}),
            ),
            idempotency_key: None,
            upstream_busy_for: None,
            expect: Some("deployed"),
            recovery_failpoints: None,
        },
        6 => at_failpoint("deploy.after_response", "deployed"),
        7 => at_failpoint("deploy.after_commit", "deployed"),
        _ => at_failpoint("settle.before_commit", "deployed"),
    }
}

/// What one crash run came to.
struct Outcome {
    verdict: Verdict,
    /// Failures of what recovery owes beyond the checker (settlements, holds, the retried key,
    /// the expected status), one line each.
    problems: Vec<String>,
    /// Seconds from the clean restart to every deployment final.
    consistent: f64,
    /// Hold or settlement disagreements: the ledger.
    ledger_mismatch: bool,
}

impl Outcome {
    fn is_bad(&self) -> bool {
        self.verdict.is_bad() || !self.problems.is_empty()
    }
}

/// Polls `/_sim/state` until `reached` holds, or panics after [`WAIT`].
async fn until_sim(world: &World, what: &str, reached: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        if reached(&world.sim.state().await) {
            return;
        }
        assert!(Instant::now() < deadline, "the simulator never saw {what}");
        // Short: points 4 and 5 must be killed before the 1 s upstream timeout fires.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs the deployer until every deployment of the team is final, or panics after [`WAIT`].
async fn until_final(gateway: &Gateway, label: &str) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        gateway.run_job("deployer").await;
        let items = gateway.deployments(TEAM).await;
        if !items.is_empty() && items.iter().all(is_final) {
            return items;
        }
        assert!(
            Instant::now() < deadline,
            "{label}: not consistent {WAIT:?} after the restart: {items:#?}\n{}",
            gateway.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One crash run end to end: deploy, crash at each of the case's points, restart clean (or on
/// the seeded build), wait for consistency, and judge.
async fn crash_and_recover(suite: Arc<Suite>, case: Case) -> Outcome {
    let label = case.label.clone();
    let world = World::new(&suite, &format!("b-{label}")).await;
    if let Some(fault) = &case.fault {
        world.sim.fault(fault.clone()).await;
    }
    let first = case.crashes[0];
    let mut gateway = world.gateway(options(first.failpoint().as_deref())).await;
    gateway.create_team(TEAM, "500", json!({})).await;

    let deploy_path = format!("/v1/deployments?team={TEAM}");
    let body = deploy_body("web", INSTANCES);
    // The request parked at point 1 never answers; it dies with its gateway.
    let mut parked = None;
    let mut upstream_name = String::new();
    if let Some(key) = &case.idempotency_key {
        let request = reqwest::Client::new()
            .post(gateway.url(&deploy_path))
            .bearer_auth(&gateway.admin_token)
            .header("Idempotency-Key", key)
            .json(&body);
        parked = Some(tokio::spawn(request.send()));
    } else {
        let created = gateway.admin(Method::POST, &deploy_path, Some(&body)).await;
        assert_eq!(created.status, 202, "{label}: deploy: {}", created.text);
        upstream_name = text(&created.json["upstream_name"]).to_owned();
    }

    let mut crashed = Instant::now();
    for (i, at) in case.crashes.iter().enumerate() {
        match at {
            CrashAt::Failpoint(name) => {
                gateway
                    .wait_for(Stream::Stderr, &format!("FAILPOINT {name} reached"))
                    .await;
            }
            CrashAt::UpstreamHolding => {
                until_sim(&world, "the deploy call", |s| !sends_by_name(s).is_empty()).await;
            }
            CrashAt::UpstreamCommitted => {
                let name = upstream_name.clone();
                until_sim(&world, "the deploy's VMs", |s| {
                    live_by_name(s).contains_key(&name)
                })
                .await;
            }
        }
        gateway.kill();
        crashed = Instant::now();
        if let Some(next) = case.crashes.get(i + 1) {
            // B4: the next gateway is killed at its point while recovering from this crash.
            gateway = world.gateway(options(next.failpoint().as_deref())).await;
        }
    }
    if let Some(parked) = parked {
        parked.abort();
    }

    let restarted = Instant::now();
    let gateway = world.gateway(options(case.recovery_failpoints)).await;
    let mut problems = Vec::new();

    let mut retried_id = None;
    if let Some(key) = &case.idempotency_key {
        // The client's retry of the request it never got an answer to. A 409 ("still in
        // flight") may last a little while; the request it refers to died with the process.
        let deadline = Instant::now() + Duration::from_secs(5);
        let retried = loop {
            let reply = gateway
                .call(
                    &gateway.admin_token,
                    Method::POST,
                    &deploy_path,
                    Some(&body),
                    Some(key),
                )
                .await;
            if reply.status != 409 || Instant::now() >= deadline {
                break reply;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if retried.status == 202 {
            retried_id = Some(text(&retried.json["id"]).to_owned());
        } else {
            problems.push(format!(
                "the retry with the same Idempotency-Key after the crash: {} {}",
                retried.status, retried.text
            ));
        }
    }

    let mut deployments = until_final(&gateway, &label).await;
    let consistent = restarted.elapsed().as_secs_f64();
    if let Some(busy) = case.upstream_busy_for {
        // Final by the gateway's account, but the simulator may still be working on the call
        // the dead gateway left: agreement counts only once the upstream has gone quiet.
        tokio::time::sleep_until((crashed + busy).into()).await;
        deployments = until_final(&gateway, &label).await;
    }
    check::quiesce(&world, &gateway).await;
    let verdict = check::check(&world.db_path(), &world.sim.state().await).await;

    let mut ledger_mismatch = false;
    for deployment in &deployments {
        let audit = gateway
            .admin(
                Method::GET,
                &format!(
                    "/v1/audit?action=deployment.settled&target_id={}",
                    text(&deployment["id"])
                ),
                None,
            )
            .await;
        let settlements = audit.json["items"].as_array().map_or(0, Vec::len);
        if deployment["status"] == "deployed" && settlements != 1 {
            ledger_mismatch = true;
            problems.push(format!(
                "{} settled {settlements} times",
                text(&deployment["id"])
            ));
        }
    }
    let budget = gateway
        .admin(Method::GET, &format!("/v1/teams/{TEAM}/budget"), None)
        .await;
    if budget.json["reserved"] != "0" {
        ledger_mismatch = true;
        problems.push(format!("still reserved once all is final: {}", budget.text));
    }
    ledger_mismatch |= verdict.drift_micros != 0;
    if let Some(id) = retried_id {
        if deployments.len() != 1 || deployments[0]["id"] != id.as_str() {
            problems.push(format!(
                "{} deployments for one Idempotency-Key",
                deployments.len()
            ));
        }
    }
    for deployment in &deployments {
        if let Some(status) = case.expect {
            if deployment["status"] != status {
                problems.push(format!(
                    "ended {} where {status} is right: {}",
                    deployment["status"], deployment["reason"]
                ));
            }
        }
        if deployment["status"] == "deployed" && recorded(deployment).len() != INSTANCES as usize {
            problems.push(format!(
                "deployed with {} of {INSTANCES} VMs recorded",
                recorded(deployment).len()
            ));
        }
    }
    if !problems.is_empty() {
        problems.insert(0, label);
    }
    Outcome {
        verdict,
        problems,
        consistent,
        ledger_mismatch,
    }
}

/// Runs `cases`, a few at a time.
async fn run_cases(suite: &Arc<Suite>, cases: Vec<Case>) -> Vec<Outcome> {
    let permits = Arc::new(Semaphore::new(PARALLEL));
    let mut tasks = Vec::new();
    for case in cases {
        let suite = suite.clone();
        let permits = permits.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            crash_and_recover(suite, case).await
        }));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        match task.await {
            Ok(outcome) => outcomes.push(outcome),
            Err(e) => {
                let why = match e.try_into_panic() {
                    Ok(payload) => payload
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_default(),
                    Err(e) => e.to_string(),
                };
                outcomes.push(Outcome {
                    verdict: Verdict {
                        integrity: "not reached".to_owned(),
                        ..Verdict::default()
                    },
                    problems: vec![format!(
                        "panicked: {}",
                        why.chars().take(1500).collect::<String>()
                    )],
                    consistent: 0.0,
                    ledger_mismatch: false,
                });
            }
        }
    }
    outcomes
}

/// The row of a set of crash runs.
fn crash_row(suite: &Suite, id: String, invariant: &'static str, outcomes: &[Outcome]) -> Row {
    let mut tally = Tally::default();
    for outcome in outcomes {
        tally.add(&outcome.verdict);
    }
    let mut row = Row::new(id, invariant, suite.seed);
    row.runs = outcomes.len() as u64;
    row.bad = outcomes.iter().filter(|o| o.is_bad()).count() as u64;
    let ledger = outcomes.iter().filter(|o| o.ledger_mismatch).count();
    let mut times: Vec<f64> = outcomes.iter().map(|o| o.consistent).collect();
    row.figures = format!(
        "VMs lost {}/{n}; duplicate sets {}/{n}; ledger mismatches {ledger}/{n}; integrity_check failures {}/{n}; \
         restart-to-consistent {}; phantom {}; hold drift {} µUSDC",
        tally.lost,
        tally.dup,
        tally.integrity_failures,
        latency_summary(&mut times),
        tally.phantom,
        tally.drift_micros,
        n = outcomes.len()
    );
    if let Some(bad) = outcomes.iter().find(|o| o.is_bad()) {
        let mut why = bad.problems.join("; ");
        if bad.verdict.is_bad() {
            why.push_str(&format!(" checker: {}", bad.verdict.summary()));
        }
        row.require(false, why);
    }
    row
}

/// B1: the eight points, 3 times each in the quick profile, 25 in the full one; then the
/// seeded resend-on-restart build on points 5 and 6, which the checker must catch every time.
async fn b1(suite: Arc<Suite>) -> Vec<Row> {
    let reps = suite.profile.pick(3, 25);
    let mut cases = Vec::new();
    for rep in 0..reps {
        for number in 1..=8 {
            let mut case = point(number);
            case.label = format!("{} rep {rep}", case.label);
            if let Some(key) = &mut case.idempotency_key {
                key.push_str(&format!("-{rep}"));
            }
            cases.push(case);
        }
    }
    let outcomes = run_cases(&suite, cases).await;
    let mut rows = vec![crash_row(
        &suite,
        format!("B1 kill -9 at 8 points x {reps}"),
        "I1, I2, I8",
        &outcomes,
    )];

    let seeded_reps = suite.profile.pick(2, 10);
    let mut cases = Vec::new();
    for rep in 0..seeded_reps {
        for number in [5, 6] {
            let mut case = point(number);
            case.label = format!("seeded {} rep {rep}", case.label);
            case.recovery_failpoints = Some(RESEND_ON_RESTART);
            cases.push(case);
        }
    }
    let outcomes = run_cases(&suite, cases).await;
    let mut seeded = Row::new("B1 points 5, 6 on a resending recovery", "I1", suite.seed);
    seeded.build = Build::Seeded(RESEND_ON_RESTART);
    seeded.runs = outcomes.len() as u64;
    let caught = outcomes.iter().filter(|o| o.verdict.dup > 0).count() as u64;
    seeded.bad = seeded.runs - caught;
    seeded.figures = format!(
        "seeded-bug detection rate {caught}/{} ({:.0}%): the checker saw a duplicate set",
        seeded.runs,
        100.0 * caught as f64 / seeded.runs.max(1) as f64
    );
    rows.push(seeded);
    rows
}

/// B4: a crash during recovery from a crash, at three pairs of points.
async fn b4(suite: Arc<Suite>) -> Vec<Row> {
    let n = suite.profile.pick(3, 100);
    let pairs = [
        (
            CrashAt::Failpoint("settle.before_commit"),
            CrashAt::Failpoint("settle.before_commit"),
        ),
        (
            CrashAt::Failpoint("deploy.after_response"),
            CrashAt::Failpoint("settle.before_commit"),
        ),
        (
            CrashAt::UpstreamCommitted,
            CrashAt::Failpoint("settle.before_commit"),
        ),
    ];
    let mut cases = Vec::new();
    for run in 0..n {
        let (first, second) = pairs[run % pairs.len()];
        let mut case = match first {
            CrashAt::UpstreamCommitted => point(5),
            _ => point(8),
        };
        case.label = format!("B4 {first:?} then {second:?} run {run}");
        case.crashes = vec![first, second];
        cases.push(case);
    }
    let outcomes = run_cases(&suite, cases).await;
    vec![crash_row(
        &suite,
        format!("B4 crash during recovery x {n}"),
        "I1, I2, I8",
        &outcomes,
    )]
}

/// A small deterministic generator for the random instants of B2.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// B2: 8 clients deploy and delete continuously; the gateway is killed at a random instant,
/// restarted, and the invariants checked after every restart.
async fn b2(suite: Arc<Suite>) -> Vec<Row> {
    let cycles = suite.profile.pick(4, 100);
    let world = World::new(&suite, "b2").await;
    world
        .sim
        .control(
            Method::POST,
            "/_sim/market",
            Some(json!({"capacity": 1_000_000})),
        )
        .await;
    let mut gateway = world.gateway(options(None)).await;
    gateway.create_team(TEAM, "1000000", json!({})).await;
    let key = gateway.mint_key(TEAM, "member").await;
    let address = Arc::new(RwLock::new(gateway.url("")));
    let running = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for client in 0..8u64 {
        let (address, running, stop, requests, key) = (
            address.clone(),
            running.clone(),
            stop.clone(),
            requests.clone(),
            key.clone(),
        );
        let mut dice = Dice(suite.seed ^ (client + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()
                .unwrap_or_else(|e| panic!("client: {e}"));
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if !running.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                let base = address.read().await.clone();
                n += 1;
                requests.fetch_add(1, Ordering::Relaxed);
                if dice.below(3) > 0 {
                    let _ = http
                        .post(format!("{base}/v1/deployments"))
                        .bearer_auth(&key)
                        .header("Idempotency-Key", format!("b2-{client}-{n}"))
                        .json(&deploy_body(&format!("b2c{client}"), 1))
                        .send()
                        .await;
                } else if let Ok(list) = http
                    .get(format!("{base}/v1/vms"))
                    .bearer_auth(&key)
                    .send()
                    .await
                {
                    let list: Value = list.json().await.unwrap_or(Value::Null);
                    let live: Vec<&str> = list["items"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|vm| vm["deleted_at"].is_null())
                        .filter_map(|vm| vm["id"].as_str())
                        .collect();
                    if !live.is_empty() {
                        let id = live[dice.below(live.len() as u64) as usize];
                        let _ = http
                            .delete(format!("{base}/v1/vms/{id}"))
                            .bearer_auth(&key)
                            .send()
                            .await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(dice.below(50))).await;
            }
        }));
    }

    let mut dice = Dice(suite.seed | 1);
    let mut tally = Tally::default();
    let mut restarts = Vec::new();
    for _ in 0..cycles {
        running.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200 + dice.below(1500))).await;
        gateway.kill();
        running.store(false, Ordering::Relaxed);
        // The gateway stays down for a while in Fluence's time: long enough for VMs deleted
        // just before the kill to leave the list (Stopped, then gone after 10 s), so the
        // restarted gateway never sees them stop.
        world.sim.advance(SIM_DOWNTIME_SECS).await;
        let restarted = Instant::now();
        gateway = world.gateway(options(None)).await;
        *address.write().await = gateway.url("");
        check::quiesce(&world, &gateway).await;
        restarts.push(restarted.elapsed().as_secs_f64());
        tally.add(&check::check(&world.db_path(), &world.sim.state().await).await);
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = client.await;
    }
    let wal = std::fs::metadata(world.db_path().with_extension("db-wal")).map_or(0, |m| m.len());
    let state = world.sim.state().await;
    let created = state["vms"].as_array().map_or(0, Vec::len);
    let deleted = state["vms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|vm| !vm["deleted_at"].is_null())
        .count();

    let mut row = Row::new(
        format!("B2 crash loop, {cycles} cycles"),
        "I1, I2, I3, I8",
        suite.seed,
    );
    row.runs = tally.runs;
    row.bad = tally.bad_runs;
    row.figures = format!(
        "invariant violations {}/{} cycles (checked after every restart): {}; {} client requests, {created} VMs created, \
         {deleted} deleted; restart-to-consistent {}; WAL at the end {wal} bytes",
        tally.bad_runs,
        tally.runs,
        tally.figures(),
        requests.load(Ordering::Relaxed),
        latency_summary(&mut restarts),
    );
    row.require(created > 0, "the load created no VM");
    if let Some(first) = &tally.first_failure {
        row.require(false, first.clone());
    }
    vec![row]
}

/// B3: SIGTERM while deploys are out; the drain must end within the configured grace, and the
/// restarted gateway must agree with the simulator.
async fn b3(suite: Arc<Suite>) -> Vec<Row> {
    let n = suite.profile.pick(3, 50);
    let grace_secs = 5u64;
    let in_flight = 4;
    let mut tally = Tally::default();
    let mut drains = Vec::new();
    let mut over_grace = 0;
    let mut unclean = 0;
    for run in 0..n {
        let world = World::new(&suite, &format!("b3-{run}")).await;
        world
            .sim
            .fault(json!({"endpoint": "POST /vms/v3", "fault": "delay", "delay_ms": 700, "count": in_flight}))
            .await;
        let graceful = options(None).with_env(
            "GATEWAY__SERVER__SHUTDOWN_GRACE_SECS",
            grace_secs.to_string(),
        );
        let mut gateway = world.gateway(graceful).await;
        gateway.create_team(TEAM, "1000", json!({})).await;
        for i in 0..in_flight {
            let reply = gateway
                .admin(
                    Method::POST,
                    &format!("/v1/deployments?team={TEAM}"),
                    Some(&deploy_body(&format!("drain-{i}"), 1)),
                )
                .await;
            assert_eq!(reply.status, 202, "{}", reply.text);
        }
        // The deployer's own tick sends them; stop once the first is out.
        until_sim(&world, "a deploy call", |s| !sends_by_name(s).is_empty()).await;
        let stopping = Instant::now();
        let status = gateway.terminate();
        let drain = stopping.elapsed().as_secs_f64();
        drains.push(drain);
        over_grace += u64::from(drain > grace_secs as f64);
        unclean += u64::from(!status.success());
        drop(gateway);
        let gateway = world.gateway(options(None)).await;
        check::quiesce(&world, &gateway).await;
        let state = world.sim.state().await;
        tally.add(&check::check(&world.db_path(), &state).await);
        // Every deployment ends agreeing with the simulator: checked above; none is left open.
        let open = gateway
            .deployments(TEAM)
            .await
            .iter()
            .filter(|d| !is_final(d))
            .count();
        unclean += u64::from(open > 0);
    }
    let mut row = Row::new("B3 SIGTERM with deploys in flight", "I1, I2", suite.seed);
    row.runs = n as u64;
    row.bad = tally.bad_runs + over_grace + unclean;
    row.figures = format!(
        "{}; drain time {} (grace {grace_secs} s, over it {over_grace}/{n}); unclean exits or open deployments {unclean}",
        tally.figures(),
        latency_summary(&mut drains)
    );
    if let Some(first) = &tally.first_failure {
        row.require(false, first.clone());
    }
    vec![row]
}

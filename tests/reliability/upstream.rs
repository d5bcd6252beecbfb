//! A: upstream faults during a deploy (I1, I2). Every scenario runs real deploys through a real
//! gateway against the standalone simulator with faults armed on `POST /vms/v3`, and every run
//! is judged twice: by the scenario's own figures (what the client saw, what the simulator was
//! sent) and by the invariant checker after the pipeline has settled.
//!
//! The deploy worker and the inventory sync run on an hour-long tick here and are driven by the
//! harness (`POST /v1/jobs/{job}/run`), so "after one reconcile" means exactly one deployer run:
//! that run sends the deploy, meets the fault, and then lists Fluence once to settle what it
//! could not know.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::Scenario;
use crate::check::{self, Tally};
use crate::report::{Row, latency_summary};
use crate::world::{Gateway, GatewayOptions, Reply, Suite, WAIT, World, deploy_body};

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        id: "A1",
        invariant: "I1, I2",
        run: |suite| Box::pin(a1(suite)),
    },
    Scenario {
        id: "A2",
        invariant: "I1, I2",
        run: |suite| Box::pin(a2(suite)),
    },
    Scenario {
        id: "A3",
        invariant: "I1, I2, I6",
        run: |suite| Box::pin(a3(suite)),
    },
    Scenario {
        id: "A4",
        invariant: "I1, I2",
        run: |suite| Box::pin(a4(suite)),
    },
    Scenario {
        id: "A5",
        invariant: "I1, I2",
        run: |suite| Box::pin(a5(suite)),
    },
    Scenario {
        id: "A6",
        invariant: "I1, I2, I3",
        run: |suite| Box::pin(a6(suite)),
    },
    Scenario {
        id: "A7",
        invariant: "I1, I2",
        run: |suite| Box::pin(a7(suite)),
    },
    Scenario {
        id: "A8",
        invariant: "I1, I2",
        run: |suite| Box::pin(a8(suite)),
    },
    Scenario {
        id: "A9",
        invariant: "I3",
        run: |suite| Box::pin(a9(suite)),
    },
    Scenario {
        id: "A10",
        invariant: "I1, I2",
        run: |suite| Box::pin(a10(suite)),
    },
    Scenario {
        id: "A11",
        invariant: "I1, I4",
        run: |suite| Box::pin(a11(suite)),
    },
];

pub const TEAM: &str = "rel";
/// The deploy worker and the inventory sync wait for the harness.
const MANUAL_TICK: &str = "3600";
/// With the upstream timeout of 1 s, a lost answer is declared "nothing created" after
/// 1 s + this (plus the reconcile grace of 0): the window Q of A7.
const BUSY_TIMEOUT_MS: u64 = 1000;
const UPSTREAM_TIMEOUT_MS: u64 = 1000;

pub fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// A world with a gateway whose jobs wait for the harness, and one team with a member key.
pub struct Bed {
    pub world: World,
    pub gateway: Gateway,
    pub key: String,
}

impl Bed {
    pub async fn new(suite: &Arc<Suite>, label: &str, options: GatewayOptions) -> Bed {
        let world = World::new(suite, label).await;
        Bed::on(world, options, None).await
    }

    /// A bed on `world`, the gateway reaching the simulator through `upstream` if given.
    pub async fn on(world: World, options: GatewayOptions, upstream: Option<&str>) -> Bed {
        world
            .sim
            .control(
                Method::POST,
                "/_sim/market",
                Some(json!({"capacity": 1_000_000})),
            )
            .await;
        let mut options = manual(options);
        if let Some(url) = upstream {
            options = options.with_env("GATEWAY__UPSTREAM__BASE_URL", url);
        }
        let gateway = world.gateway(options).await;
        gateway.create_team(TEAM, "1000000", json!({})).await;
        let key = gateway.mint_key(TEAM, "member").await;
        Bed {
            world,
            gateway,
            key,
        }
    }

    /// A deploy by the team's member key.
    pub async fn deploy(&self, name: &str, instances: u32, idempotency_key: Option<&str>) -> Reply {
        self.gateway
            .call(
                &self.key,
                Method::POST,
                "/v1/deployments",
                Some(&deploy_body(name, instances)),
                idempotency_key,
            )
            .await
    }

    pub async fn deployer(&self) {
        self.gateway.run_job("deployer").await;
    }

    pub async fn deployments(&self) -> Vec<Value> {
        self.gateway.deployments(TEAM).await
    }

    /// The checker's verdict once everything has settled.
    pub async fn verdict(&self) -> check::Verdict {
        check::quiesce(&self.world, &self.gateway).await;
        check::check(&self.world.db_path(), &self.world.sim.state().await).await
    }
}

/// Options with the jobs on the harness's hand and a short grace for lost answers.
pub fn manual(options: GatewayOptions) -> GatewayOptions {
    options
        .with_env("GATEWAY__JOBS__DEPLOYER_INTERVAL_SECS", MANUAL_TICK)
        .with_env("GATEWAY__JOBS__DEPLOYER_ON_SUBMIT", "false")
        .with_env("GATEWAY__JOBS__INVENTORY_INTERVAL_SECS", MANUAL_TICK)
        .with_env("GATEWAY__JOBS__DEPLOYER_CONCURRENCY", "32")
        .with_env(
            "GATEWAY__DATABASE__BUSY_TIMEOUT_MS",
            BUSY_TIMEOUT_MS.to_string(),
        )
        .with_env(
            "GATEWAY__UPSTREAM__REQUEST_TIMEOUT_MS",
            UPSTREAM_TIMEOUT_MS.to_string(),
        )
        // The circuit breaker has scenarios of its own (G4, G6); here every faulty answer is
        // meant to reach the deploy path, so it does not open. A4 also runs with it on.
        .with_env("GATEWAY__UPSTREAM__BREAKER_FAILURES", NO_BREAKER)
}

/// A breaker threshold no scenario reaches.
const NO_BREAKER: &str = "1000000";

/// Deploy calls the simulator received, by the VM name they asked for.
pub fn sends_by_name(state: &Value) -> HashMap<String, usize> {
    let mut sends = HashMap::new();
    for call in state["calls"].as_array().into_iter().flatten() {
        if call["method"] == "POST" && call["path"] == "/vms/v3" {
            let name = text(&call["body"]["vmConfiguration"]["name"]).to_owned();
            *sends.entry(name).or_default() += 1;
        }
    }
    sends
}

/// Live simulator VM ids (lower case), by name.
pub fn live_by_name(state: &Value) -> HashMap<String, Vec<String>> {
    let mut live: HashMap<String, Vec<String>> = HashMap::new();
    for vm in state["vms"].as_array().into_iter().flatten() {
        if vm["deleted_at"].is_null() {
            live.entry(text(&vm["name"]).to_owned())
                .or_default()
                .push(text(&vm["id"]).to_lowercase());
        }
    }
    live
}

/// The VM ids a deployment lists, lower case.
pub fn recorded(deployment: &Value) -> HashSet<String> {
    deployment["vms"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|id| text(id).to_lowercase())
        .collect()
}

/// Nothing left for the pipeline: decided, and settled if deployed.
pub fn is_final(deployment: &Value) -> bool {
    match text(&deployment["status"]) {
        "deployed" => !deployment["settled_at"].is_null(),
        "failed" | "rejected" | "cancelled" | "expired" => true,
        _ => false,
    }
}

/// The client's side of one deploy: its key, the body it sent and the first answer.
struct Sent {
    key: String,
    name: String,
    first: Reply,
    at: Instant,
}

/// What a batch of deploys under one kind of lost answer came to.
struct Batch {
    runs: u64,
    /// Deployments with a VM upstream that the gateway had not recorded after one reconcile.
    lost_after_one: u64,
    /// Deployments that were sent more than once or got more than one set.
    duplicates: u64,
    not_deployed: u64,
    replay_mismatches: u64,
    /// Panic messages in the gateway's log.
    panics: u64,
    resolve: Vec<f64>,
    passes: Vec<u32>,
    verdict: check::Verdict,
}

/// A1, A2, A3, A8: `n` deploys whose answers are all lost in the way `faults` say; each was
/// committed upstream, so each must end `deployed` with its own VMs, sent once.
async fn lost_answers(suite: &Arc<Suite>, label: &str, faults: &[Value], n: usize) -> Batch {
    let bed = Bed::new(suite, label, GatewayOptions::default()).await;
    for fault in faults {
        bed.world.sim.fault(fault.clone()).await;
    }
    let mut sent = Vec::new();
    for i in 0..n {
        let key = format!("{label}-{i}");
        let name = format!("{label}-{i}");
        let first = bed.deploy(&name, 1, Some(&key)).await;
        assert_eq!(first.status, 202, "{label}: deploy {i}: {}", first.text);
        sent.push(Sent {
            key,
            name,
            first,
            at: Instant::now(),
        });
    }

    // One deployer run: the sends, their lost answers, and one listing of Fluence.
    bed.deployer().await;
    let state = bed.world.sim.state().await;
    let live = live_by_name(&state);
    let items = bed.deployments().await;
    let by_id: HashMap<&str, &Value> = items.iter().map(|d| (text(&d["id"]), d)).collect();
    let mut lost_after_one = 0;
    for s in &sent {
        let d = by_id
            .get(text(&s.first.json["id"]))
            .unwrap_or_else(|| panic!("{label}: deployment of {} not listed", s.name));
        let upstream = live
            .get(text(&d["upstream_name"]))
            .cloned()
            .unwrap_or_default();
        let known = recorded(d);
        lost_after_one += u64::from(upstream.iter().any(|id| !known.contains(id)));
    }

    // Back-to-back passes until every deployment is final: resolve time and pass count.
    let mut resolve = vec![None; n];
    let mut passes = vec![1u32; n];
    let deadline = Instant::now() + WAIT;
    let mut pass = 1;
    loop {
        let items = bed.deployments().await;
        let by_id: HashMap<&str, &Value> = items.iter().map(|d| (text(&d["id"]), d)).collect();
        for (i, s) in sent.iter().enumerate() {
            if resolve[i].is_none()
                && by_id
                    .get(text(&s.first.json["id"]))
                    .is_some_and(|d| is_final(d))
            {
                resolve[i] = Some(s.at.elapsed().as_secs_f64());
                passes[i] = pass;
            }
        }
        if resolve.iter().all(Option::is_some) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{label}: not all deployments final after {WAIT:?}:\n{}",
            bed.gateway.log_tail(30)
        );
        bed.deployer().await;
        pass += 1;
    }

    // The client's retry of each request: the same answer, byte for byte.
    let mut replay_mismatches = 0;
    for s in &sent {
        let again = bed.deploy(&s.name, 1, Some(&s.key)).await;
        replay_mismatches +=
            u64::from(again.status != s.first.status || again.text != s.first.text);
    }

    let verdict = bed.verdict().await;
    let state = bed.world.sim.state().await;
    let sends = sends_by_name(&state);
    let live = live_by_name(&state);
    let items = bed.deployments().await;
    let by_id: HashMap<&str, &Value> = items.iter().map(|d| (text(&d["id"]), d)).collect();
    let (mut duplicates, mut not_deployed) = (0, 0);
    for s in &sent {
        let d = by_id
            .get(text(&s.first.json["id"]))
            .copied()
            .unwrap_or(&Value::Null);
        let name = text(&d["upstream_name"]);
        let upstream = live.get(name).map_or(0, Vec::len);
        duplicates += u64::from(sends.get(name).copied().unwrap_or(0) != 1 || upstream > 1);
        not_deployed += u64::from(d["status"] != "deployed" || recorded(d).len() != 1);
    }
    let panics = bed.gateway.log_tail(usize::MAX).matches("panicked").count() as u64;
    Batch {
        runs: n as u64,
        panics,
        lost_after_one,
        duplicates,
        not_deployed,
        replay_mismatches,
        resolve: resolve.into_iter().flatten().collect(),
        passes,
        verdict,
    }
}

fn batch_row(
    suite: &Suite,
    id: &str,
    invariant: &'static str,
    mut batch: Batch,
    extra: &str,
) -> Row {
    let mut row = Row::new(id, invariant, suite.seed);
    row.runs = batch.runs;
    row.bad = batch
        .duplicates
        .max(batch.lost_after_one)
        .max(batch.not_deployed)
        .max(batch.replay_mismatches)
        .max(batch.panics);
    let max_passes = batch.passes.iter().copied().max().unwrap_or(0);
    row.figures = format!(
        "duplicate sets {}/{n}; VMs upstream but not in the gateway after one reconcile {}/{n}; \
         not deployed {}/{n}; replay byte mismatches {}; panics {}; resolve time {} with reconcile passes \
         back to back (at most {max_passes} passes); checker: {}{extra}",
        batch.duplicates,
        batch.lost_after_one,
        batch.not_deployed,
        batch.replay_mismatches,
        batch.panics,
        latency_summary(&mut batch.resolve),
        verdict_figures(&batch.verdict),
        n = batch.runs
    );
    row.require(!batch.verdict.is_bad(), batch.verdict.summary());
    row
}

fn verdict_figures(verdict: &check::Verdict) -> String {
    format!(
        "lost {} phantom {} dup {} hold drift {} µUSDC integrity {}",
        verdict.lost, verdict.phantom, verdict.dup, verdict.drift_micros, verdict.integrity
    )
}

fn fault(kind: &str, count: usize, extra: Value) -> Value {
    let mut fault = json!({"endpoint": "POST /vms/v3", "fault": kind, "count": count});
    if let (Some(fault), Some(extra)) = (fault.as_object_mut(), extra.as_object()) {
        fault.extend(extra.clone());
    }
    fault
}

/// Splits `n` into three nearly equal parts.
fn thirds(n: usize) -> [usize; 3] {
    [
        n / 3 + usize::from(n % 3 > 0),
        n / 3 + usize::from(n % 3 > 1),
        n / 3,
    ]
}

async fn a1(suite: Arc<Suite>) -> Vec<Row> {
    let n = suite.profile.pick(20, 200);
    let [a, b, c] = thirds(n);
    let faults = [
        fault("commit_then_error", a, json!({"status": 500})),
        fault("commit_then_error", b, json!({"status": 502})),
        fault("commit_then_error", c, json!({"status": 503})),
    ];
    let batch = lost_answers(&suite, "a1", &faults, n).await;
    vec![batch_row(
        &suite,
        "A1 commit then 500/502/503",
        "I1, I2",
        batch,
        "",
    )]
}

async fn a2(suite: Arc<Suite>) -> Vec<Row> {
    let n = suite.profile.pick(20, 200);
    let faults = [fault("commit_then_reset", n, json!({}))];
    let batch = lost_answers(&suite, "a2", &faults, n).await;
    vec![batch_row(
        &suite,
        "A2 commit then reset",
        "I1, I2",
        batch,
        "",
    )]
}

async fn a3(suite: Arc<Suite>) -> Vec<Row> {
    let n = suite.profile.pick(20, 200);
    let faults = [fault("commit_then_hang", n, json!({}))];
    let label = "a3";
    let batch = lost_answers(&suite, label, &faults, n).await;
    vec![batch_row(
        &suite,
        "A3 commit then hang past the 1 s upstream timeout",
        "I1, I2, I6",
        batch,
        "",
    )]
    .into_iter()
    .chain(std::iter::once(a3_slots(&suite).await))
    .collect()
}

/// A3's second figure: once every hung call has timed out, the deploy worker's slots are all
/// free again: a batch of as many clean deploys as it has slots, plus one, goes through in one
/// run, and no deploy is still out.
async fn a3_slots(suite: &Arc<Suite>) -> Row {
    let slots = 4usize;
    let bed = Bed::new(
        suite,
        "a3-slots",
        GatewayOptions::default()
            .with_env("GATEWAY__JOBS__DEPLOYER_CONCURRENCY", slots.to_string()),
    )
    .await;
    let hung = slots * 2;
    bed.world
        .sim
        .fault(fault("commit_then_hang", hung, json!({})))
        .await;
    for i in 0..hung {
        let reply = bed.deploy(&format!("hung-{i}"), 1, None).await;
        assert_eq!(reply.status, 202, "{}", reply.text);
    }
    bed.deployer().await;
    for i in 0..=slots {
        let reply = bed.deploy(&format!("after-{i}"), 1, None).await;
        assert_eq!(reply.status, 202, "{}", reply.text);
    }
    let started = Instant::now();
    bed.deployer().await;
    let took = started.elapsed().as_secs_f64();
    let items = bed.deployments().await;
    let after: Vec<&Value> = items
        .iter()
        .filter(|d| text(&d["name"]).starts_with("after-"))
        .collect();
    let through = after.iter().filter(|d| d["status"] == "deployed").count();
    let out = items.iter().filter(|d| d["status"] == "deploying").count();
    let verdict = bed.verdict().await;
    let mut row = Row::new("A3 slots after hung calls", "I6", suite.seed);
    row.runs = 1;
    let leaked = (slots + 1 - through) as u64 + out as u64;
    row.bad = u64::from(leaked > 0);
    row.figures = format!(
        "{hung} calls hung on a worker of {slots} slots; then {through}/{} clean deploys through in one run ({took:.2} s); \
         deploys still out {out}; leaked slots {leaked}; checker: {}",
        slots + 1,
        verdict_figures(&verdict)
    );
    row.require(!verdict.is_bad(), verdict.summary());
    row
}

async fn a8(suite: Arc<Suite>) -> Vec<Row> {
    let n = suite.profile.pick(20, 100);
    let faults = [fault("malformed_body", n, json!({}))];
    let batch = lost_answers(&suite, "a8", &faults, n).await;
    // The gateway's whole log is read for a panic; J1 reads it again for secrets.
    vec![batch_row(
        &suite,
        "A8 malformed 2xx body",
        "I1, I2",
        batch,
        "",
    )]
}

/// A TCP relay in front of the simulator that can refuse connections (A4).
struct Relay {
    port: u16,
    target: String,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Relay {
    async fn start(target: &str) -> Arc<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind the relay: {e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let relay = Arc::new(Relay {
            port,
            target: target.trim_start_matches("http://").to_owned(),
            tasks: std::sync::Mutex::new(Vec::new()),
        });
        relay.serve(listener);
        relay
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn serve(self: &Arc<Self>, listener: TcpListener) {
        let relay = self.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = relay.target.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                relay
                    .tasks
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(conn);
            }
        });
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(accept);
    }

    /// Closes the listening socket and every relayed connection: connects are refused.
    fn refuse(&self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }

    /// Listens again on the same port.
    async fn open(self: &Arc<Self>) {
        let deadline = Instant::now() + WAIT;
        loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(listener) => return self.serve(listener),
                Err(e) => {
                    assert!(Instant::now() < deadline, "rebind the relay: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Polls until every deployment of the team has left `queued`/`estimating`.
async fn until_admitted(bed: &Bed, n: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let items = bed.deployments().await;
        let admitted = items.iter().filter(|d| d["status"] == "admitted").count();
        if admitted >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {admitted}/{n} admitted: {items:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a4(suite: Arc<Suite>) -> Vec<Row> {
    let n = suite.profile.pick(20, 200);
    let [refused_n, all_429_n, some_429_n] = thirds(n);
    let mut rows = Vec::new();
    let (mut creations_when_all_failed, mut all_failed_runs, mut leaks, mut over_retried) =
        (0, 0, 0, 0);
    let mut wrong = 0;
    let mut held_then_sent = 0;
    let mut tally = Tally::default();

    // Connection refused on every attempt: the relay closes between admission and the send.
    // Without the breaker the attempts run out and the deploy fails; with it (5 failures, open
    // for 1 s) a deploy may instead be held back with its hold and sent once Fluence answers
    // again. Either way nothing reaches Fluence while it refuses, and nothing is sent twice.
    for (breaker, open_secs) in [(NO_BREAKER, "1"), ("5", "1")] {
        let world = World::new(&suite, &format!("a4-refused-breaker-{breaker}")).await;
        let relay = Relay::start(&world.sim.base_url).await;
        // Admission then a pause long enough to close the relay before the first attempt.
        let options = GatewayOptions::failpoints("admission.after_commit=sleep(1500)");
        let mut options = manual(options);
        options
            .env
            .retain(|(k, _)| k != "GATEWAY__UPSTREAM__BREAKER_FAILURES");
        let options = options
            .with_env("GATEWAY__UPSTREAM__BREAKER_FAILURES", breaker)
            .with_env("GATEWAY__UPSTREAM__BREAKER_OPEN_SECS", open_secs)
            // Every deploy admitted at once, so all are waiting when the relay closes.
            .with_env(
                "GATEWAY__JOBS__DEPLOYER_CONCURRENCY",
                (refused_n + 1).to_string(),
            );
        let bed = Bed::on(world, options, Some(&relay.url())).await;
        let prefix = if breaker == NO_BREAKER {
            "refused"
        } else {
            "held"
        };
        // In batches the size of the quick profile's, each admitted whole before the relay
        // closes on it.
        let mut during = HashMap::new();
        let mut next = 0;
        while next < refused_n {
            let batch = (refused_n - next).min(7);
            for i in next..next + batch {
                let reply = bed.deploy(&format!("{prefix}-{i}"), 1, None).await;
                assert_eq!(reply.status, 202, "{}", reply.text);
            }
            next += batch;
            let gateway_url = bed.gateway.url("/v1/jobs/deployer/run");
            let admin = bed.gateway.admin_token.clone();
            let run = tokio::spawn(async move {
                reqwest::Client::new()
                    .post(gateway_url)
                    .bearer_auth(admin)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            });
            until_admitted(&bed, batch).await;
            relay.refuse();
            let _ = run.await;
            during.extend(sends_by_name(&bed.world.sim.state().await));
            relay.open().await;
        }
        let verdict = bed.verdict().await;
        let items = bed.deployments().await;
        let state = bed.world.sim.state().await;
        let sends = sends_by_name(&state);
        let live = live_by_name(&state);
        for d in &items {
            let name = text(&d["upstream_name"]);
            // Refused connections never reach the simulator.
            wrong += u64::from(during.contains_key(name));
            let calls = sends.get(name).copied().unwrap_or(0);
            let vms = live.get(name).map_or(0, Vec::len);
            match text(&d["status"]) {
                "failed" => {
                    all_failed_runs += 1;
                    creations_when_all_failed += vms as u64;
                    wrong += u64::from(calls != 0);
                }
                // Held back while refused, sent once it answered again: one send, one set.
                "deployed" if breaker != NO_BREAKER => {
                    wrong += u64::from(calls != 1 || vms != 1);
                    held_then_sent += 1;
                }
                _ => wrong += 1,
            }
        }
        let budget = bed
            .gateway
            .admin(Method::GET, &format!("/v1/teams/{TEAM}/budget"), None)
            .await;
        leaks += u64::from(budget.json["reserved"] != "0");
        tally.add(&verdict);
    }

    // 429 on every attempt, then 429 on some attempts only.
    {
        let bed = Bed::new(&suite, "a4-429", GatewayOptions::default()).await;
        bed.world
            .sim
            .fault(fault(
                "error_before_commit",
                3 * all_429_n,
                json!({"status": 429}),
            ))
            .await;
        for i in 0..all_429_n {
            let reply = bed.deploy(&format!("busy-{i}"), 1, None).await;
            assert_eq!(reply.status, 202, "{}", reply.text);
        }
        bed.deployer().await;
        bed.world
            .sim
            .fault(fault(
                "error_before_commit",
                some_429_n,
                json!({"status": 429}),
            ))
            .await;
        for i in 0..some_429_n {
            let reply = bed.deploy(&format!("some-{i}"), 1, None).await;
            assert_eq!(reply.status, 202, "{}", reply.text);
        }
        bed.deployer().await;
        let items = bed.deployments().await;
        let state = bed.world.sim.state().await;
        let sends = sends_by_name(&state);
        let live = live_by_name(&state);
        for d in &items {
            let name = text(&d["upstream_name"]);
            let calls = sends.get(name).copied().unwrap_or(0);
            let vms = live.get(name).map_or(0, Vec::len) as u64;
            over_retried += u64::from(calls > 3);
            match text(&d["status"]) {
                "failed" => {
                    all_failed_runs += 1;
                    creations_when_all_failed += vms;
                    wrong += u64::from(calls != 3);
                }
                // Busy at first, then through: one set.
                "deployed" => wrong += u64::from(vms != 1),
                _ => wrong += 1,
            }
            if text(&d["name"]).starts_with("busy-") {
                wrong += u64::from(d["status"] != "failed");
            }
        }
        tally.add(&bed.verdict().await);
        let after = bed
            .gateway
            .admin(Method::GET, &format!("/v1/teams/{TEAM}/budget"), None)
            .await;
        leaks += u64::from(after.json["reserved"] != "0");
    }

    let mut row = Row::new(
        "A4 failure before send (refused, 429)",
        "I1, I2",
        suite.seed,
    );
    row.runs = (n + refused_n) as u64;
    row.bad = wrong + over_retried + leaks + creations_when_all_failed;
    row.figures = format!(
        "upstream creations in runs where every attempt failed {creations_when_all_failed} (over {all_failed_runs} such runs, \
         from {refused_n} refused without the breaker, {refused_n} refused with it, {all_429_n} all-429 and {some_429_n} partly 429); \
         refused with the breaker on and held back, then sent once: {held_then_sent}; runs over 3 attempts {over_retried}; \
         reservation leaks {leaks}; wrong outcomes {wrong}; checker: {}",
        tally.figures()
    );
    row.require(
        tally.bad_runs == 0,
        tally.first_failure.clone().unwrap_or_default(),
    );
    rows.push(row);
    rows
}

async fn a5(suite: Arc<Suite>) -> Vec<Row> {
    let n = suite.profile.pick(20, 100);
    let bed = Bed::new(&suite, "a5", GatewayOptions::default()).await;
    let [a, b, c] = thirds(n);
    for (status, count) in [(422, a), (400, b), (403, c)] {
        bed.world
            .sim
            .fault(fault(
                "error_before_commit",
                count,
                json!({"status": status}),
            ))
            .await;
    }
    for i in 0..n {
        let reply = bed
            .deploy(&format!("refused-{i}"), 1, Some(&format!("a5-{i}")))
            .await;
        assert_eq!(reply.status, 202, "{}", reply.text);
    }
    bed.deployer().await;
    let items = bed.deployments().await;
    let state = bed.world.sim.state().await;
    let sends = sends_by_name(&state);
    let live = live_by_name(&state);
    // What the simulator said in its error bodies must not reach the client.
    let provider_text = "Internal server error";
    let (mut not_one_post, mut not_failed, mut echoed, mut created) = (0, 0, 0, 0);
    for d in &items {
        let name = text(&d["upstream_name"]);
        not_one_post += u64::from(sends.get(name).copied().unwrap_or(0) != 1);
        not_failed += u64::from(d["status"] != "failed");
        created += live.get(name).map_or(0, Vec::len) as u64;
        let view = bed
            .gateway
            .call(
                &bed.key,
                Method::GET,
                &format!("/v1/deployments/{}", text(&d["id"])),
                None,
                None,
            )
            .await;
        echoed += u64::from(view.text.contains(provider_text));
    }
    let budget = bed
        .gateway
        .admin(Method::GET, &format!("/v1/teams/{TEAM}/budget"), None)
        .await;
    let released = budget.json["reserved"] == "0";
    let verdict = bed.verdict().await;
    let mut row = Row::new("A5 definite 4xx (422, 400, 403)", "I1, I2", suite.seed);
    row.runs = n as u64;
    row.bad = not_one_post + not_failed + echoed + created + u64::from(!released);
    row.figures = format!(
        "upstream POSTs per request != 1: {not_one_post}/{n}; not failed {not_failed}/{n}; reservations released {}; \
         provider body echoed {echoed}/{n}; VMs created {created}; checker: {}",
        if released { "100%" } else { "NO" },
        verdict_figures(&verdict)
    );
    row.require(!verdict.is_bad(), verdict.summary());
    vec![row]
}

async fn a6(suite: Arc<Suite>) -> Vec<Row> {
    let n = suite.profile.pick(5, 100);
    let bed = Bed::new(&suite, "a6", GatewayOptions::default()).await;
    let (mut count_mismatch, mut ledger_bad) = (0, 0);
    let mut differences = Vec::new();
    let mut tally = Tally::default();
    for run in 0..n {
        bed.world
            .sim
            .fault(fault(
                "commit_partial",
                1,
                json!({"instances_created": 3, "status": 500}),
            ))
            .await;
        let reply = bed.deploy(&format!("part-{run}"), 5, None).await;
        assert_eq!(reply.status, 202, "{}", reply.text);
        let verdict = bed.verdict().await;
        tally.add(&verdict);
        let state = bed.world.sim.state().await;
        let live = live_by_name(&state);
        let sends = sends_by_name(&state);
        let d = bed
            .gateway
            .admin(
                Method::GET,
                &format!("/v1/deployments/{}", text(&reply.json["id"])),
                None,
            )
            .await
            .json;
        let name = text(&d["upstream_name"]);
        let upstream = live.get(name).map_or(0, Vec::len);
        count_mismatch += u64::from(
            recorded(&d).len() != upstream || upstream != 3 || sends.get(name).copied() != Some(1),
        );
        // The ledger: what the gateway counts as the team's money against what the simulator
        // charged its VMs.
        let budget = bed
            .gateway
            .admin(Method::GET, &format!("/v1/teams/{TEAM}/budget"), None)
            .await;
        let gateway_side = micros(&budget.json["spent"]) + micros(&budget.json["reserved"]);
        let ours: HashSet<String> = live.values().flatten().cloned().collect();
        let charged: i64 = state["charges"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| ours.contains(&text(&c["vm_id"]).to_lowercase()))
            .map(|c| micros(&c["amount"]))
            .sum();
        let difference = gateway_side - charged;
        differences.push(difference);
        ledger_bad += u64::from(difference != 0);
    }
    let mut row = Row::new("A6 partial creation (3 of 5)", "I1, I2, I3", suite.seed);
    row.runs = n as u64;
    row.bad = count_mismatch + ledger_bad;
    let worst = differences.iter().map(|d| d.abs()).max().unwrap_or(0);
    row.figures = format!(
        "recorded count = simulator count = 3 in {}/{n}; ledger difference (gateway spent + reserved vs simulator charges) \
         max |{worst}| µUSDC, non-zero in {ledger_bad}/{n}; checker: {}",
        n as u64 - count_mismatch,
        tally.figures()
    );
    row.require(
        tally.bad_runs == 0,
        tally.first_failure.clone().unwrap_or_default(),
    );
    vec![row]
}

fn micros(value: &Value) -> i64 {
    fluence_gateway::domain::money::Usdc::parse(text(value))
        .map(fluence_gateway::domain::money::Usdc::micros)
        .unwrap_or(0)
}

/// A7: answers lost and the VMs slow to show in Fluence's list, by X virtual seconds from 0 to
/// 3Q, where Q is how long the gateway waits for a lost deploy's VMs before it declares
/// nothing was created (the upstream timeout plus the busy timeout: 2 s here). The simulator's
/// clock is moved one second per second of wall time, so a VM hidden for X seconds shows up X
/// seconds after its deploy by both clocks.
async fn a7(suite: Arc<Suite>) -> Vec<Row> {
    let n = suite.profile.pick(14, 100);
    let q = ((UPSTREAM_TIMEOUT_MS + BUSY_TIMEOUT_MS) / 1000) as i64;
    let bed = Bed::new(&suite, "a7", GatewayOptions::default()).await;
    let mut xs = Vec::new();
    let mut ids = Vec::new();
    // The simulator's clock follows the wall clock in whole seconds from here.
    let started = Instant::now();
    let mut advanced = 0u64;
    let follow = |advanced: u64| {
        let wall = started.elapsed().as_secs();
        (wall > advanced).then_some(wall - advanced)
    };
    let mut last_send = Instant::now();
    for i in 0..n {
        // X spread evenly over 0..=3Q.
        let x = (i as i64 * 3 * q) / (n as i64 - 1).max(1);
        if let Some(step) = follow(advanced) {
            bed.world.sim.advance(step).await;
            advanced += step;
        }
        bed.world
            .sim
            .fault(fault(
                "commit_then_error",
                1,
                json!({"status": 502, "seconds": x}),
            ))
            .await;
        let reply = bed.deploy(&format!("late-{i}"), 1, None).await;
        assert_eq!(reply.status, 202, "{}", reply.text);
        bed.deployer().await;
        last_send = Instant::now();
        xs.push(x);
        ids.push(text(&reply.json["id"]).to_owned());
    }
    // Time passes on both clocks; the deployer and the inventory sync look several times a
    // second, so a deployment is declared failed soon after its Q is up.
    let until = Duration::from_secs((3 * q + 2) as u64);
    while last_send.elapsed() <= until {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(step) = follow(advanced) {
            bed.world.sim.advance(step).await;
            advanced += step;
        }
        bed.deployer().await;
        bed.gateway.run_job("inventory").await;
    }
    let verdict = bed.verdict().await;
    let state = bed.world.sim.state().await;
    let sends = sends_by_name(&state);
    let live = live_by_name(&state);
    let (mut dups, mut missed, mut wrong_path, mut adopted, mut late) = (0, 0, 0, 0, 0);
    for (id, x) in ids.iter().zip(&xs) {
        let d = bed
            .gateway
            .admin(Method::GET, &format!("/v1/deployments/{id}"), None)
            .await
            .json;
        let name = text(&d["upstream_name"]);
        dups += u64::from(
            sends.get(name).copied() != Some(1) || live.get(name).map_or(0, Vec::len) > 1,
        );
        let found = d["status"] == "deployed" && recorded(&d).len() == 1;
        missed += u64::from(!found);
        let code = text(&d["reason"]["code"]);
        match code {
            "adopted_late" => late += 1,
            _ => adopted += 1,
        }
        // Well before Q: adopted by the reconcile; well after: declared failed, then adopted
        // late. Within a second of Q either is right (the two clocks are a second apart).
        if *x < q - 1 && code == "adopted_late" || *x > q + 1 && code != "adopted_late" {
            wrong_path += 1;
        }
    }
    let mut row = Row::new(
        format!("A7 visibility delay X in 0..={}s (Q = {q} s)", 3 * q),
        "I1, I2",
        suite.seed,
    );
    row.runs = n as u64;
    row.bad = dups + missed + wrong_path;
    row.figures = format!(
        "duplicates {dups}/{n}; late arrivals adopted or reported {}/{n} ({adopted} adopted by the reconcile, {late} adopted late); \
         wrong path for X {wrong_path}; checker: {}",
        n as u64 - missed,
        verdict_figures(&verdict)
    );
    row.require(!verdict.is_bad(), verdict.summary());
    vec![row]
}

/// A9: the price rises between the estimate and the send; the ceiling the gateway sends
/// (`maxTotalPricePerEpochUsd`, from the estimate) makes Fluence refuse it.
async fn a9(suite: Arc<Suite>) -> Vec<Row> {
    let n = suite.profile.pick(3, 50);
    // The admission commits, then waits: the harness raises the price in that window.
    let bed = Bed::new(
        &suite,
        "a9",
        GatewayOptions::failpoints("admission.after_commit=sleep(1000)"),
    )
    .await;
    let (mut above, mut not_failed) = (0, 0);
    for run in 0..n {
        let reply = bed.deploy(&format!("pricey-{run}"), 1, None).await;
        assert_eq!(reply.status, 202, "{}", reply.text);
        let url = bed.gateway.url("/v1/jobs/deployer/run");
        let admin = bed.gateway.admin_token.clone();
        let job = tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(admin)
                .send()
                .await
                .map(|r| r.status())
        });
        until_admitted(&bed, 1).await;
        bed.world
            .sim
            .control(
                Method::POST,
                "/_sim/market",
                Some(json!({"price_multiplier": 3})),
            )
            .await;
        let _ = job.await;
        bed.world
            .sim
            .control(
                Method::POST,
                "/_sim/market",
                Some(json!({"price_multiplier": 1})),
            )
            .await;
        let d = bed
            .gateway
            .admin(
                Method::GET,
                &format!("/v1/deployments/{}", text(&reply.json["id"])),
                None,
            )
            .await
            .json;
        not_failed += u64::from(d["status"] != "failed");
        let ceiling =
            micros(&d["max_price_per_epoch"]).max(micros(&d["estimate"]["max_price_per_epoch"]));
        let state = bed.world.sim.state().await;
        for vm in state["vms"].as_array().into_iter().flatten() {
            if vm["name"] == d["upstream_name"] && micros(&vm["price_per_epoch"]) > ceiling {
                above += 1;
            }
        }
    }
    let verdict = bed.verdict().await;
    let budget = bed
        .gateway
        .admin(Method::GET, &format!("/v1/teams/{TEAM}/budget"), None)
        .await;
    let leak = u64::from(budget.json["reserved"] != "0");
    let mut row = Row::new("A9 price rises before the send", "I3", suite.seed);
    row.runs = n as u64;
    row.bad = above + not_failed + leak;
    row.figures = format!(
        "VMs billed above the reserved price {above}/{n}; not failed {not_failed}/{n}; reservation leaks {leak}; checker: {}",
        verdict_figures(&verdict)
    );
    row.require(!verdict.is_bad(), verdict.summary());
    vec![row]
}

/// A10: the client hangs up, or the server's request timeout fires, while the deploy request
/// waits on the database (the harness holds its write lock). The request's own task finishes;
/// a replay of the key returns what it stored, and the deployment goes the whole way.
async fn a10(suite: Arc<Suite>) -> Vec<Row> {
    let n = suite.profile.pick(4, 100);
    let mut bed = Bed::new(
        &suite,
        "a10",
        GatewayOptions::default()
            .with_env("GATEWAY__SERVER__REQUEST_TIMEOUT_SECS", "1")
            .with_env("GATEWAY__DATABASE__BUSY_TIMEOUT_MS", "5000"),
    )
    .await;
    let url = format!("sqlite://{}", bed.world.db_path().display());
    let pool = sqlx::SqlitePool::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"));
    let (mut not_one, mut replay_failed) = (0, 0);
    let mut ids = Vec::new();
    for run in 0..n {
        let key = format!("a10-{run}");
        let body = deploy_body(&format!("gone-{run}"), 1);
        let mut lock = pool.acquire().await.unwrap_or_else(|e| panic!("{e}"));
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *lock)
            .await
            .unwrap_or_else(|e| panic!("lock: {e}"));
        // Even runs: the client gives up after 300 ms. Odd runs: the gateway's own 1 s
        // request timeout answers for it.
        let timeout = if run % 2 == 0 {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(10)
        };
        let first = reqwest::Client::new()
            .post(bed.gateway.url("/v1/deployments"))
            .bearer_auth(&bed.key)
            .header("Idempotency-Key", &key)
            .json(&body)
            .timeout(timeout)
            .send()
            .await;
        let first_status = first.as_ref().ok().map(|r| r.status().as_u16());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        sqlx::query("COMMIT")
            .execute(&mut *lock)
            .await
            .unwrap_or_else(|e| panic!("unlock: {e}"));
        drop(lock);
        // The client retries until the stored answer comes back (409 while it is in flight).
        let deadline = Instant::now() + WAIT;
        let replay = loop {
            let reply = bed
                .gateway
                .call(
                    &bed.key,
                    Method::POST,
                    "/v1/deployments",
                    Some(&body),
                    Some(&key),
                )
                .await;
            if reply.status == 202 || Instant::now() >= deadline {
                break reply;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if replay.status != 202 {
            replay_failed += 1;
            eprintln!(
                "A10 run {run}: first answer {first_status:?}, replay {} {}",
                replay.status, replay.text
            );
        }
        ids.push(text(&replay.json["id"]).to_owned());
    }
    pool.close().await;
    // The 1 s request timeout would cut the harness's own job runs short: the rest is judged
    // through a gateway with the usual settings on the same database.
    bed.gateway.kill();
    bed.gateway = bed.world.gateway(manual(GatewayOptions::default())).await;
    let verdict = bed.verdict().await;
    let items = bed.deployments().await;
    let mut lost = 0;
    for run in 0..n {
        let name = format!("gone-{run}");
        let mine: Vec<&Value> = items
            .iter()
            .filter(|d| d["name"] == name.as_str())
            .collect();
        not_one += u64::from(mine.len() != 1);
        lost += u64::from(
            !mine
                .iter()
                .any(|d| d["status"] == "deployed" && recorded(d).len() == 1),
        );
    }
    let budget = bed
        .gateway
        .admin(Method::GET, &format!("/v1/teams/{TEAM}/budget"), None)
        .await;
    let leak = u64::from(budget.json["reserved"] != "0");
    let mut row = Row::new(
        "A10 client gone / request timeout mid-deploy",
        "I1, I2",
        suite.seed,
    );
    row.runs = n as u64;
    row.bad = lost + leak + not_one + replay_failed;
    row.figures = format!(
        "lost VMs {lost}/{n}; reservation leaks {leak}; deployments per key != 1: {not_one}/{n}; \
         replays without the final answer {replay_failed}/{n}; checker: {}",
        verdict_figures(&verdict)
    );
    row.require(!verdict.is_bad(), verdict.summary());
    vec![row]
}

/// A11: Idempotency-Key semantics over `n` key groups.
async fn a11(suite: Arc<Suite>) -> Vec<Row> {
    let n = suite.profile.pick(20, 200);
    let bed = Bed::new(&suite, "a11", GatewayOptions::default()).await;
    bed.gateway.create_team("other", "1000000", json!({})).await;
    let other = bed.gateway.mint_key("other", "member").await;
    let (mut wrong_status, mut mismatches, mut expired) = (0u64, 0u64, 0u64);
    let http = reqwest::Client::new();
    let url = format!("sqlite://{}", bed.world.db_path().display());
    let pool = sqlx::SqlitePool::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"));
    for g in 0..n {
        let key = format!("group-{g}");
        let body = deploy_body(&format!("g{g}"), 1);
        // Sequential: the first answer, then a replay.
        let first = bed.deploy(&format!("g{g}"), 1, Some(&key)).await;
        wrong_status += u64::from(first.status != 202);
        let again = bed.deploy(&format!("g{g}"), 1, Some(&key)).await;
        mismatches += u64::from(again.status != first.status || again.text != first.text);
        // The same key with another body.
        let changed = bed.deploy(&format!("g{g}-changed"), 1, Some(&key)).await;
        wrong_status += u64::from(changed.status != 422);
        // Another team sends the same key value: a new key for it.
        let foreign = bed
            .gateway
            .call(
                &other,
                Method::POST,
                "/v1/deployments",
                Some(&body),
                Some(&key),
            )
            .await;
        wrong_status += u64::from(foreign.status != 202 || foreign.json["id"] == first.json["id"]);
        // 10-way concurrent, on a fresh key.
        let key10 = format!("group-{g}-x10");
        let body10 = deploy_body(&format!("g{g}x"), 1);
        let barrier = Arc::new(tokio::sync::Barrier::new(10));
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let request = http
                .post(bed.gateway.url("/v1/deployments"))
                .bearer_auth(&bed.key)
                .header("Idempotency-Key", &key10)
                .json(&body10);
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                match request.send().await {
                    Ok(r) => Some(Reply::read(r).await),
                    Err(_) => None,
                }
            }));
        }
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.ok().flatten());
        }
        let replay10 = bed.deploy(&format!("g{g}x"), 1, Some(&key10)).await;
        wrong_status += u64::from(replay10.status != 202);
        for answer in &answers {
            match answer {
                Some(a) if a.status == 202 => {
                    mismatches += u64::from(a.text != replay10.text);
                }
                Some(a) if a.status == 409 => {}
                _ => wrong_status += 1,
            }
        }
        // Without a key, each request is a deployment of its own.
        if g % 4 == 0 {
            let a = bed.deploy(&format!("g{g}-nokey"), 1, None).await;
            let b = bed.deploy(&format!("g{g}-nokey"), 1, None).await;
            wrong_status +=
                u64::from(a.status != 202 || b.status != 202 || a.json["id"] == b.json["id"]);
        }
        // After the retention window the key starts a new operation. The window is hours of
        // wall time, so the harness ages the stored records past it instead of waiting.
        if g % 4 == 1 {
            let key = format!("group-{g}-expiring");
            let name = format!("g{g}-exp");
            let a = bed.deploy(&name, 1, Some(&key)).await;
            // The window has passed for both records of the key: the stored answer and the
            // deployment (which a retry also finds by its key while within the window).
            for aging in [
                "UPDATE idempotency_keys SET expires_at = created_at WHERE key = ?1",
                "UPDATE deployments SET created_at = '2000-01-01T00:00:00.000000Z' \
                 WHERE idempotency_key LIKE '%|' || ?1",
            ] {
                sqlx::query(aging)
                    .bind(&key)
                    .execute(&pool)
                    .await
                    .unwrap_or_else(|e| panic!("age the key: {e}"));
            }
            let b = bed.deploy(&name, 1, Some(&key)).await;
            wrong_status +=
                u64::from(a.status != 202 || b.status != 202 || a.json["id"] == b.json["id"]);
            expired += 1;
        }
    }
    pool.close().await;
    let ours = bed.deployments().await;
    let theirs = bed.gateway.deployments("other").await;
    let mut extra_executions = 0;
    for g in 0..n {
        for name in [format!("g{g}"), format!("g{g}x")] {
            let count = ours.iter().filter(|d| d["name"] == name.as_str()).count();
            extra_executions += u64::from(count != 1);
        }
        let count = ours
            .iter()
            .filter(|d| d["name"] == format!("g{g}-changed").as_str())
            .count();
        extra_executions += u64::from(count != 0);
        if g % 4 == 1 {
            // The first operation and the one after expiry: two, never more.
            let count = ours
                .iter()
                .filter(|d| d["name"] == format!("g{g}-exp").as_str())
                .count();
            extra_executions += u64::from(count != 2);
        }
        let count = theirs
            .iter()
            .filter(|d| d["name"] == format!("g{g}").as_str())
            .count();
        extra_executions += u64::from(count != 1);
    }
    let verdict = bed.verdict().await;
    let mut row = Row::new("A11 Idempotency-Key semantics", "I1, I4", suite.seed);
    row.runs = n as u64;
    row.bad = extra_executions + mismatches + wrong_status;
    row.figures = format!(
        "keys with the wrong number of executions (1 per (team, key), 2 across an expiry, 0 for a changed body): {extra_executions} over {n} groups; \
         replay byte mismatches {mismatches}; wrong status codes {wrong_status}; keys reused after their retention window \
         (record aged in the database) {expired}, each to start exactly one new operation (counted in the first figure); checker: {}",
        verdict_figures(&verdict)
    );
    row.require(!verdict.is_bad(), verdict.summary());
    vec![row]
}

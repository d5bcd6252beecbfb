//! C: the budget under concurrency. C1 releases N deploys of one team behind a barrier against
//! a cap that fits exactly k of them, and counts what the deploy worker admitted. C2 does the
//! same across two gateway processes on one SQLite file, C3 with the first requests of brand-new
//! teams, C5 drives every terminal path and looks for reservations left behind, and C7 floods
//! one team against its VM quota while another keeps deploying within its budget.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fluence_gateway::domain::money::Usdc;
use reqwest::Method;
use serde_json::{Value, json};

use crate::Scenario;
use crate::check::{self, Tally};
use crate::report::{Build, Row, SplitMix, latency_summary, percentile};
use crate::world::{Gateway, GatewayOptions, Suite, World, deploy_body};

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        id: "C1",
        invariant: "I3",
        run: |suite| Box::pin(c1(suite)),
    },
    Scenario {
        id: "C2",
        invariant: "I3",
        run: |suite| Box::pin(c2(suite)),
    },
    Scenario {
        id: "C3",
        invariant: "I3",
        run: |suite| Box::pin(c3(suite)),
    },
    Scenario {
        id: "C5",
        invariant: "I3",
        run: |suite| Box::pin(c5(suite)),
    },
    Scenario {
        id: "C7",
        invariant: "I3",
        run: |suite| Box::pin(c7(suite)),
    },
];

/// The seeded bug of the C tests: admission reads the budget, sleeps 50 ms, then writes.
pub const CHECK_THEN_ACT: &str = "admission.check_then_act=sleep(50)";

/// Only the explicit deployer runs decide: a background tick that caught a round's first
/// requests as they arrived could admit exactly k of them alone, and a seeded round would pass
/// unnoticed (C1 seeded missed 1 of 5 rounds so).
const ONLY_EXPLICIT_RUNS: (&str, &str) = ("GATEWAY__JOBS__DEPLOYER_INTERVAL_SECS", "3600");
/// Nor does a submission wake the worker, for the same reason.
const NO_WAKE_ON_SUBMIT: (&str, &str) = ("GATEWAY__JOBS__DEPLOYER_ON_SUBMIT", "false");

/// Statuses that mean the deployment passed admission.
pub fn was_admitted(deployment: &Value) -> bool {
    matches!(
        deployment["status"].as_str(),
        Some("admitted" | "deploying" | "deployed" | "unknown")
    )
}

/// What one concurrency round found.
pub struct Round {
    pub admitted: usize,
    /// Rejections for any reason but the budget: a wrong answer, not a refusal.
    pub wrong_rejections: usize,
    /// Spent + committed + reserved above the cap once the round was decided: an overspend.
    pub over_cap: bool,
}

impl Round {
    /// Whether the round overspent, whether it was wrong in any way (an overspend, fewer than
    /// the k deploys the cap fits, a refusal for another reason), and whether more than k got in
    /// within the cap. The last is right, not wrong: a deployment's hold is never below what its
    /// VMs will be charged in the period and may be above it (30 epochs held, 29 charged once
    /// settled, in the full run of 2026-12-03), so a round whose first deployments settle before
    /// its last are decided can have room for one more.
    pub fn judge(&self, k: usize) -> (bool, bool, bool) {
        let wrong = self.over_cap || self.admitted < k || self.wrong_rejections > 0;
        (self.over_cap, wrong, self.admitted > k && !self.over_cap)
    }
}

/// What a scenario's rounds found, each by [`Round::judge`].
#[derive(Default)]
pub struct Judged {
    pub runs: u64,
    pub overspent: u64,
    pub wrong: u64,
    pub above_k: u64,
}

impl Judged {
    fn add(&mut self, round: &Round, k: usize) {
        let (overspent, wrong, above_k) = round.judge(k);
        self.runs += 1;
        self.overspent += u64::from(overspent);
        self.wrong += u64::from(wrong);
        self.above_k += u64::from(above_k);
    }

    fn figures(&self) -> String {
        format!(
            "overspent rounds {}/{runs}, wrong rounds (an overspend, fewer than k admitted or a refusal not for the budget) {}/{runs}, rounds with k + 1 admitted within the cap once a settlement freed room {}",
            self.overspent,
            self.wrong,
            self.above_k,
            runs = self.runs
        )
    }
}

/// The seeded rows' figure: rounds in which the seeded race overspent, of all.
fn detection(caught: u64, runs: u64) -> String {
    format!(
        "seeded-bug detection rate {caught}/{runs} ({:.0}%): rounds whose spent + committed + reserved ended above the cap",
        100.0 * caught as f64 / runs.max(1) as f64
    )
}

/// Whether `team`'s spent + committed + reserved is above its cap, from its budget status.
async fn over_cap(gateway: &Gateway, team: &str) -> bool {
    let budget = gateway
        .admin(Method::GET, &format!("/v1/teams/{team}/budget"), None)
        .await;
    assert_eq!(budget.status, 200, "budget of {team}: {}", budget.text);
    let available = budget.json["available"].as_str().unwrap_or_default();
    // `Usdc` holds no negative amount: the sign is read here.
    let (negative, magnitude) = match available.strip_prefix('-') {
        Some(magnitude) => (true, magnitude),
        None => (false, available),
    };
    let magnitude =
        Usdc::parse(magnitude).unwrap_or_else(|e| panic!("available in {}: {e}", budget.text));
    negative && magnitude.micros() > 0
}

/// The commitment of one `instances = 1` deployment for `team`, from a dry run.
pub async fn one_commitment(gateway: &Gateway, team: &str) -> Usdc {
    let probe = gateway
        .admin(
            Method::POST,
            &format!("/v1/deployments?dry_run=true&team={team}"),
            Some(&deploy_body("probe", 1)),
        )
        .await;
    assert_eq!(probe.status, 200, "dry run: {}", probe.text);
    Usdc::parse(probe.json["commitment"].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("dry-run commitment {}: {e}", probe.text))
}

/// Runs the deployer until no deployment of `team` waits for a decision; returns them all.
pub async fn decided(gateway: &Gateway, team: &str) -> Vec<Value> {
    let mut items = Vec::new();
    for _ in 0..20 {
        gateway.run_job("deployer").await;
        items = gateway.deployments(team).await;
        let undecided = |d: &Value| matches!(d["status"].as_str(), Some("queued" | "estimating"));
        if !items.iter().any(undecided) {
            break;
        }
    }
    items
}

/// One C1 round on a fresh team: `n` deploys behind a barrier, a cap that fits exactly `k`.
pub async fn c1_round(gateway: &Gateway, team: &str, n: usize, k: usize) -> Round {
    gateway.create_team(team, "100000", json!({})).await;
    let member = gateway.mint_key(team, "member").await;
    let one = one_commitment(gateway, team).await;
    let cap = one
        .checked_mul(i64::try_from(k).unwrap_or(i64::MAX))
        .unwrap_or_else(|| panic!("cap overflows"));
    let patched = gateway
        .admin(
            Method::PATCH,
            &format!("/v1/teams/{team}"),
            Some(&json!({"budget": {"cap": cap.to_string()}})),
        )
        .await;
    assert_eq!(patched.status, 200, "set the cap: {}", patched.text);

    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..n {
        let barrier = barrier.clone();
        let request = http
            .post(gateway.url("/v1/deployments"))
            .bearer_auth(&member)
            .json(&deploy_body(&format!("c{i}"), 1));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            request.send().await.map(|r| r.status().as_u16())
        }));
    }
    for task in tasks {
        let status = task.await.unwrap_or_else(|e| panic!("deploy task: {e}"));
        assert_eq!(
            status.ok(),
            Some(202),
            "every deploy is accepted for the pipeline"
        );
    }
    let items = decided(gateway, team).await;
    assert_eq!(items.len(), n, "one deployment per request");
    Round {
        admitted: items.iter().filter(|d| was_admitted(d)).count(),
        wrong_rejections: items
            .iter()
            .filter(|d| d["status"] == "rejected" && d["reason"]["code"] != "budget_exceeded")
            .count(),
        over_cap: over_cap(gateway, team).await,
    }
}

/// C1 on the shipped build, then on the seeded check-then-act build.
pub async fn c1(suite: Arc<Suite>) -> Vec<Row> {
    let sizes: &[usize] = suite.profile.pick(&[8], &[2, 8, 32, 64]);
    let rounds = suite.profile.pick(20, 100);
    let concurrency = ("GATEWAY__JOBS__DEPLOYER_CONCURRENCY", "64");

    let mut row = Row::new(format!("C1 N in {sizes:?}"), "I3", suite.seed);
    let mut judged = Judged::default();
    let mut tally = Tally::default();
    for &n in sizes {
        let world = World::new(&suite, &format!("c1-n{n}")).await;
        world
            .sim
            .control(
                Method::POST,
                "/_sim/market",
                Some(json!({"capacity": 1_000_000})),
            )
            .await;
        let gateway = world
            .gateway(GatewayOptions::default().with_env(concurrency.0, concurrency.1))
            .await;
        for round in 0..rounds {
            let k = n / 2;
            let found = c1_round(&gateway, &format!("c1-{n}-{round}"), n, k).await;
            judged.add(&found, k);
        }
        check::quiesce(&world, &gateway).await;
        tally.add(&check::check(&world.db_path(), &world.sim.state().await).await);
    }
    row.runs = judged.runs;
    row.bad = judged.wrong;
    row.figures = format!("{}; checker: {}", judged.figures(), tally.figures());
    row.require(tally.bad_runs == 0, tally.first_failure.unwrap_or_default());

    // The mutation check: the same rounds against check-then-act must overspend every time.
    let mut seeded = Row::new("C1 seeded race (N = 8)", "I3", suite.seed);
    seeded.build = Build::Seeded(CHECK_THEN_ACT);
    let world = World::new(&suite, "c1-seeded").await;
    world
        .sim
        .control(
            Method::POST,
            "/_sim/market",
            Some(json!({"capacity": 1_000_000})),
        )
        .await;
    let gateway = world
        .gateway(
            GatewayOptions::failpoints(CHECK_THEN_ACT)
                .with_env(concurrency.0, concurrency.1)
                .with_env(ONLY_EXPLICIT_RUNS.0, ONLY_EXPLICIT_RUNS.1)
                .with_env(NO_WAKE_ON_SUBMIT.0, NO_WAKE_ON_SUBMIT.1),
        )
        .await;
    let seeded_rounds = suite.profile.pick(5, 20);
    let mut caught = 0;
    for round in 0..seeded_rounds {
        let found = c1_round(&gateway, &format!("seeded-{round}"), 8, 4).await;
        seeded.runs += 1;
        caught += u64::from(found.over_cap);
    }
    seeded.bad = seeded.runs - caught;
    seeded.figures = detection(caught, seeded.runs);
    vec![row, seeded]
}

/// Runs every gateway's deployer until no deployment of `team` waits for a decision.
pub async fn decided_by(gateways: &[&Gateway], team: &str) -> Vec<Value> {
    let mut items = Vec::new();
    for _ in 0..20 {
        // Two processes decide at the same time: that is the race C2 is about.
        match gateways {
            [a, b] => {
                tokio::join!(a.run_job("deployer"), b.run_job("deployer"));
            }
            _ => {
                for gateway in gateways {
                    gateway.run_job("deployer").await;
                }
            }
        }
        items = gateways[0].deployments(team).await;
        let undecided = |d: &Value| matches!(d["status"].as_str(), Some("queued" | "estimating"));
        if !items.iter().any(undecided) {
            break;
        }
    }
    items
}

/// One race: `n` deploys of `member` behind a barrier, request i sent to gateway i mod the
/// number of gateways; then every gateway's deployer decides. Counts the admitted.
pub async fn race(gateways: &[&Gateway], team: &str, member: &str, n: usize) -> Round {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..n {
        let barrier = barrier.clone();
        let gateway = gateways[i % gateways.len()];
        let request = http
            .post(gateway.url("/v1/deployments"))
            .bearer_auth(member)
            .json(&deploy_body(&format!("r{i}"), 1));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            request.send().await.map(|r| r.status().as_u16())
        }));
    }
    for task in tasks {
        let status = task.await.unwrap_or_else(|e| panic!("deploy task: {e}"));
        assert_eq!(
            status.ok(),
            Some(202),
            "every deploy is accepted for the pipeline"
        );
    }
    let items = decided_by(gateways, team).await;
    assert_eq!(items.len(), n, "one deployment per request");
    Round {
        admitted: items.iter().filter(|d| was_admitted(d)).count(),
        wrong_rejections: items
            .iter()
            .filter(|d| d["status"] == "rejected" && d["reason"]["code"] != "budget_exceeded")
            .count(),
        over_cap: over_cap(gateways[0], team).await,
    }
}

/// A world whose market never runs out, for the C tests.
async fn market_world(suite: &Arc<Suite>, label: &str) -> World {
    let world = World::new(suite, label).await;
    world
        .sim
        .control(
            Method::POST,
            "/_sim/market",
            Some(json!({"capacity": 1_000_000})),
        )
        .await;
    world
}

const CONCURRENCY: (&str, &str) = ("GATEWAY__JOBS__DEPLOYER_CONCURRENCY", "64");

/// C2 on one build: two gateway processes on one SQLite file, each round's requests split
/// between them. Returns what the rounds found and the checker's tally.
async fn c2_rounds(
    suite: &Arc<Suite>,
    label: &str,
    failpoints: Option<&str>,
    rounds: usize,
) -> (Judged, Tally) {
    let world = market_world(suite, label).await;
    let options = || {
        let options = match failpoints {
            Some(spec) => GatewayOptions::failpoints(spec),
            None => GatewayOptions::default(),
        };
        // Only the explicit runs decide, both processes at once.
        options
            .with_env(CONCURRENCY.0, CONCURRENCY.1)
            .with_env(ONLY_EXPLICIT_RUNS.0, ONLY_EXPLICIT_RUNS.1)
            .with_env(NO_WAKE_ON_SUBMIT.0, NO_WAKE_ON_SUBMIT.1)
    };
    let first = world.gateway(options()).await;
    let second = world.gateway(options()).await;
    // The seeded build gets twice the requests: with two processes deciding, the 50 ms window
    // must still be met by more than k admissions in every round.
    let (n, k) = if failpoints.is_some() {
        (16, 4)
    } else {
        (8, 4)
    };
    let mut judged = Judged::default();
    for round in 0..rounds {
        let team = format!("{label}-{round}");
        first.create_team(&team, "100000", json!({})).await;
        let member = first.mint_key(&team, "member").await;
        let one = one_commitment(&second, &team).await;
        let cap = one
            .checked_mul(k as i64)
            .unwrap_or_else(|| panic!("cap overflows"));
        let patched = second
            .admin(
                Method::PATCH,
                &format!("/v1/teams/{team}"),
                Some(&json!({"budget": {"cap": cap.to_string()}})),
            )
            .await;
        assert_eq!(patched.status, 200, "set the cap: {}", patched.text);
        let found = race(&[&first, &second], &team, &member, n).await;
        judged.add(&found, k);
    }
    let mut tally = Tally::default();
    if failpoints.is_none() {
        check::quiesce(&world, &first).await;
        check::quiesce(&world, &second).await;
        tally.add(&check::check(&world.db_path(), &world.sim.state().await).await);
    }
    (judged, tally)
}

/// C2: C1 with two gateway processes sharing one SQLite file, and its seeded race.
pub async fn c2(suite: Arc<Suite>) -> Vec<Row> {
    let rounds = suite.profile.pick(10, 200);
    let mut row = Row::new(
        "C2 two processes, one SQLite file (N = 8, k = 4)",
        "I3",
        suite.seed,
    );
    let (judged, tally) = c2_rounds(&suite, "c2", None, rounds).await;
    row.runs = judged.runs;
    row.bad = judged.wrong;
    row.figures = format!("{}; checker: {}", judged.figures(), tally.figures());
    row.require(tally.bad_runs == 0, tally.first_failure.unwrap_or_default());

    let mut seeded = Row::new("C2 seeded race (N = 16, k = 4)", "I3", suite.seed);
    seeded.build = Build::Seeded(CHECK_THEN_ACT);
    let (judged, _) = c2_rounds(
        &suite,
        "c2-seeded",
        Some(CHECK_THEN_ACT),
        suite.profile.pick(3, 20),
    )
    .await;
    seeded.runs = judged.runs;
    seeded.bad = judged.runs - judged.overspent;
    seeded.figures = detection(judged.overspent, judged.runs);
    vec![row, seeded]
}

/// C3 on one build: each round creates a brand-new team whose cap fits exactly k, and its
/// first 8 deploys arrive together (no request of that team was ever decided before).
async fn c3_rounds(
    suite: &Arc<Suite>,
    label: &str,
    failpoints: Option<&str>,
    rounds: usize,
) -> (Judged, Tally) {
    let world = market_world(suite, label).await;
    let options = match failpoints {
        Some(spec) => GatewayOptions::failpoints(spec)
            .with_env(ONLY_EXPLICIT_RUNS.0, ONLY_EXPLICIT_RUNS.1)
            .with_env(NO_WAKE_ON_SUBMIT.0, NO_WAKE_ON_SUBMIT.1),
        None => GatewayOptions::default(),
    };
    let gateway = world
        .gateway(options.with_env(CONCURRENCY.0, CONCURRENCY.1))
        .await;
    // The commitment of one deploy, learnt on another team: the new teams never see a
    // request before their race.
    gateway
        .create_team(&format!("{label}-probe"), "100000", json!({}))
        .await;
    let one = one_commitment(&gateway, &format!("{label}-probe")).await;
    let (n, k) = (8, 3);
    let cap = one
        .checked_mul(k as i64)
        .unwrap_or_else(|| panic!("cap overflows"));
    let mut judged = Judged::default();
    for round in 0..rounds {
        let team = format!("{label}-{round}");
        gateway
            .create_team(&team, &cap.to_string(), json!({}))
            .await;
        let member = gateway.mint_key(&team, "member").await;
        let found = race(&[&gateway], &team, &member, n).await;
        judged.add(&found, k);
    }
    let mut tally = Tally::default();
    if failpoints.is_none() {
        check::quiesce(&world, &gateway).await;
        tally.add(&check::check(&world.db_path(), &world.sim.state().await).await);
    }
    (judged, tally)
}

/// C3: concurrent first requests of new teams, and the seeded race.
pub async fn c3(suite: Arc<Suite>) -> Vec<Row> {
    let rounds = suite.profile.pick(10, 100);
    let mut row = Row::new(
        "C3 8 concurrent first deploys of a new team (k = 3)",
        "I3",
        suite.seed,
    );
    let (judged, tally) = c3_rounds(&suite, "c3", None, rounds).await;
    row.runs = judged.runs;
    row.bad = judged.wrong;
    row.figures = format!("{}; checker: {}", judged.figures(), tally.figures());
    row.require(tally.bad_runs == 0, tally.first_failure.unwrap_or_default());

    let mut seeded = Row::new("C3 seeded race", "I3", suite.seed);
    seeded.build = Build::Seeded(CHECK_THEN_ACT);
    let (judged, _) = c3_rounds(
        &suite,
        "c3-seeded",
        Some(CHECK_THEN_ACT),
        suite.profile.pick(3, 20),
    )
    .await;
    seeded.runs = judged.runs;
    seeded.bad = judged.runs - judged.overspent;
    seeded.figures = detection(judged.overspent, judged.runs);
    vec![row, seeded]
}

/// Runs the deployer and the inventory sync until no deployment is left undecided or
/// unsettled, for at most `limit`; then [`check::quiesce`] finishes the job.
async fn settle(world: &World, gateway: &Gateway, team_ids: &[String], limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        gateway.run_job("deployer").await;
        gateway.run_job("inventory").await;
        let mut open = 0;
        for team in team_ids {
            open += gateway
                .deployments(team)
                .await
                .iter()
                .filter(|d| {
                    matches!(
                        d["status"].as_str(),
                        Some("queued" | "estimating" | "admitted" | "deploying" | "unknown")
                    )
                })
                .count();
        }
        if open == 0 || Instant::now() > deadline {
            break;
        }
    }
    check::quiesce(world, gateway).await;
}

/// Deployments the pipeline has started but not finished (estimating, admitted, deploying,
/// unknown).
async fn in_flight(db: &std::path::Path) -> i64 {
    let url = format!("sqlite://{}", db.display());
    let pool = sqlx::SqlitePool::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"));
    let count = sqlx::query_scalar(
        "SELECT COUNT(*) FROM deployments WHERE status IN ('estimating', 'admitted', 'deploying', 'unknown')",
    )
    .fetch_one(&pool)
    .await
    .unwrap_or_else(|e| panic!("count deployments in flight: {e}"));
    pool.close().await;
    count
}

/// Open holds per team in the database, in micro-USDC.
async fn open_holds(db: &std::path::Path) -> BTreeMap<String, i64> {
    let url = format!("sqlite://{}", db.display());
    let pool = sqlx::SqlitePool::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"));
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT team_id, SUM(amount_micros) FROM holds WHERE released_at IS NULL GROUP BY team_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap_or_else(|e| panic!("read holds: {e}"));
    pool.close().await;
    rows.into_iter().collect()
}

/// C5: a mixed run over every terminal path (deployed, refused by Fluence with a 4xx,
/// ambiguous 5xx or reset then reconciled, rejected by the budget, cancelled, deleted, and
/// kill -9 mid-pipeline), then reserved = 0 for every team.
pub async fn c5(suite: Arc<Suite>) -> Vec<Row> {
    let target = suite.profile.pick(200, 10_000);
    let batch = suite.profile.pick(40, 200);
    let crash_every = suite.profile.pick(2, 5);
    let mut row = Row::new(
        format!("C5 reservation leaks, {target} operations"),
        "I3",
        suite.seed,
    );
    let world = market_world(&suite, "c5").await;
    // The injected 5xx and resets would open the circuit breaker for its default 30 s, which
    // is not what C5 measures; a short busy timeout shortens the reconcile grace (an absent
    // VM is declared failed only after upstream timeout + busy timeout).
    let manual = || {
        GatewayOptions::default()
            .with_env("GATEWAY__UPSTREAM__BREAKER_OPEN_SECS", "1")
            .with_env("GATEWAY__DATABASE__BUSY_TIMEOUT_MS", "2000")
            .with_env("GATEWAY__JOBS__DEPLOYER_INTERVAL_SECS", "3600")
            .with_env("GATEWAY__JOBS__DEPLOYER_ON_SUBMIT", "false")
            .with_env("GATEWAY__JOBS__INVENTORY_INTERVAL_SECS", "3600")
            .with_env(CONCURRENCY.0, "16")
    };
    let mut gateway = world.gateway(manual()).await;
    let teams: Vec<String> = (0..3).map(|t| format!("c5-{t}")).collect();
    let mut members = Vec::new();
    for team in &teams {
        gateway.create_team(team, "1000000", json!({})).await;
        members.push(gateway.mint_key(team, "member").await);
    }
    // The last team's cap fits three VMs: the budget refuses some of its deploys.
    let one = one_commitment(&gateway, &teams[2]).await;
    let tight = one
        .checked_mul(3)
        .unwrap_or_else(|| panic!("cap overflows"));
    let patched = gateway
        .admin(
            Method::PATCH,
            &format!("/v1/teams/{}", teams[2]),
            Some(&json!({"budget": {"cap": tight.to_string()}})),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text);

    let mut rng = SplitMix(suite.seed ^ 0xc5);
    let (mut operations, mut deletes, mut crashes, mut batches) = (0usize, 0usize, 0u64, 0usize);
    let mut caught_in_flight = 0i64;
    while operations < target {
        batches += 1;
        let crash_batch = batches % crash_every == 0;
        for (fault, status, count) in [
            ("error_before_commit", 422, 3),
            ("error_before_commit", 400, 1),
            ("error_before_commit", 503, 2),
            ("commit_then_error", 502, 3),
            ("commit_then_reset", 0, 2),
        ] {
            // The same share of every path whatever the batch size.
            let count = count * batch / 40;
            let mut spec = json!({"endpoint": "POST /vms/v3", "fault": fault, "count": count});
            if status > 0 {
                spec["status"] = json!(status);
            }
            world.sim.fault(spec).await;
        }
        let mut ids = Vec::new();
        for i in 0..batch.min(target - operations) {
            let t = rng.below(teams.len() as u64) as usize;
            let reply = gateway
                .call(
                    &members[t],
                    Method::POST,
                    "/v1/deployments",
                    Some(&deploy_body(&format!("b{batches}-{i}"), 1)),
                    Some(&format!("c5-{batches}-{i}")),
                )
                .await;
            assert_eq!(reply.status, 202, "deploy: {}", reply.text);
            operations += 1;
            ids.push((t, reply.json["id"].as_str().unwrap_or_default().to_owned()));
        }
        // A tenth are cancelled before the worker sees them.
        for (t, id) in ids.iter().filter(|_| rng.chance(10)) {
            let reply = gateway
                .call(
                    &members[*t],
                    Method::POST,
                    &format!("/v1/deployments/{id}/cancel"),
                    None,
                    None,
                )
                .await;
            assert!(matches!(reply.status, 200 | 409), "cancel: {}", reply.text);
        }
        if crash_batch {
            // kill -9 while the worker is busy with this batch: a moment into its run, so
            // that deployments are caught being estimated, admitted or sent. (By time rather
            // than by failpoint, so that any build of the gateway can run it.)
            let run = gateway
                .http()
                .post(gateway.url("/v1/jobs/deployer/run"))
                .bearer_auth(&gateway.admin_token)
                .send();
            let worker = tokio::spawn(async move {
                let _ = run.await;
            });
            tokio::time::sleep(Duration::from_millis(20 + rng.below(300))).await;
            gateway.kill();
            worker.abort();
            crashes += 1;
            caught_in_flight += in_flight(&world.db_path()).await;
            drop(gateway);
            gateway = world.gateway(manual()).await;
        }
        settle(&world, &gateway, &teams, Duration::from_secs(60)).await;
        world
            .sim
            .control(Method::DELETE, "/_sim/faults", None)
            .await;
        // Half the live VMs are deleted through the gateway, which releases their commitment.
        for (t, team) in teams.iter().enumerate() {
            let vms = gateway
                .admin(Method::GET, &format!("/v1/vms?team={team}&limit=500"), None)
                .await;
            for vm in vms.json["items"].as_array().into_iter().flatten() {
                if vm["deleted_at"].is_null() && vm["status"] != "Deleted" && rng.chance(50) {
                    let id = vm["id"].as_str().unwrap_or_default();
                    let reply = gateway
                        .call(
                            &members[t],
                            Method::DELETE,
                            &format!("/v1/vms/{id}"),
                            None,
                            None,
                        )
                        .await;
                    assert_eq!(reply.status, 204, "delete {id}: {}", reply.text);
                    deletes += 1;
                }
            }
        }
    }
    settle(&world, &gateway, &teams, Duration::from_secs(120)).await;
    let holds = open_holds(&world.db_path()).await;
    let residual: i64 = holds.values().sum();
    let mut api_reserved = Vec::new();
    for team in &teams {
        let budget = gateway
            .admin(Method::GET, &format!("/v1/teams/{team}/budget"), None)
            .await;
        let reserved = Usdc::parse(budget.json["reserved"].as_str().unwrap_or("x"))
            .map(Usdc::micros)
            .unwrap_or(i64::MAX);
        api_reserved.push(reserved);
    }
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for team in &teams {
        for d in gateway.deployments(team).await {
            *outcomes
                .entry(d["status"].as_str().unwrap_or("?").to_owned())
                .or_default() += 1;
        }
    }
    let mut tally = Tally::default();
    tally.add(&check::check(&world.db_path(), &world.sim.state().await).await);
    row.runs = (operations + deletes) as u64;
    row.bad = u64::from(residual != 0) + api_reserved.iter().filter(|r| **r != 0).count() as u64;
    row.figures = format!(
        "{operations} deploys + {deletes} deletes in {batches} batches with {crashes} kill -9 ({caught_in_flight} deployments caught mid-pipeline); outcomes {outcomes:?}; residual reservation after quiescence {residual} µUSDC (database), reserved by the API {api_reserved:?} µUSDC; checker: {}",
        tally.figures()
    );
    row.require(tally.bad_runs == 0, tally.first_failure.unwrap_or_default());
    row.require(
        outcomes
            .keys()
            .all(|s| matches!(s.as_str(), "deployed" | "failed" | "cancelled" | "rejected")),
        "a deployment did not reach a terminal state",
    );
    vec![row]
}

/// Latency of one call, in seconds, and its status.
async fn timed(
    gateway: &Gateway,
    key: &str,
    method: Method,
    path: &str,
    body: &Value,
) -> (f64, u16) {
    let started = Instant::now();
    let reply = gateway.call(key, method, path, Some(body), None).await;
    (started.elapsed().as_secs_f64(), reply.status)
}

/// C7: a busy team floods deploys against its VM quota while a quiet team keeps deciding
/// within its budget. Both limits must hold, and the quiet team's admission latency is
/// reported before and during the flood.
pub async fn c7(suite: Arc<Suite>) -> Vec<Row> {
    let flood_secs = suite.profile.pick(5, 30);
    let flood_cap = suite.profile.pick(400, 3000);
    let samples = suite.profile.pick(60, 300);
    let mut row = Row::new("C7 quota and budget, two teams", "I3", suite.seed);
    let world = market_world(&suite, "c7").await;
    let gateway = Arc::new(
        world
            .gateway(GatewayOptions::default().with_env(CONCURRENCY.0, "16"))
            .await,
    );
    let (max_vms, quiet_k) = (6usize, 5usize);
    gateway
        .create_team("busy", "1000000", json!({"quotas": {"max_vms": max_vms}}))
        .await;
    gateway.create_team("quiet", "1000000", json!({})).await;
    let busy = gateway.mint_key("busy", "member").await;
    let quiet = gateway.mint_key("quiet", "member").await;
    let one = one_commitment(&gateway, "quiet").await;
    let cap = one
        .checked_mul(quiet_k as i64)
        .unwrap_or_else(|| panic!("cap overflows"));
    let patched = gateway
        .admin(
            Method::PATCH,
            "/v1/teams/quiet",
            Some(&json!({"budget": {"cap": cap.to_string()}})),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    let dry = deploy_body("quiet-dry", 1);

    // Baseline: the quiet team's admission decision (a dry run) with nobody else busy.
    let mut baseline = Vec::new();
    for _ in 0..samples {
        let (seconds, status) = timed(
            &gateway,
            &quiet,
            Method::POST,
            "/v1/deployments?dry_run=true",
            &dry,
        )
        .await;
        assert_eq!(status, 200);
        baseline.push(seconds);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut flooders = Vec::new();
    for f in 0..16 {
        let (gateway, busy, stop, sent) =
            (gateway.clone(), busy.clone(), stop.clone(), sent.clone());
        flooders.push(tokio::spawn(async move {
            let mut i = 0;
            let mut statuses = BTreeMap::new();
            while !stop.load(Ordering::Relaxed) && sent.fetch_add(1, Ordering::Relaxed) < flood_cap
            {
                let reply = gateway
                    .call(
                        &busy,
                        Method::POST,
                        "/v1/deployments",
                        Some(&deploy_body(&format!("f{f}-{i}"), 1)),
                        None,
                    )
                    .await;
                *statuses.entry(reply.status).or_insert(0u64) += 1;
                i += 1;
            }
            statuses
        }));
    }
    let flood_started = Instant::now();
    let (mut during, mut quiet_posts) = (Vec::new(), Vec::new());
    let mut q = 0;
    while flood_started.elapsed() < Duration::from_secs(flood_secs) && during.len() < samples * 4 {
        let (seconds, status) = timed(
            &gateway,
            &quiet,
            Method::POST,
            "/v1/deployments?dry_run=true",
            &dry,
        )
        .await;
        assert_eq!(status, 200);
        during.push(seconds);
        if q < 2 * quiet_k {
            let (seconds, status) = timed(
                &gateway,
                &quiet,
                Method::POST,
                "/v1/deployments",
                &deploy_body(&format!("q{q}"), 1),
            )
            .await;
            assert_eq!(status, 202);
            quiet_posts.push(seconds);
            q += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut flood_statuses: BTreeMap<u16, u64> = BTreeMap::new();
    for task in flooders {
        for (status, n) in task.await.unwrap_or_default() {
            *flood_statuses.entry(status).or_default() += n;
        }
    }
    let flood_wall = flood_started.elapsed().as_secs_f64();
    let teams = vec!["busy".to_owned(), "quiet".to_owned()];
    settle(
        &world,
        &gateway,
        &teams,
        Duration::from_secs(suite.profile.pick(120, 600)),
    )
    .await;

    let busy_items = gateway.deployments("busy").await;
    let quiet_items = gateway.deployments("quiet").await;
    let busy_admitted = busy_items.iter().filter(|d| was_admitted(d)).count();
    let quiet_admitted = quiet_items.iter().filter(|d| was_admitted(d)).count();
    let busy_quota_refusals = busy_items
        .iter()
        .filter(|d| d["status"] == "rejected" && d["reason"]["code"] == "quota_exceeded")
        .count();
    let quiet_budget_refusals = quiet_items
        .iter()
        .filter(|d| d["status"] == "rejected" && d["reason"]["code"] == "budget_exceeded")
        .count();
    let mut tally = Tally::default();
    tally.add(&check::check(&world.db_path(), &world.sim.state().await).await);
    let violations = u64::from(busy_admitted > max_vms) + u64::from(quiet_admitted > quiet_k);
    baseline.sort_by(f64::total_cmp);
    during.sort_by(f64::total_cmp);
    let base_p99 = percentile(&baseline, 99.0) * 1000.0;
    let flood_p99 = percentile(&during, 99.0) * 1000.0;
    row.runs = (busy_items.len() + quiet_items.len()) as u64;
    row.bad = violations;
    row.figures = format!(
        "busy team: {} deploys in {flood_wall:.1} s ({flood_statuses:?}), admitted {busy_admitted} of max_vms {max_vms}, quota refusals {busy_quota_refusals}; quiet team: admitted {quiet_admitted} of a cap fitting {quiet_k}, budget refusals {quiet_budget_refusals}; violations {violations}; quiet admission (dry-run decision) p99 {base_p99:.1} ms alone vs {flood_p99:.1} ms during the flood (p50 {:.1} vs {:.1} ms, n = {} / {}); quiet deploy POST {}; checker: {}",
        busy_items.len(),
        percentile(&baseline, 50.0) * 1000.0,
        percentile(&during, 50.0) * 1000.0,
        baseline.len(),
        during.len(),
        latency_summary(&mut quiet_posts),
        tally.figures()
    );
    row.require(tally.bad_runs == 0, tally.first_failure.unwrap_or_default());
    row.require(
        busy_admitted == max_vms,
        format!("the busy team got {busy_admitted} VMs, its quota is {max_vms}"),
    );
    row.require(
        quiet_admitted == quiet_k,
        format!("the quiet team got {quiet_admitted}, its cap fits {quiet_k}"),
    );
    vec![row]
}

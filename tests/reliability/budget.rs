//! C: the budget under concurrency. C1 releases N deploys of one team behind a barrier against
//! a cap that fits exactly k of them, and counts what the deploy worker admitted.

use std::sync::Arc;

use fluence_gateway::domain::money::Usdc;
use reqwest::Method;
use serde_json::{Value, json};

use crate::Scenario;
use crate::check::{self, Tally};
use crate::report::{Build, Row};
use crate::world::{Gateway, GatewayOptions, Suite, World, deploy_body};

pub const SCENARIOS: &[Scenario] = &[Scenario {
    id: "C1",
    invariant: "I3",
    run: |suite| Box::pin(c1(suite)),
}];

/// The seeded bug of the C tests: admission reads the budget, sleeps 50 ms, then writes.
pub const CHECK_THEN_ACT: &str = "admission.check_then_act=sleep(50)";

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
    }
}

/// C1 on the shipped build, then on the seeded check-then-act build.
pub async fn c1(suite: Arc<Suite>) -> Vec<Row> {
    let sizes: &[usize] = suite.profile.pick(&[8], &[2, 8, 32, 64]);
    let rounds = suite.profile.pick(20, 100);
    let concurrency = ("GATEWAY__JOBS__DEPLOYER_CONCURRENCY", "64");

    let mut row = Row::new(format!("C1 N in {sizes:?}"), "I3", suite.seed);
    let mut overspent = 0;
    let mut wrong_k = 0;
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
            row.runs += 1;
            overspent += u64::from(found.admitted > k);
            wrong_k += u64::from(found.admitted != k || found.wrong_rejections > 0);
        }
        check::quiesce(&world, &gateway).await;
        tally.add(&check::check(&world.db_path(), &world.sim.state().await).await);
    }
    row.bad = wrong_k;
    row.figures = format!(
        "overspent rounds {overspent}/{runs}, admitted != k {wrong_k}/{runs}; checker: {}",
        tally.figures(),
        runs = row.runs
    );
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
        .gateway(GatewayOptions::failpoints(CHECK_THEN_ACT).with_env(concurrency.0, concurrency.1))
        .await;
    let seeded_rounds = suite.profile.pick(5, 20);
    let mut caught = 0;
    for round in 0..seeded_rounds {
        let found = c1_round(&gateway, &format!("seeded-{round}"), 8, 4).await;
        seeded.runs += 1;
        caught += u64::from(found.admitted > 4);
    }
    seeded.bad = seeded.runs - caught;
    seeded.figures = format!(
        "seeded-bug detection rate {caught}/{} ({:.0}%)",
        seeded.runs,
        100.0 * caught as f64 / seeded.runs as f64
    );
    vec![row, seeded]
}

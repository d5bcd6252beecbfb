//! The upstream guard (RELIABILITY.md G4, G6): a bulkhead that refuses a call beyond its size
//! at once, and a breaker that stops calling a failing Fluence until a probe succeeds, without
//! losing a deploy or leaking its hold.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, TestApp, deploy_body};

/// A gateway whose jobs run only when the test says so.
async fn quiet_app(extra: &[(&str, &str)]) -> TestApp {
    let mut env = vec![
        ("GATEWAY__JOBS__DEPLOYER_INTERVAL_SECS", "3600"),
        ("GATEWAY__JOBS__DEPLOYER_ON_SUBMIT", "false"),
        ("GATEWAY__JOBS__INVENTORY_INTERVAL_SECS", "3600"),
        ("GATEWAY__JOBS__PRICES_INTERVAL_SECS", "3600"),
        ("GATEWAY__JOBS__CATALOG_INTERVAL_SECS", "3600"),
        ("GATEWAY__JOBS__REAPER_INTERVAL_SECS", "3600"),
        ("GATEWAY__JOBS__RECONCILE_GRACE_SECS", "0"),
    ];
    env.extend_from_slice(extra);
    let app = TestApp::spawn_with_env(&env).await;
    // The start-up runs end before the test's own begin (a run waits for one in progress).
    for job in ["deployer", "inventory", "prices", "catalog"] {
        run(&app, job).await;
    }
    app
}

/// Runs a job now; its outcome, whether it succeeded or not.
async fn run(app: &TestApp, job: &str) -> Value {
    let reply = app
        .call(
            Method::POST,
            &format!("/v1/jobs/{job}/run"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    reply.json
}

async fn upstream_calls(app: &TestApp, method: &str, path: &str) -> usize {
    app.sim_state().await["calls"]
        .as_array()
        .map_or(0, |calls| {
            calls
                .iter()
                .filter(|c| c["method"] == method && c["path"] == path)
                .count()
        })
}

async fn metrics(app: &TestApp) -> String {
    app.get("/metrics").await.text().await.unwrap_or_default()
}

/// Whether the breaker is open, by its gauge's sample line in /metrics.
async fn breaker_open(app: &TestApp) -> bool {
    let text = metrics(app).await;
    let sample = text
        .lines()
        .find_map(|line| line.strip_prefix("gateway_upstream_breaker_open "));
    match sample {
        Some("1") => true,
        Some("0") => false,
        other => panic!("breaker gauge {other:?} in:\n{text}"),
    }
}

#[tokio::test]
async fn a_failing_upstream_opens_the_breaker_and_a_probe_closes_it_g6() {
    let app = quiet_app(&[
        ("GATEWAY__UPSTREAM__BREAKER_FAILURES", "3"),
        ("GATEWAY__UPSTREAM__BREAKER_OPEN_SECS", "1"),
    ])
    .await;
    app.create_team("ml", "500").await;
    let member = app.mint_key("ml", "member").await;
    // A dry run reads the catalog lists a deploy request is checked against; they stay cached,
    // so the deploy below is accepted while Fluence is held back.
    let warm = app
        .call(
            Method::POST,
            "/v1/deployments?dry_run=true",
            Some(&member),
            Some(deploy_body("web", 1)),
        )
        .await;
    assert_eq!(warm.status, 200, "{}", warm.text);
    app.sim_post(
        "/_sim/faults",
        json!({"endpoint": "GET /vms/v3", "fault": "error_before_commit", "status": 503, "count": 3}),
    )
    .await;
    for _ in 0..3 {
        run(&app, "inventory").await;
    }
    assert!(breaker_open(&app).await);

    // Open: nothing reaches Fluence, and a deploy waits with nothing sent.
    let listed = upstream_calls(&app, "GET", "/vms/v3").await;
    let estimates = upstream_calls(&app, "POST", "/vms/v3/estimate").await;
    let held = run(&app, "inventory").await;
    assert!(held.to_string().contains("not sent"), "{held}");
    let reply = app.deploy(&member, None, deploy_body("web", 1)).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let id = reply.json["id"].as_str().unwrap_or_default().to_owned();
    run(&app, "deployer").await;
    assert_eq!(upstream_calls(&app, "GET", "/vms/v3").await, listed);
    assert_eq!(
        upstream_calls(&app, "POST", "/vms/v3/estimate").await,
        estimates
    );
    assert_eq!(upstream_calls(&app, "POST", "/vms/v3").await, 0);
    let waiting = app.deployment(&id).await;
    assert!(
        matches!(waiting["status"].as_str(), Some("queued" | "estimating")),
        "{waiting}"
    );

    // After the open period one probe goes; it succeeds and everything resumes.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    run(&app, "inventory").await;
    assert!(!breaker_open(&app).await);
    run(&app, "deployer").await;
    let deployed = app.deployment(&id).await;
    assert_eq!(deployed["status"], "deployed", "{deployed}");
    assert_eq!(upstream_calls(&app, "POST", "/vms/v3").await, 1);
}

/// Admission pauses 1.5 s before forwarding: time for the breaker to open in between.
#[tokio::test]
async fn a_deploy_held_back_after_admission_keeps_its_hold_and_is_sent_later_g6() {
    let app = quiet_app(&[
        ("GATEWAY__UPSTREAM__BREAKER_FAILURES", "1"),
        ("GATEWAY__UPSTREAM__BREAKER_OPEN_SECS", "3"),
        ("GATEWAY_FAILPOINTS", "admission.after_commit=sleep(1500)"),
    ])
    .await;
    app.create_team("ml", "500").await;
    let member = app.mint_key("ml", "member").await;
    let reply = app.deploy(&member, None, deploy_body("web", 1)).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let id = reply.json["id"].as_str().unwrap_or_default().to_owned();
    let http = app.http.clone();
    let url = app.url("/v1/jobs/deployer/run");
    let deployer = tokio::spawn(async move {
        http.post(url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.deployment(&id).await["status"] != "admitted" {
        assert!(Instant::now() < deadline, "never admitted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.sim_post(
        "/_sim/faults",
        json!({"endpoint": "GET /vms/v3", "fault": "error_before_commit", "status": 503, "count": 1}),
    )
    .await;
    run(&app, "inventory").await;
    assert!(breaker_open(&app).await);
    assert!(deployer.await.is_ok_and(|status| status.is_ok()));

    let held = app.deployment(&id).await;
    assert_eq!(
        held["status"], "admitted",
        "back in line, not failed: {held}"
    );
    assert_eq!(upstream_calls(&app, "POST", "/vms/v3").await, 0);
    let budget = app
        .call(Method::GET, "/v1/teams/ml/budget", Some(ADMIN_TOKEN), None)
        .await;
    assert_ne!(
        budget.json["reserved"], "0",
        "the hold is kept: {}",
        budget.text
    );

    // Once the open period is over, the next call is the probe; it succeeds and closes it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while breaker_open(&app).await {
        assert!(Instant::now() < deadline, "the breaker never closed");
        tokio::time::sleep(Duration::from_millis(200)).await;
        run(&app, "inventory").await;
    }
    run(&app, "deployer").await;
    let deployed = app.deployment(&id).await;
    assert_eq!(deployed["status"], "deployed", "{deployed}");
    assert_eq!(
        upstream_calls(&app, "POST", "/vms/v3").await,
        1,
        "sent once"
    );
}

#[tokio::test]
async fn a_call_beyond_the_bulkhead_is_refused_at_once_with_a_503_g4() {
    let app = quiet_app(&[("GATEWAY__UPSTREAM__MAX_IN_FLIGHT", "1")]).await;
    app.create_team("ml", "500").await;
    let dry_run = "/v1/deployments?dry_run=true&team=ml";
    // Warms the catalog lists a dry run reads, so that the one below makes a single call.
    let warm = app
        .call(
            Method::POST,
            dry_run,
            Some(ADMIN_TOKEN),
            Some(deploy_body("web", 1)),
        )
        .await;
    assert_eq!(warm.status, 200, "{}", warm.text);

    app.sim_post(
        "/_sim/faults",
        json!({"endpoint": "GET /vms/v3", "fault": "delay", "delay_ms": 1500, "count": 1}),
    )
    .await;
    let http = app.http.clone();
    let url = app.url("/v1/jobs/inventory/run");
    let slow = tokio::spawn(async move {
        http.post(url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    // The slow list holds the only slot once the simulator has it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream_calls(&app, "GET", "/vms/v3").await == 0 {
        assert!(Instant::now() < deadline, "the list never reached Fluence");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let estimates = upstream_calls(&app, "POST", "/vms/v3/estimate").await;
    let asked = Instant::now();
    let refused = app
        .call(
            Method::POST,
            dry_run,
            Some(ADMIN_TOKEN),
            Some(deploy_body("web", 1)),
        )
        .await;
    let waited = asked.elapsed();
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert_eq!(refused.json["code"], "upstream_unavailable");
    assert!(
        waited < Duration::from_millis(1000),
        "failed fast: {waited:?}"
    );
    assert_eq!(
        upstream_calls(&app, "POST", "/vms/v3/estimate").await,
        estimates
    );
    let text = metrics(&app).await;
    assert!(
        text.contains(
            "gateway_upstream_requests_total{endpoint=\"POST /vms/v3/estimate\",outcome=\"held_back\"} 1"
        ),
        "{text}"
    );

    assert!(slow.await.is_ok_and(|status| status.is_ok()));
    let served = app
        .call(
            Method::POST,
            dry_run,
            Some(ADMIN_TOKEN),
            Some(deploy_body("web", 1)),
        )
        .await;
    assert_eq!(
        served.status, 200,
        "the slot is free again: {}",
        served.text
    );
    assert!(
        metrics(&app)
            .await
            .lines()
            .any(|line| line == "gateway_upstream_in_flight 0")
    );
}

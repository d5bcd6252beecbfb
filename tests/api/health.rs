//! Liveness, readiness, request ids and problem+json for what has no route.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{SIM_KEY, TestApp, settings, spawn_simulator};

#[tokio::test]
async fn healthz_says_the_built_in_simulator_is_the_upstream_by_default() {
    let db_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let settings = settings(&db_dir, &[("GATEWAY__SIMULATOR__CLOCK", "manual")]);
    let app = TestApp::spawn_with(settings, None, db_dir).await;

    let response = app.get("/healthz").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(body["status"], "ok");
    assert_eq!(body["upstream"]["mode"], "simulator");
    assert_eq!(body["upstream"]["simulated"], true);
    assert!(
        body["upstream"]["notice"]
            .as_str()
            .is_some_and(|n| n.contains("SIMULATOR"))
    );

    // The in-process simulator really answers: readiness probes it.
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn readyz_reports_a_healthy_external_upstream_and_the_database() {
    let app = TestApp::spawn().await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["database"]["ok"], true);
    assert_eq!(body["checks"]["upstream"]["ok"], true);
    assert_eq!(body["checks"]["upstream"]["mode"], "fluence");
    assert_eq!(body["checks"]["upstream"]["simulated"], false);
    assert!(body["checks"]["upstream"]["last_success_at"].is_string());
    let jobs: Vec<&str> = body["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| j["job"].as_str())
        .collect();
    assert_eq!(
        jobs,
        [
            "deployer",
            "inventory",
            "prices",
            "catalog",
            "reaper",
            "webhooks"
        ]
    );
    assert!(
        body["jobs"][0].get("last_detail").is_none(),
        "details are for admins"
    );
}

#[tokio::test]
async fn readyz_is_503_when_the_upstream_refuses_the_key() {
    let app = TestApp::spawn_with_fluence_key("not-the-simulators-key").await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 503);
    let text = response.text().await.unwrap_or_default();
    assert!(!text.contains("not-the-simulators-key"), "{text}");
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["checks"]["upstream"]["ok"], false);
    assert_eq!(body["checks"]["database"]["ok"], true);
}

#[tokio::test]
async fn readyz_is_503_when_the_upstream_is_unreachable() {
    // A port that was free a moment ago and is closed now.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("{e}"));
    let db_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let base_url = format!("http://{closed}");
    let settings = settings(
        &db_dir,
        &[
            ("GATEWAY__UPSTREAM__MODE", "fluence"),
            ("GATEWAY__UPSTREAM__BASE_URL", &base_url),
            ("FLUENCE_API_KEY", SIM_KEY),
        ],
    );
    let app = TestApp::spawn_with(settings, None, db_dir).await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 503);
}

#[tokio::test]
async fn an_unknown_route_is_a_problem_json_404_with_the_request_id() {
    let app = TestApp::spawn().await;
    let response = app
        .http
        .get(app.url("/v1/nothing-here"))
        .header("x-request-id", "req-abc-123")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 404);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    assert_eq!(
        response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("req-abc-123")
    );
    let body: Value = response.json().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(body["status"], 404);
    assert_eq!(body["code"], "not_found");
    assert_eq!(body["request_id"], "req-abc-123");
    for field in ["type", "title", "detail"] {
        assert!(body[field].is_string(), "{field} missing: {body}");
    }
}

#[tokio::test]
async fn a_wrong_method_is_a_problem_json_405_and_every_response_gets_a_request_id() {
    let app = TestApp::spawn().await;
    let response = app
        .http
        .delete(app.url("/healthz"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 405);
    let generated = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert!(generated.as_deref().is_some_and(|id| !id.is_empty()));
    let body: Value = response.json().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(body["code"], "method_not_allowed");
    assert_eq!(body["request_id"].as_str(), generated.as_deref());
}

#[tokio::test]
async fn a_database_made_for_the_simulator_is_refused_for_real_fluence() {
    let kept = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let db_url = format!("sqlite://{}", kept.path().join("gateway.db").display());
    let unused = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let simulated = settings(
        &unused,
        &[
            ("GATEWAY__DATABASE__URL", &db_url),
            ("GATEWAY__SIMULATOR__CLOCK", "manual"),
        ],
    );
    let app = TestApp::spawn_with(simulated, None, unused).await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    let outcome = app.stop().await;
    assert!(outcome.is_ok(), "{outcome:?}");

    let sim = spawn_simulator().await;
    let base_url = sim.base_url();
    let unused = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let real = settings(
        &unused,
        &[
            ("GATEWAY__DATABASE__URL", &db_url),
            ("GATEWAY__UPSTREAM__MODE", "fluence"),
            ("GATEWAY__UPSTREAM__BASE_URL", &base_url),
            ("FLUENCE_API_KEY", SIM_KEY),
        ],
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let outcome = fluence_gateway::run(real, listener, async {}).await;
    let message = outcome.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("upstream mode `simulator`"), "{message}");
}

#[tokio::test]
async fn a_request_over_the_timeout_is_a_408_problem() {
    let app = TestApp::spawn_with_env(&[("GATEWAY__SERVER__REQUEST_TIMEOUT_SECS", "1")]).await;
    let sim = app.sim.as_ref().unwrap_or_else(|| panic!("no simulator"));
    // /readyz probes the upstream; the probe is made slower than the request timeout.
    let armed = reqwest::Client::new()
        .post(format!("{}/_sim/faults", sim.base_url()))
        .json(&serde_json::json!({"endpoint": "GET /marketplace/countries", "fault": "delay", "delay_ms": 2500}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(armed.status().is_success());
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 408);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let body: Value = response.json().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(body["code"], "request_timeout");
}

#[tokio::test]
async fn readiness_probes_a_failing_upstream_once_however_often_it_is_asked() {
    let app = TestApp::spawn_with_fluence_key("refused-key").await;
    for _ in 0..10 {
        assert_eq!(app.get("/readyz").await.status(), 503);
    }
    let sim = app.sim.as_ref().unwrap_or_else(|| panic!("no simulator"));
    let state: Value = reqwest::get(format!("{}/_sim/state", sim.base_url()))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let probes = state["calls"].as_array().map_or(0, |calls| {
        calls
            .iter()
            .filter(|c| c["path"] == "/marketplace/countries")
            .count()
    });
    assert_eq!(probes, 1, "ten /readyz, one upstream call");
}

/// E4: a client trickling its headers is cut off after the header-read timeout, while a normal
/// request on another connection is served meanwhile.
#[tokio::test]
async fn a_connection_that_never_finishes_its_headers_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = TestApp::spawn_with_env(&[("GATEWAY__SERVER__HEADER_READ_TIMEOUT_SECS", "1")]).await;
    let mut slow = tokio::net::TcpStream::connect(app.address)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let opened = std::time::Instant::now();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let healthy = app.get("/healthz").await;
    assert_eq!(healthy.status(), 200, "others are served meanwhile");

    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest)).await;
    let held = opened.elapsed();
    assert!(
        closed.is_ok(),
        "the slow connection is still open after 10 s"
    );
    assert!(
        held >= Duration::from_millis(900) && held < Duration::from_secs(3),
        "closed after {held:?}, expected about the 1 s header timeout"
    );
    let answer = String::from_utf8_lossy(&rest);
    assert!(!answer.contains("200 OK"), "{answer}");
}

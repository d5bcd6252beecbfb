//! Cost-aware scheduling (a deployment waits for a price, goes ahead when one fits, expires at
//! its deadline), the TTL reaper, and the jobs API.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{ADMIN_TOKEN, TestApp, deploy_body};

async fn app() -> TestApp {
    let app = TestApp::spawn_with_env(&[
        ("GATEWAY__JOBS__DEPLOYER_INTERVAL_SECS", "3600"),
        ("GATEWAY__JOBS__DEPLOYER_ON_SUBMIT", "false"),
        ("GATEWAY__JOBS__REAPER_INTERVAL_SECS", "3600"),
        ("GATEWAY__JOBS__PRICE_RECHECK_SECS", "0"),
    ])
    .await;
    app.run_job("deployer").await;
    app
}

/// A request whose price limit is below every offer, with a deadline two hours ahead.
fn patient(name: &str) -> serde_json::Value {
    let mut body = deploy_body(name, 1);
    body["max_price_per_epoch"] = json!("0.01");
    body["start_before"] = json!((chrono::Utc::now() + chrono::TimeDelta::hours(2)).to_rfc3339());
    body
}

#[tokio::test]
async fn a_deployment_waits_for_its_price_and_goes_ahead_when_an_offer_fits() {
    let app = app().await;
    app.create_team("ml", "500").await;
    let member = app.mint_key("ml", "member").await;
    let id = app.deploy(&member, None, patient("cheap")).await.json["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    app.run_job("deployer").await;
    let waiting = app.deployment(&id).await;
    assert_eq!(waiting["status"], "waiting_for_price", "{waiting}");
    assert_eq!(waiting["reason"]["code"], "price_above_limit");
    let budget = app
        .call(Method::GET, "/v1/teams/ml/budget", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(
        budget.json["reserved"], "0",
        "nothing is held while waiting"
    );

    // Still too dear on the next tick.
    app.run_job("deployer").await;
    assert_eq!(app.deployment(&id).await["status"], "waiting_for_price");

    // The market falls below the limit: the next tick deploys, at no more than the limit.
    app.sim_post("/_sim/market", json!({"price_multiplier": "0.001"}))
        .await;
    app.run_job("deployer").await;
    let deployed = app.deployment(&id).await;
    assert_eq!(deployed["status"], "deployed", "{deployed}");
    let ceiling = deployed["price_ceiling"].as_str().unwrap_or_default();
    let ceiling =
        fluence_gateway::domain::money::Usdc::parse(ceiling).unwrap_or_else(|e| panic!("{e}"));
    assert!(ceiling.micros() <= 10_000, "{deployed}");
}

#[tokio::test]
async fn a_waiting_deployment_expires_at_its_deadline() {
    let app = app().await;
    app.create_team("ml", "500").await;
    let member = app.mint_key("ml", "member").await;
    let id = app.deploy(&member, None, patient("late")).await.json["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    app.run_job("deployer").await;
    assert_eq!(app.deployment(&id).await["status"], "waiting_for_price");
    // The deadline passes (moved back in the stored request rather than waited for).
    let store = app.store().await;
    sqlx::query(
        "UPDATE deployments SET spec = json_set(spec, '$.start_before', '2000-01-01T00:00:00Z')",
    )
    .execute(store.pool())
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    app.run_job("deployer").await;
    let expired = app.deployment(&id).await;
    assert_eq!(expired["status"], "expired", "{expired}");
    assert_eq!(expired["reason"]["code"], "start_before_passed");
    let state = app.sim_state().await;
    assert_eq!(state["vms"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn the_reaper_deletes_vms_past_their_ttl_upstream_first_and_audits_it() {
    let app = app().await;
    app.create_team("ml", "500").await;
    let member = app.mint_key("ml", "member").await;
    let mut body = deploy_body("short", 2);
    body["ttl_hours"] = json!(1);
    let id = app.deploy(&member, None, body).await.json["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    app.run_job("deployer").await;
    let deployed = app.deployment(&id).await;
    assert_eq!(deployed["status"], "deployed", "{deployed}");
    assert_eq!(deployed["ttl_hours"], 1);

    // Not yet due: nothing happens.
    let early = app.run_job("reaper").await;
    assert_eq!(early["last_outcome"], "ok");
    let state = app.sim_state().await;
    assert!(
        state["vms"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|vm| vm["deleted_at"].is_null())
    );

    let store = app.store().await;
    sqlx::query("UPDATE vms SET expires_at = '2000-01-01T00:00:00.000000Z'")
        .execute(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let run = app.run_job("reaper").await;
    assert_eq!(run["last_outcome"], "ok", "{run}");
    let state = app.sim_state().await;
    let vms = state["vms"].as_array().cloned().unwrap_or_default();
    assert_eq!(vms.len(), 2);
    assert!(vms.iter().all(|vm| vm["deleted_at"].is_string()), "{vms:?}");
    let deletes = state["calls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["method"] == "DELETE" && c["path"] == "/vms/v3")
        .count();
    assert_eq!(deletes, 1);
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM vms WHERE deleted_at IS NULL")
        .fetch_one(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(live, 0);
    let audit = app
        .call(
            Method::GET,
            "/v1/audit?action=vm.delete&limit=50",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(audit.json["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(audit.json["items"][0]["actor"], "job:reaper");

    // A second run finds nothing more to do.
    app.run_job("reaper").await;
    let again = app.sim_state().await["calls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["method"] == "DELETE")
        .count();
    assert_eq!(again, 1);
}

#[tokio::test]
async fn jobs_report_their_runs_and_unknown_jobs_are_404() {
    let app = app().await;
    let jobs = app
        .call(Method::GET, "/v1/jobs", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(jobs.status, 200);
    let names: Vec<&str> = jobs
        .json
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| j["job"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "deployer",
            "inventory",
            "prices",
            "catalog",
            "reaper",
            "webhooks"
        ]
    );
    let deployer = &jobs.json[0];
    assert!(
        deployer["runs"].as_u64().is_some_and(|r| r >= 1),
        "{deployer}"
    );
    assert_eq!(deployer["last_outcome"], "ok");
    assert!(deployer["last_duration_ms"].is_u64());
    let unknown = app
        .call(Method::POST, "/v1/jobs/nope/run", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(unknown.status, 404);
}

/// A VM deleted behind the gateway's back must not jam the reaper for every other one.
#[tokio::test]
async fn the_reaper_is_not_blocked_by_a_vm_that_is_already_gone() {
    let app = app().await;
    app.create_team("ml", "500").await;
    let member = app.mint_key("ml", "member").await;
    let mut body = deploy_body("short", 2);
    body["ttl_hours"] = json!(1);
    let id = app.deploy(&member, None, body).await.json["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    app.run_job("deployer").await;
    let vms = app.deployment(&id).await["vms"].clone();
    let gone = vms[0].as_str().unwrap_or_default().to_owned();
    let sim = app.sim.as_ref().unwrap_or_else(|| panic!("no simulator"));
    let deleted = app
        .http
        .delete(format!("{}/vms/v3", sim.base_url()))
        .header("x-api-key", crate::helpers::SIM_KEY)
        .json(&json!({"vmIds": [gone]}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(deleted.status().is_success());
    let store = app.store().await;
    sqlx::query("UPDATE vms SET expires_at = '2000-01-01T00:00:00.000000Z'")
        .execute(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let run = app.run_job("reaper").await;
    assert_eq!(run["last_outcome"], "ok", "{run}");
    let state = app.sim_state().await;
    assert!(
        state["vms"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|vm| vm["deleted_at"].is_string()),
        "{state}"
    );
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM vms WHERE deleted_at IS NULL")
        .fetch_one(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(live, 0);
}

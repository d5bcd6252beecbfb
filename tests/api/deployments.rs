//! Deployments end to end against the simulator: the happy path, dry runs, validation (with the
//! H3 image corpus), concurrent admission (C1, with the seeded race), every fault kind on the
//! deploy call (A1-A5, A9), idempotency (A11), cancellation and leftover holds (C5).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, Reply, TestApp, deploy_body};

/// A gateway whose jobs run only when a test asks (`POST /v1/jobs/{job}/run`), beyond the
/// first run at start-up.
async fn manual_app(extra: &[(&str, &str)]) -> TestApp {
    let mut env = vec![
        ("GATEWAY__JOBS__DEPLOYER_INTERVAL_SECS", "3600"),
        ("GATEWAY__JOBS__DEPLOYER_ON_SUBMIT", "false"),
        ("GATEWAY__JOBS__REAPER_INTERVAL_SECS", "3600"),
        ("GATEWAY__JOBS__RECONCILE_GRACE_SECS", "0"),
        ("GATEWAY__UPSTREAM__REQUEST_TIMEOUT_MS", "1500"),
        ("GATEWAY__DATABASE__BUSY_TIMEOUT_MS", "500"),
        ("GATEWAY__RATE_LIMIT__PER_KEY_BURST", "100000"),
        // The corpus tests send a team's requests back to back, faster than a team's default
        // bucket refills; the limits have tests of their own.
        ("GATEWAY__RATE_LIMIT__PER_TEAM_BURST", "100000"),
    ];
    env.extend_from_slice(extra);
    let app = TestApp::spawn_with_env(&env).await;
    // Let the start-up runs finish, so that each later run is the test's own.
    app.run_job("deployer").await;
    app
}

fn id_of(reply: &Reply) -> String {
    assert_eq!(reply.status, 202, "{}", reply.text);
    reply.json["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id: {}", reply.text))
        .to_owned()
}

async fn budget(app: &TestApp, team: &str) -> Value {
    app.call(
        Method::GET,
        &format!("/v1/teams/{team}/budget"),
        Some(ADMIN_TOKEN),
        None,
    )
    .await
    .json
}

/// Deploy calls the simulator received, and the VMs it holds whose name is `name`.
async fn upstream(app: &TestApp, name: &str) -> (usize, usize) {
    let state = app.sim_state().await;
    let posts = state["calls"].as_array().map_or(0, |calls| {
        calls
            .iter()
            .filter(|c| c["method"] == "POST" && c["path"] == "/vms/v3")
            .count()
    });
    let vms = state["vms"].as_array().map_or(0, |vms| {
        vms.iter()
            .filter(|vm| vm["name"] == name && vm["deleted_at"].is_null())
            .count()
    });
    (posts, vms)
}

async fn fault(app: &TestApp, spec: Value) {
    app.sim_post("/_sim/faults", spec).await;
}

#[tokio::test]
async fn a_member_deploys_sees_its_vms_and_the_hold_settles_into_them() {
    let app = manual_app(&[]).await;
    app.create_team("ml", "500").await;
    let member = app.mint_key("ml", "member").await;

    // Fluence lists new VMs only ten minutes later, so the hold is seen covering them.
    fault(
        &app,
        json!({"endpoint": "POST /vms/v3", "fault": "visibility_delay", "seconds": 600, "count": 1}),
    )
    .await;
    let accepted = app.deploy(&member, None, deploy_body("web", 2)).await;
    let id = id_of(&accepted);
    assert_eq!(accepted.json["status"], "queued");
    assert!(id.starts_with("dep_"));
    let upstream_name = accepted.json["upstream_name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(upstream_name.starts_with("web-") && upstream_name.len() == 12);

    let run = app.run_job("deployer").await;
    assert_eq!(run["last_outcome"], "ok", "{run}");
    let deployed = app.deployment(&id).await;
    assert_eq!(deployed["status"], "deployed", "{deployed}");
    assert_eq!(deployed["vms"].as_array().map(Vec::len), Some(2));
    let ceiling = deployed["price_ceiling"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        deployed["estimate"]["max_price_per_epoch"],
        ceiling.as_str()
    );

    // Exactly one deploy call, carrying the estimate's per-VM maximum as the ceiling.
    let state = app.sim_state().await;
    let posts: Vec<&Value> = state["calls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["method"] == "POST" && c["path"] == "/vms/v3")
        .collect();
    assert_eq!(posts.len(), 1);
    let body = &posts[0]["body"];
    assert_eq!(
        body["constraints"]["maxTotalPricePerEpochUsd"],
        ceiling.as_str()
    );
    assert_eq!(body["vmConfiguration"]["name"], upstream_name.as_str());
    assert_eq!(body["instances"], 2);
    assert!(
        body["vmConfiguration"]["osImage"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://")),
        "the slug is sent as its download URL: {body}"
    );
    assert_eq!(upstream(&app, &upstream_name).await, (1, 2));

    // Until the VMs are seen in Fluence's list, the hold covers them.
    let held = budget(&app, "ml").await;
    assert_eq!(held["reserved"], deployed["commitment"], "{held}");
    assert_eq!(held["committed"], "0");

    app.run_job("deployer").await;
    assert!(app.deployment(&id).await["settled_at"].is_null());
    app.sim_post("/_sim/clock", json!({"advance_seconds": 601}))
        .await;
    app.run_job("deployer").await;
    let settled = app.deployment(&id).await;
    assert!(settled["settled_at"].is_string(), "{settled}");
    let after = budget(&app, "ml").await;
    assert_eq!(after["reserved"], "0", "{after}");
    assert_ne!(after["committed"], "0", "{after}");
    assert_ne!(
        after["spent"], "0",
        "the charge at deploy is in the ledger: {after}"
    );

    // The team sees it in its list; the audit trail has every step.
    let list = app
        .call(Method::GET, "/v1/deployments", Some(&member), None)
        .await;
    assert_eq!(list.json["items"][0]["id"], id.as_str());
    let audit = app
        .call(
            Method::GET,
            &format!("/v1/audit?target_type=deployment&target_id={id}&limit=50"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    let actions: Vec<&str> = audit.json["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for action in [
        "deployment.create",
        "deployment.admit",
        "deployment.forward",
        "deployment.deployed",
        "deployment.settled",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
}

#[tokio::test]
async fn a_dry_run_decides_with_every_reason_and_stores_or_sends_nothing_else() {
    let app = manual_app(&[]).await;
    app.create_team("ml", "500").await;
    let viewer = app.mint_key("ml", "viewer").await;
    let admit = app
        .call(
            Method::POST,
            "/v1/deployments?dry_run=true",
            Some(&viewer),
            Some(deploy_body("web", 2)),
        )
        .await;
    assert_eq!(admit.status, 200, "{}", admit.text);
    assert_eq!(admit.json["decision"], "admit");
    assert_eq!(admit.json["reasons"], json!([]));
    assert!(admit.json["commitment"].is_string());
    assert_eq!(
        admit.json["budget_after"]["reserved"],
        admit.json["commitment"]
    );
    assert_eq!(admit.json["quota_after"]["vms"]["used"], 2);

    // A tiny cap and quotas refuse, with every reason at once.
    let tight = app
        .call(
            Method::POST,
            "/v1/teams",
            Some(ADMIN_TOKEN),
            Some(
                json!({"id": "tight", "name": "Tight", "budget": {"cap": "0.01"},
                        "quotas": {"max_vms": 1, "max_vcpus": 2}}),
            ),
        )
        .await;
    assert_eq!(tight.status, 201, "{}", tight.text);
    let refuse = app
        .call(
            Method::POST,
            "/v1/deployments?dry_run=true&team=tight",
            Some(ADMIN_TOKEN),
            Some(deploy_body("web", 2)),
        )
        .await;
    assert_eq!(refuse.status, 200, "{}", refuse.text);
    assert_eq!(refuse.json["decision"], "reject");
    let codes: Vec<String> = refuse.json["reasons"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            format!(
                "{}:{}",
                r["code"].as_str().unwrap_or(""),
                r["quota"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert!(codes.contains(&"budget_exceeded:".to_owned()), "{codes:?}");
    assert!(
        codes.contains(&"quota_exceeded:max_vms".to_owned()),
        "{codes:?}"
    );
    assert!(
        codes.contains(&"quota_exceeded:max_vcpus".to_owned()),
        "{codes:?}"
    );

    // Too expensive, with a deadline still ahead: it would wait.
    let mut cheap = deploy_body("web", 1);
    cheap["max_price_per_epoch"] = json!("0.000001");
    cheap["start_before"] = json!((chrono::Utc::now() + chrono::TimeDelta::hours(2)).to_rfc3339());
    let wait = app
        .call(
            Method::POST,
            "/v1/deployments?dry_run=true",
            Some(&viewer),
            Some(cheap),
        )
        .await;
    assert_eq!(wait.json["decision"], "wait", "{}", wait.text);

    let listed = app
        .call(
            Method::GET,
            "/v1/deployments?team=ml",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(listed.json["items"], json!([]));
    let state = app.sim_state().await;
    let mutating: Vec<&Value> = state["calls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["method"] != "GET" && c["path"] != "/vms/v3/estimate")
        .collect();
    assert!(
        mutating.is_empty(),
        "only estimates were sent: {mutating:?}"
    );
    assert_eq!(budget(&app, "ml").await["reserved"], "0");

    // A viewer may dry-run but not deploy.
    let refused = app.deploy(&viewer, None, deploy_body("web", 1)).await;
    assert_eq!(refused.status, 403, "{}", refused.text);
}

#[tokio::test]
async fn bad_deploy_requests_are_refused_whole_naming_every_field() {
    let app = manual_app(&[]).await;
    app.call(
        Method::POST,
        "/v1/teams",
        Some(ADMIN_TOKEN),
        Some(json!({"id": "ml", "name": "ML", "budget": {"cap": "500"},
                    "quotas": {"allowed_countries": ["DE", "FR"], "max_instances_per_deployment": 3,
                               "allowed_configurations": ["cpu-2-ram-4gb-storage-25gb"]}})),
    )
    .await;
    let member = app.mint_key("ml", "member").await;
    let calls_before = app.sim_state().await["calls"]
        .as_array()
        .map_or(0, Vec::len);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"name": "bad name!"}), "name"),
        (json!({"name": ""}), "name"),
        (json!({"name": "x".repeat(10_000)}), "name"),
        (json!({"instances": 0}), "instances"),
        (json!({"instances": -1}), "instances"),
        (json!({"instances": 4}), "instances"),
        (json!({"instances": 2_147_483_648_i64}), "instances"),
        (json!({"countries": ["US"]}), "countries[0]"),
        (json!({"countries": ["Germany"]}), "countries"),
        (json!({"countries": []}), "countries"),
        (
            json!({"configuration": "cpu-4-ram-8gb-storage-25gb"}),
            "configuration",
        ),
        (json!({"configuration": "large"}), "configuration"),
        (json!({"image": "http://127.0.0.1/x.qcow2"}), "image"),
        (json!({"image": "https://example.com/a.iso"}), "image"),
        (json!({"ssh_keys": []}), "ssh_keys"),
        (
            json!({"ssh_keys": ["ssh-ed25519 AAAA\nssh-rsa AAAA"]}),
            "ssh_keys",
        ),
        (json!({"ssh_keys": ["not a key"]}), "ssh_keys"),
        (json!({"open_ports": [{"port": 10250}]}), "open_ports"),
        (json!({"open_ports": [{"port": 0}]}), "open_ports"),
        (json!({"open_ports": [{"port": 65536}]}), "open_ports"),
        (
            json!({"open_ports": [{"port": 80, "protocol": "icmp"}]}),
            "open_ports",
        ),
        (
            json!({"max_price_per_epoch": "1.0000001"}),
            "max_price_per_epoch",
        ),
        (json!({"max_price_per_epoch": "-1"}), "max_price_per_epoch"),
        (json!({"max_price_per_epoch": "0"}), "max_price_per_epoch"),
        (json!({"ttl_hours": 0}), "ttl_hours"),
        (
            json!({"start_before": "2020-01-01T00:00:00Z", "max_price_per_epoch": "1"}),
            "start_before",
        ),
        (
            json!({"extra_storage": [{"gib": 50, "type": "SSD"}]}),
            "hardware.storage",
        ),
        (
            json!({"extra_storage": [{"gib": 0, "type": "SSD"}], "hardware": {"storage": [{"type": "SSD"}]}}),
            "extra_storage",
        ),
    ];
    for (patch, field) in &cases {
        let mut body = deploy_body("web", 1);
        for (k, v) in patch.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        let reply = app.deploy(&member, None, body).await;
        assert_eq!(reply.status, 422, "{patch}: {}", reply.text);
        let fields: Vec<&str> = reply.json["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["field"].as_str())
            .collect();
        if reply.json["code"] == "validation_failed" {
            assert!(fields.contains(field), "{patch}: {fields:?} lacks {field}");
        } else {
            // Numbers out of the type's range are refused by the decoder, naming the field.
            assert!(reply.text.contains(field), "{patch}: {}", reply.text);
        }
    }
    // Privileged and unknown fields are refused, not ignored.
    for field in ["team_id", "status", "price", "cap", "reserved", "owner"] {
        let mut body = deploy_body("web", 1);
        body[field] = json!("x");
        let reply = app.deploy(&member, None, body).await;
        assert_eq!(reply.status, 422, "{field}: {}", reply.text);
    }
    let listed = app
        .call(Method::GET, "/v1/deployments", Some(&member), None)
        .await;
    assert_eq!(listed.json["items"], json!([]));
    let calls_after = app.sim_state().await["calls"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(
        calls_before, calls_after,
        "no upstream call for invalid input"
    );
}

#[tokio::test]
async fn every_hostile_image_url_is_refused_and_nothing_is_ever_fetched() {
    let app = manual_app(&[]).await;
    app.create_team("ml", "500").await;
    let member = app.mint_key("ml", "member").await;
    // A catch-all listener: any URL pointing here would show up as a connection.
    let catcher = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let port = catcher.local_addr().map(|a| a.port()).unwrap_or_default();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while catcher.accept().await.is_ok() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let mut corpus: Vec<String> = fluence_gateway::domain::image::HOSTILE_IMAGE_CORPUS
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    corpus.extend([
        format!("https://127.0.0.1:{port}/a.qcow2"),
        format!("https://localhost:{port}/a.img"),
        format!("http://127.0.0.1:{port}/a.img"),
        format!("https://[::1]:{port}/a.raw"),
    ]);
    for url in &corpus {
        let mut body = deploy_body("web", 1);
        body["image"] = json!(url);
        let reply = app.deploy(&member, None, body).await;
        assert_eq!(reply.status, 422, "{url:?}: {}", reply.text);
        assert_eq!(reply.json["errors"][0]["field"], "image", "{url:?}");
    }
    assert!(corpus.len() >= 40);
    assert_eq!(connections.load(Ordering::SeqCst), 0);
    let listed = app
        .call(Method::GET, "/v1/deployments", Some(&member), None)
        .await;
    assert_eq!(listed.json["items"], json!([]));

    // A good https image URL is accepted as given.
    let mut body = deploy_body("web", 1);
    body["image"] =
        json!("https://cloud-images.ubuntu.com/noble/current/noble-server-cloudimg-amd64.img");
    let ok = app.deploy(&member, None, body).await;
    assert_eq!(ok.status, 202, "{}", ok.text);
    assert_eq!(connections.load(Ordering::SeqCst), 0);
}

/// One C1 round: `n` deployments of one team released together, a cap that fits exactly `k`.
/// Returns how many were admitted.
async fn c1_round(app: &TestApp, team: &str, n: usize, k: usize) -> usize {
    // Plenty of capacity everywhere: otherwise each round's VMs use up the cheapest offers and
    // the next estimate (hence the commitment) is dearer than the probe's.
    app.sim_post("/_sim/market", json!({"capacity": 100000}))
        .await;
    app.create_team(team, "100000").await;
    let member = app.mint_key(team, "member").await;
    let probe = app
        .call(
            Method::POST,
            &format!("/v1/deployments?dry_run=true&team={team}"),
            Some(ADMIN_TOKEN),
            Some(deploy_body("c", 1)),
        )
        .await;
    let one = probe.json["commitment"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let one = fluence_gateway::domain::money::Usdc::parse(&one).unwrap_or_else(|e| panic!("{e}"));
    let cap = one
        .checked_mul(i64::try_from(k).unwrap_or_default())
        .unwrap_or_else(|| panic!("cap"));
    let patched = app
        .call(
            Method::PATCH,
            &format!("/v1/teams/{team}"),
            Some(ADMIN_TOKEN),
            Some(json!({"budget": {"cap": cap.to_string()}})),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text);

    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::new();
    for i in 0..n {
        let barrier = barrier.clone();
        let http = app.http.clone();
        let url = app.url("/v1/deployments");
        let member = member.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            http.post(url)
                .bearer_auth(member)
                .json(&deploy_body(&format!("c{i}"), 1))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    for task in tasks {
        let status = task.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status.ok(), Some(202));
    }
    // Until every deployment has been decided: on a loaded machine an estimate may time out,
    // and that deployment is simply decided on the next run.
    let mut items = Vec::new();
    for _ in 0..10 {
        app.run_job("deployer").await;
        let listed = app
            .call(
                Method::GET,
                &format!("/v1/deployments?team={team}&limit=500"),
                Some(ADMIN_TOKEN),
                None,
            )
            .await;
        items = listed.json["items"].as_array().cloned().unwrap_or_default();
        let undecided = |d: &Value| matches!(d["status"].as_str(), Some("queued" | "estimating"));
        if !items.iter().any(undecided) {
            break;
        }
    }
    assert_eq!(items.len(), n);
    let admitted = items
        .iter()
        .filter(|d| {
            matches!(
                d["status"].as_str(),
                Some("admitted" | "deploying" | "deployed" | "unknown")
            )
        })
        .count();
    for d in items.iter().filter(|d| d["status"] == "rejected") {
        assert_eq!(d["reason"]["code"], "budget_exceeded", "{d}");
    }
    admitted
}

#[tokio::test]
async fn concurrent_deploys_admit_exactly_what_fits_c1() {
    let app = manual_app(&[("GATEWAY__JOBS__DEPLOYER_CONCURRENCY", "32")]).await;
    let mut round = 0;
    for (n, rounds) in [(2, 5), (8, 5), (32, 2)] {
        for _ in 0..rounds {
            round += 1;
            let k = n / 2;
            let admitted = c1_round(&app, &format!("c1-{round}"), n, k).await;
            assert_eq!(admitted, k, "N = {n}, round {round}");
        }
    }
    // Deployments that reached admission together shared write transactions: the rounds
    // above were decided in batches, each decision against what the ones before it held.
    let metrics = app.get("/metrics").await.text().await.unwrap_or_default();
    let batches = counter(&metrics, "gateway_admission_batches_total");
    let decisions = counter(&metrics, "gateway_admission_decisions_total");
    assert_eq!(
        decisions,
        5 * 2 + 5 * 8 + 2 * 32,
        "every deployment decided once"
    );
    assert!(
        batches < decisions,
        "{batches} batches for {decisions} decisions"
    );
}

/// An unlabelled counter of `GET /metrics`.
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

/// A burst of submissions, each waking the worker while the scheduled run (every second) lists
/// the same deployments: each is advanced by one task only and deployed once.
#[tokio::test]
async fn a_burst_of_woken_deployments_is_deployed_once_each() {
    const BURST: usize = 40;
    let app = TestApp::spawn_with_env(&[
        ("GATEWAY__JOBS__DEPLOYER_INTERVAL_SECS", "1"),
        ("GATEWAY__JOBS__INVENTORY_INTERVAL_SECS", "3600"),
        ("GATEWAY__RATE_LIMIT__PER_KEY_BURST", "100000"),
        ("GATEWAY__RATE_LIMIT__PER_TEAM_BURST", "100000"),
    ])
    .await;
    app.sim_post("/_sim/market", json!({"capacity": 100000}))
        .await;
    app.create_team("ml", "5000").await;
    let member = app.mint_key("ml", "member").await;
    let submitted = futures_util::future::join_all(
        (0..BURST).map(|i| app.deploy(&member, None, deploy_body(&format!("burst{i}"), 1))),
    )
    .await;
    let ids: Vec<String> = submitted.iter().map(id_of).collect();
    let mut deployments = Vec::new();
    // Bounded by events: until every one has left the pipeline.
    for _ in 0..500 {
        deployments = futures_util::future::join_all(ids.iter().map(|id| app.deployment(id))).await;
        if deployments.iter().all(|d| {
            d["status"] != "queued"
                && d["status"] != "estimating"
                && d["status"] != "admitted"
                && d["status"] != "deploying"
        }) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for d in &deployments {
        assert_eq!(d["status"], "deployed", "{d}");
        assert_eq!(d["vms"].as_array().map_or(0, Vec::len), 1, "{d}");
    }
    let state = app.sim_state().await;
    assert_eq!(
        state["vms"].as_array().map_or(0, Vec::len),
        BURST,
        "{state}"
    );
    // Each went through three scripts (its submission, its intent to send, its result), and
    // those that waited for the write lock together shared a commit.
    let metrics = app.get("/metrics").await.text().await.unwrap_or_default();
    let scripts = counter(&metrics, "gateway_write_group_scripts_total");
    let commits = counter(&metrics, "gateway_write_group_commits_total");
    assert_eq!(scripts, 3 * BURST as u64, "{metrics}");
    assert!(commits < scripts, "{commits} commits for {scripts} scripts");
}

/// A run asked for while a woken task is advancing a deployment returns only once that one
/// has moved as far as it can: "the deployer ran" still means everything movable moved.
#[tokio::test]
async fn a_run_waits_for_the_deployments_a_woken_task_is_advancing() {
    let app = TestApp::spawn_with_env(&[
        ("GATEWAY__JOBS__DEPLOYER_INTERVAL_SECS", "3600"),
        ("GATEWAY__JOBS__INVENTORY_INTERVAL_SECS", "3600"),
        ("GATEWAY__RATE_LIMIT__PER_KEY_BURST", "100000"),
        // The woken task stops half a second between admission and forward.
        ("GATEWAY_FAILPOINTS", "admission.after_commit=sleep(500)"),
    ])
    .await;
    app.create_team("ml", "500").await;
    let member = app.mint_key("ml", "member").await;
    let id = id_of(&app.deploy(&member, None, deploy_body("woken", 1)).await);
    for _ in 0..500 {
        if app.deployment(&id).await["status"] == "admitted" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(app.deployment(&id).await["status"], "admitted");
    app.run_job("deployer").await;
    assert_eq!(app.deployment(&id).await["status"], "deployed");
}

/// A submitted deployment wakes the deploy worker: it is estimated, admitted and forwarded
/// with no scheduled run (the interval here is an hour) and no run asked for.
#[tokio::test]
async fn a_submitted_deployment_goes_ahead_without_waiting_for_a_run() {
    let app = TestApp::spawn_with_env(&[
        ("GATEWAY__JOBS__DEPLOYER_INTERVAL_SECS", "3600"),
        ("GATEWAY__JOBS__INVENTORY_INTERVAL_SECS", "3600"),
        // The polling below reads faster than a key's default bucket refills.
        ("GATEWAY__RATE_LIMIT__PER_KEY_BURST", "100000"),
    ])
    .await;
    app.create_team("ml", "500").await;
    let member = app.mint_key("ml", "member").await;
    let id = id_of(&app.deploy(&member, None, deploy_body("woken", 1)).await);
    // Bounded by events, not by a sleep that a slow machine could outlast.
    let mut status = String::new();
    for _ in 0..500 {
        status = app.deployment(&id).await["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if status == "deployed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(status, "deployed");
}

/// The test above must be able to fail: with the admission split into a read, a 50 ms pause
/// and a write (the seeded check-then-act race of the test builds), it overspends.
#[tokio::test]
async fn the_c1_test_catches_a_check_then_act_admission() {
    let app = manual_app(&[
        ("GATEWAY__JOBS__DEPLOYER_CONCURRENCY", "32"),
        ("GATEWAY_FAILPOINTS", "admission.check_then_act=sleep(50)"),
    ])
    .await;
    let mut caught = 0;
    for round in 0..3 {
        let admitted = c1_round(&app, &format!("seeded-{round}"), 8, 4).await;
        if admitted > 4 {
            caught += 1;
        }
    }
    assert_eq!(caught, 3, "the seeded race overspent in every round");
}

async fn deploy_with_fault(extra: &[(&str, &str)], spec: Value) -> (TestApp, String, String) {
    let app = manual_app(extra).await;
    app.create_team("ml", "500").await;
    let member = app.mint_key("ml", "member").await;
    fault(&app, spec).await;
    let reply = app.deploy(&member, None, deploy_body("web", 2)).await;
    let id = id_of(&reply);
    let name = reply.json["upstream_name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (app, id, name)
}

/// A1-A3: Fluence creates the VMs but the answer is lost. The deployment becomes `unknown`,
/// the reconciler adopts the VMs by name, and no second deploy is ever sent.
#[tokio::test]
async fn a_lost_answer_after_commit_is_reconciled_never_resent_a1_a2_a3() {
    let cases = [
        json!({"endpoint": "POST /vms/v3", "fault": "commit_then_error", "status": 500, "count": 1}),
        json!({"endpoint": "POST /vms/v3", "fault": "commit_then_error", "status": 502, "count": 1}),
        json!({"endpoint": "POST /vms/v3", "fault": "commit_then_error", "status": 503, "count": 1}),
        json!({"endpoint": "POST /vms/v3", "fault": "commit_then_reset", "count": 1}),
        json!({"endpoint": "POST /vms/v3", "fault": "commit_then_hang", "count": 1}),
        json!({"endpoint": "POST /vms/v3", "fault": "malformed_body", "count": 1}),
    ];
    for spec in cases {
        let (app, id, name) = deploy_with_fault(&[], spec.clone()).await;
        app.run_job("deployer").await;
        let after = app.deployment(&id).await;
        assert!(
            matches!(after["status"].as_str(), Some("unknown" | "deployed")),
            "{spec}: {after}"
        );
        // The reconciler's run: the VMs are in Fluence's list, so they are adopted.
        app.run_job("deployer").await;
        let settled = app.deployment(&id).await;
        assert_eq!(settled["status"], "deployed", "{spec}: {settled}");
        assert_eq!(settled["vms"].as_array().map(Vec::len), Some(2), "{spec}");
        app.run_job("deployer").await;
        assert_eq!(
            upstream(&app, &name).await,
            (1, 2),
            "{spec}: one POST, one set"
        );
        assert_eq!(budget(&app, "ml").await["reserved"], "0", "{spec}");
    }
}

/// A6: Fluence creates 3 of 5 and fails; the 3 are adopted, no top-up deploy is sent.
#[tokio::test]
async fn a_partial_creation_is_adopted_without_a_top_up_a6() {
    let app = manual_app(&[]).await;
    app.create_team("ml", "500").await;
    let member = app.mint_key("ml", "member").await;
    fault(
        &app,
        json!({"endpoint": "POST /vms/v3", "fault": "commit_partial", "instances_created": 3, "status": 500, "count": 1}),
    )
    .await;
    let reply = app.deploy(&member, None, deploy_body("web", 5)).await;
    let id = id_of(&reply);
    let name = reply.json["upstream_name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for _ in 0..2 {
        app.run_job("deployer").await;
    }
    // The other two may still appear: the hold stays until the grace period has passed.
    let adopted = app.deployment(&id).await;
    assert_eq!(adopted["status"], "deployed", "{adopted}");
    assert!(adopted["settled_at"].is_null(), "{adopted}");
    assert_ne!(budget(&app, "ml").await["reserved"], "0");
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    app.run_job("deployer").await;
    let settled = app.deployment(&id).await;
    assert_eq!(settled["status"], "deployed", "{settled}");
    assert_eq!(settled["reason"]["code"], "partial");
    assert_eq!(settled["vms"].as_array().map(Vec::len), Some(3));
    assert_eq!(upstream(&app, &name).await, (1, 3));
    assert_eq!(budget(&app, "ml").await["reserved"], "0");
}

/// A4: a deploy that provably never took effect (429) is retried a bounded number of times;
/// when every attempt fails nothing exists upstream and the hold is released.
#[tokio::test]
async fn a_deploy_refused_before_it_was_acted_on_is_retried_a_bounded_number_of_times_a4() {
    let (app, id, name) = deploy_with_fault(
        &[],
        json!({"endpoint": "POST /vms/v3", "fault": "error_before_commit", "status": 429, "count": 1}),
    )
    .await;
    app.run_job("deployer").await;
    assert_eq!(app.deployment(&id).await["status"], "deployed");
    assert_eq!(
        upstream(&app, &name).await,
        (2, 2),
        "one retry, one set of VMs"
    );

    let (app, id, name) = deploy_with_fault(
        &[],
        json!({"endpoint": "POST /vms/v3", "fault": "error_before_commit", "status": 429, "count": 10}),
    )
    .await;
    app.run_job("deployer").await;
    let failed = app.deployment(&id).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["reason"]["code"], "upstream_unavailable");
    assert_eq!(
        upstream(&app, &name).await,
        (3, 0),
        "bounded: three attempts"
    );
    assert_eq!(budget(&app, "ml").await["reserved"], "0");
}

/// A5: a definite refusal fails the deployment at once, releases its hold, and says what it
/// means without passing Fluence's body through.
#[tokio::test]
async fn a_definite_refusal_fails_at_once_and_releases_the_hold_a5() {
    for status in [400, 403, 422] {
        let (app, id, name) = deploy_with_fault(
            &[],
            json!({"endpoint": "POST /vms/v3", "fault": "error_before_commit", "status": status, "count": 1}),
        )
        .await;
        app.run_job("deployer").await;
        let failed = app.deployment(&id).await;
        assert_eq!(failed["status"], "failed", "{status}: {failed}");
        assert_eq!(failed["reason"]["upstream_status"], status);
        assert_eq!(
            upstream(&app, &name).await,
            (1, 0),
            "{status}: never retried"
        );
        assert_eq!(budget(&app, "ml").await["reserved"], "0");
        assert!(failed["settled_at"].is_string());
    }
}

/// A9: the price rises between the estimate and the deploy. The deploy carries the estimate's
/// ceiling, so Fluence refuses rather than bill above what was reserved.
#[tokio::test]
async fn a_price_rise_after_the_estimate_is_refused_by_the_ceiling_a9() {
    let (app, id, name) = deploy_with_fault(
        &[],
        json!({"endpoint": "POST /vms/v3", "fault": "delay", "delay_ms": 400, "count": 1}),
    )
    .await;
    let running = {
        let http = app.http.clone();
        let url = app.url("/v1/jobs/deployer/run");
        tokio::spawn(async move { http.post(url).bearer_auth(ADMIN_TOKEN).send().await })
    };
    // Once the deploy call has arrived (and is being held), the market moves.
    let mut arrived = false;
    for _ in 0..200 {
        if upstream(&app, &name).await.0 == 1 {
            arrived = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(arrived, "the deploy call reached the simulator");
    app.sim_post("/_sim/market", json!({"price_multiplier": "3"}))
        .await;
    running
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    let failed = app.deployment(&id).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(upstream(&app, &name).await, (1, 0));
    assert_eq!(budget(&app, "ml").await["reserved"], "0");
}

#[tokio::test]
async fn a_deployment_can_be_cancelled_until_it_is_sent_and_its_hold_goes_with_it() {
    let app = manual_app(&[]).await;
    app.create_team("ml", "500").await;
    let member = app.mint_key("ml", "member").await;
    let queued = id_of(&app.deploy(&member, None, deploy_body("a", 1)).await);
    let cancel = |id: String| {
        let app = &app;
        let member = member.clone();
        async move {
            app.call(
                Method::POST,
                &format!("/v1/deployments/{id}/cancel"),
                Some(&member),
                None,
            )
            .await
        }
    };
    let cancelled = cancel(queued.clone()).await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.text);
    assert_eq!(cancelled.json["status"], "cancelled");
    app.run_job("deployer").await;
    assert_eq!(app.deployment(&queued).await["status"], "cancelled");

    let deployed = id_of(&app.deploy(&member, None, deploy_body("b", 1)).await);
    app.run_job("deployer").await;
    let too_late = cancel(deployed.clone()).await;
    assert_eq!(too_late.status, 409, "{}", too_late.text);

    // Another team's key cannot see or cancel it: the 404 of an unknown id.
    app.create_team("ops", "10").await;
    let foreign = app.mint_key("ops", "member").await;
    let theirs = app
        .call(
            Method::POST,
            &format!("/v1/deployments/{deployed}/cancel"),
            Some(&foreign),
            None,
        )
        .await;
    let unknown = app
        .call(
            Method::POST,
            "/v1/deployments/dep_01JDX3ZP6Q8W9E2R4T5Y7U1IOK/cancel",
            Some(&foreign),
            None,
        )
        .await;
    assert_eq!(theirs.status, 404);
    assert_eq!(theirs.json["detail"], unknown.json["detail"]);
}

/// C5: after a mixed run (success, definite refusal, lost answer, cancel, budget refusal),
/// once everything settles no money is held for any team.
#[tokio::test]
async fn no_hold_is_left_after_a_mixed_run_c5() {
    let app = manual_app(&[]).await;
    app.create_team("ml", "500").await;
    app.create_team("tiny", "0.01").await;
    let member = app.mint_key("ml", "member").await;
    let tiny = app.mint_key("tiny", "member").await;
    for i in 0..3 {
        id_of(
            &app.deploy(&member, None, deploy_body(&format!("ok{i}"), 1))
                .await,
        );
    }
    app.run_job("deployer").await;
    fault(&app, json!({"endpoint": "POST /vms/v3", "fault": "error_before_commit", "status": 422, "count": 1})).await;
    id_of(&app.deploy(&member, None, deploy_body("refused", 1)).await);
    app.run_job("deployer").await;
    fault(&app, json!({"endpoint": "POST /vms/v3", "fault": "commit_then_error", "status": 500, "count": 1})).await;
    id_of(&app.deploy(&member, None, deploy_body("lost", 2)).await);
    app.run_job("deployer").await;
    fault(&app, json!({"endpoint": "POST /vms/v3", "fault": "error_before_commit", "status": 503, "count": 1})).await;
    id_of(&app.deploy(&member, None, deploy_body("never", 1)).await);
    app.run_job("deployer").await;
    let cancelled = id_of(&app.deploy(&member, None, deploy_body("cancelled", 1)).await);
    app.call(
        Method::POST,
        &format!("/v1/deployments/{cancelled}/cancel"),
        Some(&member),
        None,
    )
    .await;
    id_of(&app.deploy(&tiny, None, deploy_body("poor", 1)).await);
    // A lost answer waits out the grace (the upstream timeout) before it is declared failed.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    for _ in 0..3 {
        app.run_job("deployer").await;
    }
    for team in ["ml", "tiny"] {
        assert_eq!(budget(&app, team).await["reserved"], "0", "{team}");
    }
    let listed = app
        .call(
            Method::GET,
            "/v1/deployments?limit=500",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    let statuses: Vec<&str> = listed.json["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["status"].as_str())
        .collect();
    for status in ["deployed", "failed", "cancelled", "rejected"] {
        assert!(statuses.contains(&status), "{status} in {statuses:?}");
    }
    assert!(
        statuses
            .iter()
            .all(|s| matches!(*s, "deployed" | "failed" | "cancelled" | "rejected")),
        "{statuses:?}"
    );
    // Every VM the simulator holds is one the gateway knows, and the other way round.
    let state = app.sim_state().await;
    let upstream_vms = state["vms"].as_array().map_or(0, Vec::len);
    let known: usize = listed.json["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| d["vms"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(upstream_vms, known);
}

/// T1: with the gateway's clock off from Fluence's by -600 s to +600 s (20 s steps) and deploys
/// every minute from 30 minutes before to 30 minutes after the 17:55 UTC charge, the epochs
/// held are never fewer than the charges the simulator's billing calendar makes before the
/// period ends, in either billing mode, with or without a TTL.
#[test]
fn the_hold_is_never_below_the_charges_near_billing_time_t1() {
    use chrono::{DateTime, TimeDelta, Utc};
    use fluence_gateway::deploy::worker::hold_epochs;
    use fluence_gateway::domain::period::BudgetPeriod;
    use fluence_gateway::simulator::{BillingMode, next_billing};

    let boundary: DateTime<Utc> = "2026-11-20T17:55:00Z"
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let guard = TimeDelta::seconds(600);
    let period = BudgetPeriod::monthly(1).unwrap_or_else(|e| panic!("{e}"));
    let mut cases = 0;
    for mode in [BillingMode::Global, BillingMode::PerInstance] {
        for ttl_hours in [None, Some(1), Some(25), Some(48)] {
            for minute in -30..=30 {
                for step in -30..=30 {
                    let provider_now = boundary + TimeDelta::minutes(minute);
                    let skew = TimeDelta::seconds(step * 20);
                    let gateway_now = provider_now + skew;
                    let (_, resets_at) = period.bounds(gateway_now);
                    let held = hold_epochs(gateway_now, resets_at, ttl_hours, guard);
                    // Fluence's charges: one at deploy, then its calendar's, until the period
                    // ends (in Fluence's time) or the VMs are deleted at their TTL.
                    let mut end = resets_at - skew;
                    if let Some(hours) = ttl_hours {
                        end = end.min(provider_now + TimeDelta::hours(i64::from(hours)));
                    }
                    let mut charges = 1;
                    let mut next = next_billing(mode, provider_now, provider_now);
                    while next < end {
                        charges += 1;
                        next = next_billing(mode, next, next);
                    }
                    assert!(
                        held >= charges,
                        "{mode:?} ttl {ttl_hours:?} at {provider_now} skew {skew}: held {held} < charged {charges}"
                    );
                    cases += 1;
                }
            }
        }
    }
    assert!(cases >= 3660 * 2);
}

/// VMs that show up only after their deployment was declared failed are adopted, not lost.
#[tokio::test]
async fn vms_appearing_after_the_grace_period_are_adopted_late() {
    let (app, id, name) = deploy_with_fault(
        &[],
        json!({"endpoint": "POST /vms/v3", "fault": "error_before_commit", "status": 503, "count": 1}),
    )
    .await;
    app.run_job("deployer").await;
    assert_eq!(app.deployment(&id).await["status"], "unknown");
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    app.run_job("deployer").await;
    let failed = app.deployment(&id).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["reason"]["code"], "not_created");
    assert_eq!(budget(&app, "ml").await["reserved"], "0");

    // Fluence acts on it after all: VMs of that name appear.
    let sim = app.sim.as_ref().unwrap_or_else(|| panic!("no simulator"));
    let created = app
        .http
        .post(format!("{}/vms/v3", sim.base_url()))
        .header("x-api-key", crate::helpers::SIM_KEY)
        .json(&json!({"instances": 2,
            "constraints": {"basicConfiguration": "cpu-2-ram-4gb-storage-25gb"},
            "vmConfiguration": {"name": name, "osImage": "https://example.com/a.qcow2",
                                "openPorts": [], "sshKeys": [crate::helpers::SSH_KEY]}}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(created.status().is_success());
    // The deploy worker no longer lists Fluence for a failed deployment; the inventory sync
    // finds the VMs, and the worker then settles them like any deployed ones.
    app.run_job("deployer").await;
    assert_eq!(app.deployment(&id).await["status"], "failed");
    app.run_job("inventory").await;
    app.run_job("deployer").await;
    let adopted = app.deployment(&id).await;
    assert_eq!(adopted["status"], "deployed", "{adopted}");
    assert_eq!(adopted["reason"]["code"], "adopted_late");
    assert_eq!(adopted["vms"].as_array().map(Vec::len), Some(2));
    assert!(adopted["settled_at"].is_string(), "{adopted}");
    let status = budget(&app, "ml").await;
    assert_eq!(status["reserved"], "0");
    assert_ne!(status["committed"], "0", "the adopted VMs count: {status}");
}

//! The inventory side end to end: the sync against the simulator over a simulated month (T3:
//! the ledger equals the simulator's charges exactly), unowned and vanished VMs, provider
//! terminations, the VM endpoints (F3 isolation, H1 ports), spend as JSON and CSV, budget
//! alerts with the signed webhook, and period rollover.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, SIM_KEY, SSH_KEY, TestApp, deploy_body};
use fluence_gateway::domain::money::Usdc;

async fn app(extra: &[(&str, &str)]) -> TestApp {
    let mut env = vec![
        ("GATEWAY__JOBS__DEPLOYER_INTERVAL_SECS", "3600"),
        ("GATEWAY__JOBS__DEPLOYER_ON_SUBMIT", "false"),
        ("GATEWAY__JOBS__INVENTORY_INTERVAL_SECS", "3600"),
        ("GATEWAY__JOBS__REAPER_INTERVAL_SECS", "3600"),
        ("GATEWAY__JOBS__WEBHOOKS_INTERVAL_SECS", "3600"),
        ("GATEWAY__RATE_LIMIT__PER_KEY_BURST", "100000"),
    ];
    env.extend_from_slice(extra);
    let app = TestApp::spawn_with_env(&env).await;
    app.run_job("deployer").await;
    app
}

async fn deployed_vms(app: &TestApp, key: &str, name: &str, instances: u32) -> Vec<String> {
    let reply = app.deploy(key, None, deploy_body(name, instances)).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let id = reply.json["id"].as_str().unwrap_or_default().to_owned();
    app.run_job("deployer").await;
    let deployment = app.deployment(&id).await;
    assert_eq!(deployment["status"], "deployed", "{deployment}");
    deployment["vms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

async fn get_vm(app: &TestApp, key: &str, id: &str) -> crate::helpers::Reply {
    app.call(Method::GET, &format!("/v1/vms/{id}"), Some(key), None)
        .await
}

async fn advance_days(app: &TestApp, days: u64) {
    app.sim_post("/_sim/clock", json!({"advance_seconds": days * 86_400}))
        .await;
}

/// Spend by VM over a window wide enough for the simulator's virtual month.
async fn ledger_by_vm(app: &TestApp, key: &str) -> (BTreeMap<String, i64>, Value) {
    let now = chrono::Utc::now();
    let path = format!(
        "/v1/spend?group_by=vm&from={}&to={}",
        (now - chrono::TimeDelta::days(2)).format("%Y-%m-%dT%H:%M:%SZ"),
        (now + chrono::TimeDelta::days(90)).format("%Y-%m-%dT%H:%M:%SZ"),
    );
    let reply = app.call(Method::GET, &path, Some(key), None).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let mut by_vm = BTreeMap::new();
    for row in reply.json["rows"].as_array().into_iter().flatten() {
        let micros = Usdc::parse(row["spent"].as_str().unwrap_or("0"))
            .unwrap_or_else(|e| panic!("{e}"))
            .micros();
        by_vm.insert(row["vm"].as_str().unwrap_or_default().to_owned(), micros);
    }
    (by_vm, reply.json)
}

fn sim_charges_by_vm(state: &Value) -> BTreeMap<String, i64> {
    let mut by_vm = BTreeMap::new();
    for charge in state["charges"].as_array().into_iter().flatten() {
        let micros = Usdc::parse(charge["amount"].as_str().unwrap_or("0"))
            .unwrap_or_else(|e| panic!("{e}"))
            .micros();
        let id = charge["vm_id"]
            .as_str()
            .unwrap_or_default()
            .to_ascii_lowercase();
        *by_vm.entry(id).or_insert(0) += micros;
    }
    by_vm
}

/// T3: a simulated month with deploys, a deletion, a provider termination and a price change;
/// the gateway's ledger equals the simulator's charges exactly, per VM and per team.
#[tokio::test]
async fn a_month_of_charges_is_in_the_ledger_to_the_micro_usdc_t3() {
    let app = app(&[]).await;
    app.create_team("ml", "100000").await;
    app.create_team("ops", "100000").await;
    let ml = app.mint_key("ml", "member").await;
    let ops = app.mint_key("ops", "member").await;
    let web = deployed_vms(&app, &ml, "web", 2).await;
    let db = deployed_vms(&app, &ops, "db", 1).await;
    app.run_job("inventory").await;
    let mut late = Vec::new();
    for day in 1..=30 {
        advance_days(&app, 1).await;
        app.run_job("inventory").await;
        match day {
            5 => {
                app.sim_post("/_sim/market", json!({"price_multiplier": "2"}))
                    .await;
            }
            10 => {
                let deleted = app
                    .call(
                        Method::DELETE,
                        &format!("/v1/vms/{}", web[0]),
                        Some(&ml),
                        None,
                    )
                    .await;
                assert_eq!(deleted.status, 204, "{}", deleted.text);
            }
            15 => {
                app.sim_post(&format!("/_sim/vms/{}/terminate", db[0]), json!({}))
                    .await;
            }
            20 => late = deployed_vms(&app, &ml, "late", 1).await,
            _ => {}
        }
    }
    app.run_job("inventory").await;

    let state = app.sim_state().await;
    let upstream = sim_charges_by_vm(&state);
    let (ledger, report) = ledger_by_vm(&app, ADMIN_TOKEN).await;
    assert_eq!(ledger, upstream, "per VM, to the micro-USDC");
    assert_eq!(ledger.len(), 4);
    assert!(ledger.contains_key(&late[0]));

    // Per team: the team's own report equals the simulator's charges for its VMs.
    let team_total = |vms: &[String]| {
        vms.iter()
            .map(|v| upstream.get(v).copied().unwrap_or(0))
            .sum::<i64>()
    };
    let (ml_ledger, _) = ledger_by_vm(&app, &ml).await;
    let ml_vms: Vec<String> = web.iter().chain(late.iter()).cloned().collect();
    assert_eq!(ml_ledger.values().sum::<i64>(), team_total(&ml_vms));
    let (ops_ledger, _) = ledger_by_vm(&app, &ops).await;
    assert_eq!(ops_ledger.values().sum::<i64>(), team_total(&db));
    assert_eq!(
        Usdc::parse(report["total"].as_str().unwrap_or("0"))
            .unwrap_or_else(|e| panic!("{e}"))
            .micros(),
        upstream.values().sum::<i64>()
    );

    // The terminated VM was flagged and, by the default policy, deleted so Fluence released
    // its reserve.
    let terminated = get_vm(&app, ADMIN_TOKEN, &db[0]).await;
    assert_eq!(terminated.json["status"], "Deleted", "{}", terminated.text);
    assert!(terminated.json["terminated_at"].is_string());
    let upstream_db = state["vms"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|vm| vm["id"].as_str().map(str::to_ascii_lowercase) == Some(db[0].clone()))
        .cloned()
        .unwrap_or_default();
    assert!(upstream_db["deleted_at"].is_string(), "{upstream_db}");
}

#[tokio::test]
async fn unowned_and_vanished_vms_are_recorded_and_teams_never_see_them_f3() {
    let app = app(&[]).await;
    app.create_team("ml", "1000").await;
    app.create_team("ops", "1000").await;
    let ml = app.mint_key("ml", "member").await;
    let ops = app.mint_key("ops", "viewer").await;
    let mine = deployed_vms(&app, &ml, "mine", 2).await;
    // A VM created with the account's key outside the gateway.
    let sim = app.sim.as_ref().unwrap_or_else(|| panic!("no simulator"));
    let created = app
        .http
        .post(format!("{}/vms/v3", sim.base_url()))
        .header("x-api-key", SIM_KEY)
        .json(&json!({"instances": 1,
            "constraints": {"basicConfiguration": "cpu-2-ram-4gb-storage-25gb"},
            "vmConfiguration": {"name": "by-hand", "osImage": "https://example.com/a.qcow2",
                                "openPorts": [], "sshKeys": [SSH_KEY]}}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(created.status().is_success());
    app.run_job("inventory").await;

    let all = app
        .call(Method::GET, "/v1/vms", Some(ADMIN_TOKEN), None)
        .await;
    let unowned: Vec<&Value> = all.json["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|vm| vm["team"].is_null())
        .collect();
    assert_eq!(unowned.len(), 1, "{}", all.text);
    assert_eq!(unowned[0]["name"], "by-hand");
    assert_eq!(unowned[0]["vcpus"], 2, "resources come from the listing");
    assert_eq!(unowned[0]["ram_gib"], 4);
    let only_unowned = app
        .call(Method::GET, "/v1/vms?unowned=true", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(only_unowned.json["items"].as_array().map(Vec::len), Some(1));
    let unowned_id = unowned[0]["id"].as_str().unwrap_or_default().to_owned();

    // Teams see their own VMs only; a foreign or unowned id is a plain 404.
    let listed = app.call(Method::GET, "/v1/vms", Some(&ml), None).await;
    let ids: Vec<&str> = listed.json["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|vm| vm["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.iter().all(|id| mine.contains(&(*id).to_owned())));
    let theirs = app.call(Method::GET, "/v1/vms", Some(&ops), None).await;
    assert_eq!(theirs.json["items"], json!([]));
    let unknown = app
        .call(
            Method::GET,
            "/v1/vms/0x0000000000000000000000000000000000000001",
            Some(&ops),
            None,
        )
        .await;
    for id in [&mine[0], &unowned_id] {
        let foreign = app
            .call(Method::GET, &format!("/v1/vms/{id}"), Some(&ops), None)
            .await;
        assert_eq!(foreign.status, 404);
        assert_eq!(foreign.json["detail"], unknown.json["detail"]);
    }
    let sneaky = app
        .call(Method::GET, "/v1/vms?unowned=true", Some(&ml), None)
        .await;
    assert_eq!(sneaky.status, 404);
    // Ids compare without case.
    let upper = app
        .call(
            Method::GET,
            &format!(
                "/v1/vms/{}",
                mine[0].to_ascii_uppercase().replacen("0X", "0x", 1)
            ),
            Some(&ml),
            None,
        )
        .await;
    assert_eq!(upper.status, 200, "{}", upper.text);

    // A VM deleted at Fluence behind the gateway's back is marked deleted on the next sync.
    let deleted = app
        .http
        .delete(format!("{}/vms/v3", sim.base_url()))
        .header("x-api-key", SIM_KEY)
        .json(&json!({"vmIds": [mine[1]]}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(deleted.status().is_success());
    // Fluence shows it `Stopped` for a moment, then drops it from the list.
    app.run_job("inventory").await;
    let stopped = get_vm(&app, &ml, &mine[1]).await;
    assert_eq!(stopped.json["status"], "Stopped", "{}", stopped.text);
    app.sim_post("/_sim/clock", json!({"advance_seconds": 600}))
        .await;
    app.run_job("inventory").await;
    let gone = get_vm(&app, &ml, &mine[1]).await;
    assert_eq!(gone.json["status"], "Deleted", "{}", gone.text);
    let live = app.call(Method::GET, "/v1/vms", Some(&ml), None).await;
    assert_eq!(live.json["items"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn port_updates_never_close_ssh_by_accident_h1() {
    let app = app(&[]).await;
    app.create_team("ml", "1000").await;
    let member = app.mint_key("ml", "member").await;
    let viewer = app.mint_key("ml", "viewer").await;
    let vms = deployed_vms(&app, &member, "web", 1).await;
    app.run_job("inventory").await;
    let path = format!("/v1/vms/{}", vms[0]);
    let patch = |body: Value| {
        let app = &app;
        let path = path.clone();
        let member = member.clone();
        async move {
            app.call(Method::PATCH, &path, Some(&member), Some(body))
                .await
        }
    };
    let upstream_ports = || async {
        let state = app.sim_state().await;
        let vm = state["calls"]
            .as_array()
            .into_iter()
            .flatten()
            .rfind(|c| c["method"] == "PATCH" && c["path"] == "/vms/v3")
            .cloned()
            .unwrap_or_default();
        let mut ports: Vec<(u64, String)> = vm["body"]["updates"][0]["openPorts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["port"].as_u64().unwrap_or(0),
                    p["protocol"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        ports.sort();
        ports
    };

    let replaced =
        patch(json!({"open_ports": [{"port": 80}, {"port": 443}], "name": "web-renamed"})).await;
    assert_eq!(replaced.status, 200, "{}", replaced.text);
    assert_eq!(replaced.json["name"], "web-renamed");
    assert_eq!(
        upstream_ports().await,
        vec![(22, "tcp".into()), (80, "tcp".into()), (443, "tcp".into())],
        "22/tcp was added to the full set sent"
    );
    let added = patch(
        json!({"add_ports": [{"port": 53, "protocol": "udp"}], "remove_ports": [{"port": 80}]}),
    )
    .await;
    assert_eq!(added.status, 200, "{}", added.text);
    assert_eq!(
        upstream_ports().await,
        vec![(22, "tcp".into()), (53, "udp".into()), (443, "tcp".into())]
    );
    let refused = patch(json!({"remove_ports": [{"port": 22}]})).await;
    assert_eq!(refused.status, 422, "{}", refused.text);
    let kubelet = patch(json!({"add_ports": [{"port": 10250}]})).await;
    assert_eq!(kubelet.status, 422);
    let both = patch(json!({"open_ports": [], "add_ports": [{"port": 80}]})).await;
    assert_eq!(both.status, 422);
    let by_viewer = app
        .call(
            Method::PATCH,
            &path,
            Some(&viewer),
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(by_viewer.status, 403);

    // Closing SSH on purpose works, and is audited as such.
    let closed = patch(json!({"open_ports": [{"port": 443}], "allow_closing_ssh": true})).await;
    assert_eq!(closed.status, 200, "{}", closed.text);
    assert_eq!(upstream_ports().await, vec![(443, "tcp".into())]);
    let audit = app
        .call(
            Method::GET,
            "/v1/audit?action=vm.update&limit=10",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(audit.json["items"][0]["after"]["closed_ssh"], true);
    // With every port closed, an edit starts from nothing: SSH stays closed when the edit
    // consents, and comes back only when it does not.
    let emptied = patch(json!({"open_ports": [], "allow_closing_ssh": true})).await;
    assert_eq!(emptied.status, 200, "{}", emptied.text);
    assert_eq!(upstream_ports().await, vec![]);
    let edited = patch(json!({"add_ports": [{"port": 443}], "allow_closing_ssh": true})).await;
    assert_eq!(edited.status, 200, "{}", edited.text);
    assert_eq!(upstream_ports().await, vec![(443, "tcp".into())]);
    let unconsented = patch(json!({"add_ports": [{"port": 80}]})).await;
    assert_eq!(unconsented.status, 200, "{}", unconsented.text);
    assert_eq!(
        upstream_ports().await,
        vec![(22, "tcp".into()), (80, "tcp".into()), (443, "tcp".into())]
    );
    // A new name alone leaves the ports as they are.
    let renamed = patch(json!({"name": "web-2"})).await;
    assert_eq!(renamed.status, 200, "{}", renamed.text);
    assert_eq!(renamed.json["open_ports"], unconsented.json["open_ports"]);

    // Deleting: Fluence first, then the inventory; the commitment goes with it.
    let before = app
        .call(Method::GET, "/v1/teams/ml/budget", Some(ADMIN_TOKEN), None)
        .await;
    assert_ne!(before.json["committed"], "0");
    let deleted = app.call(Method::DELETE, &path, Some(&member), None).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    let after = app
        .call(Method::GET, "/v1/teams/ml/budget", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(after.json["committed"], "0", "{}", after.text);
    let again = app.call(Method::DELETE, &path, Some(&member), None).await;
    assert_eq!(again.status, 204, "deleting twice is harmless");
    let state = app.sim_state().await;
    assert!(state["vms"][0]["deleted_at"].is_string());
}

#[tokio::test]
async fn spend_as_json_and_csv_agree_and_teams_see_their_own() {
    let app = app(&[]).await;
    app.create_team("ml", "1000").await;
    app.create_team("ops", "1000").await;
    let ml = app.mint_key("ml", "member").await;
    let ops = app.mint_key("ops", "member").await;
    deployed_vms(&app, &ml, "a", 2).await;
    deployed_vms(&app, &ops, "b", 1).await;
    for _ in 0..3 {
        advance_days(&app, 1).await;
        app.run_job("inventory").await;
    }
    let now = chrono::Utc::now();
    let range = format!(
        "from={}&to={}",
        (now - chrono::TimeDelta::days(1)).format("%Y-%m-%dT%H:%M:%SZ"),
        (now + chrono::TimeDelta::days(10)).format("%Y-%m-%dT%H:%M:%SZ")
    );
    let json_report = app
        .call(
            Method::GET,
            &format!("/v1/spend?group_by=team,vm,day&{range}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(json_report.status, 200, "{}", json_report.text);
    let csv = app
        .http
        .get(app.url(&format!("/v1/spend?group_by=team,vm,day&{range}")))
        .bearer_auth(ADMIN_TOKEN)
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .is_ok_and(|c| c.starts_with("text/csv"))
    );
    let text = csv.text().await.unwrap_or_default();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("team,vm,day,spent"));
    let csv_rows: Vec<Vec<String>> = lines
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect();
    let json_rows: Vec<Vec<String>> = json_report.json["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            ["team", "vm", "day", "spent"]
                .iter()
                .map(|k| r[*k].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .collect();
    assert_eq!(csv_rows, json_rows);
    assert!(
        json_rows.len() >= 6,
        "3 VMs over several days: {json_rows:?}"
    );
    let total: i64 = json_rows
        .iter()
        .map(|r| {
            Usdc::parse(&r[3])
                .map(Usdc::micros)
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .sum();
    assert_eq!(
        Some(total),
        json_report.json["total"]
            .as_str()
            .and_then(|t| Usdc::parse(t).ok())
            .map(Usdc::micros)
    );
    let format_csv = app
        .call(
            Method::GET,
            &format!("/v1/spend?format=csv&{range}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert!(
        format_csv.text.starts_with("team,spent\n"),
        "{}",
        format_csv.text
    );

    // A team sees only itself, and naming another team is a 404.
    let own = app
        .call(
            Method::GET,
            &format!("/v1/spend?group_by=team&{range}"),
            Some(&ml),
            None,
        )
        .await;
    let teams: Vec<&str> = own.json["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["team"].as_str())
        .collect();
    assert_eq!(teams, ["ml"]);
    let other = app
        .call(
            Method::GET,
            &format!("/v1/spend?team=ml&{range}"),
            Some(&ops),
            None,
        )
        .await;
    assert_eq!(other.status, 404);
    for bad in [
        "group_by=region",
        "format=xml",
        "from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
        "from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
    ] {
        let reply = app
            .call(
                Method::GET,
                &format!("/v1/spend?{bad}"),
                Some(ADMIN_TOKEN),
                None,
            )
            .await;
        assert_eq!(reply.status, 422, "{bad}: {}", reply.text);
    }
}

/// A webhook receiver on a loopback port that records what it is sent and answers with the
/// status given for each call in turn (then 200).
async fn receiver(statuses: Vec<u16>) -> (String, Arc<Mutex<Vec<(Value, String, String)>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let url = format!(
        "http://{}/hook",
        listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
    );
    let seen: Arc<Mutex<Vec<(Value, String, String)>>> = Arc::default();
    let record = seen.clone();
    let statuses = Arc::new(Mutex::new(statuses.into_iter()));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let record = record.clone();
            let statuses = statuses.clone();
            async move {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let json: Value = serde_json::from_str(&body).unwrap_or_default();
                record.lock().unwrap_or_else(|p| p.into_inner()).push((
                    json,
                    header("x-gateway-signature"),
                    body.clone(),
                ));
                let next = statuses.lock().unwrap_or_else(|p| p.into_inner()).next();
                axum::http::StatusCode::from_u16(next.unwrap_or(200))
                    .unwrap_or(axum::http::StatusCode::OK)
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, seen)
}

#[tokio::test]
async fn thresholds_fire_once_per_period_and_reach_the_signed_webhook() {
    let (url, seen) = receiver(vec![500]).await;
    let secret = "webhook-signing-secret-for-tests";
    let app = app(&[
        ("GATEWAY__WEBHOOK__URL", url.as_str()),
        ("GATEWAY_WEBHOOK_SECRET", secret),
    ])
    .await;
    // A cap that one small deployment takes past 50%.
    app.create_team("ml", "1000").await;
    let member = app.mint_key("ml", "member").await;
    deployed_vms(&app, &member, "a", 1).await;
    let status = app
        .call(Method::GET, "/v1/teams/ml/budget", Some(ADMIN_TOKEN), None)
        .await;
    let used = ["spent", "committed", "reserved"]
        .iter()
        .map(|k| {
            Usdc::parse(status.json[*k].as_str().unwrap_or("0"))
                .map(Usdc::micros)
                .unwrap_or(0)
        })
        .sum::<i64>();
    // Lower the cap so that exactly the 50% and 80% thresholds are crossed.
    let cap = Usdc::from_micros(used * 100 / 85);
    app.call(
        Method::PATCH,
        "/v1/teams/ml",
        Some(ADMIN_TOKEN),
        Some(json!({"budget": {"cap": cap.to_string()}})),
    )
    .await;
    app.run_job("inventory").await;
    app.run_job("inventory").await;
    let status = app
        .call(Method::GET, "/v1/teams/ml/budget", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(
        status.json["alerts_fired"],
        json!([50, 80]),
        "{}",
        status.text
    );
    let audit = app
        .call(
            Method::GET,
            "/v1/audit?action=budget.threshold_crossed&limit=10",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(
        audit.json["items"].as_array().map(Vec::len),
        Some(2),
        "once each"
    );
    let metrics = app.get("/metrics").await.text().await.unwrap_or_default();
    for threshold in [50, 80] {
        let line =
            format!("gateway_team_budget_alert_fired{{team=\"ml\",threshold=\"{threshold}\"}} 1");
        assert!(metrics.contains(&line), "{line} in metrics");
    }

    // The first delivery gets a 500 and is retried later; the others go through.
    let first = app.run_job("webhooks").await;
    assert_eq!(first["last_outcome"], "error", "{first}");
    let store = app.store().await;
    sqlx::query("UPDATE webhook_outbox SET next_attempt_at = '2000-01-01T00:00:00.000000Z' WHERE delivered_at IS NULL")
        .execute(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let second = app.run_job("webhooks").await;
    assert_eq!(second["last_outcome"], "ok", "{second}");
    let deliveries = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(deliveries.len(), 3, "one failed attempt, then both events");
    let mut thresholds: Vec<u64> = deliveries[1..]
        .iter()
        .filter_map(|(json, _, _)| json["threshold"].as_u64())
        .collect();
    thresholds.sort_unstable();
    assert_eq!(thresholds, [50, 80]);
    for (json, signature, body) in &deliveries {
        assert_eq!(json["event"], "budget.threshold_crossed");
        let timestamp: i64 = signature
            .strip_prefix("t=")
            .and_then(|rest| rest.split(',').next())
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("signature {signature}"));
        assert_eq!(
            signature,
            &fluence_gateway::webhook::signature(secret.as_bytes(), timestamp, body.as_bytes())
        );
    }
    let undelivered: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_outbox WHERE delivered_at IS NULL")
            .fetch_one(store.pool())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(undelivered, 0);
}

/// At a new period `spent` restarts and thresholds fire again; last period's charges and
/// alerts stay in history but no longer count.
#[tokio::test]
async fn a_new_period_restarts_spent_and_rearms_the_thresholds() {
    let app = app(&[]).await;
    app.create_team("ml", "100").await;
    let store = app.store().await;
    let now = chrono::Utc::now();
    let last_month = now - chrono::TimeDelta::days(40);
    let to_db = fluence_gateway::store::time::to_db;
    sqlx::query(
        "INSERT INTO vms (id, fluence_id, team_id, name, status, price_per_epoch_micros, created_at, deleted_at) \
         VALUES ('0xold', '0xold', 'ml', 'old', 'Deleted', 1, ?1, ?1)",
    )
    .bind(to_db(last_month))
    .execute(store.pool())
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    sqlx::query("INSERT INTO ledger (vm_id, team_id, amount_micros, at) VALUES ('0xold', 'ml', 90000000, ?1)")
        .bind(to_db(last_month))
        .execute(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let last_period_start = fluence_gateway::domain::period::BudgetPeriod::monthly(1)
        .unwrap_or_else(|e| panic!("{e}"))
        .bounds(last_month)
        .0;
    sqlx::query("INSERT INTO budget_alerts (team_id, period_start, threshold, fired_at) VALUES ('ml', ?1, 50, ?2)")
        .bind(to_db(last_period_start))
        .bind(to_db(last_month))
        .execute(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status = app
        .call(Method::GET, "/v1/teams/ml/budget", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status.json["spent"], "0", "{}", status.text);
    assert_eq!(status.json["alerts_fired"], json!([]));

    sqlx::query("INSERT INTO ledger (vm_id, team_id, amount_micros, at) VALUES ('0xold', 'ml', 60000000, ?1)")
        .bind(to_db(now - chrono::TimeDelta::seconds(1)))
        .execute(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    app.run_job("inventory").await;
    let status = app
        .call(Method::GET, "/v1/teams/ml/budget", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status.json["spent"], "60");
    assert_eq!(
        status.json["alerts_fired"],
        json!([50]),
        "fired again in the new period"
    );
}

/// H5 by policy: a team that keeps terminated VMs sees them flagged, not deleted.
#[tokio::test]
async fn a_team_may_keep_its_terminated_vms_flagged_instead_of_deleted() {
    let app = app(&[]).await;
    let created = app
        .call(
            Method::POST,
            "/v1/teams",
            Some(ADMIN_TOKEN),
            Some(json!({"id": "ml", "name": "ML", "budget": {"cap": "1000"},
                        "policies": {"finalize_terminated": false}})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.json["policies"]["finalize_terminated"], false);
    let member = app.mint_key("ml", "member").await;
    let vms = deployed_vms(&app, &member, "kept", 1).await;
    app.run_job("inventory").await;
    app.sim_post(&format!("/_sim/vms/{}/terminate", vms[0]), json!({}))
        .await;
    app.run_job("inventory").await;
    let vm = get_vm(&app, &member, &vms[0]).await;
    assert_eq!(vm.json["status"], "Terminated", "{}", vm.text);
    assert!(vm.json["terminated_at"].is_string());
    assert!(vm.json["deleted_at"].is_null());
    let events = app
        .call(
            Method::GET,
            &format!("/v1/vms/{}/events", vms[0]),
            Some(&member),
            None,
        )
        .await;
    let kinds: Vec<&str> = events.json["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"terminated_by_provider"), "{}", events.text);

    // Switching the policy on finalises it at the next sync.
    let patched = app
        .call(
            Method::PATCH,
            "/v1/teams/ml",
            Some(ADMIN_TOKEN),
            Some(json!({"policies": {"finalize_terminated": true}})),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    app.run_job("inventory").await;
    let vm = get_vm(&app, &member, &vms[0]).await;
    assert_eq!(vm.json["status"], "Deleted", "{}", vm.text);
}

/// An edit of the ports before the first sync keeps the ports the VM was deployed with.
#[tokio::test]
async fn a_port_edit_before_the_first_sync_keeps_the_deployed_ports() {
    let app = app(&[]).await;
    app.create_team("ml", "1000").await;
    let member = app.mint_key("ml", "member").await;
    let vms = deployed_vms(&app, &member, "web", 1).await;
    let reply = app
        .call(
            Method::PATCH,
            &format!("/v1/vms/{}", vms[0]),
            Some(&member),
            Some(json!({"add_ports": [{"port": 443}]})),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let state = app.sim_state().await;
    let patch = state["calls"]
        .as_array()
        .into_iter()
        .flatten()
        .rfind(|c| c["method"] == "PATCH")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        port_numbers(&patch["body"]["updates"][0]["openPorts"]),
        [22, 80, 443],
        "80 came with the deployment"
    );
}

/// The port numbers of a list of `{port, protocol}`, sorted.
fn port_numbers(ports: &Value) -> Vec<u64> {
    let mut numbers: Vec<u64> = ports
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["port"].as_u64())
        .collect();
    numbers.sort_unstable();
    numbers
}

/// RELIABILITY H1: a sync whose listing was fetched before a port update lands after it; the
/// ports the update set stay, and the next listing (which shows them) agrees.
#[tokio::test]
async fn a_listing_older_than_a_port_update_does_not_restore_the_old_ports() {
    let app = app(&[("GATEWAY_FAILPOINTS", "inventory.after_list=sleep(1000)")]).await;
    app.create_team("ml", "1000").await;
    let member = app.mint_key("ml", "member").await;
    let vms = deployed_vms(&app, &member, "web", 1).await;
    app.run_job("inventory").await;
    let finished_listings = || async {
        app.sim_state().await["calls"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["method"] == "GET" && c["path"] == "/vms/v3" && !c["status"].is_null())
            .count()
    };
    let before = finished_listings().await;
    let update = async {
        // The sync has its listing and waits at the failpoint before writing it.
        while finished_listings().await == before {
            tokio::task::yield_now().await;
        }
        app.call(
            Method::PATCH,
            &format!("/v1/vms/{}", vms[0]),
            Some(&member),
            Some(json!({"add_ports": [{"port": 443}]})),
        )
        .await
    };
    let (_, patched) = tokio::join!(app.run_job("inventory"), update);
    assert_eq!(patched.status, 200, "{}", patched.text);
    let ports = |vm: &crate::helpers::Reply| port_numbers(&vm.json["open_ports"]);
    let vm = get_vm(&app, &member, &vms[0]).await;
    assert_eq!(ports(&vm), [22, 80, 443], "{}", vm.text);
    app.run_job("inventory").await;
    let vm = get_vm(&app, &member, &vms[0]).await;
    assert_eq!(ports(&vm), [22, 80, 443], "{}", vm.text);
}

/// The names of a VM listing's items, in order.
fn listed_names(reply: &crate::helpers::Reply) -> Vec<String> {
    reply.json["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|vm| vm["name"].as_str().map(str::to_owned))
        .collect()
}

/// `GET /v1/vms` answers a repeated request from a kept page while the inventory is unchanged:
/// every write to the VMs, through the API, by the sync, or by another connection to the
/// database, shows in the next listing, and a kept page is never handed to another caller.
#[tokio::test]
async fn a_kept_vm_page_follows_every_write_to_the_inventory() {
    let app = app(&[]).await;
    app.create_team("ml", "1000").await;
    app.create_team("ops", "1000").await;
    let ml = app.mint_key("ml", "member").await;
    let ops = app.mint_key("ops", "member").await;
    let vms = deployed_vms(&app, &ml, "web", 3).await;
    let list = |key: &str, path: &str| {
        let (key, path) = (key.to_owned(), path.to_owned());
        let app = &app;
        async move { app.call(Method::GET, &path, Some(&key), None).await }
    };
    let first = list(&ml, "/v1/vms?limit=2").await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(list(&ml, "/v1/vms?limit=2").await.text, first.text);
    assert_eq!(
        listed_names(&list(&ops, "/v1/vms?limit=2").await),
        Vec::<String>::new()
    );
    let cursor = first.json["next_cursor"].as_str().unwrap_or_default();
    let rest = list(&ml, &format!("/v1/vms?limit=2&cursor={cursor}")).await;
    assert_eq!(listed_names(&rest).len(), 1, "{}", rest.text);

    // Through the API.
    let first_id = first.json["items"][0]["id"].as_str().unwrap_or_default();
    let renamed = app
        .call(
            Method::PATCH,
            &format!("/v1/vms/{first_id}"),
            Some(&ml),
            Some(json!({"name": "renamed"})),
        )
        .await;
    assert_eq!(renamed.status, 200, "{}", renamed.text);
    assert_eq!(
        listed_names(&list(&ml, "/v1/vms?limit=2").await)[0],
        "renamed"
    );

    // By another connection to the database, as another process would.
    let store = app.store().await;
    sqlx::query("UPDATE vms SET name = 'from-elsewhere' WHERE id = ?1")
        .bind(first_id)
        .execute(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        listed_names(&list(&ml, "/v1/vms?limit=2").await)[0],
        "from-elsewhere"
    );

    // By the sync: a VM deleted at Fluence leaves the listing once Fluence drops it.
    assert_eq!(listed_names(&list(&ml, "/v1/vms").await).len(), 3);
    let sim = app.sim.as_ref().unwrap_or_else(|| panic!("no simulator"));
    let deleted = app
        .http
        .delete(format!("{}/vms/v3", sim.base_url()))
        .header("x-api-key", SIM_KEY)
        .json(&json!({"vmIds": [vms[2]]}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(deleted.status().is_success());
    app.run_job("inventory").await;
    app.sim_post("/_sim/clock", json!({"advance_seconds": 600}))
        .await;
    app.run_job("inventory").await;
    let all = list(&ml, "/v1/vms").await;
    assert_eq!(listed_names(&all).len(), 2, "{}", all.text);
    let with_deleted = list(&ml, "/v1/vms?include_deleted=true").await;
    assert_eq!(
        listed_names(&with_deleted).len(),
        3,
        "{}",
        with_deleted.text
    );
}

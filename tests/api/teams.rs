//! Teams, keys, budget status and the audit trail, through the HTTP API.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, TestApp};

const ML: &str = r#"{"id":"ml","name":"ML Platform","budget":{"period":"month","cap":"500","alert_thresholds":[50,80,100]},
"quotas":{"max_vms":20,"max_vcpus":64,"max_ram_gib":128,"max_storage_gib":2000,
"max_instances_per_deployment":10,"max_price_per_epoch":"5","allowed_countries":["DE","FR"],
"allowed_configurations":null}}"#;

fn ml() -> Value {
    serde_json::from_str(ML).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn an_admin_creates_two_teams_mints_keys_and_reads_budget_and_audit() {
    let app = TestApp::spawn().await;
    let created = app
        .call(Method::POST, "/v1/teams", Some(ADMIN_TOKEN), Some(ml()))
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.json["id"], "ml");
    assert_eq!(created.json["budget"]["cap"], "500");
    assert_eq!(
        created.json["budget"]["alert_thresholds"],
        json!([50, 80, 100])
    );
    assert_eq!(created.json["quotas"]["max_price_per_epoch"], "5");
    assert_eq!(
        created.json["quotas"]["allowed_configurations"],
        Value::Null
    );
    app.create_team("ops", "100.25").await;

    let member = app.mint_key_reply("ml", "member").await;
    let key = member.json["key"].as_str().unwrap_or_default().to_owned();
    assert!(key.starts_with(member.json["prefix"].as_str().unwrap_or("?")));
    assert_eq!(member.json["role"], "member");
    assert_eq!(member.json["team"], "ml");
    let viewer = app.mint_key("ml", "viewer").await;

    for team_key in [&key, &viewer] {
        let budget = app
            .call(Method::GET, "/v1/teams/ml/budget", Some(team_key), None)
            .await;
        assert_eq!(budget.status, 200, "{}", budget.text);
        assert_eq!(budget.json["team"], "ml");
        assert_eq!(budget.json["cap"], "500");
        assert_eq!(budget.json["spent"], "0");
        assert_eq!(budget.json["available"], "500");
    }

    let listed = app
        .call(Method::GET, "/v1/teams", Some(ADMIN_TOKEN), None)
        .await;
    let ids: Vec<&str> = listed.json["items"]
        .as_array()
        .map(|items| items.iter().filter_map(|t| t["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, ["ml", "ops"]);
    let own = app.call(Method::GET, "/v1/teams", Some(&key), None).await;
    assert_eq!(
        own.json["items"].as_array().map(Vec::len),
        Some(1),
        "a team key sees its own team only"
    );

    let audit = app
        .call(Method::GET, "/v1/audit", Some(ADMIN_TOKEN), None)
        .await;
    let actions: Vec<&str> = audit.json["items"]
        .as_array()
        .map(|items| items.iter().filter_map(|e| e["action"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        actions,
        ["key.create", "key.create", "team.create", "team.create"]
    );
    let first = &audit.json["items"][3];
    assert_eq!(first["actor"], "bootstrap-admin");
    assert_eq!(first["target_id"], "ml");
    assert_eq!(first["after"]["budget"]["cap"], "500");
    assert!(
        !audit.text.contains(&key),
        "the audit trail never holds a key"
    );
}

#[tokio::test]
async fn the_key_secret_is_shown_once_and_lists_show_only_the_prefix() {
    let app = TestApp::spawn().await;
    app.create_team("ml", "10").await;
    let key = app.mint_key("ml", "member").await;
    let listed = app
        .call(Method::GET, "/v1/teams/ml/keys", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(listed.status, 200);
    assert!(!listed.text.contains(&key));
    assert_eq!(listed.json["items"][0]["status"], "active");
    assert!(listed.json["items"][0].get("key").is_none());
    assert!(key.len() >= 60, "a key carries at least 128 random bits");
}

/// The key cache: a key checked once is then checked from memory (the gauge counts it), a
/// team's deletion forgets it at once, and with the cache off a revocation written to the
/// database by another process is seen on the very next request.
#[tokio::test]
async fn checked_keys_are_cached_and_forgotten_when_their_team_is_deleted() {
    async fn cached_keys(app: &TestApp) -> u64 {
        let metrics = app.get("/metrics").await.text().await.unwrap_or_default();
        metrics
            .lines()
            .find_map(|line| line.strip_prefix("gateway_key_cache_entries "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no key cache gauge in {metrics}"))
    }
    let app = TestApp::spawn().await;
    app.create_team("ml", "10").await;
    let key = app.mint_key("ml", "viewer").await;
    assert_eq!(cached_keys(&app).await, 0);
    for _ in 0..2 {
        let read = app
            .call(Method::GET, "/v1/teams/ml", Some(&key), None)
            .await;
        assert_eq!(read.status, 200, "{}", read.text);
    }
    assert_eq!(cached_keys(&app).await, 1);
    let deleted = app
        .call(Method::DELETE, "/v1/teams/ml", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    assert_eq!(cached_keys(&app).await, 0);
    let after = app
        .call(Method::GET, "/v1/teams/ml", Some(&key), None)
        .await;
    assert_eq!(after.status, 401, "{}", after.text);

    let uncached = TestApp::spawn_with_env(&[("GATEWAY__AUTH__KEY_CACHE_SECS", "0")]).await;
    uncached.create_team("ml", "10").await;
    let key = uncached.mint_key("ml", "viewer").await;
    let read = uncached
        .call(Method::GET, "/v1/teams/ml", Some(&key), None)
        .await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(cached_keys(&uncached).await, 0);
    let store = uncached.store().await;
    let mut tx = store.begin_write().await.unwrap_or_else(|e| panic!("{e}"));
    sqlx::query(
        "UPDATE api_keys SET revoked_at = '2026-01-01T00:00:00.000000Z' WHERE team_id = 'ml'",
    )
    .execute(&mut *tx)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    let after = uncached
        .call(Method::GET, "/v1/teams/ml", Some(&key), None)
        .await;
    assert_eq!(after.status, 401, "{}", after.text);
}

/// `GET /v1/teams/{team}` is answered from memory between changes: a change through the
/// gateway shows on the next read, a deleted team is a 404 at once, another team's key never
/// gets the kept answer, and with `auth.key_cache_secs` at 0 a change written by another
/// process shows on the next read too.
#[tokio::test]
async fn a_kept_team_view_follows_every_change() {
    let app = TestApp::spawn().await;
    app.create_team("ml", "10").await;
    app.create_team("ops", "10").await;
    let ml = app.mint_key("ml", "viewer").await;
    let ops = app.mint_key("ops", "viewer").await;
    let read = |key: String| {
        let app = &app;
        async move {
            app.call(Method::GET, "/v1/teams/ml", Some(&key), None)
                .await
        }
    };
    let first = read(ml.clone()).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(read(ml.clone()).await.text, first.text);
    assert_eq!(read(ops.clone()).await.status, 404);
    let patched = app
        .call(
            Method::PATCH,
            "/v1/teams/ml",
            Some(ADMIN_TOKEN),
            Some(json!({"name": "Renamed", "budget": {"cap": "20"}})),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    let after = read(ml.clone()).await;
    assert_eq!(after.json["name"], "Renamed", "{}", after.text);
    assert_eq!(after.json["budget"]["cap"], "20", "{}", after.text);
    let deleted = app
        .call(Method::DELETE, "/v1/teams/ml", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    let gone = app
        .call(Method::GET, "/v1/teams/ml", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(gone.status, 404, "{}", gone.text);

    let uncached = TestApp::spawn_with_env(&[("GATEWAY__AUTH__KEY_CACHE_SECS", "0")]).await;
    uncached.create_team("ml", "10").await;
    let before = uncached
        .call(Method::GET, "/v1/teams/ml", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(before.json["name"], "Team ml", "{}", before.text);
    let store = uncached.store().await;
    let mut tx = store.begin_write().await.unwrap_or_else(|e| panic!("{e}"));
    sqlx::query("UPDATE teams SET name = 'Elsewhere' WHERE id = 'ml'")
        .execute(&mut *tx)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    let after = uncached
        .call(Method::GET, "/v1/teams/ml", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(after.json["name"], "Elsewhere", "{}", after.text);
}

#[tokio::test]
async fn revocation_and_expiry_take_effect_on_the_next_request() {
    let app = TestApp::spawn().await;
    app.create_team("ml", "10").await;
    let reply = app.mint_key_reply("ml", "member").await;
    let key = reply.json["key"].as_str().unwrap_or_default().to_owned();
    let key_id = reply.json["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        app.call(Method::GET, "/v1/teams/ml", Some(&key), None)
            .await
            .status,
        200
    );

    let revoked = app
        .call(
            Method::DELETE,
            &format!("/v1/teams/ml/keys/{key_id}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(revoked.status, 204);
    let after = app
        .call(Method::GET, "/v1/teams/ml", Some(&key), None)
        .await;
    assert_eq!(after.status, 401);
    assert_eq!(after.header("www-authenticate"), Some("Bearer"));
    let listed = app
        .call(Method::GET, "/v1/teams/ml/keys", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(listed.json["items"][0]["status"], "revoked");

    let expired_key = app
        .insert_expired_key(fluence_gateway::auth::Role::Member, Some("ml"))
        .await;
    let expired = app
        .call(Method::GET, "/v1/teams/ml", Some(&expired_key), None)
        .await;
    assert_eq!(expired.status, 401);
    assert_eq!(expired.json["code"], "unauthorized");
}

#[tokio::test]
async fn every_bad_field_of_a_team_is_named_at_once() {
    let app = TestApp::spawn().await;
    let reply = app
        .call(
            Method::POST,
            "/v1/teams",
            Some(ADMIN_TOKEN),
            Some(json!({
                "id": "Not A Slug",
                "name": "",
                "budget": {"period": "week", "cap": "1.0000001", "alert_thresholds": [101]},
                "quotas": {"max_vms": -1}
            })),
        )
        .await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    assert_eq!(reply.json["code"], "validation_failed");
    let fields: Vec<&str> = reply.json["errors"]
        .as_array()
        .map(|e| e.iter().filter_map(|f| f["field"].as_str()).collect())
        .unwrap_or_default();
    for field in [
        "id",
        "name",
        "budget.period",
        "budget.cap",
        "budget.alert_thresholds",
        "quotas.max_vms",
    ] {
        assert!(fields.contains(&field), "{field} missing in {fields:?}");
    }
    let none = app
        .call(Method::GET, "/v1/teams", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(none.json["items"], json!([]), "nothing was stored");
}

#[tokio::test]
async fn a_team_id_is_never_reused_and_a_duplicate_is_a_conflict() {
    let app = TestApp::spawn().await;
    app.create_team("ml", "10").await;
    let again = app
        .call(
            Method::POST,
            "/v1/teams",
            Some(ADMIN_TOKEN),
            Some(json!({"id": "ml", "name": "x", "budget": {"cap": "1"}})),
        )
        .await;
    assert_eq!(again.status, 409);
    assert_eq!(again.json["code"], "conflict");
    let deleted = app
        .call(Method::DELETE, "/v1/teams/ml", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(deleted.status, 204);
    let gone = app
        .call(Method::GET, "/v1/teams/ml", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(gone.status, 404);
    let reused = app
        .call(
            Method::POST,
            "/v1/teams",
            Some(ADMIN_TOKEN),
            Some(json!({"id": "ml", "name": "x", "budget": {"cap": "1"}})),
        )
        .await;
    assert_eq!(reused.status, 409);
}

#[tokio::test]
async fn patch_changes_only_what_it_names_and_is_audited_with_before_and_after() {
    let app = TestApp::spawn().await;
    app.call(Method::POST, "/v1/teams", Some(ADMIN_TOKEN), Some(ml()))
        .await;
    let patched = app
        .call(
            Method::PATCH,
            "/v1/teams/ml",
            Some(ADMIN_TOKEN),
            Some(json!({"budget": {"cap": "750.5"}, "quotas": {"max_vms": 5, "allowed_countries": null}})),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    assert_eq!(patched.json["budget"]["cap"], "750.5");
    assert_eq!(
        patched.json["budget"]["alert_thresholds"],
        json!([50, 80, 100])
    );
    assert_eq!(patched.json["quotas"]["max_vms"], 5);
    assert_eq!(
        patched.json["quotas"]["max_vcpus"], 64,
        "untouched quotas stay"
    );
    assert_eq!(patched.json["quotas"]["allowed_countries"], Value::Null);
    assert_eq!(patched.json["name"], "ML Platform");

    let audit = app
        .call(
            Method::GET,
            "/v1/audit?action=team.update&team=ml",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    let entry = &audit.json["items"][0];
    assert_eq!(entry["before"]["budget"]["cap"], "500");
    assert_eq!(entry["after"]["budget"]["cap"], "750.5");
    assert_eq!(entry["before"]["quotas"]["max_vms"], 20);
    assert_eq!(entry["after"]["quotas"]["max_vms"], 5);
    assert!(entry["request_id"].is_string());

    let unknown_quota = app
        .call(
            Method::PATCH,
            "/v1/teams/ml",
            Some(ADMIN_TOKEN),
            Some(json!({"quotas": {"max_gpus": 1}})),
        )
        .await;
    assert_eq!(unknown_quota.status, 422);
    assert_eq!(unknown_quota.json["errors"][0]["field"], "quotas.max_gpus");
}

#[tokio::test]
async fn a_team_with_live_vms_or_deployments_in_flight_cannot_be_deleted() {
    let app = TestApp::spawn().await;
    app.create_team("ml", "100").await;
    let store = app.store().await;
    sqlx::query(
        "INSERT INTO holds (id, team_id, amount_micros, created_at) VALUES ('dep_1', 'ml', 5000000, '2026-01-01T00:00:00.000000Z')",
    )
    .execute(store.pool())
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let refused = app
        .call(Method::DELETE, "/v1/teams/ml", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(refused.status, 409, "{}", refused.text);
    assert_eq!(refused.json["code"], "conflict");

    sqlx::query("UPDATE holds SET released_at = '2026-01-01T00:00:01.000000Z'")
        .execute(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let deleted = app
        .call(Method::DELETE, "/v1/teams/ml", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(deleted.status, 204);
}

#[tokio::test]
async fn budget_status_adds_up_the_ledger_live_vms_and_holds() {
    let app = TestApp::spawn().await;
    app.create_team("ml", "500").await;
    let now = chrono::Utc::now();
    let at = |t: chrono::DateTime<chrono::Utc>| fluence_gateway::store::time::to_db(t);
    let store = app.store().await;
    // One live VM at 0.3125 per epoch billed next in 1 hour; one deleted VM; 2 charges this
    // period and one from long ago; one open hold and one released.
    let statements = [
        format!(
            "INSERT INTO vms (id, fluence_id, team_id, name, status, price_per_epoch_micros, created_at, next_billing_at) \
             VALUES ('0xa', '0xA', 'ml', 'web', 'Active', 312500, '{}', '{}')",
            at(now),
            at(now + chrono::TimeDelta::hours(1))
        ),
        format!(
            "INSERT INTO vms (id, fluence_id, team_id, name, status, price_per_epoch_micros, created_at, deleted_at) \
             VALUES ('0xb', '0xB', 'ml', 'old', 'Deleted', 1000000, '{}', '{}')",
            at(now),
            at(now)
        ),
        format!(
            "INSERT INTO ledger (vm_id, team_id, amount_micros, at) VALUES ('0xa', 'ml', 312500, '{}')",
            at(now)
        ),
        format!(
            "INSERT INTO ledger (vm_id, team_id, amount_micros, at) VALUES ('0xb', 'ml', 1000000, '{}')",
            at(now)
        ),
        "INSERT INTO ledger (vm_id, team_id, amount_micros, at) VALUES ('0xb', 'ml', 7000000, '2020-01-01T00:00:00.000000Z')".to_owned(),
        format!(
            "INSERT INTO holds (id, team_id, amount_micros, created_at) VALUES ('dep_a', 'ml', 2500000, '{}')",
            at(now)
        ),
        format!(
            "INSERT INTO holds (id, team_id, amount_micros, created_at, released_at) VALUES ('dep_b', 'ml', 9000000, '{}', '{}')",
            at(now),
            at(now)
        ),
    ];
    for statement in &statements {
        sqlx::query(statement)
            .execute(store.pool())
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }

    let status = app
        .call(Method::GET, "/v1/teams/ml/budget", Some(ADMIN_TOKEN), None)
        .await
        .json;
    let resets_at =
        chrono::DateTime::parse_from_rfc3339(status["resets_at"].as_str().unwrap_or(""))
            .unwrap_or_else(|e| panic!("{e}"))
            .with_timezone(&chrono::Utc);
    let period_start =
        chrono::DateTime::parse_from_rfc3339(status["period_start"].as_str().unwrap_or(""))
            .unwrap_or_else(|e| panic!("{e}"))
            .with_timezone(&chrono::Utc);
    assert!(period_start <= now && now < resets_at, "{status}");
    // Billing instants now+1h, now+25h, ... strictly before the reset.
    let mut instants = 0i64;
    let mut instant = now + chrono::TimeDelta::hours(1);
    while instant < resets_at {
        instants += 1;
        instant += chrono::TimeDelta::hours(24);
    }
    let committed = 312_500 * instants;
    let micros = |field: &str| {
        fluence_gateway::domain::money::Usdc::parse_signed(status[field].as_str().unwrap_or("x"))
            .map(|u| u.micros())
            .unwrap_or_else(|e| panic!("{field}: {e} in {status}"))
    };
    assert_eq!(micros("spent"), 1_312_500);
    assert_eq!(micros("reserved"), 2_500_000);
    assert_eq!(micros("committed"), committed);
    assert_eq!(
        micros("available"),
        500_000_000 - 1_312_500 - committed - 2_500_000
    );
    assert_eq!(status["period"], "month");
    assert_eq!(status["alerts_fired"], json!([]));
}

#[tokio::test]
async fn the_audit_trail_filters_and_pages() {
    let app = TestApp::spawn().await;
    for id in ["aa", "bb", "cc"] {
        app.create_team(id, "1").await;
    }
    let first = app
        .call(Method::GET, "/v1/audit?limit=2", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(first.json["items"].as_array().map(Vec::len), Some(2));
    let cursor = first.json["next_cursor"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!cursor.is_empty());
    let second = app
        .call(
            Method::GET,
            &format!("/v1/audit?limit=2&cursor={cursor}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(second.json["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(second.json["items"][0]["target_id"], "aa");
    assert_eq!(second.json["next_cursor"], Value::Null);

    let only_bb = app
        .call(Method::GET, "/v1/audit?team=bb", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(only_bb.json["items"].as_array().map(Vec::len), Some(1));
    let bad = app
        .call(Method::GET, "/v1/audit?limit=0", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(bad.status, 422);
    assert_eq!(bad.json["errors"][0]["field"], "limit");
    let bad_time = app
        .call(
            Method::GET,
            "/v1/audit?from=yesterday",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(bad_time.status, 422);
    assert_eq!(bad_time.json["errors"][0]["field"], "from");
}

#[tokio::test]
async fn openapi_and_docs_describe_the_routes() {
    let app = TestApp::spawn().await;
    let document = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(document.status, 200);
    for path in [
        "/v1/teams",
        "/v1/teams/{team}",
        "/v1/teams/{team}/keys",
        "/v1/teams/{team}/budget",
        "/v1/audit",
    ] {
        assert!(document.json["paths"][path].is_object(), "{path} missing");
    }
    assert!(document.json["components"]["securitySchemes"]["bearer"].is_object());
    assert!(document.json["components"]["schemas"]["Problem"].is_object());
    let refusal = &document.json["paths"]["/v1/teams"]["post"]["responses"]["401"];
    assert!(
        refusal["content"]["application/problem+json"].is_object(),
        "errors are documented as problem+json: {refusal}"
    );
    let docs = app.get("/docs").await;
    assert_eq!(docs.status(), 200);
    let html = docs.text().await.unwrap_or_default();
    assert!(html.contains("/openapi.json"));
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_with_retry_after() {
    let app = TestApp::spawn_with_env(&[
        ("GATEWAY__RATE_LIMIT__PER_KEY_PER_SECOND", "1"),
        ("GATEWAY__RATE_LIMIT__PER_KEY_BURST", "3"),
    ])
    .await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let reply = app
            .call(Method::GET, "/v1/teams", Some(ADMIN_TOKEN), None)
            .await;
        if reply.status == 429 {
            assert_eq!(reply.json["code"], "rate_limited");
            let retry = reply
                .header("retry-after")
                .and_then(|v| v.parse::<u64>().ok());
            assert!(retry.is_some_and(|s| s >= 1), "{:?}", reply.headers);
        }
        statuses.push(reply.status);
    }
    assert_eq!(&statuses[..3], &[200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].contains(&429), "{statuses:?}");
}

#[tokio::test]
async fn a_teams_keys_share_one_bucket_and_other_teams_keep_theirs_g1() {
    let app = TestApp::spawn_with_env(&[
        ("GATEWAY__RATE_LIMIT__PER_TEAM_PER_SECOND", "1"),
        ("GATEWAY__RATE_LIMIT__PER_TEAM_BURST", "4"),
    ])
    .await;
    app.create_team("loud", "100").await;
    app.create_team("quiet", "100").await;
    let keys = [
        app.mint_key("loud", "viewer").await,
        app.mint_key("loud", "viewer").await,
    ];
    let quiet = app.mint_key("quiet", "viewer").await;
    let mut statuses = Vec::new();
    for i in 0..8 {
        let reply = app
            .call(Method::GET, "/v1/teams/loud", Some(&keys[i % 2]), None)
            .await;
        if reply.status == 429 {
            assert_eq!(reply.json["code"], "rate_limited");
            assert!(reply.header("retry-after").is_some(), "{:?}", reply.headers);
        }
        statuses.push(reply.status);
    }
    // Each key alone is far below the per-key limit: the team's bucket is what runs dry.
    assert_eq!(&statuses[..4], &[200, 200, 200, 200], "{statuses:?}");
    assert!(statuses[4..].contains(&429), "{statuses:?}");
    let other = app
        .call(Method::GET, "/v1/teams/quiet", Some(&quiet), None)
        .await;
    assert_eq!(other.status, 200, "another team is not held back");
}

#[tokio::test]
async fn failed_authentication_is_limited_more_strictly_per_address() {
    let app = TestApp::spawn_with_env(&[
        ("GATEWAY__RATE_LIMIT__FAILED_AUTH_PER_MINUTE", "1"),
        ("GATEWAY__RATE_LIMIT__FAILED_AUTH_BURST", "3"),
    ])
    .await;
    let mut statuses = Vec::new();
    for i in 0..5 {
        let bad = format!("fgw_{:016x}_{}", i, "A".repeat(43));
        statuses.push(
            app.call(Method::GET, "/v1/teams", Some(&bad), None)
                .await
                .status,
        );
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
    // While blocked, the address is refused before its credential is even looked at: a right
    // guess gets the same 429 as a wrong one, so guessing gains nothing.
    let right = app
        .call(Method::GET, "/v1/teams", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(right.status, 429);
    assert!(right.header("retry-after").is_some());
}

#[tokio::test]
async fn admin_keys_are_listed_and_revoked_and_a_team_deletion_audits_its_keys() {
    let app = TestApp::spawn().await;
    let output = fluence_gateway::admin::create_admin_key(
        &crate::helpers::settings(&app.db_dir, &[]),
        "ops",
        None,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let printed: Value = serde_json::from_str(&output).unwrap_or_else(|e| panic!("{e}"));
    let admin_key = printed["key"].as_str().unwrap_or_default().to_owned();
    let admin_id = printed["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        app.call(Method::GET, "/v1/teams", Some(&admin_key), None)
            .await
            .status,
        200
    );

    let listed = app
        .call(Method::GET, "/v1/keys", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(listed.json["items"][0]["id"], admin_id.as_str());
    assert_eq!(listed.json["items"][0]["role"], "admin");
    assert!(!listed.text.contains(&admin_key));
    let revoked = app
        .call(
            Method::DELETE,
            &format!("/v1/keys/{admin_id}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(revoked.status, 204);
    assert_eq!(
        app.call(Method::GET, "/v1/teams", Some(&admin_key), None)
            .await
            .status,
        401
    );

    // Deleting a team revokes its keys, and each revocation is in the audit trail.
    app.create_team("ml", "1").await;
    let member = app.mint_key_reply("ml", "member").await;
    let member_id = member.json["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        app.call(Method::DELETE, "/v1/teams/ml", Some(ADMIN_TOKEN), None)
            .await
            .status,
        204
    );
    let audit = app
        .call(
            Method::GET,
            &format!("/v1/audit?target_id={member_id}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    let actions: Vec<&str> = audit.json["items"]
        .as_array()
        .map(|items| items.iter().filter_map(|e| e["action"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(actions, ["key.revoke", "key.create"]);
    assert!(audit.json["items"][0]["after"]["revoked_at"].is_string());
}

#[tokio::test]
async fn the_audit_trail_and_ledger_refuse_changes_in_the_database_itself() {
    let app = TestApp::spawn().await;
    app.create_team("ml", "1").await;
    let store = app.store().await;
    let update = sqlx::query("UPDATE audit_log SET actor = 'someone-else'")
        .execute(store.pool())
        .await;
    assert!(update.is_err_and(|e| e.to_string().contains("append-only")));
    let delete = sqlx::query("DELETE FROM audit_log")
        .execute(store.pool())
        .await;
    assert!(delete.is_err());
}

#[tokio::test]
async fn a_client_request_id_is_kept_only_when_short_and_plain() {
    let app = TestApp::spawn().await;
    for (sent, kept) in [
        ("abc-123_x.y", true),
        ("has space", false),
        (&*"x".repeat(65), false),
    ] {
        let response = app
            .http
            .get(app.url("/nowhere"))
            .header("x-request-id", sent)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let echoed = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert_eq!(echoed == sent, kept, "{sent:?} -> {echoed:?}");
        assert!(!echoed.is_empty());
    }
}

#[tokio::test]
async fn the_largest_cap_round_trips_exactly() {
    let app = TestApp::spawn().await;
    let reply = app
        .call(
            Method::POST,
            "/v1/teams",
            Some(ADMIN_TOKEN),
            Some(json!({"id": "rich", "name": "Rich", "budget": {"cap": "9223372036854.775807"}})),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let budget = app
        .call(
            Method::GET,
            "/v1/teams/rich/budget",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(budget.json["cap"], "9223372036854.775807");
    assert_eq!(budget.json["available"], "9223372036854.775807");
    let over = app
        .call(
            Method::POST,
            "/v1/teams",
            Some(ADMIN_TOKEN),
            Some(json!({"id": "richer", "name": "x", "budget": {"cap": "9223372036854.775808"}})),
        )
        .await;
    assert_eq!(over.status, 422);
    assert_eq!(over.json["errors"][0]["field"], "budget.cap");
}

//! `Idempotency-Key` (PRODUCT.md section 2, RELIABILITY A11): one execution per (team, key),
//! byte-identical replays, 422 for a different request under the same key, 409 while the first
//! is in flight, keys scoped per team, and a new operation once the record has expired.

use std::sync::Arc;

use reqwest::Method;
use serde_json::json;

use crate::helpers::{ADMIN_TOKEN, Reply, TestApp, deploy_body};

async fn app() -> TestApp {
    TestApp::spawn_with_env(&[
        ("GATEWAY__JOBS__DEPLOYER_INTERVAL_SECS", "3600"),
        ("GATEWAY__JOBS__DEPLOYER_ON_SUBMIT", "false"),
        ("GATEWAY__RATE_LIMIT__PER_KEY_BURST", "100000"),
    ])
    .await
}

async fn post_with_key(app: &TestApp, auth: &str, key: &str, body: &serde_json::Value) -> Reply {
    let response = app
        .http
        .post(app.url("/v1/deployments"))
        .bearer_auth(auth)
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    Reply::read(response).await
}

async fn deployments_of(app: &TestApp, team: &str) -> usize {
    app.call(
        Method::GET,
        &format!("/v1/deployments?team={team}&limit=500"),
        Some(ADMIN_TOKEN),
        None,
    )
    .await
    .json["items"]
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test]
async fn one_execution_per_key_with_byte_identical_replays_a11() {
    let app = app().await;
    app.create_team("ml", "500").await;
    let member = app.mint_key("ml", "member").await;
    let groups = 20;
    for group in 0..groups {
        let key = format!("group-{group}");
        let body = deploy_body(&format!("g{group}"), 1);
        let first = post_with_key(&app, &member, &key, &body).await;
        assert_eq!(first.status, 202, "{}", first.text);
        let again = post_with_key(&app, &member, &key, &body).await;
        assert_eq!(again.status, 202);
        assert_eq!(again.text, first.text, "replay is byte for byte");
        assert_eq!(
            again
                .headers
                .get("idempotent-replayed")
                .map(|v| v.as_bytes()),
            Some(&b"true"[..])
        );
    }
    assert_eq!(deployments_of(&app, "ml").await, groups);

    // Ten at once with one key: one execution; the rest replay it or are told it is running.
    let body = deploy_body("burst", 1);
    let barrier = Arc::new(tokio::sync::Barrier::new(10));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (http, url, member, body, barrier) = (
            app.http.clone(),
            app.url("/v1/deployments"),
            member.clone(),
            body.clone(),
            barrier.clone(),
        );
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let response = http
                .post(url)
                .bearer_auth(member)
                .header("idempotency-key", "burst")
                .json(&body)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            Reply::read(response).await
        }));
    }
    let mut bodies = Vec::new();
    for task in tasks {
        let reply = task.await.unwrap_or_else(|e| panic!("{e}"));
        match reply.status {
            202 => bodies.push(reply.text),
            409 => assert_eq!(reply.json["code"], "conflict"),
            other => panic!("unexpected {other}: {}", reply.text),
        }
    }
    assert!(!bodies.is_empty());
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "every 202 is the same answer"
    );
    assert_eq!(deployments_of(&app, "ml").await, groups + 1);
    let settled = post_with_key(&app, &member, "burst", &body).await;
    assert_eq!(settled.text, bodies[0]);
}

/// The idempotency record lost between the deployment's insert and the record's completion
/// (a crash there, whose restart releases the claim): the deployment remembers its key, so the
/// retry is answered with it and nothing is inserted twice; another body under the key is
/// still refused.
#[tokio::test]
async fn a_deployment_remembers_its_key_when_the_record_is_lost() {
    let app = app().await;
    app.create_team("ml", "500").await;
    let member = app.mint_key("ml", "member").await;
    let store = app.store().await;
    let forget = || async {
        sqlx::query("DELETE FROM idempotency_keys")
            .execute(store.pool())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    };

    let first = post_with_key(&app, &member, "lost", &deploy_body("web", 1)).await;
    assert_eq!(first.status, 202, "{}", first.text);
    forget().await;
    let retried = post_with_key(&app, &member, "lost", &deploy_body("web", 1)).await;
    assert_eq!(retried.status, 202, "{}", retried.text);
    assert_eq!(retried.json["id"], first.json["id"]);
    assert_eq!(deployments_of(&app, "ml").await, 1);

    forget().await;
    let different = post_with_key(&app, &member, "lost", &deploy_body("web", 2)).await;
    assert_eq!(different.status, 422, "{}", different.text);
    assert_eq!(different.json["code"], "idempotency_key_reused");
    assert_eq!(deployments_of(&app, "ml").await, 1);
}

#[tokio::test]
async fn a_key_is_bound_to_its_request_its_team_and_its_retention() {
    let app = app().await;
    app.create_team("ml", "500").await;
    app.create_team("ops", "500").await;
    let member = app.mint_key("ml", "member").await;
    let other = app.mint_key("ops", "member").await;

    let first = post_with_key(&app, &member, "k1", &deploy_body("web", 1)).await;
    assert_eq!(first.status, 202);
    let different = post_with_key(&app, &member, "k1", &deploy_body("web", 2)).await;
    assert_eq!(different.status, 422, "{}", different.text);
    assert_eq!(different.json["code"], "idempotency_key_reused");

    // Another team's use of the same value is simply a new key.
    let theirs = post_with_key(&app, &other, "k1", &deploy_body("web", 1)).await;
    assert_eq!(theirs.status, 202, "{}", theirs.text);
    assert_ne!(theirs.json["id"], first.json["id"]);
    assert_eq!(theirs.json["team"], "ops");

    // Without a key, every request is a new deployment.
    for _ in 0..2 {
        let reply = app.deploy(&member, None, deploy_body("web", 1)).await;
        assert_eq!(reply.status, 202);
    }
    assert_eq!(deployments_of(&app, "ml").await, 3);

    // Past its retention the key starts a new operation.
    let store = app.store().await;
    sqlx::query("UPDATE idempotency_keys SET expires_at = '2000-01-01T00:00:00.000000Z'")
        .execute(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    sqlx::query("UPDATE deployments SET created_at = '2000-01-01T00:00:00.000000Z'")
        .execute(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let renewed = post_with_key(&app, &member, "k1", &deploy_body("web", 2)).await;
    assert_eq!(renewed.status, 202, "{}", renewed.text);
    assert_ne!(renewed.json["id"], first.json["id"]);

    // A malformed key is refused before anything happens.
    let long = post_with_key(&app, &member, &"x".repeat(300), &deploy_body("web", 1)).await;
    assert_eq!(long.status, 422);
    assert_eq!(long.json["errors"][0]["field"], "Idempotency-Key");
}

#[tokio::test]
async fn other_state_changing_routes_replay_too_but_never_keep_a_secret() {
    let app = app().await;
    app.create_team("ml", "500").await;
    let patch = |key: &'static str, cap: &'static str| {
        let app = &app;
        async move {
            let response = app
                .http
                .patch(app.url("/v1/teams/ml"))
                .bearer_auth(ADMIN_TOKEN)
                .header("idempotency-key", key)
                .json(&json!({"budget": {"cap": cap}}))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            Reply::read(response).await
        }
    };
    let first = patch("p1", "600").await;
    assert_eq!(first.status, 200, "{}", first.text);
    let replay = patch("p1", "600").await;
    assert_eq!(replay.text, first.text);
    let audit = app
        .call(
            Method::GET,
            "/v1/audit?action=team.update&limit=50",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(
        audit.json["items"].as_array().map(Vec::len),
        Some(1),
        "executed once"
    );

    // A key's secret is shown once: a replay does not show it again, and it is not stored.
    let mint = || async {
        let response = app
            .http
            .post(app.url("/v1/teams/ml/keys"))
            .bearer_auth(ADMIN_TOKEN)
            .header("idempotency-key", "mint-1")
            .json(&json!({"name": "ci", "role": "member"}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        Reply::read(response).await
    };
    let minted = mint().await;
    assert_eq!(minted.status, 201, "{}", minted.text);
    let secret = minted.json["key"].as_str().unwrap_or_default().to_owned();
    let again = mint().await;
    assert_eq!(again.status, 409, "{}", again.text);
    assert!(!again.text.contains(&secret));
    let store = app.store().await;
    let bodies: Vec<Option<Vec<u8>>> = sqlx::query_scalar("SELECT body FROM idempotency_keys")
        .fetch_all(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for body in bodies.into_iter().flatten() {
        assert!(!String::from_utf8_lossy(&body).contains(&secret));
    }
    let keys = app
        .call(Method::GET, "/v1/teams/ml/keys", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(keys.json["items"].as_array().map(Vec::len), Some(1));

    // `dry_run` means something only to deployments; elsewhere it cannot switch the key off.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let response = app
            .http
            .post(app.url("/v1/teams/ml/keys?dry_run=true"))
            .bearer_auth(ADMIN_TOKEN)
            .header("idempotency-key", "mint-2")
            .json(&json!({"name": "ci2", "role": "member"}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        statuses.push(Reply::read(response).await.status);
    }
    let keys = app
        .call(Method::GET, "/v1/teams/ml/keys", Some(ADMIN_TOKEN), None)
        .await;
    let minted = keys.json["items"].as_array().map_or(0, Vec::len) - 1;
    assert!(
        minted <= 1,
        "{statuses:?}: at most one more key, got {minted}"
    );
}

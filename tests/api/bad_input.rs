//! A corpus of bad input on every endpoint that takes a body or a query: each gets a 4xx
//! problem+json naming what is wrong, never a 5xx, and nothing is stored.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, Reply, TestApp};

/// A request body as bytes, with the content type it is sent under.
struct Case {
    name: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
}

fn json_case(name: &str, body: Value) -> Case {
    Case {
        name: name.to_owned(),
        content_type: Some("application/json"),
        body: body.to_string().into_bytes(),
    }
}

fn raw_case(name: &str, content_type: Option<&'static str>, body: &[u8]) -> Case {
    Case {
        name: name.to_owned(),
        content_type,
        body: body.to_vec(),
    }
}

/// Bad bodies any JSON endpoint must refuse.
fn generic_cases() -> Vec<Case> {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    vec![
        raw_case("empty body", Some("application/json"), b""),
        raw_case("truncated", Some("application/json"), b"{\"id\": "),
        raw_case("not json", Some("application/json"), b"id=ml"),
        raw_case(
            "NaN",
            Some("application/json"),
            b"{\"budget\": {\"cap\": NaN}}",
        ),
        raw_case("Infinity", Some("application/json"), b"{\"x\": Infinity}"),
        raw_case(
            "invalid utf-8",
            Some("application/json"),
            b"{\"name\": \"\xff\xfe\"}",
        ),
        raw_case(
            "nested 10000 deep",
            Some("application/json"),
            deep.as_bytes(),
        ),
        raw_case("trailing garbage", Some("application/json"), b"{} {}"),
        raw_case("text/plain", Some("text/plain"), b"{}"),
        raw_case("form", Some("application/x-www-form-urlencoded"), b"id=ml"),
        raw_case("no content type", None, b"{}"),
        // Over the 64 KiB limit, refused before parsing. (Small enough that the client has
        // written it all before the early 413 arrives, so the exchange stays clean.)
        raw_case("200 KB", Some("application/json"), &vec![b' '; 200 * 1024]),
        json_case("null", Value::Null),
        json_case("array", json!([])),
        json_case("string", json!("team")),
        json_case("number", json!(5)),
    ]
}

fn create_team_cases() -> Vec<Case> {
    let team = |patch: Value| {
        let mut body = json!({"id": "corpus", "name": "Corpus", "budget": {"cap": "10"}});
        merge(&mut body, patch);
        body
    };
    let mut cases = vec![
        json_case("missing id", json!({"name": "x", "budget": {"cap": "1"}})),
        json_case("missing budget", json!({"id": "x1", "name": "x"})),
        raw_case(
            "duplicate quota",
            Some("application/json"),
            br#"{"id": "dq", "name": "x", "budget": {"cap": "1"}, "quotas": {"max_vms": 1, "max_vms": 1000}}"#,
        ),
        raw_case(
            "duplicate key",
            Some("application/json"),
            br#"{"id": "aa", "id": "bb", "name": "x", "budget": {"cap": "1"}}"#,
        ),
    ];
    let patches = [
        ("id number", json!({"id": 5})),
        ("id upper case", json!({"id": "ML"})),
        ("id with space", json!({"id": "m l"})),
        ("id unicode", json!({"id": "équipe"})),
        ("id too long", json!({"id": "a".repeat(200)})),
        ("id empty", json!({"id": ""})),
        ("name empty", json!({"name": ""})),
        ("name control", json!({"name": "a\u{0000}b"})),
        ("name 10 KB", json!({"name": "n".repeat(10 * 1024)})),
        ("name number", json!({"name": 7})),
        ("cap number", json!({"budget": {"cap": 500}})),
        ("cap float", json!({"budget": {"cap": 1.5}})),
        ("cap negative", json!({"budget": {"cap": "-1"}})),
        ("cap exponent", json!({"budget": {"cap": "1e3"}})),
        ("cap NaN text", json!({"budget": {"cap": "NaN"}})),
        ("cap empty", json!({"budget": {"cap": ""}})),
        ("cap 7 decimals", json!({"budget": {"cap": "1.0000001"}})),
        (
            "cap overflow",
            json!({"budget": {"cap": "99999999999999999999"}}),
        ),
        ("cap null", json!({"budget": {"cap": null}})),
        (
            "period week",
            json!({"budget": {"cap": "1", "period": "week"}}),
        ),
        (
            "start day 0",
            json!({"budget": {"cap": "1", "period_start_day": 0}}),
        ),
        (
            "start day 31",
            json!({"budget": {"cap": "1", "period_start_day": 31}}),
        ),
        (
            "start day 300",
            json!({"budget": {"cap": "1", "period_start_day": 300}}),
        ),
        (
            "threshold 0",
            json!({"budget": {"cap": "1", "alert_thresholds": [0]}}),
        ),
        (
            "threshold 101",
            json!({"budget": {"cap": "1", "alert_thresholds": [101]}}),
        ),
        (
            "threshold negative",
            json!({"budget": {"cap": "1", "alert_thresholds": [-5]}}),
        ),
        (
            "threshold text",
            json!({"budget": {"cap": "1", "alert_thresholds": "50"}}),
        ),
        (
            "threshold float",
            json!({"budget": {"cap": "1", "alert_thresholds": [1.5]}}),
        ),
        ("max_vms negative", json!({"quotas": {"max_vms": -1}})),
        ("max_vms float", json!({"quotas": {"max_vms": 1.5}})),
        ("max_vms text", json!({"quotas": {"max_vms": "5"}})),
        (
            "max_vms 2^64",
            json!({"quotas": {"max_vms": 18_446_744_073_709_551_616_f64}}),
        ),
        (
            "country lower case",
            json!({"quotas": {"allowed_countries": ["de"]}}),
        ),
        (
            "countries not a list",
            json!({"quotas": {"allowed_countries": "DE"}}),
        ),
        (
            "bad configuration",
            json!({"quotas": {"allowed_configurations": ["cpu-0-ram-0gb-storage-0gb"]}}),
        ),
        (
            "configuration garbage",
            json!({"quotas": {"allowed_configurations": ["large"]}}),
        ),
        (
            "max price negative",
            json!({"quotas": {"max_price_per_epoch": "-1"}}),
        ),
        (
            "max price number",
            json!({"quotas": {"max_price_per_epoch": 5}}),
        ),
        ("unknown quota", json!({"quotas": {"max_gpus": 1}})),
        ("quotas not an object", json!({"quotas": [1]})),
    ];
    for (name, patch) in patches {
        cases.push(json_case(name, team(patch)));
    }
    cases
}

/// Mass assignment: privileged or unknown fields anywhere are refused, not ignored.
fn privileged_fields() -> [&'static str; 12] {
    [
        "team_id",
        "team",
        "price",
        "pricePerEpoch",
        "cost",
        "status",
        "owner",
        "is_admin",
        "cap",
        "reserved",
        "created_at",
        "spent",
    ]
}

fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                match target.get_mut(&key) {
                    Some(existing) if existing.is_object() && value.is_object() => {
                        merge(existing, value)
                    }
                    _ => {
                        target.insert(key, value);
                    }
                }
            }
        }
        (target, patch) => *target = patch,
    }
}

async fn send(app: &TestApp, method: Method, path: &str, case: &Case) -> Reply {
    let mut request = app
        .http
        .request(method, app.url(path))
        .bearer_auth(ADMIN_TOKEN)
        .body(case.body.clone());
    if let Some(content_type) = case.content_type {
        request = request.header("content-type", content_type);
    }
    Reply::read(
        request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", case.name)),
    )
    .await
}

fn assert_refused(reply: &Reply, what: &str) {
    assert!(
        (400..500).contains(&reply.status),
        "{what}: status {} {}",
        reply.status,
        reply.text
    );
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json"),
        "{what}"
    );
    assert_eq!(reply.json["status"], reply.status, "{what}: {}", reply.text);
    for field in ["type", "title", "detail", "request_id"] {
        assert!(
            reply.json[field].is_string(),
            "{what}: no {field} in {}",
            reply.text
        );
    }
    assert_eq!(
        reply.json["request_id"].as_str(),
        reply.header("x-request-id"),
        "{what}: the body's request id is the header's"
    );
    assert!(reply.json["code"].is_string(), "{what}: {}", reply.text);
    assert!(!reply.text.contains("panicked"), "{what}");
    if reply.json["code"] == "validation_failed" {
        let errors = reply.json["errors"].as_array().map(Vec::len).unwrap_or(0);
        assert!(
            errors > 0,
            "{what}: a validation error names its field: {}",
            reply.text
        );
    }
}

#[tokio::test]
async fn bad_bodies_and_queries_get_4xx_problems_and_change_nothing() {
    let app = TestApp::spawn_with_env(&[("GATEWAY__RATE_LIMIT__PER_KEY_BURST", "100000")]).await;
    app.create_team("ml", "100").await;
    let team_before = app
        .call(Method::GET, "/v1/teams/ml", Some(ADMIN_TOKEN), None)
        .await
        .text;
    let audit_before = app
        .call(Method::GET, "/v1/audit?limit=500", Some(ADMIN_TOKEN), None)
        .await
        .json;

    let mut sent = 0;
    for case in generic_cases().iter().chain(create_team_cases().iter()) {
        let reply = send(&app, Method::POST, "/v1/teams", case).await;
        assert_refused(&reply, &format!("POST /v1/teams {}", case.name));
        sent += 1;
    }
    for field in privileged_fields() {
        let mut body = json!({"id": "corpus", "name": "Corpus", "budget": {"cap": "10"}});
        body[field] = json!("x");
        let reply = send(&app, Method::POST, "/v1/teams", &json_case(field, body)).await;
        assert_refused(&reply, &format!("POST /v1/teams with {field}"));
        assert_eq!(reply.status, 422);
        assert_eq!(reply.json["errors"][0]["field"], field);

        let patch = json_case(field, json!({ field: "x" }));
        let reply = send(&app, Method::PATCH, "/v1/teams/ml", &patch).await;
        assert_refused(&reply, &format!("PATCH /v1/teams/ml with {field}"));

        let key = json_case(field, json!({"name": "k", "role": "member", field: "x"}));
        let reply = send(&app, Method::POST, "/v1/teams/ml/keys", &key).await;
        assert_refused(&reply, &format!("POST keys with {field}"));
        sent += 3;
    }
    let patch_cases = [
        json_case("patch cap negative", json!({"budget": {"cap": "-5"}})),
        json_case("patch quota text", json!({"quotas": {"max_vcpus": "many"}})),
        json_case("patch name null", json!({"name": 5})),
        json_case(
            "patch budget unknown",
            json!({"budget": {"currency": "EUR"}}),
        ),
    ];
    for case in generic_cases().iter().chain(patch_cases.iter()) {
        let reply = send(&app, Method::PATCH, "/v1/teams/ml", case).await;
        assert_refused(&reply, &format!("PATCH {}", case.name));
        sent += 1;
    }
    let key_cases = [
        json_case("role owner", json!({"name": "k", "role": "owner"})),
        json_case("role admin", json!({"name": "k", "role": "admin"})),
        json_case("role missing", json!({"name": "k"})),
        json_case("name empty", json!({"name": "", "role": "member"})),
        json_case(
            "name 10 KB",
            json!({"name": "k".repeat(10 * 1024), "role": "member"}),
        ),
        json_case(
            "expiry text",
            json!({"name": "k", "role": "member", "expires_at": "tomorrow"}),
        ),
        json_case(
            "expiry past",
            json!({"name": "k", "role": "member", "expires_at": "2001-01-01T00:00:00Z"}),
        ),
    ];
    for case in generic_cases().iter().chain(key_cases.iter()) {
        let reply = send(&app, Method::POST, "/v1/teams/ml/keys", case).await;
        assert_refused(&reply, &format!("POST keys {}", case.name));
        sent += 1;
    }
    let queries = [
        "/v1/teams?limit=0",
        "/v1/teams?limit=501",
        "/v1/teams?limit=abc",
        "/v1/teams?limit=-1",
        "/v1/teams?limit=99999999999999999999",
        "/v1/teams?cursor=%%%",
        "/v1/teams?cursor=bm90LWEtY3Vyc29y%FF",
        "/v1/teams?unknown=1",
        "/v1/teams/ml/keys?limit=0",
        "/v1/audit?limit=600",
        "/v1/audit?from=yesterday",
        "/v1/audit?to=2026-13-01T00:00:00Z",
        "/v1/audit?team=ml&bogus=1",
    ];
    for query in queries {
        let reply = app.call(Method::GET, query, Some(ADMIN_TOKEN), None).await;
        assert_refused(&reply, query);
        sent += 1;
    }
    assert!(sent > 150, "{sent}");

    // Nothing was stored or changed, and the gateway is still fine.
    let team_after = app
        .call(Method::GET, "/v1/teams/ml", Some(ADMIN_TOKEN), None)
        .await
        .text;
    assert_eq!(team_before, team_after);
    let teams = app
        .call(Method::GET, "/v1/teams", Some(ADMIN_TOKEN), None)
        .await
        .json;
    assert_eq!(teams["items"].as_array().map(Vec::len), Some(1));
    let keys = app
        .call(Method::GET, "/v1/teams/ml/keys", Some(ADMIN_TOKEN), None)
        .await
        .json;
    assert_eq!(keys["items"], json!([]));
    let audit_after = app
        .call(Method::GET, "/v1/audit?limit=500", Some(ADMIN_TOKEN), None)
        .await
        .json;
    assert_eq!(audit_before, audit_after);
    assert_eq!(app.get("/healthz").await.status(), 200);
}

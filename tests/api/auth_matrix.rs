//! The authorisation matrix, generated from the router's own route table (the OpenAPI document
//! built from it), so that every new route is covered the day it is added: every secured route
//! x no key, malformed or bad keys, revoked and expired keys, keys in the URL, the wrong role and
//! another team's key.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, Reply, TestApp};

/// Routes a team's own member or viewer key may read. Every other secured route must refuse
/// team keys: a route added without thought fails here until it is listed.
const TEAM_READABLE: [(&str, &str); 16] = [
    ("GET", "/v1/teams"),
    ("GET", "/v1/teams/{team}"),
    ("GET", "/v1/teams/{team}/budget"),
    ("GET", "/v1/deployments"),
    ("GET", "/v1/deployments/{id}"),
    ("GET", "/v1/vms"),
    ("GET", "/v1/vms/{id}"),
    ("GET", "/v1/vms/{id}/events"),
    ("GET", "/v1/spend"),
    ("GET", "/v1/offers"),
    ("GET", "/v1/prices"),
    ("GET", "/v1/catalog/configurations"),
    ("GET", "/v1/catalog/countries"),
    ("GET", "/v1/catalog/hardware"),
    ("GET", "/v1/catalog/datacenters"),
    ("GET", "/v1/catalog/images"),
];

/// Routes a team's member key may also change (its team's deployments); viewers may not.
const MEMBER_WRITABLE: [(&str, &str); 4] = [
    ("POST", "/v1/deployments"),
    ("POST", "/v1/deployments/{id}/cancel"),
    ("PATCH", "/v1/vms/{id}"),
    ("DELETE", "/v1/vms/{id}"),
];

/// A VM of `ml`, already deleted, so that routes naming it can be probed without effect.
const VICTIM_VM: &str = "0x00000000000000000000000000000000000000aa";

/// A case that must be refused: its name, its headers, and the path with any query.
type RefusedCase<'a> = (&'a str, Vec<(&'a str, String)>, String);

struct Route {
    method: Method,
    template: String,
}

impl Route {
    fn path(&self, victim_key: &str, victim_deployment: &str) -> String {
        let id = if self.template.starts_with("/v1/vms/") {
            VICTIM_VM
        } else {
            victim_deployment
        };
        self.template
            .replace("{team}", "ml")
            .replace("{key_id}", victim_key)
            .replace("{id}", id)
    }

    fn team_readable(&self) -> bool {
        TEAM_READABLE
            .iter()
            .any(|(m, p)| *m == self.method.as_str() && *p == self.template)
    }

    fn member_writable(&self) -> bool {
        MEMBER_WRITABLE
            .iter()
            .any(|(m, p)| *m == self.method.as_str() && *p == self.template)
    }

    /// The path names something of one team (the team, or a deployment of it).
    fn names_a_team(&self) -> bool {
        self.template.contains("{team}") || self.template.contains("{id}")
    }
}

fn secured_routes() -> Vec<Route> {
    let document =
        serde_json::to_value(fluence_gateway::http::openapi()).unwrap_or_else(|e| panic!("{e}"));
    let mut routes = Vec::new();
    for (template, item) in document["paths"].as_object().into_iter().flatten() {
        for (method, operation) in item.as_object().into_iter().flatten() {
            if operation.get("security").is_none() {
                continue;
            }
            let method = Method::from_bytes(method.to_uppercase().as_bytes())
                .unwrap_or_else(|e| panic!("{e}"));
            routes.push(Route {
                method,
                template: template.clone(),
            });
        }
    }
    routes
}

async fn send(app: &TestApp, route: &Route, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = app
        .http
        .request(route.method.clone(), app.url(path))
        .header("x-request-id", "matrix");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if route.method != Method::GET && route.method != Method::DELETE {
        request = request.json(&json!({}));
    }
    Reply::read(request.send().await.unwrap_or_else(|e| panic!("{e}"))).await
}

#[tokio::test]
async fn every_secured_route_refuses_every_bad_credential_and_every_foreign_team() {
    let app = TestApp::spawn_with_env(&[
        ("GATEWAY__RATE_LIMIT__FAILED_AUTH_BURST", "100000"),
        ("GATEWAY__RATE_LIMIT__PER_KEY_BURST", "100000"),
        ("GATEWAY__JOBS__DEPLOYER_INTERVAL_SECS", "3600"),
        ("GATEWAY__JOBS__DEPLOYER_ON_SUBMIT", "false"),
    ])
    .await;
    app.create_team("ml", "100").await;
    app.create_team("ops", "100").await;
    let member = app.mint_key("ml", "member").await;
    let viewer = app.mint_key("ml", "viewer").await;
    let foreign = app.mint_key("ops", "member").await;
    let victim = app.mint_key_reply("ml", "viewer").await.json["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let revoked_reply = app.mint_key_reply("ml", "member").await;
    let revoked = revoked_reply.json["key"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let revoked_id = revoked_reply.json["id"].as_str().unwrap_or_default();
    let gone = app
        .call(
            Method::DELETE,
            &format!("/v1/teams/ml/keys/{revoked_id}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(gone.status, 204);
    let expired = app
        .insert_expired_key(fluence_gateway::auth::Role::Admin, None)
        .await;
    let well_formed_unknown = format!("fgw_0123456789abcdef_{}", "x".repeat(43));
    let right_prefix_wrong_secret = format!("{}_{}", &member[..20], "y".repeat(43));

    // A deployment of `ml`, cancelled at once (the deployer only runs at start here), so that
    // routes naming it can be probed without side effects.
    let dep = app
        .deploy(&member, None, crate::helpers::deploy_body("victim", 1))
        .await;
    assert_eq!(dep.status, 202, "{}", dep.text);
    let victim_deployment = dep.json["id"].as_str().unwrap_or_default().to_owned();
    let cancelled = app
        .call(
            Method::POST,
            &format!("/v1/deployments/{victim_deployment}/cancel"),
            Some(&member),
            None,
        )
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.text);

    let store = app.store().await;
    sqlx::query(
        "INSERT INTO vms (id, fluence_id, team_id, name, status, price_per_epoch_micros, created_at, deleted_at) \
         VALUES (?1, ?1, 'ml', 'victim', 'Deleted', 1, '2026-01-01T00:00:00.000000Z', '2026-01-02T00:00:00.000000Z')",
    )
    .bind(VICTIM_VM)
    .execute(store.pool())
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // The first snapshot and the catalog lists, taken now so that reading them below sends
    // nothing upstream.
    app.run_job("prices").await;
    app.run_job("catalog").await;

    let team_before = app
        .call(Method::GET, "/v1/teams/ml", Some(ADMIN_TOKEN), None)
        .await
        .text;
    let audit_before = app
        .call(Method::GET, "/v1/audit?limit=500", Some(ADMIN_TOKEN), None)
        .await;
    let calls_before = upstream_calls(&app).await;

    let routes = secured_routes();
    assert!(
        routes.len() >= 9,
        "the route table lists every secured route: {}",
        routes.len()
    );
    let bearer = |key: &str| format!("Bearer {key}");
    let mut checked = 0;
    for route in &routes {
        let path = route.path(&victim, &victim_deployment);
        let admin_header = bearer(ADMIN_TOKEN);
        let refused: Vec<RefusedCase<'_>> = vec![
            ("no key", vec![], path.clone()),
            (
                "empty header",
                vec![("authorization", String::new())],
                path.clone(),
            ),
            (
                "other scheme",
                vec![("authorization", format!("Basic {ADMIN_TOKEN}"))],
                path.clone(),
            ),
            (
                "lower-case scheme",
                vec![("authorization", format!("bearer {ADMIN_TOKEN}"))],
                path.clone(),
            ),
            (
                "padded token",
                vec![("authorization", format!("Bearer  {ADMIN_TOKEN}"))],
                path.clone(),
            ),
            (
                "unknown key",
                vec![("authorization", bearer(&well_formed_unknown))],
                path.clone(),
            ),
            (
                "wrong secret",
                vec![("authorization", bearer(&right_prefix_wrong_secret))],
                path.clone(),
            ),
            (
                "truncated key",
                vec![("authorization", bearer(&member[..member.len() - 1]))],
                path.clone(),
            ),
            (
                "revoked key",
                vec![("authorization", bearer(&revoked))],
                path.clone(),
            ),
            (
                "expired key",
                vec![("authorization", bearer(&expired))],
                path.clone(),
            ),
            (
                "key in the query",
                vec![],
                with_query(&path, &format!("api_key={ADMIN_TOKEN}")),
            ),
            (
                "key in the query beside a good header",
                vec![("authorization", admin_header.clone())],
                with_query(&path, &format!("token={ADMIN_TOKEN}")),
            ),
        ];
        let mut first_body: Option<String> = None;
        for (case, headers, target) in &refused {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let reply = send(&app, route, target, &headers).await;
            assert_eq!(
                reply.status, 401,
                "{} {} / {case}: {}",
                route.method, route.template, reply.text
            );
            // One answer for every refusal: nothing tells which keys exist.
            match &first_body {
                None => first_body = Some(reply.text.clone()),
                Some(body) => assert_eq!(&reply.text, body, "{case}"),
            }
            checked += 1;
        }
        // Two Authorization headers.
        let mut request = app
            .http
            .request(route.method.clone(), app.url(&path))
            .header("authorization", admin_header.clone())
            .header("authorization", admin_header.clone());
        if route.method != Method::GET && route.method != Method::DELETE {
            request = request.json(&json!({}));
        }
        let twice = Reply::read(request.send().await.unwrap_or_else(|e| panic!("{e}"))).await;
        assert_eq!(twice.status, 401, "two headers on {}", route.template);

        // Team keys of the team itself: reads where allowed, never anything else.
        for (who, key) in [("member", &member), ("viewer", &viewer)] {
            let reply = send(&app, route, &path, &[("authorization", &bearer(key))]).await;
            if who == "member" && route.member_writable() {
                // Allowed, and the probe itself is harmless: an empty body is refused whole,
                // the victim deployment is already cancelled, the victim VM already deleted.
                assert!(
                    matches!(reply.status, 204 | 409 | 422),
                    "{who} {} {}: {}",
                    route.method,
                    route.template,
                    reply.text
                );
            } else if route.team_readable() && route.method == Method::GET {
                assert_eq!(
                    reply.status, 200,
                    "{who} {} {}: {}",
                    route.method, route.template, reply.text
                );
            } else {
                assert_eq!(
                    reply.status, 403,
                    "{who} {} {}: {}",
                    route.method, route.template, reply.text
                );
                assert_eq!(reply.json["code"], "forbidden");
            }
            checked += 1;
        }

        // Another team's key: exactly the 404 of a team that does not exist.
        let reply = send(&app, route, &path, &[("authorization", &bearer(&foreign))]).await;
        if route.names_a_team() {
            let unknown_path = route
                .template
                .replace("{team}", "no-such-team")
                .replace("{key_id}", &victim)
                .replace("{id}", "dep_01JDX3ZP6Q8W9E2R4T5Y7U1IOK");
            let unknown = send(
                &app,
                route,
                &unknown_path,
                &[("authorization", &bearer(&foreign))],
            )
            .await;
            assert_eq!(
                reply.status, 404,
                "{} {}: {}",
                route.method, route.template, reply.text
            );
            assert_eq!(
                reply.text, unknown.text,
                "foreign and unknown look the same"
            );
        } else if route.team_readable() {
            assert_eq!(reply.status, 200);
            assert!(
                !reply.text.contains("\"ml\""),
                "another team's data leaked: {}",
                reply.text
            );
        } else if route.member_writable() {
            // Acts on the key's own team; the empty probe body is refused whole.
            assert_eq!(reply.status, 422, "{} {}", route.method, route.template);
        } else {
            assert_eq!(reply.status, 403, "{} {}", route.method, route.template);
        }
        checked += 1;
    }
    assert!(checked >= routes.len() * 14);

    // Nothing was changed or sent upstream by all of that.
    let team_after = app
        .call(Method::GET, "/v1/teams/ml", Some(ADMIN_TOKEN), None)
        .await
        .text;
    assert_eq!(team_before, team_after);
    let audit_after = app
        .call(Method::GET, "/v1/audit?limit=500", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(audit_before.json["items"], audit_after.json["items"]);
    let keys = app
        .call(
            Method::GET,
            "/v1/teams/ml/keys?limit=500",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    let victim_status = keys.json["items"]
        .as_array()
        .and_then(|items| items.iter().find(|k| k["id"] == victim.as_str()))
        .map(|k| k["status"].clone());
    assert_eq!(victim_status, Some(json!("active")));
    assert_eq!(upstream_calls(&app).await, calls_before);
}

fn with_query(path: &str, query: &str) -> String {
    format!("{path}?{query}")
}

async fn upstream_calls(app: &TestApp) -> usize {
    let Some(sim) = &app.sim else { return 0 };
    let state: Value = reqwest::get(format!("{}/_sim/state", sim.base_url()))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    state["calls"].as_array().map_or(0, Vec::len)
}

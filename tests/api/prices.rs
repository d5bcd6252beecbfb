//! Prices and catalog: the sampler against the simulator's marketplace, `/v1/offers` and its
//! filters, `/v1/prices` buckets against hand-computed figures, retention, and the cached
//! catalog lists including the stale copy served while Fluence fails.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, SIM_KEY, TestApp};

const SMALL: &str = "cpu-2-ram-4gb-storage-25gb";
const LARGER: &str = "cpu-4-ram-8gb-storage-25gb";

/// `POST /marketplace/offers` straight to the simulator.
async fn sim_offers(app: &TestApp, constraints: Value) -> Vec<Value> {
    let sim = app.sim.as_ref().unwrap_or_else(|| panic!("no simulator"));
    let response = app
        .http
        .post(format!("{}/marketplace/offers", sim.base_url()))
        .header("x-api-key", SIM_KEY)
        .json(&constraints)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 200);
    response.json().await.unwrap_or_else(|e| panic!("{e}"))
}

async fn sim_get(app: &TestApp, path: &str) -> Value {
    let sim = app.sim.as_ref().unwrap_or_else(|| panic!("no simulator"));
    app.http
        .get(format!("{}{path}", sim.base_url()))
        .header("x-api-key", SIM_KEY)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn calls_to(app: &TestApp, path: &str) -> usize {
    app.sim_state().await["calls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["path"] == path)
        .count()
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    let store = app.store().await;
    sqlx::query_scalar(sql)
        .fetch_one(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn items(reply: &Value) -> Vec<Value> {
    reply["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn the_sampler_stores_every_offer_of_the_marketplace_in_one_snapshot() {
    let app = TestApp::spawn().await;
    let run = app.run_job("prices").await;
    assert_eq!(run["last_outcome"], "ok", "{run}");
    let offers = sim_offers(&app, json!({})).await;
    assert!(
        offers.len() > 3,
        "a realistic marketplace: {}",
        offers.len()
    );
    let stored = count(&app, "SELECT count(*) FROM price_samples").await;
    assert_eq!(usize::try_from(stored).unwrap_or_default(), offers.len());
    assert_eq!(
        count(&app, "SELECT count(DISTINCT sampled_at) FROM price_samples").await,
        1
    );
    let capacity: i64 = offers
        .iter()
        .flat_map(|o| o["servers"].as_array().cloned().unwrap_or_default())
        .filter_map(|s| s["availableBasicInstances"].as_i64())
        .sum();
    assert_eq!(
        count(&app, "SELECT sum(capacity) FROM price_samples").await,
        capacity
    );

    let reply = app
        .call(Method::GET, "/v1/offers", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let listed = items(&reply.json);
    assert_eq!(listed.len(), offers.len());
    let first = &listed[0];
    for field in [
        "configuration",
        "datacenter",
        "country",
        "city",
        "tier",
        "price_per_epoch",
        "capacity",
        "sampled_at",
    ] {
        assert!(first.get(field).is_some(), "{field} in {first}");
    }
    assert!(first["price_per_epoch"].is_string(), "money is a string");
    assert_eq!(first["sampled_at"], reply.json["sampled_at"]);

    // A second run appends a second snapshot; the answer shows only the newest.
    app.run_job("prices").await;
    assert_eq!(
        count(&app, "SELECT count(DISTINCT sampled_at) FROM price_samples").await,
        2
    );
    let again = app
        .call(Method::GET, "/v1/offers", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(items(&again.json).len(), offers.len());
    assert!(
        again.json["sampled_at"].as_str() > reply.json["sampled_at"].as_str(),
        "{} then {}",
        reply.json["sampled_at"],
        again.json["sampled_at"]
    );
}

#[tokio::test]
async fn offers_are_sampled_on_first_use_and_filtered() {
    let app = TestApp::spawn().await;
    app.create_team("ml", "100").await;
    let viewer = app.mint_key("ml", "viewer").await;
    // Nothing sampled yet: the first read takes the snapshot.
    let all = app
        .call(Method::GET, "/v1/offers", Some(&viewer), None)
        .await;
    assert_eq!(all.status, 200, "{}", all.text);
    let all = items(&all.json);
    assert_eq!(all.len(), sim_offers(&app, json!({})).await.len());
    let prices: Vec<i64> = all
        .iter()
        .map(|o| {
            fluence_gateway::domain::money::Usdc::parse(o["price_per_epoch"].as_str().unwrap_or(""))
                .unwrap_or_else(|e| panic!("{e}"))
                .micros()
        })
        .collect();
    assert!(prices.windows(2).all(|w| w[0] <= w[1]), "cheapest first");

    let by_config = app
        .call(
            Method::GET,
            &format!("/v1/offers?configuration={SMALL}"),
            Some(&viewer),
            None,
        )
        .await;
    let by_config = items(&by_config.json);
    assert!(!by_config.is_empty());
    assert!(by_config.iter().all(|o| o["configuration"] == SMALL));
    assert_eq!(
        by_config.len(),
        sim_offers(&app, json!({"basicConfiguration": SMALL}))
            .await
            .len()
    );

    let by_country = app
        .call(Method::GET, "/v1/offers?country=de", Some(&viewer), None)
        .await;
    let by_country = items(&by_country.json);
    assert!(!by_country.is_empty());
    assert!(by_country.iter().all(|o| o["country"] == "DE"));
    assert_eq!(
        by_country.len(),
        sim_offers(&app, json!({"datacenter": {"countries": ["DE"]}}))
            .await
            .len()
    );

    let limit = prices[prices.len() / 2];
    let limit_text = fluence_gateway::domain::money::Usdc::from_micros(limit).to_string();
    let cheap = app
        .call(
            Method::GET,
            &format!("/v1/offers?max_price={limit_text}&country=DE&configuration={SMALL}"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(cheap.status, 200, "{}", cheap.text);
    let expected = all
        .iter()
        .zip(&prices)
        .filter(|(o, p)| **p <= limit && o["country"] == "DE" && o["configuration"] == SMALL)
        .count();
    assert_eq!(items(&cheap.json).len(), expected);

    let bad = app
        .call(
            Method::GET,
            "/v1/offers?max_price=cheap&country=DEU",
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(bad.status, 422, "{}", bad.text);
    let fields: Vec<&str> = bad.json["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["field"].as_str())
        .collect();
    assert_eq!(fields, ["country", "max_price"]);
    let unknown = app
        .call(Method::GET, "/v1/offers?colour=red", Some(&viewer), None)
        .await;
    assert_eq!(unknown.status, 422, "{}", unknown.text);
    assert_eq!(unknown.json["errors"][0]["field"], "colour");
    let anonymous = app.call(Method::GET, "/v1/offers", None, None).await;
    assert_eq!(anonymous.status, 401);
}

#[tokio::test]
async fn offers_are_503_when_nothing_was_sampled_and_fluence_fails() {
    let app = TestApp::spawn().await;
    app.sim_post(
        "/_sim/faults",
        json!({"endpoint": "POST /marketplace/offers", "fault": "error_before_commit",
               "status": 503, "count": 100}),
    )
    .await;
    let reply = app
        .call(Method::GET, "/v1/offers", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert_eq!(reply.json["code"], "upstream_unavailable");
    let run = app.run_job("prices").await;
    assert_eq!(run["last_outcome"], "error");
}

/// Inserts one sample of `configuration` in `country` at `at` (as stored: six fractional
/// digits) with `price` in micro-USDC.
async fn insert(
    store: &fluence_gateway::store::Store,
    at: &str,
    configuration: &str,
    country: &str,
    price: i64,
) {
    sqlx::query(
        "INSERT INTO price_samples (sampled_at, configuration, datacenter, country, city, tier, \
         price_micros, capacity) VALUES (?1, ?2, 'x-y-1', ?3, 'Y', 3, ?4, 1)",
    )
    .bind(at)
    .bind(configuration)
    .bind(country)
    .bind(price)
    .execute(store.pool())
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

async fn history(app: &TestApp, key: &str, query: &str) -> Value {
    let reply = app
        .call(Method::GET, &format!("/v1/prices?{query}"), Some(key), None)
        .await;
    assert_eq!(reply.status, 200, "{query}: {}", reply.text);
    reply.json
}

/// `(start, min, median, max, samples)` of every bucket.
fn summary(answer: &Value) -> Vec<(String, Value, Value, Value, u64)> {
    answer["buckets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            (
                b["start"].as_str().unwrap_or_default().to_owned(),
                b["min"].clone(),
                b["median"].clone(),
                b["max"].clone(),
                b["samples"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect()
}

fn bucket(
    start: &str,
    min: &str,
    median: &str,
    max: &str,
    n: u64,
) -> (String, Value, Value, Value, u64) {
    (start.to_owned(), json!(min), json!(median), json!(max), n)
}

fn empty(start: &str) -> (String, Value, Value, Value, u64) {
    (start.to_owned(), Value::Null, Value::Null, Value::Null, 0)
}

#[tokio::test]
async fn price_buckets_match_hand_computed_figures() {
    let app = TestApp::spawn().await;
    app.create_team("ml", "100").await;
    let viewer = app.mint_key("ml", "viewer").await;
    let store = app.store().await;
    for (at, configuration, country, price) in [
        // Exactly on the hour: the 10:00 bucket.
        ("2026-03-01T10:00:00.000000Z", SMALL, "DE", 300_000),
        ("2026-03-01T10:15:00.000000Z", SMALL, "DE", 100_000),
        ("2026-03-01T10:30:00.000000Z", SMALL, "DE", 400_000),
        ("2026-03-01T10:59:59.999999Z", SMALL, "DE", 200_000),
        // Exactly on the next hour: the 11:00 bucket, not the 10:00 one.
        ("2026-03-01T11:00:00.000000Z", SMALL, "DE", 500_000),
        ("2026-03-01T11:20:00.000000Z", SMALL, "DE", 700_000),
        ("2026-03-01T11:40:00.000000Z", SMALL, "DE", 600_000),
        ("2026-03-01T13:05:00.000000Z", SMALL, "DE", 900_000),
        ("2026-03-02T09:00:00.000000Z", SMALL, "DE", 1_000_000),
        // Filtered out by configuration, then by country.
        ("2026-03-01T10:10:00.000000Z", LARGER, "DE", 5_000_000),
        ("2026-03-01T10:20:00.000000Z", SMALL, "FR", 50_000),
    ] {
        insert(&store, at, configuration, country, price).await;
    }

    // Hourly: 10:00 holds 0.1 0.2 0.3 0.4 (even count: the lower middle, 0.2); 12:00 is empty.
    let hourly = history(
        &app,
        &viewer,
        &format!(
            "configuration={SMALL}&country=de&from=2026-03-01T10:00:00Z&to=2026-03-01T14:00:00Z&bucket=hour"
        ),
    )
    .await;
    assert_eq!(
        summary(&hourly),
        [
            bucket("2026-03-01T10:00:00Z", "0.1", "0.2", "0.4", 4),
            bucket("2026-03-01T11:00:00Z", "0.5", "0.6", "0.7", 3),
            empty("2026-03-01T12:00:00Z"),
            bucket("2026-03-01T13:00:00Z", "0.9", "0.9", "0.9", 1),
        ]
    );
    assert_eq!(hourly["buckets"][0]["end"], "2026-03-01T11:00:00Z");
    assert_eq!(hourly["bucket"], "hour");
    assert_eq!(hourly["country"], "DE");

    // Without the country filter the French sample joins 10:00: 0.05 0.1 0.2 0.3 0.4.
    let any_country = history(
        &app,
        &viewer,
        &format!("configuration={SMALL}&from=2026-03-01T10:00:00Z&to=2026-03-01T11:00:00Z"),
    )
    .await;
    assert_eq!(
        summary(&any_country),
        [bucket("2026-03-01T10:00:00Z", "0.05", "0.2", "0.4", 5)]
    );

    // Daily: 1 March holds 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.9 (median 0.4), 2 March 1.
    let daily = history(
        &app,
        &viewer,
        &format!(
            "configuration={SMALL}&country=DE&from=2026-03-01T00:00:00Z&to=2026-03-03T00:00:00Z&bucket=day"
        ),
    )
    .await;
    assert_eq!(
        summary(&daily),
        [
            bucket("2026-03-01T00:00:00Z", "0.1", "0.4", "0.9", 8),
            bucket("2026-03-02T00:00:00Z", "1", "1", "1", 1),
        ]
    );

    // A range that starts and ends inside hours: aligned buckets, only samples in the range.
    let partial = history(
        &app,
        &viewer,
        &format!(
            "configuration={SMALL}&country=DE&from=2026-03-01T10:30:00Z&to=2026-03-01T11:30:00Z"
        ),
    )
    .await;
    assert_eq!(
        summary(&partial),
        [
            bucket("2026-03-01T10:00:00Z", "0.2", "0.2", "0.4", 2),
            bucket("2026-03-01T11:00:00Z", "0.5", "0.5", "0.7", 2),
        ]
    );

    // An empty range: every bucket, none with a sample.
    let nothing = history(
        &app,
        &viewer,
        "from=2026-02-01T00:00:00Z&to=2026-02-01T03:00:00Z",
    )
    .await;
    assert_eq!(
        summary(&nothing),
        [
            empty("2026-02-01T00:00:00Z"),
            empty("2026-02-01T01:00:00Z"),
            empty("2026-02-01T02:00:00Z"),
        ]
    );

    // The default window: the last seven days, hourly.
    let recent = history(&app, &viewer, "").await;
    let count = recent["buckets"].as_array().map_or(0, Vec::len);
    assert!((168..=169).contains(&count), "{count}");
}

#[tokio::test]
async fn bad_price_queries_are_422_naming_the_field() {
    let app = TestApp::spawn().await;
    for (query, fields) in [
        ("bucket=week", vec!["bucket"]),
        (
            "from=2026-03-02T00:00:00Z&to=2026-03-01T00:00:00Z",
            vec!["to"],
        ),
        (
            "from=2026-03-01T00:00:00Z&to=2026-03-01T00:00:00Z",
            vec!["to"],
        ),
        (
            "from=2024-01-01T00:00:00Z&to=2026-01-01T00:00:00Z&bucket=day",
            vec!["from"],
        ),
        ("from=yesterday", vec!["from"]),
        ("to=2026-13-01T00:00:00Z", vec!["to"]),
        (
            "country=Deutschland&bucket=minute",
            vec!["country", "bucket"],
        ),
        ("configuration=", vec!["configuration"]),
        ("colour=red", vec!["colour"]),
    ] {
        let reply = app
            .call(
                Method::GET,
                &format!("/v1/prices?{query}"),
                Some(ADMIN_TOKEN),
                None,
            )
            .await;
        assert_eq!(reply.status, 422, "{query}: {}", reply.text);
        assert_eq!(reply.json["code"], "validation_failed");
        let named: Vec<&str> = reply.json["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["field"].as_str())
            .collect();
        assert_eq!(named, fields, "{query}");
    }
    // 366 days of hours is allowed (8 784 buckets).
    let year = app
        .call(
            Method::GET,
            "/v1/prices?from=2025-01-01T00:00:00Z&to=2026-01-02T00:00:00Z",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(year.status, 200, "{}", year.text);
    assert_eq!(year.json["buckets"].as_array().map(Vec::len), Some(8784));
}

#[tokio::test]
async fn the_sampler_deletes_samples_past_the_retention() {
    let app = TestApp::spawn_with_env(&[("GATEWAY__JOBS__PRICE_RETENTION_DAYS", "30")]).await;
    let store = app.store().await;
    let now = chrono::Utc::now();
    let old = fluence_gateway::store::time::to_db(now - chrono::TimeDelta::days(31));
    let kept = fluence_gateway::store::time::to_db(now - chrono::TimeDelta::days(29));
    insert(&store, &old, SMALL, "DE", 1).await;
    insert(&store, &kept, SMALL, "DE", 2).await;
    let run = app.run_job("prices").await;
    assert_eq!(run["last_outcome"], "ok", "{run}");
    assert!(
        run["last_detail"]
            .as_str()
            .is_some_and(|d| d.contains("1 samples past the retention deleted")),
        "{run}"
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM price_samples WHERE price_micros = 1"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM price_samples WHERE price_micros = 2"
        )
        .await,
        1
    );
}

const LISTS: [&str; 5] = [
    "configurations",
    "countries",
    "hardware",
    "datacenters",
    "images",
];

#[tokio::test]
async fn catalog_lists_are_served_and_cached() {
    let app = TestApp::spawn().await;
    app.create_team("ml", "100").await;
    let viewer = app.mint_key("ml", "viewer").await;
    for list in LISTS {
        let reply = app
            .call(
                Method::GET,
                &format!("/v1/catalog/{list}"),
                Some(&viewer),
                None,
            )
            .await;
        assert_eq!(reply.status, 200, "{list}: {}", reply.text);
        assert!(!items(&reply.json).is_empty(), "{list}: {}", reply.text);
        assert_eq!(reply.json["stale"], false);
        assert!(reply.json["fetched_at"].is_string());
        assert!(reply.header("warning").is_none());
        let anonymous = app
            .call(Method::GET, &format!("/v1/catalog/{list}"), None, None)
            .await;
        assert_eq!(anonymous.status, 401, "{list}");
    }
    assert_eq!(count(&app, "SELECT count(*) FROM catalog_cache").await, 5);

    // The same lists as the simulator's, in the gateway's own shape.
    let countries = app
        .call(Method::GET, "/v1/catalog/countries", Some(&viewer), None)
        .await;
    let codes: Vec<Value> = items(&countries.json)
        .iter()
        .map(|c| c["code"].clone())
        .collect();
    assert_eq!(
        Value::Array(codes),
        sim_get(&app, "/marketplace/countries").await
    );
    let configurations = app
        .call(
            Method::GET,
            "/v1/catalog/configurations",
            Some(&viewer),
            None,
        )
        .await;
    let small = items(&configurations.json)
        .into_iter()
        .find(|c| c["slug"] == SMALL)
        .unwrap_or_else(|| panic!("{}", configurations.text));
    assert_eq!(
        small,
        json!({"slug": SMALL, "vcpus": 2, "ram_gib": 4, "storage_gib": 25})
    );
    let hardware = app
        .call(Method::GET, "/v1/catalog/hardware", Some(&viewer), None)
        .await;
    let sim_hardware = sim_get(&app, "/marketplace/hardware").await;
    let cpus = items(&hardware.json)
        .iter()
        .filter(|h| h["category"] == "cpu")
        .count();
    assert_eq!(Some(cpus), sim_hardware["cpu"].as_array().map(Vec::len));
    let datacenters = app
        .call(Method::GET, "/v1/catalog/datacenters", Some(&viewer), None)
        .await;
    let first = &items(&datacenters.json)[0];
    for field in [
        "id",
        "slug",
        "country",
        "city",
        "index",
        "tier",
        "certifications",
    ] {
        assert!(first.get(field).is_some(), "{field} in {first}");
    }
    let images = app
        .call(Method::GET, "/v1/catalog/images", Some(&viewer), None)
        .await;
    assert!(
        items(&images.json)
            .iter()
            .any(|i| i["slug"] == "ubuntu-24-04-x64" && i["download_url"].is_string()),
        "{}",
        images.text
    );

    // Fresh copies are served without asking Fluence again: one call by the gateway, one by
    // this test.
    assert_eq!(calls_to(&app, "/marketplace/countries").await, 2);

    // The catalog job refreshes every list, and the next answer is the new copy, not the
    // one the gateway holds in memory.
    let run = app.run_job("catalog").await;
    assert_eq!(run["last_outcome"], "ok", "{run}");
    assert_eq!(calls_to(&app, "/marketplace/countries").await, 3);
    let refreshed = app
        .call(Method::GET, "/v1/catalog/countries", Some(&viewer), None)
        .await;
    assert_eq!(refreshed.header("content-type"), Some("application/json"));
    assert_eq!(refreshed.json["items"], countries.json["items"]);
    assert_ne!(
        refreshed.json["fetched_at"], countries.json["fetched_at"],
        "{}",
        refreshed.text
    );
}

#[tokio::test]
async fn a_stale_copy_is_served_while_fluence_fails_and_no_copy_is_503() {
    let app = TestApp::spawn().await;
    let fresh = app
        .call(
            Method::GET,
            "/v1/catalog/countries",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(fresh.status, 200, "{}", fresh.text);
    // A refresh, so that the answer held in memory is forgotten and the next request reads the
    // stored copy; then that copy ages past the TTL (moved back rather than waited for).
    let run = app.run_job("catalog").await;
    assert_eq!(run["last_outcome"], "ok", "{run}");
    let store = app.store().await;
    sqlx::query("UPDATE catalog_cache SET fetched_at = '2000-01-01T00:00:00.000000Z'")
        .execute(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // And the hardware list was never stored.
    sqlx::query("DELETE FROM catalog_cache WHERE name = 'hardware'")
        .execute(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for endpoint in ["GET /marketplace/countries", "GET /marketplace/hardware"] {
        app.sim_post(
            "/_sim/faults",
            json!({"endpoint": endpoint, "fault": "error_before_commit", "status": 503, "count": 100}),
        )
        .await;
    }
    let stale = app
        .call(
            Method::GET,
            "/v1/catalog/countries",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(stale.status, 200, "{}", stale.text);
    assert_eq!(stale.json["stale"], true);
    assert_eq!(stale.json["fetched_at"], "2000-01-01T00:00:00Z");
    assert_eq!(stale.json["items"], fresh.json["items"]);
    assert_eq!(stale.header("warning"), Some("110 - \"stale\""));

    let missing = app
        .call(Method::GET, "/v1/catalog/hardware", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(missing.status, 503, "{}", missing.text);
    assert_eq!(missing.json["code"], "upstream_unavailable");

    // The job reports the failing lists and refreshes the others.
    let run = app.run_job("catalog").await;
    assert_eq!(run["last_outcome"], "error", "{run}");
    let detail = run["last_detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("countries") && detail.contains("hardware"),
        "{detail}"
    );

    // Once Fluence answers again, the next read is fresh.
    let cleared = app
        .http
        .delete(format!(
            "{}/_sim/faults",
            app.sim.as_ref().map(|s| s.base_url()).unwrap_or_default()
        ))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(cleared.status().is_success());
    let again = app
        .call(
            Method::GET,
            "/v1/catalog/countries",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(again.json["stale"], false, "{}", again.text);
}

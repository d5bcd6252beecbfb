//! The simulator over HTTP: shapes, auth, marketplace, lifecycle, billing and faults, all on a
//! manual virtual clock so nothing depends on real time.
// A failed setup step in a test should stop it loudly.
#![allow(clippy::expect_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fluence_gateway::domain::money::Usdc;
use fluence_gateway::simulator::{self, ClockMode, SimulatorConfig, SimulatorHandle};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const KEY: &str = "sim-key";
const START: &str = "2025-11-03T09:14:27Z";
const IMAGE: &str =
    "https://cloud-images.ubuntu.com/releases/24.04/release/ubuntu-24.04-server-cloudimg-amd64.img";
const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJPNRUbzCJj/DUYrxXA55JMWoZh+Upg7nGXMiLxDoo4b alice@laptop";

struct Sim {
    handle: SimulatorHandle,
    http: reqwest::Client,
}

fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(START)
        .map(|t| t.with_timezone(&Utc))
        .expect("start time")
}

fn manual() -> SimulatorConfig {
    SimulatorConfig {
        clock: ClockMode::Manual,
        start_time: Some(start()),
        ..SimulatorConfig::default()
    }
}

async fn sim() -> Sim {
    sim_with(manual()).await
}

async fn sim_with(config: SimulatorConfig) -> Sim {
    let handle = simulator::spawn(config).await.expect("spawn simulator");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    Sim { handle, http }
}

impl Sim {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.handle.base_url())
    }

    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> reqwest::RequestBuilder {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let builder = self.http.request(method, self.url(path));
        match body {
            Some(body) => builder.json(body),
            None => builder,
        }
    }

    async fn send(builder: reqwest::RequestBuilder) -> (u16, Value) {
        let response = builder.send().await.expect("response");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    /// A Fluence call with the key.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        Self::send(
            self.request(method, path, body.as_ref())
                .header("X-API-KEY", KEY),
        )
        .await
    }

    /// A `/_sim/` call (no key).
    async fn control(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        Self::send(self.request(method, path, body.as_ref())).await
    }

    async fn advance(&self, seconds: u64) {
        let (status, _) = self
            .control(
                "POST",
                "/_sim/clock",
                Some(json!({ "advance_seconds": seconds })),
            )
            .await;
        assert_eq!(status, 200);
    }

    async fn state(&self) -> Value {
        self.control("GET", "/_sim/state", None).await.1
    }

    async fn list(&self) -> Vec<Value> {
        let (status, body) = self.call("GET", "/vms/v3", None).await;
        assert_eq!(status, 200);
        body.as_array().cloned().expect("list is an array")
    }

    async fn vm(&self, id: &str) -> Value {
        self.list()
            .await
            .into_iter()
            .find(|vm| {
                vm["id"]
                    .as_str()
                    .is_some_and(|v| v.eq_ignore_ascii_case(id))
            })
            .expect("vm in the list")
    }

    async fn create(&self, constraints: Value, instances: u32) -> (u16, Value) {
        self.call(
            "POST",
            "/vms/v3",
            Some(create_body(constraints, instances, json!([]))),
        )
        .await
    }

    /// Creates VMs and returns their ids.
    async fn create_ok(&self, constraints: Value, instances: u32) -> Vec<String> {
        let (status, body) = self.create(constraints, instances).await;
        assert_eq!(status, 201, "{body}");
        ids(&body)
    }

    async fn balance(&self) -> Usdc {
        money(&self.state().await["balance"])
    }
}

fn create_body(constraints: Value, instances: u32, ports: Value) -> Value {
    json!({
        "constraints": constraints,
        "instances": instances,
        "vmConfiguration": {
            "name": "web-1",
            "osImage": IMAGE,
            "openPorts": ports,
            "sshKeys": [SSH_KEY],
        }
    })
}

fn small() -> Value {
    json!({ "basicConfiguration": "cpu-2-ram-4gb-storage-25gb" })
}

fn ids(created: &Value) -> Vec<String> {
    created
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|vm| vm["vmId"].as_str().map(str::to_owned))
        .collect()
}

fn money(value: &Value) -> Usdc {
    Usdc::parse(value.as_str().expect("a decimal string")).expect("an amount")
}

fn usdc(micros: i64) -> Usdc {
    Usdc::from_micros(micros)
}

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/api/fixtures/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).expect("fixture");
    serde_json::from_str(&text).expect("fixture JSON")
}

/// Fields the doc allows to be null (either side may be null).
const NULLABLE: [&str; 4] = ["publicIp", "datacenter", "osImage", "perVmLimit"];
/// Fields the doc allows to be absent.
const OPTIONAL: [&str; 2] = ["nextBillingAt", "statusChangedAt"];
/// Free-form objects whose keys are the provider's business.
const FREE_FORM: [&str; 1] = ["details"];

/// Checks that `actual` has the field names and JSON types of `expected`. Each element of an
/// actual array must match at least one element of the expected array.
fn same_shape(actual: &Value, expected: &Value, at: &str) -> Result<(), String> {
    match (actual, expected) {
        (Value::Array(items), Value::Array(examples)) => {
            if examples.is_empty() {
                return Ok(());
            }
            for (i, item) in items.iter().enumerate() {
                let errors: Vec<String> = examples
                    .iter()
                    .filter_map(|example| same_shape(item, example, &format!("{at}[{i}]")).err())
                    .collect();
                if errors.len() == examples.len() {
                    return Err(errors.join(" / "));
                }
            }
            Ok(())
        }
        (Value::Object(fields), Value::Object(expected_fields)) => {
            for (key, value) in expected_fields {
                let here = format!("{at}.{key}");
                match fields.get(key) {
                    None if OPTIONAL.contains(&key.as_str()) => {}
                    None => return Err(format!("{here} is missing")),
                    Some(_) if FREE_FORM.contains(&key.as_str()) => {}
                    Some(Value::Null) if NULLABLE.contains(&key.as_str()) => {}
                    Some(_) if value.is_null() && NULLABLE.contains(&key.as_str()) => {}
                    Some(actual) => same_shape(actual, value, &here)?,
                }
            }
            for key in fields.keys() {
                if !expected_fields.contains_key(key) && !OPTIONAL.contains(&key.as_str()) {
                    return Err(format!("{at}.{key} is not in the documented shape"));
                }
            }
            Ok(())
        }
        (Value::String(_), Value::String(_))
        | (Value::Number(_), Value::Number(_))
        | (Value::Bool(_), Value::Bool(_))
        | (Value::Null, Value::Null) => Ok(()),
        _ => Err(format!("{at}: {actual} is not shaped like {expected}")),
    }
}

fn assert_shape(actual: &Value, fixture_name: &str) {
    let expected = fixture(fixture_name);
    if let Err(error) = same_shape(actual, &expected, fixture_name) {
        panic!("{fixture_name}: {error}\nactual: {actual}");
    }
    if expected.as_array().is_some_and(|e| !e.is_empty()) {
        assert!(
            actual.as_array().is_some_and(|a| !a.is_empty()),
            "{fixture_name}: an empty answer proves nothing"
        );
    }
}

/// The offers of one configuration in one country, and the VM slots they offer.
async fn slots(sim: &Sim, constraints: &Value) -> u64 {
    let (status, offers) = sim
        .call("POST", "/marketplace/offers", Some(constraints.clone()))
        .await;
    assert_eq!(status, 200);
    offers
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|offer| offer["servers"].as_array().cloned().unwrap_or_default())
        .filter_map(|server| server["availableBasicInstances"].as_u64())
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Shapes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_endpoint_answers_the_shape_of_its_fixture() {
    let sim = sim().await;

    for (path, name) in [
        ("/marketplace/basic_configurations", "basic_configurations"),
        ("/marketplace/countries", "countries"),
        ("/marketplace/hardware", "hardware"),
        ("/v1/marketplace/datacenters", "datacenters"),
        ("/vms/v3/default_images", "default_images"),
    ] {
        let (status, body) = sim.call("GET", path, None).await;
        assert_eq!(status, 200, "{path}");
        assert_shape(&body, name);
    }
    let (_, images) = sim.call("GET", "/vms/v3/default_images", None).await;
    assert_eq!(images, fixture("default_images"));
    let (_, configurations) = sim
        .call("GET", "/marketplace/basic_configurations", None)
        .await;
    assert_eq!(configurations, fixture("basic_configurations"));

    let (status, offers) = sim
        .call("POST", "/marketplace/offers", Some(json!({})))
        .await;
    assert_eq!(status, 200);
    assert_shape(&offers, "offers_response");
    let (status, filtered) = sim
        .call(
            "POST",
            "/marketplace/offers",
            Some(fixture("offers_request")),
        )
        .await;
    assert_eq!(status, 200, "{filtered}");
    assert!(filtered.is_array());

    let (status, estimate) = sim
        .call(
            "POST",
            "/vms/v3/estimate",
            Some(fixture("estimate_request")),
        )
        .await;
    assert_eq!(status, 200, "{estimate}");
    assert_shape(&estimate, "estimate_response");
    let (status, refusal) = sim
        .call(
            "POST",
            "/vms/v3/estimate",
            Some(json!({ "constraints": small(), "instances": 100_000 })),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(refusal, fixture("estimate_422"));

    let (status, key) = sim
        .call("POST", "/ssh_keys", Some(fixture("create_ssh_key_request")))
        .await;
    assert_eq!(status, 201);
    assert_shape(&json!([key]), "ssh_keys");
    let (_, keys) = sim.call("GET", "/ssh_keys", None).await;
    assert_shape(&keys, "ssh_keys");
    assert_eq!(
        keys[0]["fingerprint"],
        "SHA256:FjcXCzoKRrOW+pjGfiJB5TGShTsTybxUBWnfG1lxnRI"
    );
    assert!(
        keys[0]["createdAt"]
            .as_str()
            .is_some_and(|t| t.starts_with("+002025-11-03T09:14:27."))
    );

    let mut request = fixture("create_vm_request");
    request["constraints"] = small();
    request["vmConfiguration"]["sshKeys"] = json!(["alice-laptop"]);
    let (status, created) = sim.call("POST", "/vms/v3", Some(request)).await;
    assert_eq!(status, 201, "{created}");
    assert_shape(&created, "create_vm_response");
    let (status, refusal) = sim
        .create(json!({ "maxTotalPricePerEpochUsd": "0.000001" }), 1)
        .await;
    assert_eq!(status, 422);
    assert_eq!(refusal, fixture("create_vm_422"));

    // One VM of each kind: launching, active, terminated.
    let launching = sim.create_ok(small(), 1).await;
    let active = sim.create_ok(small(), 1).await;
    let terminated = sim.create_ok(small(), 1).await;
    sim.advance(2).await;
    sim.control(
        "POST",
        &format!("/_sim/vms/{}/terminate", terminated[0]),
        None,
    )
    .await;
    sim.advance(90).await;
    let later = sim.create_ok(small(), 1).await;
    sim.advance(2).await;
    let list = Value::Array(sim.list().await);
    assert_shape(&list, "list_vms");
    assert_eq!(sim.vm(&active[0]).await["status"], "Active");
    assert_eq!(sim.vm(&terminated[0]).await["status"], "Terminated");
    assert_eq!(sim.vm(&later[0]).await["status"], "Launching");
    assert_eq!(sim.vm(&later[0]).await["createdAt"], "2025-11-03T09:15:59Z");

    let (status, statuses) = sim
        .call(
            "GET",
            &format!("/vms/v3/status?ids={},{}", later[0], active[0]),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_shape(&statuses, "vm_status");

    let (status, deleted) = sim
        .call(
            "DELETE",
            "/vms/v3",
            Some(json!({ "vmIds": [launching[0], terminated[0]] })),
        )
        .await;
    assert_eq!(status, 200);
    assert_shape(&deleted, "delete_vms_response");
    assert!(
        deleted["transactions"][0]
            .as_str()
            .is_some_and(|t| t.len() == 66 && t.starts_with("0x"))
    );

    let (status, _) = sim
        .call(
            "PATCH",
            "/vms/v3",
            Some(json!({ "updates": [{ "id": active[0], "vmName": "db-primary" }] })),
        )
        .await;
    assert_eq!(status, 204);
}

#[tokio::test]
async fn vm_ids_are_eip55_checksummed() {
    let sim = sim().await;
    let created = sim.create_ok(small(), 3).await;
    for id in created {
        assert_eq!(id.len(), 42);
        assert!(id.starts_with("0x"));
        assert!(id[2..].chars().any(|c| c.is_ascii_uppercase()));
        assert!(id[2..].chars().all(|c| c.is_ascii_hexdigit()));
    }
}

#[tokio::test]
async fn unknown_routes_and_malformed_bodies_get_fluence_errors() {
    let sim = sim().await;
    let (status, body) = sim.call("GET", "/vms/v4", None).await;
    assert_eq!((status, body), (404, json!({ "error": "Not found" })));
    let (status, body) = Sim::send(
        sim.request("POST", "/vms/v3", None)
            .header("X-API-KEY", KEY)
            .header("content-type", "application/json")
            .body("{not json"),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body["error"].is_string());
    let (status, body) = sim
        .call(
            "POST",
            "/vms/v3/estimate",
            Some(json!({ "instances": "two" })),
        )
        .await;
    assert_eq!(status, 400);
    assert!(body["error"].is_string());
}

// ---------------------------------------------------------------------------------------------
// Auth
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_missing_or_wrong_key_is_refused_and_both_headers_work() {
    let sim = sim().await;
    let refusal = json!({ "error": "Auth failed. No such API Key" });
    let path = "/marketplace/countries";

    let none = Sim::send(sim.request("GET", path, None)).await;
    assert_eq!(none, (403, refusal.clone()));
    let wrong = Sim::send(sim.request("GET", path, None).header("X-API-KEY", "nope")).await;
    assert_eq!(wrong, (403, refusal.clone()));
    let wrong_bearer = Sim::send(sim.request("GET", path, None).bearer_auth("nope")).await;
    assert_eq!(wrong_bearer, (403, refusal.clone()));

    let bearer = Sim::send(sim.request("GET", path, None).bearer_auth(KEY)).await;
    assert_eq!(bearer.0, 200);
    let api_key = Sim::send(sim.request("GET", path, None).header("X-API-KEY", KEY)).await;
    assert_eq!(api_key.0, 200);

    sim.control(
        "POST",
        "/_sim/config",
        Some(json!({ "auth_failure_status": 401 })),
    )
    .await;
    let none = Sim::send(sim.request("GET", path, None)).await;
    assert_eq!(none, (401, refusal));

    // The key never reaches the record of calls.
    let state = sim.state().await.to_string();
    assert!(!state.contains(KEY));
}

// ---------------------------------------------------------------------------------------------
// Marketplace
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn capacity_runs_out_and_comes_back_after_delete() {
    let sim = sim().await;
    let constraints = json!({
        "basicConfiguration": "cpu-4-ram-8gb-storage-25gb",
        "datacenter": { "countries": ["DE"] }
    });
    let total = slots(&sim, &constraints).await;
    assert!(total > 0);
    let total = u32::try_from(total).expect("slots");

    let (status, body) = sim.create(constraints.clone(), total + 1).await;
    assert_eq!(
        (status, body),
        (422, json!({ "error": "Not enough offers found" }))
    );
    assert_eq!(sim.state().await["vms"], json!([]));

    let created = sim.create_ok(constraints.clone(), total).await;
    assert_eq!(created.len(), usize::try_from(total).expect("count"));
    assert_eq!(slots(&sim, &constraints).await, 0);
    // Full offers still match: a shortage of slots is "Not enough offers found".
    let (status, body) = sim.create(constraints.clone(), 1).await;
    assert_eq!(
        (status, body),
        (422, json!({ "error": "Not enough offers found" }))
    );

    let (status, _) = sim
        .call("DELETE", "/vms/v3", Some(json!({ "vmIds": [created[0]] })))
        .await;
    assert_eq!(status, 200);
    assert_eq!(slots(&sim, &constraints).await, 1);
    sim.create_ok(constraints, 1).await;
}

#[tokio::test]
async fn zero_free_slots_is_not_enough_offers_rather_than_no_suitable_offer() {
    let sim = sim().await;
    let (status, _) = sim
        .control(
            "POST",
            "/_sim/market",
            Some(json!({ "configuration": "cpu-2-ram-4gb-storage-25gb", "capacity": 0 })),
        )
        .await;
    assert_eq!(status, 200);
    let not_enough = (422, json!({ "error": "Not enough offers found" }));
    assert_eq!(sim.create(small(), 1).await, not_enough);
    // Without a configuration the smallest one is chosen, and it is full.
    assert_eq!(sim.create(json!({}), 1).await, not_enough);
    let estimate = sim
        .call(
            "POST",
            "/vms/v3/estimate",
            Some(json!({ "constraints": small(), "instances": 1 })),
        )
        .await;
    assert_eq!(estimate, not_enough);
    // The listing still leaves out offers with nothing to sell.
    assert_eq!(slots(&sim, &small()).await, 0);
    // A filter that nothing matches stays "No suitable offer found".
    let (status, body) = sim
        .create(json!({ "basicConfiguration": "cpu-2-ram-4gb-storage-25gb", "datacenter": { "countries": ["AQ"] } }), 1)
        .await;
    assert_eq!(
        (status, body),
        (422, json!({ "error": "No suitable offer found" }))
    );
    assert_eq!(vm_count(&sim).await, 0);
}

#[tokio::test]
async fn a_price_cap_below_the_cheapest_offer_finds_nothing() {
    let sim = sim().await;
    let (_, offers) = sim
        .call("POST", "/marketplace/offers", Some(json!({})))
        .await;
    let cheapest = offers
        .as_array()
        .into_iter()
        .flatten()
        .map(|offer| money(&offer["configuration"]["price"]))
        .min()
        .expect("offers");
    let below = usdc(cheapest.micros() - 1).to_string();
    let body = json!({ "error": "No suitable offer found" });

    let (status, answer) = sim
        .create(json!({ "maxTotalPricePerEpochUsd": below }), 1)
        .await;
    assert_eq!((status, answer), (422, body.clone()));
    let (status, answer) = sim
        .call(
            "POST",
            "/vms/v3/estimate",
            Some(json!({ "constraints": { "maxTotalPricePerEpochUsd": below }, "instances": 1 })),
        )
        .await;
    assert_eq!((status, answer), (422, body));
    let (_, listed) = sim
        .call(
            "POST",
            "/marketplace/offers",
            Some(json!({ "maxTotalPricePerEpochUsd": below })),
        )
        .await;
    assert_eq!(listed, json!([]));

    let (status, _) = sim
        .create(
            json!({ "maxTotalPricePerEpochUsd": cheapest.to_string() }),
            1,
        )
        .await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn the_documented_constraint_rules_are_enforced_everywhere() {
    let sim = sim().await;
    let bad_constraints = [
        json!({ "additionalResources": { "storage": [{ "supply": 20, "units": "GiB", "type": "NVMe" }] } }),
        json!({ "hardware": { "cpu": [{ "manufacturer": "AMD" }] } }),
        json!({ "hardware": { "memory": [{ "type": "DDR" }] } }),
        json!({ "basicConfiguration": "cpu-3-ram-5gb-storage-25gb" }),
        json!({
            "additionalResources": { "storage": [{ "supply": 20, "units": "GB", "type": "NVMe" }] },
            "hardware": { "storage": [{ "type": "NVMe" }] }
        }),
    ];
    for constraints in bad_constraints {
        let offers = sim
            .call("POST", "/marketplace/offers", Some(constraints.clone()))
            .await;
        let estimate = sim
            .call(
                "POST",
                "/vms/v3/estimate",
                Some(json!({ "constraints": constraints, "instances": 1 })),
            )
            .await;
        let create = sim.create(constraints.clone(), 1).await;
        for (status, body) in [offers, estimate, create] {
            assert_eq!(status, 422, "{constraints}: {body}");
            assert!(body["error"].is_string());
        }
    }

    let bad_requests = [
        create_body(small(), 0, json!([])),
        create_body(small(), 1, json!([{ "port": 10250, "protocol": "tcp" }])),
        json!({ "instances": 1, "vmConfiguration": { "name": "web_1", "osImage": IMAGE, "openPorts": [], "sshKeys": [SSH_KEY] } }),
        json!({ "instances": 1, "vmConfiguration": { "name": "", "osImage": IMAGE, "openPorts": [], "sshKeys": [SSH_KEY] } }),
        json!({ "instances": 1, "vmConfiguration": { "name": "web", "osImage": "https://x/image.iso", "openPorts": [], "sshKeys": [SSH_KEY] } }),
        json!({ "instances": 1, "vmConfiguration": { "name": "web", "osImage": IMAGE, "openPorts": [], "sshKeys": [] } }),
        json!({ "instances": -1, "vmConfiguration": { "name": "web", "osImage": IMAGE, "openPorts": [], "sshKeys": [SSH_KEY] } }),
    ];
    for request in bad_requests {
        let (status, body) = sim.call("POST", "/vms/v3", Some(request.clone())).await;
        assert_eq!(status, 422, "{request}: {body}");
    }
    let (_, body) = sim
        .call(
            "POST",
            "/vms/v3",
            Some(create_body(
                small(),
                1,
                json!([{ "port": 10250, "protocol": "tcp" }]),
            )),
        )
        .await;
    assert_eq!(body, json!({ "error": "Port 10250 is reserved" }));
    assert_eq!(sim.state().await["vms"], json!([]));
}

#[tokio::test]
async fn estimate_and_deploy_at_the_same_instant_agree() {
    let sim = sim().await;
    let constraints = json!({ "basicConfiguration": "cpu-2-ram-4gb-storage-25gb", "datacenter": { "countries": ["DE", "PL"] } });
    let (status, estimate) = sim
        .call(
            "POST",
            "/vms/v3/estimate",
            Some(json!({ "constraints": constraints, "instances": 3 })),
        )
        .await;
    assert_eq!(status, 200);
    let before = sim.balance().await;
    let created = sim.create_ok(constraints, 3).await;
    assert_eq!(created.len(), 3);

    let state = sim.state().await;
    let prices: Vec<Usdc> = state["vms"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|vm| money(&vm["price_per_epoch"]))
        .collect();
    let total = usdc(prices.iter().map(|p| p.micros()).sum());
    assert_eq!(money(&estimate["totalPricePerEpoch"]), total);
    assert_eq!(
        money(&estimate["maxPricePerEpoch"]),
        prices.iter().copied().max().expect("prices")
    );
    assert_eq!(estimate["depositEpochs"], 2);
    assert_eq!(estimate["instances"], 3);
    let deposit = money(&estimate["depositAmountUsdc"]);
    assert_eq!(deposit, usdc(total.micros() * 2));
    assert_eq!(
        sim.balance().await,
        usdc(before.micros() - deposit.micros())
    );
    let charged: i64 = state["charges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| money(&c["amount"]).micros())
        .sum();
    assert_eq!(charged, total.micros());
}

#[tokio::test]
async fn extra_storage_is_priced_per_gib_and_shows_in_the_vm() {
    let sim = sim().await;
    let (_, offers) = sim
        .call(
            "POST",
            "/marketplace/offers",
            Some(json!({ "basicConfiguration": "cpu-2-ram-4gb-storage-25gb" })),
        )
        .await;
    let offer = offers[0].clone();
    let kind = offer["maxAdditionalSupply"][0]["metadata"]["type"].clone();
    let constraints = json!({
        "basicConfiguration": "cpu-2-ram-4gb-storage-25gb",
        "additionalResources": { "storage": [{ "supply": 20, "units": "GiB", "type": kind }] },
        "hardware": { "storage": [{ "type": kind }] },
        "datacenter": { "countries": [offer["datacenter"]["countryCode"]] },
    });
    let (status, estimate) = sim
        .call(
            "POST",
            "/vms/v3/estimate",
            Some(json!({ "constraints": constraints, "instances": 1 })),
        )
        .await;
    assert_eq!(status, 200, "{estimate}");
    let ids = sim.create_ok(constraints, 1).await;
    let vm = sim.vm(&ids[0]).await;
    assert_eq!(vm["pricePerEpoch"], estimate["totalPricePerEpoch"]);
    let storage = vm["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["type"] == "STORAGE")
        .cloned()
        .expect("storage");
    assert_eq!(storage["supply"], 45);
    assert_eq!(storage["units"], "GiB");
}

#[tokio::test]
async fn the_seed_reproduces_the_marketplace() {
    let offers = |seed: u64| async move {
        let sim = sim_with(SimulatorConfig { seed, ..manual() }).await;
        let (_, offers) = sim
            .call("POST", "/marketplace/offers", Some(json!({})))
            .await;
        let (_, datacenters) = sim.call("GET", "/v1/marketplace/datacenters", None).await;
        (offers, datacenters)
    };
    let a = offers(7).await;
    let b = offers(7).await;
    let c = offers(8).await;
    assert_eq!(a, b);
    assert_ne!(a.0, c.0);
}

#[tokio::test]
async fn prices_drift_with_time_unless_switched_off_and_can_be_multiplied() {
    let sim = sim().await;
    let price = |offers: &Value| money(&offers[0]["configuration"]["price"]);
    let query = json!({ "basicConfiguration": "cpu-2-ram-4gb-storage-25gb", "datacenter": { "countries": ["FR"] } });
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..12 {
        let (_, offers) = sim
            .call("POST", "/marketplace/offers", Some(query.clone()))
            .await;
        seen.insert(price(&offers));
        sim.advance(3600).await;
    }
    assert!(seen.len() > 1, "prices never moved: {seen:?}");

    sim.control(
        "POST",
        "/_sim/config",
        Some(json!({ "price_drift": false })),
    )
    .await;
    let (_, first) = sim
        .call("POST", "/marketplace/offers", Some(query.clone()))
        .await;
    sim.advance(7 * 3600).await;
    let (_, second) = sim
        .call("POST", "/marketplace/offers", Some(query.clone()))
        .await;
    assert_eq!(first, second);

    let (status, _) = sim
        .control(
            "POST",
            "/_sim/market",
            Some(json!({ "configuration": "cpu-2-ram-4gb-storage-25gb", "country": "FR", "price_multiplier": 2 })),
        )
        .await;
    assert_eq!(status, 200);
    let (_, doubled) = sim
        .call("POST", "/marketplace/offers", Some(query.clone()))
        .await;
    assert_eq!(price(&doubled).micros(), price(&first).micros() * 2);

    sim.control(
        "POST",
        "/_sim/market",
        Some(json!({ "country": "FR", "configuration": "cpu-2-ram-4gb-storage-25gb", "capacity": 1 })),
    )
    .await;
    let (_, offers) = sim
        .call("POST", "/marketplace/offers", Some(query.clone()))
        .await;
    let count = offers.as_array().map_or(0, Vec::len);
    assert!(count > 0);
    assert_eq!(
        slots(&sim, &query).await,
        u64::try_from(count).expect("count")
    );
}

#[tokio::test]
async fn a_price_multiplier_outside_0_to_1000_is_refused_and_prices_stay_positive() {
    let sim = sim().await;
    let before = sim
        .call("POST", "/marketplace/offers", Some(small()))
        .await
        .1;
    for multiplier in [
        json!("9000000000000"),
        json!("0"),
        json!(0),
        json!("1000.000001"),
    ] {
        let (status, body) = sim
            .control(
                "POST",
                "/_sim/market",
                Some(json!({ "price_multiplier": multiplier })),
            )
            .await;
        assert_eq!(status, 400, "{multiplier}: {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    let (_, unchanged) = sim.call("POST", "/marketplace/offers", Some(small())).await;
    assert_eq!(unchanged, before);

    let (status, _) = sim
        .control(
            "POST",
            "/_sim/market",
            Some(json!({ "price_multiplier": "1000" })),
        )
        .await;
    assert_eq!(status, 200);
    let (_, offers) = sim
        .call("POST", "/marketplace/offers", Some(json!({})))
        .await;
    let offers = offers.as_array().cloned().unwrap_or_default();
    assert!(!offers.is_empty());
    for offer in &offers {
        assert!(
            money(&offer["configuration"]["price"]) > usdc(100_000_000),
            "{offer}"
        );
        for resource in offer["resources"].as_array().into_iter().flatten() {
            assert!(money(&resource["price"]) > Usdc::ZERO, "{resource}");
        }
    }
    let balance = sim.balance().await;
    let id = sim.create_ok(small(), 1).await.remove(0);
    let price = money(&sim.vm(&id).await["pricePerEpoch"]);
    assert!(price > usdc(100_000_000));
    assert_eq!(
        sim.balance().await,
        usdc(balance.micros() - 2 * price.micros())
    );
}

// ---------------------------------------------------------------------------------------------
// Lifecycle and billing
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_vm_goes_new_launching_active_on_the_virtual_clock() {
    let sim = sim().await;
    let id = sim.create_ok(small(), 1).await.remove(0);
    let vm = sim.vm(&id).await;
    assert_eq!(vm["status"], "New");
    assert_eq!(vm["publicIp"], Value::Null);
    assert_eq!(vm["createdAt"], START);
    assert_eq!(vm["nextBillingAt"], "2025-11-04T09:14:27Z");
    assert_eq!(vm["ports"], json!([{ "port": 22, "protocol": "tcp" }]));

    sim.advance(1).await;
    assert_eq!(sim.vm(&id).await["status"], "New");
    sim.advance(1).await;
    let vm = sim.vm(&id).await;
    assert_eq!(vm["status"], "Launching");
    assert_eq!(vm["statusChangedAt"], "2025-11-03T09:14:29Z");

    sim.advance(89).await;
    assert_eq!(sim.vm(&id).await["status"], "Launching");
    sim.advance(1).await;
    let vm = sim.vm(&id).await;
    assert_eq!(vm["status"], "Active");
    assert_eq!(vm["statusChangedAt"], "2025-11-03T09:15:59Z");
    assert!(
        vm["publicIp"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("203.0.113."))
    );

    let (_, statuses) = sim
        .call(
            "GET",
            &format!(
                "/vms/v3/status?ids={},0x{}",
                id.to_lowercase(),
                "0".repeat(40)
            ),
            None,
        )
        .await;
    assert_eq!(statuses.as_array().map(Vec::len), Some(1));
    assert_eq!(statuses[0]["status"], "Active");
    assert_eq!(statuses[0]["publicIp"], vm["publicIp"]);
    let (_, none) = sim.call("GET", "/vms/v3/status", None).await;
    assert_eq!(none, json!([]));
}

/// The public IPs of the listed VMs that have one.
async fn live_ips(sim: &Sim) -> Vec<String> {
    sim.list()
        .await
        .iter()
        .filter_map(|vm| vm["publicIp"].as_str().map(str::to_owned))
        .collect()
}

fn in_documented_ranges(ip: &str) -> bool {
    let host = ["203.0.113.", "198.51.100."]
        .iter()
        .find_map(|range| ip.strip_prefix(range))
        .and_then(|host| host.parse::<u8>().ok());
    host.is_some_and(|host| (1..=254).contains(&host))
}

#[tokio::test]
async fn public_ips_stay_in_the_documented_ranges_and_are_unique_among_live_vms() {
    let sim = sim().await;
    sim.control(
        "POST",
        "/_sim/market",
        Some(json!({ "configuration": "cpu-2-ram-4gb-storage-25gb", "capacity": 2000 })),
    )
    .await;
    let first = sim.create_ok(small(), 508).await;
    sim.advance(92).await;
    let ips = live_ips(&sim).await;
    assert_eq!(ips.len(), 508);
    assert!(ips.iter().all(|ip| in_documented_ranges(ip)), "{ips:?}");
    assert_eq!(ips.iter().collect::<HashSet<_>>().len(), 508);

    // Half of them go; their addresses are free for the next ones.
    let (status, _) = sim
        .call("DELETE", "/vms/v3", Some(json!({ "vmIds": first[..254] })))
        .await;
    assert_eq!(status, 200);
    sim.advance(10).await;
    sim.create_ok(small(), 254).await;
    sim.advance(92).await;
    let ips = live_ips(&sim).await;
    assert_eq!(ips.len(), 508);
    assert!(ips.iter().all(|ip| in_documented_ranges(ip)), "{ips:?}");
    assert_eq!(ips.iter().collect::<HashSet<_>>().len(), 508);

    // With all 508 held, one more VM shares an address, still from the ranges...
    sim.create_ok(small(), 1).await;
    sim.advance(92).await;
    let ips = live_ips(&sim).await;
    assert_eq!(ips.len(), 509);
    assert!(ips.iter().all(|ip| in_documented_ranges(ip)), "{ips:?}");
    assert_eq!(ips.iter().collect::<HashSet<_>>().len(), 508);
    // ...but once one is given back (a provider termination here), the next VM gets it alone.
    let unique = sim
        .list()
        .await
        .into_iter()
        .find(|vm| {
            let ip = vm["publicIp"].as_str().unwrap_or_default();
            ips.iter().filter(|other| *other == ip).count() == 1
        })
        .expect("a VM with an address of its own");
    let id = unique["id"].as_str().expect("id");
    sim.control("POST", &format!("/_sim/vms/{id}/terminate"), None)
        .await;
    sim.create_ok(small(), 1).await;
    sim.advance(92).await;
    let ips = live_ips(&sim).await;
    assert_eq!(ips.len(), 509);
    assert_eq!(ips.iter().collect::<HashSet<_>>().len(), 508);
    assert!(ips.contains(&unique["publicIp"].as_str().expect("ip").to_owned()));
}

#[tokio::test]
async fn new_vms_can_be_kept_launching_and_launch_time_configured() {
    let sim = sim().await;
    sim.control(
        "POST",
        "/_sim/config",
        Some(json!({ "stuck_launching": true })),
    )
    .await;
    let stuck = sim.create_ok(small(), 1).await.remove(0);
    sim.control(
        "POST",
        "/_sim/config",
        Some(json!({ "stuck_launching": false, "launch_seconds": 0 })),
    )
    .await;
    let quick = sim.create_ok(small(), 1).await.remove(0);
    sim.advance(2).await;
    assert_eq!(sim.vm(&quick).await["status"], "Active");
    sim.advance(86_000).await;
    assert_eq!(sim.vm(&stuck).await["status"], "Launching");
}

#[tokio::test]
async fn billing_charges_each_epoch_and_tops_up_the_reserve_exactly() {
    let sim = sim().await;
    sim.control("POST", "/_sim/balance", Some(json!({ "usdc": "100" })))
        .await;
    let id = sim.create_ok(small(), 1).await.remove(0);
    let vm = sim.vm(&id).await;
    let price = money(&vm["pricePerEpoch"]);
    let p = price.micros();
    assert_eq!(money(&vm["totalSpent"]), price);
    assert_eq!(money(&vm["reservedBalance"]), price);
    assert_eq!(sim.balance().await, usdc(100_000_000 - 2 * p));

    for epoch in 1..=3 {
        sim.advance(24 * 3600).await;
        let vm = sim.vm(&id).await;
        assert_eq!(money(&vm["totalSpent"]), usdc((epoch + 1) * p));
        assert_eq!(money(&vm["reservedBalance"]), price);
        assert_eq!(sim.balance().await, usdc(100_000_000 - (epoch + 2) * p));
        assert_eq!(vm["status"], "Active");
    }
    let vm = sim.vm(&id).await;
    assert_eq!(vm["nextBillingAt"], "2025-11-07T09:14:27Z");
    let state = sim.state().await;
    let charges = state["charges"].as_array().cloned().unwrap_or_default();
    assert_eq!(charges.len(), 4);
    let times: Vec<&str> = charges.iter().filter_map(|c| c["at"].as_str()).collect();
    assert_eq!(
        times,
        [
            START,
            "2025-11-04T09:14:27Z",
            "2025-11-05T09:14:27Z",
            "2025-11-06T09:14:27Z"
        ]
    );
    assert!(
        charges
            .iter()
            .all(|c| money(&c["amount"]) == price && c["vm_id"] == id.as_str())
    );
    assert_eq!(money(&state["vms"][0]["total_charged"]), usdc(4 * p));
}

#[tokio::test]
async fn an_empty_balance_leads_to_small_balance_then_termination() {
    let sim = sim().await;
    let (_, estimate) = sim
        .call(
            "POST",
            "/vms/v3/estimate",
            Some(json!({ "constraints": small(), "instances": 1 })),
        )
        .await;
    let deposit = estimate["depositAmountUsdc"].clone();
    let short = usdc(money(&deposit).micros() - 1).to_string();
    sim.control("POST", "/_sim/balance", Some(json!({ "usdc": short })))
        .await;
    let (status, body) = sim.create(small(), 1).await;
    assert_eq!(
        (status, body),
        (422, json!({ "error": "Insufficient balance" }))
    );

    sim.control("POST", "/_sim/balance", Some(json!({ "usdc": deposit })))
        .await;
    let id = sim.create_ok(small(), 1).await.remove(0);
    assert_eq!(sim.balance().await, Usdc::ZERO);
    sim.advance(100).await;

    sim.advance(24 * 3600).await;
    let vm = sim.vm(&id).await;
    assert_eq!(vm["status"], "SmallBalance");
    assert_eq!(money(&vm["reservedBalance"]), Usdc::ZERO);

    sim.advance(24 * 3600).await;
    assert_eq!(sim.vm(&id).await["status"], "InsufficientFunds");
    sim.advance(3600).await;
    let vm = sim.vm(&id).await;
    assert_eq!(vm["status"], "Terminated");
    assert_eq!(vm["publicIp"], Value::Null);
    assert_eq!(vm["datacenter"], Value::Null);
    assert!(vm.get("nextBillingAt").is_none());
    let spent = vm["totalSpent"].clone();
    sim.advance(3 * 24 * 3600).await;
    assert_eq!(sim.vm(&id).await["totalSpent"], spent);
}

#[tokio::test]
async fn a_small_balance_vm_recovers_when_the_account_is_funded() {
    let sim = sim().await;
    let (_, estimate) = sim
        .call(
            "POST",
            "/vms/v3/estimate",
            Some(json!({ "constraints": small(), "instances": 1 })),
        )
        .await;
    sim.control(
        "POST",
        "/_sim/balance",
        Some(json!({ "usdc": estimate["depositAmountUsdc"] })),
    )
    .await;
    let id = sim.create_ok(small(), 1).await.remove(0);
    sim.advance(24 * 3600).await;
    assert_eq!(sim.vm(&id).await["status"], "SmallBalance");
    sim.control("POST", "/_sim/balance", Some(json!({ "usdc": "10" })))
        .await;
    let vm = sim.vm(&id).await;
    assert_eq!(vm["status"], "Active");
    assert_eq!(vm["reservedBalance"], vm["pricePerEpoch"]);
}

/// Sets the balance to the deposit of `instances` small VMs and returns it.
async fn fund_deposit(sim: &Sim, instances: u32) -> Usdc {
    let (_, estimate) = sim
        .call(
            "POST",
            "/vms/v3/estimate",
            Some(json!({ "constraints": small(), "instances": instances })),
        )
        .await;
    let deposit = money(&estimate["depositAmountUsdc"]);
    sim.control(
        "POST",
        "/_sim/balance",
        Some(json!({ "usdc": deposit.to_string() })),
    )
    .await;
    deposit
}

#[tokio::test]
async fn an_insufficient_funds_vm_is_rescued_by_a_top_up_during_its_grace_period() {
    let sim = sim().await;
    fund_deposit(&sim, 1).await;
    let id = sim.create_ok(small(), 1).await.remove(0);
    let p = money(&sim.vm(&id).await["pricePerEpoch"]).micros();
    sim.advance(2 * 24 * 3600).await;
    let vm = sim.vm(&id).await;
    assert_eq!(vm["status"], "InsufficientFunds");
    // The unpaid charge is still due at the instant it was missed.
    assert_eq!(vm["nextBillingAt"], "2025-11-05T09:14:27Z");

    // Not enough for the missed charge: nothing changes.
    sim.advance(1800).await;
    let short = usdc(p - 1).to_string();
    sim.control("POST", "/_sim/balance", Some(json!({ "usdc": short })))
        .await;
    assert_eq!(sim.vm(&id).await["status"], "InsufficientFunds");
    assert_eq!(sim.balance().await, usdc(p - 1));

    sim.control("POST", "/_sim/balance", Some(json!({ "usdc": "10" })))
        .await;
    let vm = sim.vm(&id).await;
    assert_eq!(vm["status"], "Active");
    assert_eq!(vm["statusChangedAt"], "2025-11-05T09:44:27Z");
    assert_eq!(vm["nextBillingAt"], "2025-11-06T09:14:27Z");
    assert_eq!(money(&vm["reservedBalance"]), usdc(p));
    assert_eq!(money(&vm["totalSpent"]), usdc(3 * p));
    // The missed charge, then a full reserve again.
    assert_eq!(sim.balance().await, usdc(10_000_000 - 2 * p));
    let state = sim.state().await;
    let charges = state["charges"].as_array().cloned().unwrap_or_default();
    assert_eq!(charges.len(), 3);
    assert_eq!(charges[2]["at"], "2025-11-05T09:44:27Z");

    // The grace period passes without a termination, and billing goes on as before.
    sim.advance(3600).await;
    assert_eq!(sim.vm(&id).await["status"], "Active");
    sim.advance(24 * 3600).await;
    let vm = sim.vm(&id).await;
    assert_eq!(vm["status"], "Active");
    assert_eq!(money(&vm["totalSpent"]), usdc(4 * p));
    assert_eq!(vm["nextBillingAt"], "2025-11-07T09:14:27Z");
}

#[tokio::test]
async fn a_refund_from_a_delete_rescues_an_insufficient_funds_vm() {
    let sim = sim().await;
    // One price per offer, whenever a VM is made.
    sim.control(
        "POST",
        "/_sim/config",
        Some(json!({ "price_drift": false })),
    )
    .await;
    let large = json!({ "basicConfiguration": "cpu-8-ram-16gb-storage-25gb" });
    let starved = sim.create_ok(large, 1).await.remove(0);
    let q = money(&sim.vm(&starved).await["pricePerEpoch"]).micros();
    sim.control("POST", "/_sim/balance", Some(json!({ "usdc": "0" })))
        .await;
    sim.advance(47 * 3600).await;
    assert_eq!(sim.vm(&starved).await["status"], "SmallBalance");

    // Small VMs paid one at a time, each deposit too small for the large VM's top-up, until
    // their reserves together cover its missed charge and a new reserve.
    let mut small_vms = Vec::new();
    let mut reserves = 0;
    while reserves < 2 * q {
        let deposit = fund_deposit(&sim, 1).await;
        assert!(
            deposit.micros() < q,
            "the large VM must not be able to refill"
        );
        small_vms.push(sim.create_ok(small(), 1).await.remove(0));
        reserves += deposit.micros() / 2;
    }
    assert_eq!(sim.vm(&starved).await["status"], "SmallBalance");
    sim.advance(3600).await;
    assert_eq!(sim.vm(&starved).await["status"], "InsufficientFunds");

    let (status, _) = sim
        .call("DELETE", "/vms/v3", Some(json!({ "vmIds": small_vms })))
        .await;
    assert_eq!(status, 200);
    let vm = sim.vm(&starved).await;
    assert_eq!(vm["status"], "Active");
    assert_eq!(vm["nextBillingAt"], "2025-11-06T09:14:27Z");
    assert_eq!(vm["reservedBalance"], vm["pricePerEpoch"]);
    assert_eq!(sim.balance().await, usdc(reserves - 2 * q));
    sim.advance(3600).await;
    assert_eq!(sim.vm(&starved).await["status"], "Active");
}

#[tokio::test]
async fn an_insufficient_funds_vm_not_rescued_is_terminated_after_the_grace_period() {
    let sim = sim().await;
    fund_deposit(&sim, 1).await;
    let id = sim.create_ok(small(), 1).await.remove(0);
    let p = money(&sim.vm(&id).await["pricePerEpoch"]).micros();
    sim.advance(2 * 24 * 3600).await;
    assert_eq!(sim.vm(&id).await["status"], "InsufficientFunds");
    let short = usdc(p - 1).to_string();
    sim.control("POST", "/_sim/balance", Some(json!({ "usdc": short })))
        .await;
    sim.advance(3599).await;
    assert_eq!(sim.vm(&id).await["status"], "InsufficientFunds");
    sim.advance(1).await;
    let vm = sim.vm(&id).await;
    assert_eq!(vm["status"], "Terminated");
    assert!(vm.get("nextBillingAt").is_none());
    // Money that comes after the termination rescues nothing.
    sim.control("POST", "/_sim/balance", Some(json!({ "usdc": "10" })))
        .await;
    assert_eq!(sim.vm(&id).await["status"], "Terminated");
    assert_eq!(sim.balance().await, usdc(10_000_000));
}

#[tokio::test]
async fn a_provider_terminated_vm_keeps_its_reserve_until_deleted() {
    let sim = sim().await;
    let id = sim.create_ok(small(), 1).await.remove(0);
    sim.advance(100).await;
    let (status, _) = sim
        .control("POST", &format!("/_sim/vms/{id}/terminate"), None)
        .await;
    assert_eq!(status, 204);
    let vm = sim.vm(&id).await;
    assert_eq!(vm["status"], "Terminated");
    assert_eq!(vm["datacenter"], Value::Null);
    let reserve = money(&vm["reservedBalance"]);
    assert!(reserve > Usdc::ZERO);

    let before = sim.balance().await;
    let unknown = format!("0x{}", "ab".repeat(20));
    let (status, body) = sim
        .call("DELETE", "/vms/v3", Some(json!({ "vmIds": [id, unknown] })))
        .await;
    assert_eq!(status, 404);
    assert!(body["error"].is_string());
    assert_eq!(sim.balance().await, before);

    let (status, body) = sim
        .call("DELETE", "/vms/v3", Some(json!({ "vmIds": [id] })))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["removed_ids"], json!([id]));
    assert_eq!(
        sim.balance().await,
        usdc(before.micros() + reserve.micros())
    );
    assert!(sim.list().await.is_empty());
    let state = sim.state().await;
    assert_eq!(state["vms"][0]["status"], "Terminated");
    assert!(state["vms"][0]["deleted_at"].is_string());
    let (status, _) = sim
        .control(
            "POST",
            &format!("/_sim/vms/{}/terminate", "0x".to_owned() + &"1".repeat(40)),
            None,
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_deleted_vm_shows_stopped_then_leaves_the_list() {
    let sim = sim().await;
    let id = sim.create_ok(small(), 1).await.remove(0);
    sim.advance(100).await;
    let before = sim.balance().await;
    let reserve = money(&sim.vm(&id).await["reservedBalance"]);
    let (status, _) = sim
        .call(
            "DELETE",
            "/vms/v3",
            Some(json!({ "vmIds": [id.to_uppercase().replacen("0X", "0x", 1)] })),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(sim.vm(&id).await["status"], "Stopped");
    assert_eq!(
        sim.balance().await,
        usdc(before.micros() + reserve.micros())
    );
    sim.advance(10).await;
    assert!(sim.list().await.is_empty());
    sim.advance(3 * 24 * 3600).await;
    assert_eq!(
        sim.state().await["charges"].as_array().map(Vec::len),
        Some(1)
    );
}

#[tokio::test]
async fn patch_open_ports_replaces_the_whole_set() {
    let sim = sim().await;
    let (status, created) = sim
        .call(
            "POST",
            "/vms/v3",
            Some(create_body(
                small(),
                1,
                json!([{ "port": 80, "protocol": "tcp" }]),
            )),
        )
        .await;
    assert_eq!(status, 201);
    let id = ids(&created).remove(0);
    assert_eq!(
        sim.vm(&id).await["ports"],
        json!([{ "port": 22, "protocol": "tcp" }, { "port": 80, "protocol": "tcp" }])
    );

    let patch = |updates: Value| json!({ "updates": updates });
    let (status, _) = sim
        .call(
            "PATCH",
            "/vms/v3",
            Some(patch(
                json!([{ "id": id, "openPorts": [{ "port": 443, "protocol": "tcp" }] }]),
            )),
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        sim.vm(&id).await["ports"],
        json!([{ "port": 443, "protocol": "tcp" }])
    );

    let (status, _) = sim
        .call(
            "PATCH",
            "/vms/v3",
            Some(patch(json!([{ "id": id, "vmName": "renamed" }]))),
        )
        .await;
    assert_eq!(status, 204);
    let vm = sim.vm(&id).await;
    assert_eq!(vm["vmName"], "renamed");
    assert_eq!(vm["ports"], json!([{ "port": 443, "protocol": "tcp" }]));

    let (status, body) = sim
        .call(
            "PATCH",
            "/vms/v3",
            Some(patch(
                json!([{ "id": id, "openPorts": [{ "port": 10250, "protocol": "tcp" }] }]),
            )),
        )
        .await;
    assert_eq!(
        (status, body),
        (422, json!({ "error": "Port 10250 is reserved" }))
    );

    let unknown = format!("0x{}", "cd".repeat(20));
    let (status, body) = sim
        .call(
            "PATCH",
            "/vms/v3",
            Some(patch(
                json!([{ "id": id, "vmName": "half" }, { "id": unknown, "vmName": "x" }]),
            )),
        )
        .await;
    assert_eq!(status, 404);
    assert!(body["error"].is_string());
    assert_eq!(sim.vm(&id).await["vmName"], "renamed");
}

// ---------------------------------------------------------------------------------------------
// SSH keys and compatibility switches
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn ssh_keys_are_deduplicated_by_fingerprint() {
    let sim = sim().await;
    let (status, first) = sim
        .call(
            "POST",
            "/ssh_keys",
            Some(json!({ "name": "alice-laptop", "publicKey": SSH_KEY })),
        )
        .await;
    assert_eq!(status, 201);
    let other_comment = SSH_KEY.replace("alice@laptop", "alice@desk");
    let (status, again) = sim
        .call(
            "POST",
            "/ssh_keys",
            Some(json!({ "name": "another", "publicKey": other_comment })),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(again, first);
    assert_eq!(again["name"], "alice-laptop");

    sim.control(
        "POST",
        "/_sim/config",
        Some(json!({ "ssh_key_create_response": "array_snake_case" })),
    )
    .await;
    let (status, array) = sim
        .call(
            "POST",
            "/ssh_keys",
            Some(json!({ "name": "x", "publicKey": SSH_KEY })),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(array[0]["public_key"], first["publicKey"]);
    assert!(array[0].get("publicKey").is_none());

    let (status, body) = sim
        .call(
            "DELETE",
            "/ssh_keys",
            Some(json!({ "fingerprint": "SHA256:nope" })),
        )
        .await;
    assert_eq!(
        (status, body),
        (404, json!({ "error": "SSH key not found" }))
    );
    let (status, _) = sim
        .call(
            "DELETE",
            "/ssh_keys",
            Some(json!({ "fingerprint": first["fingerprint"] })),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(sim.call("GET", "/ssh_keys", None).await.1, json!([]));
}

#[tokio::test]
async fn compatibility_switches_change_the_wire_forms() {
    let sim = sim().await;
    sim.control(
        "POST",
        "/_sim/config",
        Some(json!({
            "decimals_without_leading_zero": true,
            "resource_amounts": "supply_everywhere",
            "created_id_case": "lower",
        })),
    )
    .await;
    let (_, created) = sim.create(small(), 1).await;
    let id = ids(&created).remove(0);
    assert_eq!(id, id.to_lowercase());
    let vm = sim.vm(&id).await;
    assert_ne!(vm["id"].as_str(), Some(id.as_str()));
    assert!(
        vm["pricePerEpoch"]
            .as_str()
            .is_some_and(|p| p.starts_with('.'))
    );
    assert!(
        vm["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|r| r["supply"].is_u64() && r.get("quantity").is_none())
    );
    let (_, config) = sim.control("GET", "/_sim/config", None).await;
    assert_eq!(config["created_id_case"], "lower");
    assert_eq!(config["auth_failure_status"], 403);
}

// ---------------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------------

async fn arm(sim: &Sim, fault: Value) {
    let (status, body) = sim.control("POST", "/_sim/faults", Some(fault)).await;
    assert_eq!(status, 204, "{body}");
}

async fn vm_count(sim: &Sim) -> usize {
    sim.state().await["vms"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn error_before_commit_changes_nothing_and_commit_then_error_does() {
    let sim = sim().await;
    arm(
        &sim,
        json!({ "endpoint": "POST /vms/v3", "fault": "error_before_commit", "status": 502 }),
    )
    .await;
    let (status, body) = sim.create(small(), 1).await;
    assert_eq!(status, 502);
    assert!(body["error"].is_string());
    assert_eq!(vm_count(&sim).await, 0);

    arm(
        &sim,
        json!({ "endpoint": "POST /vms/v3", "fault": "commit_then_error" }),
    )
    .await;
    let (status, _) = sim.create(small(), 2).await;
    assert_eq!(status, 500);
    assert_eq!(vm_count(&sim).await, 2);
    assert_eq!(sim.list().await.len(), 2);

    // Used up: the next call is normal.
    assert_eq!(sim.create(small(), 1).await.0, 201);
    let calls = sim.state().await["calls"].clone();
    let statuses: Vec<Value> = calls
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["method"] == "POST" && c["path"] == "/vms/v3")
        .map(|c| c["status"].clone())
        .collect();
    assert_eq!(statuses, [json!(502), json!(500), json!(201)]);
    assert_eq!(calls[0]["body"]["instances"], 1);
}

#[tokio::test]
async fn the_call_record_keeps_the_query_apart_from_the_path() {
    let sim = sim().await;
    let id = sim.create_ok(small(), 1).await.remove(0);
    let (status, _) = sim
        .call("GET", &format!("/vms/v3/status?ids={id}"), None)
        .await;
    assert_eq!(status, 200);
    sim.list().await;
    let calls = sim.state().await["calls"].clone();
    let status_call = calls
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["path"] == "/vms/v3/status")
        .cloned()
        .expect("the status call is recorded");
    assert_eq!(status_call["query"], json!(format!("ids={id}")));
    assert_eq!(status_call["status"], 200);
    let list_call = calls
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["method"] == "GET" && c["path"] == "/vms/v3")
        .cloned()
        .expect("the list call is recorded");
    assert_eq!(list_call["query"], Value::Null);
    assert!(
        list_call
            .as_object()
            .is_some_and(|o| o.contains_key("query"))
    );
}

#[tokio::test]
async fn commit_then_reset_gives_a_transport_error_after_creating() {
    let sim = sim().await;
    arm(
        &sim,
        json!({ "endpoint": "POST /vms/v3", "fault": "commit_then_reset" }),
    )
    .await;
    let result = sim
        .request("POST", "/vms/v3", Some(&create_body(small(), 1, json!([]))))
        .header("X-API-KEY", KEY)
        .send()
        .await;
    let error = result.expect_err("the connection is reset");
    assert!(!error.is_timeout(), "{error}");
    assert_eq!(vm_count(&sim).await, 1);
    // The server is still fine for everyone else.
    assert_eq!(sim.list().await.len(), 1);
}

#[tokio::test]
async fn commit_then_hang_never_answers_but_does_not_block_shutdown() {
    let sim = sim().await;
    arm(
        &sim,
        json!({ "endpoint": "DELETE /vms/v3", "fault": "commit_then_hang" }),
    )
    .await;
    let id = sim.create_ok(small(), 1).await.remove(0);
    let result = sim
        .request("DELETE", "/vms/v3", Some(&json!({ "vmIds": [id] })))
        .header("X-API-KEY", KEY)
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(result.expect_err("no answer").is_timeout());
    assert_eq!(sim.vm(&id).await["status"], "Stopped");
    let started = Instant::now();
    sim.handle.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn delay_and_malformed_body_faults() {
    let sim = sim().await;
    arm(
        &sim,
        json!({ "endpoint": "GET /vms/v3", "fault": "delay", "delay_ms": 50 }),
    )
    .await;
    let started = Instant::now();
    assert!(sim.list().await.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(50));

    arm(
        &sim,
        json!({ "endpoint": "POST /vms/v3", "fault": "malformed_body" }),
    )
    .await;
    let response = sim
        .request("POST", "/vms/v3", Some(&create_body(small(), 1, json!([]))))
        .header("X-API-KEY", KEY)
        .send()
        .await
        .expect("response");
    assert_eq!(response.status().as_u16(), 201);
    let text = response.text().await.expect("text");
    assert!(serde_json::from_str::<Value>(&text).is_err());
    assert_eq!(vm_count(&sim).await, 1);
}

#[tokio::test]
async fn commit_partial_creates_only_some_of_the_vms() {
    let sim = sim().await;
    arm(
        &sim,
        json!({ "endpoint": "POST /vms/v3", "fault": "commit_partial", "instances_created": 1, "status": 503 }),
    )
    .await;
    let (status, _) = sim.create(small(), 3).await;
    assert_eq!(status, 503);
    assert_eq!(vm_count(&sim).await, 1);
}

#[tokio::test]
async fn faults_without_their_amount_are_refused_and_commit_partial_creates_at_most_what_was_asked()
{
    let sim = sim().await;
    for (fault, field) in [
        ("commit_partial", "instances_created"),
        ("visibility_delay", "seconds"),
        ("delay", "delay_ms"),
    ] {
        let (status, body) = sim
            .control(
                "POST",
                "/_sim/faults",
                Some(json!({ "endpoint": "POST /vms/v3", "fault": fault })),
            )
            .await;
        assert_eq!(status, 400, "{fault}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains(field)),
            "{body}"
        );
    }
    assert_eq!(sim.create(small(), 1).await.0, 201);

    arm(
        &sim,
        json!({ "endpoint": "POST /vms/v3", "fault": "commit_partial", "instances_created": 5 }),
    )
    .await;
    assert_eq!(sim.create(small(), 2).await.0, 500);
    assert_eq!(vm_count(&sim).await, 3);
    arm(
        &sim,
        json!({ "endpoint": "POST /vms/v3", "fault": "commit_partial", "instances_created": 0 }),
    )
    .await;
    assert_eq!(sim.create(small(), 2).await.0, 500);
    assert_eq!(vm_count(&sim).await, 3);
}

#[tokio::test]
async fn visibility_delay_hides_new_vms_until_the_clock_moves() {
    let sim = sim().await;
    arm(
        &sim,
        json!({ "endpoint": "POST /vms/v3", "fault": "visibility_delay", "seconds": 30 }),
    )
    .await;
    let id = sim.create_ok(small(), 1).await.remove(0);
    assert!(sim.list().await.is_empty());
    let status_path = format!("/vms/v3/status?ids={id}");
    assert_eq!(sim.call("GET", &status_path, None).await.1, json!([]));
    assert_eq!(vm_count(&sim).await, 1);
    sim.advance(29).await;
    assert!(sim.list().await.is_empty());
    sim.advance(1).await;
    assert_eq!(sim.list().await.len(), 1);
    assert_eq!(
        sim.call("GET", &status_path, None)
            .await
            .1
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    sim.control("DELETE", "/_sim/faults", None).await;
}

#[tokio::test]
async fn fault_delays_out_of_bounds_are_refused_and_nothing_is_armed() {
    let sim = sim().await;
    for fault in [
        json!({ "endpoint": "POST /vms/v3", "fault": "visibility_delay", "seconds": 9_000_000_000_000_000_i64 }),
        json!({ "endpoint": "POST /vms/v3", "fault": "visibility_delay", "seconds": 365 * 24 * 3600 + 1 }),
        json!({ "endpoint": "POST /vms/v3", "fault": "visibility_delay", "seconds": -1 }),
        json!({ "endpoint": "GET /vms/v3", "fault": "delay", "delay_ms": 600_001 }),
    ] {
        let (status, body) = sim
            .control("POST", "/_sim/faults", Some(fault.clone()))
            .await;
        assert_eq!(status, 400, "{fault}: {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    let id = sim.create_ok(small(), 1).await.remove(0);
    assert_eq!(sim.vm(&id).await["status"], "New");

    // The largest delay allowed still works and ends on time.
    arm(
        &sim,
        json!({ "endpoint": "POST /vms/v3", "fault": "visibility_delay", "seconds": 365 * 24 * 3600 }),
    )
    .await;
    let hidden = sim.create_ok(small(), 1).await.remove(0);
    assert_eq!(sim.list().await.len(), 1);
    sim.advance(365 * 24 * 3600).await;
    assert!(
        sim.list()
            .await
            .iter()
            .any(|vm| vm["id"] == hidden.as_str())
    );
}

#[tokio::test]
async fn commit_faults_pass_a_refusal_through_and_stay_armed_for_a_call_that_commits() {
    let sim = sim().await;
    let mut bad_name = create_body(small(), 2, json!([]));
    bad_name["vmConfiguration"]["name"] = json!("web_1");
    let refused = (
        422,
        json!({ "error": "Invalid name: only letters, digits and hyphens are allowed" }),
    );

    arm(
        &sim,
        json!({ "endpoint": "POST /vms/v3", "fault": "commit_then_error", "status": 502 }),
    )
    .await;
    assert_eq!(
        sim.call("POST", "/vms/v3", Some(bad_name.clone())).await,
        refused
    );
    assert_eq!(vm_count(&sim).await, 0);
    assert_eq!(sim.create(small(), 1).await.0, 502);
    assert_eq!(vm_count(&sim).await, 1);

    arm(
        &sim,
        json!({ "endpoint": "POST /vms/v3", "fault": "malformed_body" }),
    )
    .await;
    assert_eq!(
        sim.call("POST", "/vms/v3", Some(bad_name.clone())).await,
        refused
    );
    let (status, body) = sim.create(small(), 1).await;
    assert_eq!(status, 201);
    assert!(body.is_string(), "the body does not parse: {body}");
    assert_eq!(vm_count(&sim).await, 2);

    arm(
        &sim,
        json!({ "endpoint": "POST /vms/v3", "fault": "commit_partial", "instances_created": 1, "status": 503 }),
    )
    .await;
    assert_eq!(
        sim.call("POST", "/vms/v3", Some(bad_name.clone())).await,
        refused
    );
    assert_eq!(vm_count(&sim).await, 2);
    assert_eq!(sim.create(small(), 3).await.0, 503);
    assert_eq!(vm_count(&sim).await, 3);

    arm(
        &sim,
        json!({ "endpoint": "POST /vms/v3", "fault": "commit_then_reset" }),
    )
    .await;
    assert_eq!(
        sim.call("POST", "/vms/v3", Some(bad_name.clone())).await,
        refused
    );
    let result = sim
        .request("POST", "/vms/v3", Some(&create_body(small(), 1, json!([]))))
        .header("X-API-KEY", KEY)
        .send()
        .await;
    assert!(result.is_err(), "the connection is reset");
    assert_eq!(vm_count(&sim).await, 4);

    // Nothing is left armed, and the record shows the real answers.
    assert_eq!(sim.create(small(), 1).await.0, 201);
    let calls = sim.state().await["calls"].clone();
    let statuses: Vec<Value> = calls
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["method"] == "POST" && c["path"] == "/vms/v3")
        .map(|c| c["status"].clone())
        .collect();
    assert_eq!(
        statuses,
        [422, 502, 422, 201, 422, 503, 422]
            .into_iter()
            .map(|s| json!(s))
            .chain([Value::Null, json!(201)])
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn listing_ten_thousand_vms_and_a_month_of_billing_stay_fast() {
    let sim = sim_with(SimulatorConfig {
        initial_balance: usdc(1_000_000_000_000),
        ..manual()
    })
    .await;
    for configuration in ["cpu-2-ram-4gb-storage-25gb"] {
        sim.control(
            "POST",
            "/_sim/market",
            Some(json!({ "configuration": configuration, "capacity": 2000 })),
        )
        .await;
    }
    for _ in 0..5 {
        sim.create_ok(small(), 2000).await;
    }
    let started = Instant::now();
    sim.advance(30 * 24 * 3600).await;
    let list = sim.list().await;
    assert_eq!(list.len(), 10_000);
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(
        sim.state().await["charges"].as_array().map(Vec::len),
        Some(10_000 * 31)
    );
}

#[test]
fn the_shape_checker_notices_missing_extra_and_mistyped_fields() {
    let expected = json!([{ "id": "0x1", "n": 1, "publicIp": null, "details": {} }]);
    assert!(
        same_shape(
            &json!([{ "id": "0x2", "n": 2, "publicIp": "203.0.113.1", "details": { "a": 1 } }]),
            &expected,
            ""
        )
        .is_ok()
    );
    assert!(
        same_shape(
            &json!([{ "id": "0x2", "publicIp": null, "details": {} }]),
            &expected,
            ""
        )
        .is_err()
    );
    assert!(
        same_shape(
            &json!([{ "id": "0x2", "n": "2", "publicIp": null, "details": {} }]),
            &expected,
            ""
        )
        .is_err()
    );
    assert!(
        same_shape(
            &json!([{ "id": "0x2", "n": 2, "publicIp": null, "details": {}, "x": 1 }]),
            &expected,
            ""
        )
        .is_err()
    );
}

#[tokio::test]
async fn commit_then_reset_closes_the_socket_with_a_tcp_reset() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let sim = sim().await;
    arm(
        &sim,
        json!({ "endpoint": "GET /vms/v3", "fault": "commit_then_reset" }),
    )
    .await;
    let mut stream = tokio::net::TcpStream::connect(sim.handle.addr())
        .await
        .expect("connect");
    stream
        .write_all(b"GET /vms/v3 HTTP/1.1\r\nHost: sim\r\nX-API-KEY: sim-key\r\n\r\n")
        .await
        .expect("write");
    let mut buffer = [0_u8; 1024];
    let result = stream.read(&mut buffer).await;
    assert!(
        matches!(&result, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{result:?}"
    );
}

#[tokio::test]
async fn the_default_configuration_follows_the_wall_clock() {
    let sim = sim_with(SimulatorConfig::default()).await;
    let (_, first) = sim.control("GET", "/_sim/clock", None).await;
    let (_, moved) = sim
        .control(
            "POST",
            "/_sim/clock",
            Some(json!({ "advance_seconds": 3600 })),
        )
        .await;
    let parse = |v: &Value| {
        v["now"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .expect("now")
    };
    let gap = parse(&moved) - parse(&first);
    assert!(gap.num_seconds() >= 3600 && gap.num_seconds() < 3700);
    assert!(
        (parse(&first).with_timezone(&Utc) - Utc::now())
            .num_seconds()
            .abs()
            < 60
    );
    let (status, _) = sim.call("GET", "/marketplace/countries", None).await;
    assert_eq!(status, 200);
    let (status, body) = sim
        .call("DELETE", "/vms/v3", Some(json!({ "vmIds": [] })))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({ "removed_ids": [], "transactions": [] }));
}

#[tokio::test]
async fn a_clock_advance_past_a_century_is_refused_and_the_clock_keeps_working() {
    let sim = sim().await;
    let id = sim.create_ok(small(), 1).await.remove(0);
    for huge in [
        json!(10_000_000_000_000_u64),
        json!(9_000_000_000_000_000_000_u64),
        json!(9e18),
        json!(100_i64 * 366 * 24 * 3600 + 1),
    ] {
        let (status, body) = sim
            .control(
                "POST",
                "/_sim/clock",
                Some(json!({ "advance_seconds": huge })),
            )
            .await;
        assert_eq!(status, 400, "{huge}: {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    let (status, clock) = sim.control("GET", "/_sim/clock", None).await;
    assert_eq!((status, clock), (200, json!({ "now": START })));
    assert_eq!(sim.vm(&id).await["status"], "New");
    sim.advance(92).await;
    assert_eq!(sim.vm(&id).await["status"], "Active");
    sim.create_ok(small(), 1).await;
}

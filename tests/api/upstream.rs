//! The Fluence client against the simulator: every endpoint, and how every fault kind of
//! `/_sim/faults` reaches the client as an error.

use std::time::{Duration, Instant};

use fluence_gateway::domain::ids::VmId;
use fluence_gateway::domain::money::Usdc;
use fluence_gateway::fluence::types::{
    CreateSshKeyRequest, CreateVmRequest, DatacenterFilter, EstimateRequest, OfferConstraints,
    PatchVmsRequest, Port, Protocol, VmConfiguration, VmStatus, VmUpdate,
};
use fluence_gateway::fluence::{AuthScheme, ClientConfig, FluenceClient, FluenceError};
use fluence_gateway::simulator::SimulatorHandle;
use serde_json::{Value, json};

use crate::helpers::{SIM_KEY, spawn_simulator};

const CONFIG: &str = "cpu-2-ram-4gb-storage-25gb";
const IMAGE: &str =
    "https://cloud-images.ubuntu.com/releases/24.04/release/ubuntu-24.04-server-cloudimg-amd64.img";
const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJPNRUbzCJj/DUYrxXA55JMWoZh+Upg7nGXMiLxDoo4b alice@laptop";

fn client(sim: &SimulatorHandle) -> FluenceClient {
    FluenceClient::new(ClientConfig::new(sim.base_url(), SIM_KEY))
        .unwrap_or_else(|e| panic!("client: {e}"))
}

fn constraints() -> OfferConstraints {
    OfferConstraints {
        basic_configuration: Some(CONFIG.to_owned()),
        ..OfferConstraints::default()
    }
}

fn deploy_request(name: &str, instances: u32) -> CreateVmRequest {
    CreateVmRequest {
        constraints: Some(constraints()),
        instances,
        vm_configuration: VmConfiguration {
            name: name.to_owned(),
            hostname: None,
            os_image: IMAGE.to_owned(),
            open_ports: vec![Port {
                port: 80,
                protocol: Protocol::Tcp,
            }],
            ssh_keys: vec![SSH_KEY.to_owned()],
        },
    }
}

async fn control(sim: &SimulatorHandle, method: reqwest::Method, path: &str, body: Value) -> Value {
    let response = reqwest::Client::new()
        .request(method, format!("{}{path}", sim.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.unwrap_or(Value::Null)
}

async fn fault(sim: &SimulatorHandle, body: Value) {
    control(sim, reqwest::Method::POST, "/_sim/faults", body).await;
}

async fn advance(sim: &SimulatorHandle, seconds: u64) {
    control(
        sim,
        reqwest::Method::POST,
        "/_sim/clock",
        json!({ "advance_seconds": seconds }),
    )
    .await;
}

async fn state(sim: &SimulatorHandle) -> Value {
    control(sim, reqwest::Method::GET, "/_sim/state", Value::Null).await
}

/// VMs the simulator holds, deleted or not.
async fn simulated_vms(sim: &SimulatorHandle) -> Vec<Value> {
    state(sim).await["vms"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// How many `POST /vms/v3` calls the simulator received.
async fn deploy_calls(sim: &SimulatorHandle) -> usize {
    state(sim).await["calls"]
        .as_array()
        .map(|calls| {
            calls
                .iter()
                .filter(|c| c["method"] == "POST" && c["path"] == "/vms/v3")
                .count()
        })
        .unwrap_or_default()
}

/// How many VMs of that name `GET /vms/v3` shows.
async fn listed_named(client: &FluenceClient, name: &str) -> usize {
    client
        .list_vms()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .filter(|vm| vm.vm_name.as_deref() == Some(name))
        .count()
}

fn expect_err<T: std::fmt::Debug>(result: Result<T, FluenceError>) -> FluenceError {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(error) => error,
    }
}

#[tokio::test]
async fn the_discovery_endpoints_describe_one_consistent_marketplace() {
    let sim = spawn_simulator().await;
    let client = client(&sim);

    let configurations = client
        .basic_configurations()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        configurations.iter().any(|c| c == CONFIG),
        "{configurations:?}"
    );
    let countries = client.countries().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(!countries.is_empty());
    let hardware = client.hardware().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !hardware.cpu.is_empty() && !hardware.memory.is_empty() && !hardware.storage.is_empty()
    );
    let datacenters = client.datacenters().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(!datacenters.is_empty());
    let images = client
        .default_images()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(images.iter().any(|i| i.slug == "ubuntu-24-04-x64"));

    let offers = client
        .offers(&OfferConstraints::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!offers.is_empty());
    for offer in &offers {
        assert!(configurations.contains(&offer.configuration.slug));
        assert!(countries.contains(&offer.datacenter.country_code));
        assert!(
            datacenters
                .iter()
                .any(|d| d.country_code == offer.datacenter.country_code
                    && d.city_code == offer.datacenter.city_code)
        );
        assert!(
            offer
                .servers
                .iter()
                .all(|s| s.available_basic_instances > 0)
        );
    }

    // Filters narrow the list.
    let country = countries[0].clone();
    let filtered = client
        .offers(&OfferConstraints {
            basic_configuration: Some(CONFIG.to_owned()),
            datacenter: Some(DatacenterFilter {
                countries: vec![country.clone()],
            }),
            ..OfferConstraints::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        filtered
            .iter()
            .all(|o| o.datacenter.country_code == country && o.configuration.slug == CONFIG)
    );
}

#[tokio::test]
async fn estimate_and_deploy_agree_and_the_vms_are_listed() {
    let sim = spawn_simulator().await;
    let client = client(&sim);
    let estimate = client
        .estimate(&EstimateRequest {
            constraints: Some(constraints()),
            instances: 2,
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(estimate.instances, 2);
    assert_eq!(estimate.deposit_epochs, 2);
    assert_eq!(
        Some(estimate.deposit_amount_usdc),
        estimate.total_price_per_epoch.checked_mul(2)
    );

    let created = client
        .deploy(&deploy_request("web-1", 2))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(created.len(), 2);
    assert!(
        created
            .iter()
            .all(|vm| vm.vm_name == "web-1" && vm.vm_id.is_well_formed())
    );

    let listed = client.list_vms().await.unwrap_or_else(|e| panic!("{e}"));
    let ours: Vec<_> = listed
        .iter()
        .filter(|vm| created.iter().any(|c| c.vm_id == vm.id))
        .collect();
    assert_eq!(ours.len(), 2);
    let total = ours
        .iter()
        .try_fold(Usdc::ZERO, |sum, vm| sum.checked_add(vm.price_per_epoch));
    assert_eq!(total, Some(estimate.total_price_per_epoch));
    let max = ours.iter().map(|vm| vm.price_per_epoch).max();
    assert_eq!(max, Some(estimate.max_price_per_epoch));
    for vm in &ours {
        assert_eq!(vm.status, VmStatus::New);
        assert_eq!(
            vm.total_spent, vm.price_per_epoch,
            "one epoch charged at create"
        );
        assert_eq!(
            vm.reserved_balance, vm.price_per_epoch,
            "one epoch in reserve"
        );
        assert!(
            vm.ports.iter().any(|p| p.port == 22),
            "22 is open by default"
        );
        assert!(vm.ports.iter().any(|p| p.port == 80));
    }

    let ids: Vec<VmId> = created.iter().map(|c| c.vm_id.clone()).collect();
    let statuses = client
        .vm_statuses(&ids)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(statuses.len(), 2);

    // The lifecycle moves with the simulator's clock.
    advance(&sim, 3).await;
    let statuses = client
        .vm_statuses(&ids)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(statuses.iter().all(|s| s.status == VmStatus::Launching));
    advance(&sim, 90).await;
    let statuses = client
        .vm_statuses(&ids)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        statuses
            .iter()
            .all(|s| s.status == VmStatus::Active && s.public_ip.is_some())
    );
}

#[tokio::test]
async fn patch_renames_and_replaces_the_port_set_exactly_as_fluence_does() {
    let sim = spawn_simulator().await;
    let client = client(&sim);
    let created = client
        .deploy(&deploy_request("db", 1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let id = created[0].vm_id.clone();

    client
        .patch_vms(&PatchVmsRequest {
            updates: vec![VmUpdate {
                id: id.clone(),
                vm_name: Some("db-primary".into()),
                open_ports: Some(vec![Port {
                    port: 5432,
                    protocol: Protocol::Tcp,
                }]),
            }],
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let vm = client
        .list_vms()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .find(|vm| vm.id == id)
        .unwrap_or_else(|| panic!("vm missing"));
    assert_eq!(vm.vm_name.as_deref(), Some("db-primary"));
    // The trap: the set was replaced, and 22 is gone with it.
    assert_eq!(
        vm.ports,
        vec![Port {
            port: 5432,
            protocol: Protocol::Tcp
        }]
    );

    let error = expect_err(
        client
            .patch_vms(&PatchVmsRequest {
                updates: vec![VmUpdate {
                    id,
                    vm_name: None,
                    open_ports: Some(vec![Port {
                        port: 10250,
                        protocol: Protocol::Tcp,
                    }]),
                }],
            })
            .await,
    );
    assert!(
        matches!(&error, FluenceError::Status { status: 422, message: Some(m), .. } if m.contains("10250")),
        "{error:?}"
    );
}

#[tokio::test]
async fn delete_stops_the_vm_then_it_drops_out_of_the_list() {
    let sim = spawn_simulator().await;
    let client = client(&sim);
    let created = client
        .deploy(&deploy_request("tmp", 1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ids = vec![created[0].vm_id.clone()];
    let answer = client
        .delete_vms(&ids)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(answer.removed_ids, ids);

    let listed = client.list_vms().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        listed
            .iter()
            .all(|vm| vm.id != ids[0] || vm.status == VmStatus::Stopped)
    );
    advance(&sim, 120).await;
    let listed = client.list_vms().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(listed.iter().all(|vm| vm.id != ids[0]));
    let vms = simulated_vms(&sim).await;
    assert!(vms.iter().any(|vm| vm["deleted_at"].is_string()));

    let error = expect_err(
        client
            .delete_vms(&[VmId::new("0x0000000000000000000000000000000000000001")])
            .await,
    );
    assert_eq!(error.status(), Some(404), "{error:?}");
}

#[tokio::test]
async fn ssh_keys_are_created_once_listed_and_deleted_by_fingerprint() {
    let sim = spawn_simulator().await;
    let client = client(&sim);
    let request = CreateSshKeyRequest {
        name: "alice-laptop".into(),
        public_key: SSH_KEY.into(),
    };
    let (key, created) = client
        .create_ssh_key(&request)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(created);
    assert!(key.fingerprint.starts_with("SHA256:"));
    assert_eq!(key.algorithm, "ssh-ed25519");

    let again = CreateSshKeyRequest {
        name: "another-name".into(),
        public_key: SSH_KEY.into(),
    };
    let (existing, created) = client
        .create_ssh_key(&again)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!created);
    assert_eq!(existing.name, "alice-laptop", "the original name is kept");

    let keys = client.ssh_keys().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(keys.len(), 1);
    client
        .delete_ssh_key(&key.fingerprint)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        client
            .ssh_keys()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty()
    );
    let error = expect_err(client.delete_ssh_key(&key.fingerprint).await);
    assert_eq!(error.status(), Some(404));
}

#[tokio::test]
async fn a_wrong_key_is_an_auth_failure_and_both_auth_schemes_work() {
    let sim = spawn_simulator().await;
    let wrong = FluenceClient::new(ClientConfig::new(sim.base_url(), "wrong-key"))
        .unwrap_or_else(|e| panic!("{e}"));
    let error = expect_err(wrong.countries().await);
    assert!(error.is_auth_failure(), "{error:?}");
    assert_eq!(error.status(), Some(403));
    assert!(!error.to_string().contains("wrong-key"));

    let bearer = FluenceClient::new(ClientConfig {
        auth: AuthScheme::Bearer,
        ..ClientConfig::new(sim.base_url(), SIM_KEY)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(bearer.countries().await.is_ok());
}

#[tokio::test]
async fn fluences_two_422s_are_definite_rejections() {
    let sim = spawn_simulator().await;
    let client = client(&sim);
    let mut too_cheap = deploy_request("x", 1);
    if let Some(c) = too_cheap.constraints.as_mut() {
        c.max_total_price_per_epoch_usd = Some(Usdc::from_micros(1));
    }
    let error = expect_err(client.deploy(&too_cheap).await);
    assert!(
        matches!(&error, FluenceError::Status { status: 422, message: Some(m), .. } if m == "No suitable offer found"),
        "{error:?}"
    );
    assert!(error.is_definite_rejection() && !error.is_ambiguous());

    let error = expect_err(client.deploy(&deploy_request("x", 100_000)).await);
    assert!(
        matches!(&error, FluenceError::Status { status: 422, message: Some(m), .. } if m == "Not enough offers found"),
        "{error:?}"
    );
    assert!(simulated_vms(&sim).await.is_empty(), "nothing was created");
}

#[tokio::test]
async fn error_before_commit_is_a_status_error_and_creates_nothing() {
    let sim = spawn_simulator().await;
    let client = client(&sim);
    fault(
        &sim,
        json!({"endpoint": "POST /vms/v3", "fault": "error_before_commit", "status": 503}),
    )
    .await;
    let error = expect_err(client.deploy(&deploy_request("a", 1)).await);
    assert_eq!(error.status(), Some(503));
    assert!(
        error.is_ambiguous(),
        "a 5xx on a POST cannot prove nothing happened"
    );
    assert!(simulated_vms(&sim).await.is_empty());
    // The fault was for one call only.
    assert!(client.deploy(&deploy_request("a", 1)).await.is_ok());
    assert_eq!(simulated_vms(&sim).await.len(), 1);
}

#[tokio::test]
async fn commit_then_error_is_ambiguous_and_the_vms_exist() {
    let sim = spawn_simulator().await;
    let client = client(&sim);
    fault(
        &sim,
        json!({"endpoint": "POST /vms/v3", "fault": "commit_then_error", "status": 502}),
    )
    .await;
    let error = expect_err(client.deploy(&deploy_request("b", 2)).await);
    assert_eq!(error.status(), Some(502));
    assert!(error.is_ambiguous());
    assert_eq!(simulated_vms(&sim).await.len(), 2);
    assert_eq!(listed_named(&client, "b").await, 2);
}

#[tokio::test]
async fn commit_then_reset_is_a_transport_error_that_may_have_been_sent() {
    let sim = spawn_simulator().await;
    let client = client(&sim);
    fault(
        &sim,
        json!({"endpoint": "POST /vms/v3", "fault": "commit_then_reset"}),
    )
    .await;
    let error = expect_err(client.deploy(&deploy_request("c", 1)).await);
    assert!(
        matches!(
            error,
            FluenceError::Transport {
                may_have_been_sent: true,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.is_ambiguous());
    assert_eq!(simulated_vms(&sim).await.len(), 1);
    assert_eq!(deploy_calls(&sim).await, 1, "the client never retries");
}

#[tokio::test]
async fn commit_then_hang_times_out_the_client_after_the_commit() {
    let sim = spawn_simulator().await;
    let client = FluenceClient::new(ClientConfig {
        request_timeout: Duration::from_millis(400),
        ..ClientConfig::new(sim.base_url(), SIM_KEY)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    fault(
        &sim,
        json!({"endpoint": "POST /vms/v3", "fault": "commit_then_hang"}),
    )
    .await;
    let error = expect_err(client.deploy(&deploy_request("d", 1)).await);
    assert!(
        matches!(
            error,
            FluenceError::Transport {
                may_have_been_sent: true,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(simulated_vms(&sim).await.len(), 1);
}

#[tokio::test]
async fn delay_slows_the_answer_but_changes_nothing_else() {
    let sim = spawn_simulator().await;
    let client = client(&sim);
    fault(
        &sim,
        json!({"endpoint": "GET /marketplace/countries", "fault": "delay", "delay_ms": 150}),
    )
    .await;
    let started = Instant::now();
    let countries = client.countries().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert!(!countries.is_empty());
}

#[tokio::test]
async fn malformed_body_is_a_decode_error_after_the_commit() {
    let sim = spawn_simulator().await;
    let client = client(&sim);
    fault(
        &sim,
        json!({"endpoint": "POST /vms/v3", "fault": "malformed_body"}),
    )
    .await;
    let error = expect_err(client.deploy(&deploy_request("e", 1)).await);
    assert!(matches!(error, FluenceError::Decode { .. }), "{error:?}");
    assert!(error.is_ambiguous());
    assert_eq!(simulated_vms(&sim).await.len(), 1);

    fault(
        &sim,
        json!({"endpoint": "GET /vms/v3", "fault": "malformed_body"}),
    )
    .await;
    let error = expect_err(client.list_vms().await);
    assert!(matches!(error, FluenceError::Decode { .. }), "{error:?}");
}

#[tokio::test]
async fn commit_partial_creates_some_of_the_instances_then_fails() {
    let sim = spawn_simulator().await;
    let client = client(&sim);
    fault(
        &sim,
        json!({"endpoint": "POST /vms/v3", "fault": "commit_partial", "instances_created": 2}),
    )
    .await;
    let error = expect_err(client.deploy(&deploy_request("f", 5)).await);
    assert_eq!(error.status(), Some(500));
    assert!(error.is_ambiguous());
    assert_eq!(listed_named(&client, "f").await, 2);
}

#[tokio::test]
async fn visibility_delay_hides_new_vms_from_the_list_until_time_passes() {
    let sim = spawn_simulator().await;
    let client = client(&sim);
    fault(
        &sim,
        json!({"endpoint": "POST /vms/v3", "fault": "visibility_delay", "seconds": 30}),
    )
    .await;
    let created = client
        .deploy(&deploy_request("g", 1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let listed = client.list_vms().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(listed.iter().all(|vm| vm.id != created[0].vm_id));
    advance(&sim, 31).await;
    let listed = client.list_vms().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(listed.iter().any(|vm| vm.id == created[0].vm_id));
}

#[tokio::test]
async fn a_status_fault_on_a_read_endpoint_and_clearing_faults() {
    let sim = spawn_simulator().await;
    let client = client(&sim);
    fault(
        &sim,
        json!({"endpoint": "POST /marketplace/offers", "fault": "error_before_commit", "status": 429, "count": 5}),
    )
    .await;
    let error = expect_err(client.offers(&OfferConstraints::default()).await);
    assert_eq!(error.status(), Some(429));
    control(&sim, reqwest::Method::DELETE, "/_sim/faults", Value::Null).await;
    assert!(client.offers(&OfferConstraints::default()).await.is_ok());
}

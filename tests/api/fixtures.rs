//! The wire types against the example payloads of api-shapes.md (`tests/api/fixtures/*.json`),
//! and against the inconsistent variants Fluence has been seen to produce.

use chrono::{DateTime, TimeZone, Utc};
use fluence_gateway::domain::ids::VmId;
use fluence_gateway::domain::money::Usdc;
use fluence_gateway::fluence::types::{
    AvailableHardware, CreateSshKeyRequest, CreateVmRequest, CreatedVm, DatacenterInfo,
    DefaultImage, DeleteSshKeyRequest, DeleteVmsRequest, DeleteVmsResponse, ErrorBody, Estimate,
    EstimateRequest, MarketOffering, OfferConstraints, OneOrMany, PatchVmsRequest, Protocol,
    ResourceType, RunningInstance, SshKey, VmStatus, VmStatusInfo,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!("fixtures/", $name, ".json"))
    };
}

fn decode<T: DeserializeOwned>(text: &str) -> T {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("does not decode: {e}"))
}

fn usdc(text: &str) -> Usdc {
    Usdc::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
        .single()
        .unwrap_or_else(|| panic!("bad test time"))
}

/// A request type decodes from the fixture and serialises back to the same JSON, so the serde
/// names are exactly Fluence's.
fn round_trips<T: DeserializeOwned + Serialize>(text: &str) -> T {
    let original: Value = decode(text);
    let typed: T = decode(text);
    let again = serde_json::to_value(&typed).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again, original);
    typed
}

#[test]
fn offers_decode_with_exact_micro_usdc_prices() {
    let offers: Vec<MarketOffering> = decode(fixture!("offers_response"));
    assert_eq!(offers.len(), 2);
    let first = &offers[0];
    assert_eq!(first.configuration.slug, "cpu-2-ram-4gb-storage-25gb");
    assert_eq!(first.configuration.price.micros(), 312_500);
    assert_eq!(offers[1].configuration.price.micros(), 335_000);
    let kinds: Vec<&ResourceType> = first.resources.iter().map(|r| &r.kind).collect();
    assert_eq!(
        kinds,
        [
            &ResourceType::Vcpu,
            &ResourceType::Ram,
            &ResourceType::Storage,
            &ResourceType::PublicIp
        ]
    );
    assert_eq!(first.resources[2].price.micros(), 1_800);
    assert_eq!(first.datacenter.country_code, "DE");
    assert_eq!(first.datacenter.city_index, 1);
    assert_eq!(first.datacenter.tier, 3);
    assert_eq!(first.servers.len(), 2);
    assert_eq!(first.servers[0].available_basic_instances, 6);
    let extra = &first.servers[0].additional_resources[0];
    assert_eq!(
        (extra.price.micros(), extra.supply, extra.per_vm_limit),
        (1_500, 1800, Some(2000))
    );
    assert_eq!(offers[1].max_additional_supply[0].per_vm_limit, None);

    // The examples' per-unit prices add up to the configuration price (2 vCPU, 4 GB, 25 GB, 1 IP).
    for offer in &offers {
        let total: i64 = offer
            .resources
            .iter()
            .map(|r| {
                let units = match r.kind {
                    ResourceType::Vcpu => 2,
                    ResourceType::Ram => 4,
                    ResourceType::Storage => 25,
                    _ => 1,
                };
                r.price.micros() * units
            })
            .sum();
        assert_eq!(total, offer.configuration.price.micros());
    }
}

#[test]
fn offer_constraints_round_trip_and_decode_exactly() {
    let constraints: OfferConstraints = round_trips(fixture!("offers_request"));
    assert_eq!(
        constraints.basic_configuration.as_deref(),
        Some("cpu-2-ram-4gb-storage-25gb")
    );
    assert_eq!(constraints.max_total_price_per_epoch_usd, Some(usdc("0.5")));
    let storage = constraints
        .additional_resources
        .and_then(|r| r.storage)
        .unwrap_or_default();
    assert_eq!(
        (
            storage[0].supply,
            storage[0].units.as_str(),
            storage[0].kind.as_str()
        ),
        (20, "GiB", "NVMe")
    );
    let hardware = constraints.hardware.unwrap_or_default();
    let memory = hardware.memory.unwrap_or_default();
    assert_eq!(memory[0].generation.as_deref(), Some("5"));
    assert_eq!(
        constraints.datacenter.map(|d| d.countries),
        Some(vec!["DE".to_owned(), "PL".to_owned()])
    );

    // No filters at all, and nulls where Fluence allows them.
    let empty: OfferConstraints = decode("{}");
    assert_eq!(empty, OfferConstraints::default());
    assert_eq!(serde_json::to_value(&empty).ok(), Some(json!({})));
    let nulls: OfferConstraints = decode(
        r#"{"basicConfiguration":null,"additionalResources":null,"hardware":null,
            "datacenter":null,"maxTotalPricePerEpochUsd":null}"#,
    );
    assert_eq!(nulls, OfferConstraints::default());
}

#[test]
fn discovery_endpoints_decode() {
    let configurations: Vec<String> = decode(fixture!("basic_configurations"));
    assert_eq!(configurations[0], "cpu-2-ram-4gb-storage-25gb");
    assert_eq!(configurations.len(), 4);
    let countries: Vec<String> = decode(fixture!("countries"));
    assert_eq!(countries, ["BE", "DE", "FR", "PL", "US"]);

    let hardware: AvailableHardware = decode(fixture!("hardware"));
    assert_eq!(hardware.cpu.len(), 2);
    assert_eq!(hardware.cpu[1].manufacturer, "Intel (R)");
    assert_eq!(hardware.memory[1].generation, "5");
    assert_eq!(hardware.storage[1].kind, "NVMe");

    // The list uses `index`, not the embedded datacenters' `cityIndex`.
    let datacenters: Vec<DatacenterInfo> = decode(fixture!("datacenters"));
    assert_eq!(datacenters[0].index, 1);
    assert_eq!(datacenters[0].slug, "de-fra-1");
    assert_eq!(datacenters[1].tier, 4);
    assert_eq!(datacenters[1].certifications, ["ISO 27001:2022", "SOC2"]);
}

#[test]
fn default_images_keep_their_microsecond_timestamps() {
    let images: Vec<DefaultImage> = decode(fixture!("default_images"));
    assert_eq!(images.len(), 3);
    assert_eq!(images[2].distribution, "Debian");
    assert_eq!(images[2].username, "debian");
    assert!(images[0].download_url.ends_with(".img"));
    let expected = utc(2025, 9, 1, 12, 0, 0) + chrono::Duration::microseconds(482_913);
    assert_eq!(images[0].created_at, expected);
    // Re-serialised in the images' own style.
    let again = serde_json::to_value(&images[0]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again["createdAt"], "2025-09-01T12:00:00.482913Z");
}

#[test]
fn estimate_request_round_trips_and_response_adds_up() {
    let request: EstimateRequest = round_trips(fixture!("estimate_request"));
    assert_eq!(request.instances, 3);
    let estimate: Estimate = decode(fixture!("estimate_response"));
    assert_eq!(estimate.total_price_per_epoch.micros(), 960_000);
    assert_eq!(estimate.max_price_per_epoch.micros(), 335_000);
    assert_eq!(estimate.deposit_epochs, 2);
    assert_eq!(
        estimate.total_price_per_epoch.checked_mul(2),
        Some(estimate.deposit_amount_usdc)
    );
    let error: ErrorBody = decode(fixture!("estimate_422"));
    assert_eq!(error.error, "Not enough offers found");
}

#[test]
fn deploy_request_round_trips_and_response_decodes() {
    let request: CreateVmRequest = round_trips(fixture!("create_vm_request"));
    assert_eq!(request.instances, 2);
    assert_eq!(request.vm_configuration.name, "web-1");
    assert_eq!(request.vm_configuration.open_ports.len(), 2);
    assert_eq!(request.vm_configuration.open_ports[1].port, 443);
    assert_eq!(
        request.vm_configuration.open_ports[1].protocol,
        Protocol::Tcp
    );
    assert_eq!(request.vm_configuration.ssh_keys.len(), 1);

    let created: Vec<CreatedVm> = decode(fixture!("create_vm_response"));
    assert_eq!(created.len(), 2);
    assert!(created.iter().all(|vm| vm.vm_name == "web-1"));
    assert_eq!(
        created[0].vm_id.as_str(),
        "0xA4c123B1612dd272d1371C17149d439536b3216F"
    );
    // One client saw a single object instead of the array.
    let one: OneOrMany<CreatedVm> =
        decode(r#"{"vmId":"0xA4c123B1612dd272d1371C17149d439536b3216F","vmName":"web-1"}"#);
    assert_eq!(one.0, created[..1]);

    let error: ErrorBody = decode(fixture!("create_vm_422"));
    assert_eq!(error.error, "No suitable offer found");
}

#[test]
fn vm_list_decodes_launching_active_and_terminated() {
    let vms: Vec<RunningInstance> = decode(fixture!("list_vms"));
    let statuses: Vec<&VmStatus> = vms.iter().map(|vm| &vm.status).collect();
    assert_eq!(
        statuses,
        [
            &VmStatus::Launching,
            &VmStatus::Active,
            &VmStatus::Terminated
        ]
    );

    let launching = &vms[0];
    assert_eq!(launching.price_per_epoch.micros(), 342_500);
    assert_eq!(launching.public_ip, None);
    assert_eq!(launching.created_at, utc(2025, 11, 3, 9, 14, 27));
    assert_eq!(launching.next_billing_at, Some(utc(2025, 11, 4, 9, 14, 27)));
    assert_eq!(
        launching.status_changed_at,
        Some(utc(2025, 11, 3, 9, 14, 31))
    );
    assert_eq!(launching.ports.len(), 3);
    // `quantity` for VCPU and PUBLIC_IP, `supply` + `units` for RAM and STORAGE.
    let resources = &launching.resources;
    assert_eq!(
        (resources[0].quantity, resources[0].supply),
        (Some(2), None)
    );
    assert_eq!(
        (
            resources[1].quantity,
            resources[1].supply,
            resources[1].units.as_deref()
        ),
        (None, Some(4), Some("GiB"))
    );
    let amounts: Vec<Option<u64>> = resources.iter().map(|r| r.amount()).collect();
    assert_eq!(amounts, [Some(2), Some(4), Some(45), Some(1)]);
    assert_eq!(resources[1].details.value()["speed"], 4800);

    let active = &vms[1];
    assert_eq!(active.public_ip.as_deref(), Some("203.0.113.24"));
    assert_eq!(active.total_spent.micros(), 2_500_000);
    assert_eq!(active.vm_name.as_deref(), Some("db-main"));

    let terminated = &vms[2];
    assert_eq!(terminated.datacenter, None);
    assert_eq!(terminated.public_ip, None);
    assert_eq!(terminated.next_billing_at, None);
    assert_eq!(terminated.status_changed_at, None);
    assert_eq!(terminated.reserved_balance.micros(), 335_000);
    assert_eq!(terminated.total_spent.micros(), 2_345_000);
}

/// The list fixture with Fluence's other observed forms patched in.
#[test]
fn vm_list_tolerates_the_variants_fluence_has_produced() {
    let mut vms: Value = decode(fixture!("list_vms"));
    let Some(list) = vms.as_array_mut() else {
        panic!("the fixture is an array")
    };
    // A decimal without a leading zero.
    list[2]["reservedBalance"] = json!(".30697");
    // `supply` + `units` on every resource.
    for vm in list.iter_mut() {
        let Some(resources) = vm["resources"].as_array_mut() else {
            panic!("resources is an array")
        };
        for resource in resources {
            if let Some(quantity) = resource.get("quantity").cloned() {
                resource["supply"] = quantity;
                resource["units"] = json!("");
            }
        }
    }
    // The `/vms/v2` era's upper case, and a status outside the documented set.
    list[1]["status"] = json!("ACTIVE");
    list[0]["status"] = json!("Rebooting");
    // SSH-key style expanded-year timestamp on a VM, as in `/vms/v2`.
    list[1]["createdAt"] = json!("+002025-10-26T17:02:10.000000000Z");

    let decoded: Vec<RunningInstance> =
        serde_json::from_value(vms).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(decoded[2].reserved_balance.micros(), 306_970);
    assert_eq!(decoded[1].status, VmStatus::Active);
    assert_eq!(decoded[0].status, VmStatus::Unknown("Rebooting".into()));
    assert_eq!(decoded[0].status.to_string(), "Rebooting");
    assert_eq!(decoded[1].created_at, utc(2025, 10, 26, 17, 2, 10));
    let amounts: Vec<Option<u64>> = decoded[0].resources.iter().map(|r| r.amount()).collect();
    assert_eq!(amounts, [Some(2), Some(4), Some(45), Some(1)]);
    assert!(decoded[0].resources.iter().all(|r| r.supply.is_some()));
}

#[test]
fn statuses_decode_and_ids_compare_case_insensitively() {
    let statuses: Vec<VmStatusInfo> = decode(fixture!("vm_status"));
    assert_eq!(statuses.len(), 2);
    assert_eq!(statuses[0].status, VmStatus::Launching);
    assert_eq!(statuses[0].public_ip, None);
    assert_eq!(statuses[1].public_ip.as_deref(), Some("203.0.113.24"));
    assert_eq!(
        statuses[1].status_changed_at,
        Some(utc(2025, 10, 26, 17, 5, 48))
    );

    let listed: Vec<RunningInstance> = decode(fixture!("list_vms"));
    let created: Vec<CreatedVm> = decode(fixture!("create_vm_response"));
    let lower = VmId::new(created[0].vm_id.as_str().to_ascii_lowercase());
    assert_ne!(lower.as_str(), created[0].vm_id.as_str());
    assert_eq!(lower, created[0].vm_id);
    assert_eq!(lower, listed[0].id);
    assert_eq!(
        VmId::new("0xB0EB53F16947CCF25EC84D8DBC74254770F58904"),
        statuses[1].id
    );
}

#[test]
fn patch_and_delete_requests_round_trip() {
    let patch: PatchVmsRequest = round_trips(fixture!("patch_vms_request"));
    assert_eq!(patch.updates.len(), 2);
    assert_eq!(patch.updates[0].vm_name.as_deref(), Some("db-primary"));
    assert_eq!(patch.updates[0].open_ports.as_ref().map(Vec::len), Some(3));
    // Absent `openPorts` means "leave the ports alone": it must stay absent, not become `[]`.
    assert_eq!(patch.updates[1].open_ports, None);

    let delete: DeleteVmsRequest = round_trips(fixture!("delete_vms_request"));
    assert_eq!(delete.vm_ids.len(), 2);

    let response: DeleteVmsResponse = decode(fixture!("delete_vms_response"));
    assert_eq!(response.removed_ids, delete.vm_ids);
    assert_eq!(response.transactions.len(), 1);
    let empty: DeleteVmsResponse = decode("{}");
    assert_eq!(empty, DeleteVmsResponse::default());
}

#[test]
fn ssh_keys_decode_in_both_spellings_and_shapes() {
    let keys: Vec<SshKey> = decode(fixture!("ssh_keys"));
    let key = &keys[0];
    assert_eq!(key.name, "alice-laptop");
    assert_eq!(key.algorithm, "ssh-ed25519");
    assert!(key.public_key.starts_with("ssh-ed25519 AAAA"));
    assert!(key.active);
    let expected = utc(2025, 11, 2, 18, 40, 11) + chrono::Duration::microseconds(203_114);
    assert_eq!(key.created_at, expected);
    let again = serde_json::to_value(key).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again["createdAt"], "+002025-11-02T18:40:11.203114000Z");

    // The documented create answer: a one-element array with `public_key`.
    let mut snake: Value = decode(fixture!("ssh_keys"));
    if let Some(object) = snake[0].as_object_mut() {
        let public_key = object.remove("publicKey");
        object.insert("public_key".into(), public_key.unwrap_or_default());
    }
    let created: OneOrMany<SshKey> =
        serde_json::from_value(snake.clone()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(created.0, keys);
    let single: OneOrMany<SshKey> =
        serde_json::from_value(snake[0].clone()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(single.0, keys);

    let create: CreateSshKeyRequest = round_trips(fixture!("create_ssh_key_request"));
    assert_eq!(create.public_key, key.public_key);
    let delete: DeleteSshKeyRequest = round_trips(fixture!("delete_ssh_key_request"));
    assert_eq!(delete.fingerprint, key.fingerprint);
}

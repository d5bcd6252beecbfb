//! A validated deploy request, as stored with the deployment, and the Fluence requests made
//! from it. The HTTP layer builds it; the worker only reads it, so what was validated is what
//! is sent.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::money::Usdc;
use crate::fluence::types::{
    AdditionalResources, AdditionalStorage, CreateVmRequest, DatacenterFilter, EstimateRequest,
    HardwareFilter, OfferConstraints, Port, VmConfiguration,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    pub name: String,
    pub instances: u32,
    pub configuration: String,
    pub countries: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware: Option<HardwareFilter>,
    #[serde(default)]
    pub extra_storage: Vec<ExtraStorage>,
    /// The most the team will pay per VM per epoch; above it the deployment waits or is refused.
    #[serde(default, with = "crate::domain::money::decimal_string_option")]
    pub max_price_per_epoch: Option<Usdc>,
    /// As the client wrote it: a default-image slug or an `https` URL.
    pub image: String,
    /// What Fluence is sent as `osImage`: the URL, or the slug's download URL.
    pub os_image: String,
    pub ssh_keys: Vec<String>,
    pub open_ports: Vec<Port>,
    #[serde(default)]
    pub ttl_hours: Option<u32>,
    #[serde(default)]
    pub start_before: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtraStorage {
    pub gib: u64,
    #[serde(rename = "type")]
    pub kind: String,
}

impl Spec {
    pub fn extra_storage_gib(&self) -> u64 {
        self.extra_storage.iter().map(|s| s.gib).sum()
    }

    /// The offer constraints shared by the estimate and the deploy; the deploy adds the price
    /// ceiling the hold was computed from.
    pub fn constraints(&self, ceiling: Option<Usdc>) -> OfferConstraints {
        OfferConstraints {
            basic_configuration: Some(self.configuration.clone()),
            additional_resources: (!self.extra_storage.is_empty()).then(|| AdditionalResources {
                storage: Some(
                    self.extra_storage
                        .iter()
                        .map(|s| AdditionalStorage {
                            supply: s.gib,
                            units: "GiB".into(),
                            kind: s.kind.clone(),
                        })
                        .collect(),
                ),
            }),
            hardware: self.hardware.clone(),
            datacenter: (!self.countries.is_empty()).then(|| DatacenterFilter {
                countries: self.countries.clone(),
            }),
            max_total_price_per_epoch_usd: ceiling,
        }
    }

    pub fn estimate_request(&self) -> EstimateRequest {
        EstimateRequest {
            constraints: Some(self.constraints(None)),
            instances: self.instances,
        }
    }

    /// The deploy body: every VM named `upstream_name`, and no offer above `ceiling` per VM.
    pub fn create_request(&self, upstream_name: &str, ceiling: Usdc) -> CreateVmRequest {
        CreateVmRequest {
            constraints: Some(self.constraints(Some(ceiling))),
            instances: self.instances,
            vm_configuration: VmConfiguration {
                name: upstream_name.to_owned(),
                hostname: None,
                os_image: self.os_image.clone(),
                open_ports: self.open_ports.clone(),
                ssh_keys: self.ssh_keys.clone(),
            },
        }
    }
}

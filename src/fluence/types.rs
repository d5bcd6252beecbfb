//! The Fluence v3 wire types (`/marketplace/*`, `/vms/v3`, `/ssh_keys`).
//!
//! Serde names match Fluence's exactly; the simulator serialises these same types, so the two
//! sides cannot drift. Decoding is tolerant where Fluence is inconsistent (see
//! `shared/fluence/api-shapes.md`): three timestamp styles, `quantity` vs `supply` + `units`,
//! `publicKey` vs `public_key`, an object where an array was expected, decimals without a leading
//! zero, mixed-case VM ids and statuses that are not in the documented set.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::domain::ids::VmId;
use crate::domain::money::Usdc;
use crate::fluence::timefmt;

// ---------------------------------------------------------------------------------------------
// Constraints (offers, estimate, deploy)
// ---------------------------------------------------------------------------------------------

/// `OfferConstraints`: every field optional, and each may be `null`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OfferConstraints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_configuration: Option<String>,
    /// Only valid together with `hardware.storage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_resources: Option<AdditionalResources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware: Option<HardwareFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacenter: Option<DatacenterFilter>,
    /// Per VM per 24 h epoch: the basic configuration plus any additional storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_total_price_per_epoch_usd: Option<Usdc>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AdditionalResources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Vec<AdditionalStorage>>,
}

/// A request for extra storage on each VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdditionalStorage {
    pub supply: u64,
    /// Only `"GiB"` is accepted by Fluence.
    pub units: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// The `hardware` filter. Entries keep their fields optional so that a missing one can be
/// answered with Fluence's 422 rather than a decode error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HardwareFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Vec<CpuFilter>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Vec<MemoryFilter>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Vec<StorageFilter>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryFilter {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// A string in Fluence (`"5"`), not a number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StorageFilter {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// Countries are ISO alpha-2 codes combined with OR.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DatacenterFilter {
    #[serde(default)]
    pub countries: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Marketplace
// ---------------------------------------------------------------------------------------------

/// One offer of `POST /marketplace/offers`: one provider, one configuration, one datacenter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MarketOffering {
    pub configuration: OfferConfiguration,
    #[serde(default)]
    pub resources: Vec<OfferResource>,
    pub datacenter: Datacenter,
    #[serde(default)]
    pub servers: Vec<OfferServer>,
    #[serde(default)]
    pub max_additional_supply: Vec<AdditionalSupply>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfferConfiguration {
    pub slug: String,
    /// The price of one VM of this configuration per epoch.
    pub price: Usdc,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfferResource {
    #[serde(rename = "type")]
    pub kind: ResourceType,
    #[serde(default)]
    pub metadata: Value,
    pub price: Usdc,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OfferServer {
    pub available_basic_instances: u32,
    #[serde(default)]
    pub additional_resources: Vec<AdditionalSupply>,
}

/// Extra capacity a server can add to one VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdditionalSupply {
    #[serde(rename = "type")]
    pub kind: ResourceType,
    #[serde(default)]
    pub metadata: Value,
    /// Per unit (GiB) per epoch.
    pub price: Usdc,
    pub supply: u64,
    pub units: String,
    /// `null` when the protocol sets no per-VM cap; always written, never omitted.
    pub per_vm_limit: Option<u64>,
}

/// A datacenter as embedded in offers and VMs (note `cityIndex`, unlike the datacenter list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Datacenter {
    pub country_code: String,
    pub city_code: String,
    pub city_index: u32,
    pub tier: u8,
    #[serde(default)]
    pub certifications: Vec<String>,
}

/// `GET /marketplace/hardware`: the vocabulary of the `hardware` filter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AvailableHardware {
    #[serde(default)]
    pub cpu: Vec<CpuHardware>,
    #[serde(default)]
    pub memory: Vec<MemoryHardware>,
    #[serde(default)]
    pub storage: Vec<StorageHardware>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CpuHardware {
    pub manufacturer: String,
    pub architecture: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MemoryHardware {
    #[serde(rename = "type")]
    pub kind: String,
    pub generation: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StorageHardware {
    #[serde(rename = "type")]
    pub kind: String,
}

/// An entry of `GET /v1/marketplace/datacenters` (inferred shape; `index`, not `cityIndex`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatacenterInfo {
    pub id: String,
    pub country_code: String,
    pub city_code: String,
    pub index: u32,
    pub tier: u8,
    #[serde(default)]
    pub certifications: Vec<String>,
    pub slug: String,
}

// ---------------------------------------------------------------------------------------------
// VMs
// ---------------------------------------------------------------------------------------------

/// `GET /vms/v3/default_images`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DefaultImage {
    pub id: String,
    pub name: String,
    pub distribution: String,
    pub slug: String,
    pub download_url: String,
    pub username: String,
    #[serde(with = "timefmt::micros")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "timefmt::micros")]
    pub updated_at: DateTime<Utc>,
}

/// `POST /vms/v3/estimate` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EstimateRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<OfferConstraints>,
    pub instances: u32,
}

/// `POST /vms/v3/estimate` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Estimate {
    /// `totalPricePerEpoch` x `depositEpochs`.
    pub deposit_amount_usdc: Usdc,
    pub deposit_epochs: u32,
    /// For all instances together.
    pub total_price_per_epoch: Usdc,
    /// The highest per-instance price among the offers matched.
    pub max_price_per_epoch: Usdc,
    pub instances: u32,
}

/// `POST /vms/v3` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateVmRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<OfferConstraints>,
    pub instances: u32,
    pub vm_configuration: VmConfiguration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmConfiguration {
    /// Letters, digits and hyphens; every instance of one create gets this same name.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// A public image URL with a supported suffix (`.qcow2`, `.img`, `.raw`, ...).
    pub os_image: String,
    /// Extra ports; 22/tcp is open even when not listed. May be empty but is always sent.
    #[serde(default)]
    pub open_ports: Vec<Port>,
    /// Raw OpenSSH public keys or names of registered keys; at least one.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
}

/// One element of the `POST /vms/v3` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedVm {
    pub vm_id: VmId,
    pub vm_name: String,
}

/// `RunningInstanceV3`, an element of `GET /vms/v3`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunningInstance {
    pub id: VmId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_name: Option<String>,
    pub status: VmStatus,
    pub price_per_epoch: Usdc,
    #[serde(default)]
    pub resources: Vec<VmResource>,
    #[serde(with = "timefmt::vm")]
    pub created_at: DateTime<Utc>,
    /// Absent on `Terminated` VMs.
    #[serde(
        default,
        with = "timefmt::vm::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub next_billing_at: Option<DateTime<Utc>>,
    #[serde(
        default,
        with = "timefmt::vm::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub status_changed_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub os_image: Option<String>,
    /// `null` when the provider terminated the VM.
    #[serde(default)]
    pub datacenter: Option<Datacenter>,
    /// `null` until `Active`, and again once `Terminated`.
    #[serde(default)]
    pub public_ip: Option<String>,
    #[serde(default)]
    pub ports: Vec<Port>,
    pub reserved_balance: Usdc,
    pub total_spent: Usdc,
}

/// A resource allocated to a VM. The v3 examples give VCPU and PUBLIC_IP a `quantity` and RAM and
/// STORAGE a `supply` + `units`; other sources put `supply` + `units` on everything, and the v2
/// era wrote `supply` as a string of MiB. All of these decode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmResource {
    #[serde(rename = "type")]
    pub kind: ResourceType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<u64>,
    #[serde(
        default,
        deserialize_with = "number_or_numeric_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub supply: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<String>,
    #[serde(default = "RawJson::empty_object")]
    pub details: RawJson,
    #[serde(default = "RawJson::empty_object")]
    pub metadata: RawJson,
}

impl VmResource {
    /// The amount in the resource's natural unit: a count for VCPU and PUBLIC_IP, GiB for RAM
    /// and STORAGE (converting `MiB`/`MB` when that is what `units` says).
    pub fn amount(&self) -> Option<u64> {
        match (self.supply, self.quantity) {
            (Some(supply), _) => match self.units.as_deref().map(str::to_ascii_lowercase) {
                Some(units) if units == "mib" => Some(supply / 1024),
                Some(units) if units == "mb" => Some(supply / 1000),
                _ => Some(supply),
            },
            (None, quantity) => quantity,
        }
    }
}

/// `GET /vms/v3/status?ids=...` element.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmStatusInfo {
    pub id: VmId,
    pub status: VmStatus,
    #[serde(default, with = "timefmt::vm::option")]
    pub status_changed_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub public_ip: Option<String>,
}

/// `PATCH /vms/v3` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchVmsRequest {
    pub updates: Vec<VmUpdate>,
}

/// One VM's change. `openPorts`, when present, **replaces** the whole set: leaving out 22/tcp
/// closes SSH. The gateway computes the full set; the simulator reproduces the trap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmUpdate {
    pub id: VmId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_ports: Option<Vec<Port>>,
}

/// `DELETE /vms/v3` request (a DELETE with a JSON body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteVmsRequest {
    pub vm_ids: Vec<VmId>,
}

/// `DELETE /vms/v3` response; snake_case in Fluence. Its presence is uncertain, so every field
/// defaults and an empty body decodes too.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeleteVmsResponse {
    #[serde(default)]
    pub removed_ids: Vec<VmId>,
    #[serde(default)]
    pub transactions: Vec<String>,
}

/// An open port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Port {
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        })
    }
}

// ---------------------------------------------------------------------------------------------
// SSH keys
// ---------------------------------------------------------------------------------------------

/// An account SSH key. Fluence writes the key as `publicKey` in lists and `public_key` in some
/// create answers; both decode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SshKey {
    pub name: String,
    pub fingerprint: String,
    pub algorithm: String,
    #[serde(default)]
    pub comment: String,
    #[serde(alias = "public_key")]
    pub public_key: String,
    #[serde(default)]
    pub active: bool,
    #[serde(with = "timefmt::expanded")]
    pub created_at: DateTime<Utc>,
}

/// `POST /ssh_keys` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateSshKeyRequest {
    pub name: String,
    pub public_key: String,
}

/// `DELETE /ssh_keys` request: keys are identified by fingerprint, not name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteSshKeyRequest {
    pub fingerprint: String,
}

/// Fluence's error body, `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

// ---------------------------------------------------------------------------------------------
// Enumerations kept open
// ---------------------------------------------------------------------------------------------

/// A VM status. Matched case-insensitively (the `/vms/v2` era wrote `"ACTIVE"`); a value outside
/// the documented set is kept as [`VmStatus::Unknown`] rather than failing the whole list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VmStatus {
    New,
    Launching,
    Active,
    SmallBalance,
    InsufficientFunds,
    Terminated,
    Stopped,
    Unknown(String),
}

impl VmStatus {
    pub fn as_str(&self) -> &str {
        match self {
            VmStatus::New => "New",
            VmStatus::Launching => "Launching",
            VmStatus::Active => "Active",
            VmStatus::SmallBalance => "SmallBalance",
            VmStatus::InsufficientFunds => "InsufficientFunds",
            VmStatus::Terminated => "Terminated",
            VmStatus::Stopped => "Stopped",
            VmStatus::Unknown(other) => other,
        }
    }

    pub fn parse(text: &str) -> VmStatus {
        const KNOWN: [VmStatus; 7] = [
            VmStatus::New,
            VmStatus::Launching,
            VmStatus::Active,
            VmStatus::SmallBalance,
            VmStatus::InsufficientFunds,
            VmStatus::Terminated,
            VmStatus::Stopped,
        ];
        KNOWN
            .into_iter()
            .find(|status| status.as_str().eq_ignore_ascii_case(text))
            .unwrap_or_else(|| VmStatus::Unknown(text.to_owned()))
    }
}

impl fmt::Display for VmStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for VmStatus {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for VmStatus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(VmStatus::parse(&text))
    }
}

/// A resource type; values outside the known set are kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ResourceType {
    Vcpu,
    Ram,
    Storage,
    PublicIp,
    NetworkBandwidth,
    Gpu,
    Other(String),
}

impl ResourceType {
    pub fn as_str(&self) -> &str {
        match self {
            ResourceType::Vcpu => "VCPU",
            ResourceType::Ram => "RAM",
            ResourceType::Storage => "STORAGE",
            ResourceType::PublicIp => "PUBLIC_IP",
            ResourceType::NetworkBandwidth => "NETWORK_BANDWIDTH",
            ResourceType::Gpu => "GPU",
            ResourceType::Other(other) => other,
        }
    }

    pub fn parse(text: &str) -> ResourceType {
        match text.to_ascii_uppercase().as_str() {
            "VCPU" => ResourceType::Vcpu,
            "RAM" => ResourceType::Ram,
            "STORAGE" => ResourceType::Storage,
            "PUBLIC_IP" => ResourceType::PublicIp,
            "NETWORK_BANDWIDTH" => ResourceType::NetworkBandwidth,
            "GPU" => ResourceType::Gpu,
            _ => ResourceType::Other(text.to_owned()),
        }
    }
}

impl Serialize for ResourceType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ResourceType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(ResourceType::parse(&text))
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding helpers
// ---------------------------------------------------------------------------------------------

/// A JSON value that should be an array but is sometimes a single object (the `POST /ssh_keys`
/// answer, and one client's report of `POST /vms/v3`).
#[derive(Debug, Clone, PartialEq)]
pub struct OneOrMany<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either<T> {
            Many(Vec<T>),
            One(T),
        }
        Ok(match Either::deserialize(deserializer)? {
            Either::Many(items) => OneOrMany(items),
            Either::One(item) => OneOrMany(vec![item]),
        })
    }
}

/// Free-form JSON that the gateway passes on without looking inside (a listed VM's resource
/// `details` and `metadata`), kept as its text. Decoded into maps, these were half of the
/// memory a 10 000-VM listing took (38 of 77 MB at its peak, in B-tree nodes of one-to-four
/// keys). Decodes only from JSON text (`serde_json::from_str`/`from_slice`), as Fluence's
/// answers are.
#[derive(Debug, Clone)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    pub fn empty_object() -> RawJson {
        RawJson::of(&Value::Object(serde_json::Map::new()))
    }

    pub fn of(value: &Value) -> RawJson {
        // A `Value` always encodes; the fallback (`null`) is never taken.
        RawJson(serde_json::value::to_raw_value(value).unwrap_or_default())
    }

    /// The JSON decoded, for the rare reader that looks inside.
    pub fn value(&self) -> Value {
        serde_json::from_str(self.0.get()).unwrap_or(Value::Null)
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &RawJson) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Serialize for RawJson {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(RawJson)
    }
}

fn number_or_numeric_string<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Amount {
        Number(u64),
        Text(String),
    }
    match Option::<Amount>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Amount::Number(n)) => Ok(Some(n)),
        Some(Amount::Text(text)) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format_args!("bad amount {text:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_match_case_insensitively_and_keep_unknowns() {
        assert_eq!(VmStatus::parse("ACTIVE"), VmStatus::Active);
        assert_eq!(VmStatus::parse("smallbalance"), VmStatus::SmallBalance);
        assert_eq!(
            VmStatus::parse("softRebooting"),
            VmStatus::Unknown("softRebooting".into())
        );
        assert_eq!(VmStatus::parse("Stopped").to_string(), "Stopped");
    }

    #[test]
    fn resource_amounts_honour_units() {
        let ram: VmResource = serde_json::from_str(
            r#"{"type": "RAM", "supply": "4096", "units": "MiB", "details": {}, "metadata": {}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ram.amount(), Some(4));
        let cpu: VmResource = serde_json::from_str(r#"{"type": "VCPU", "quantity": 2}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cpu.amount(), Some(2));
        assert_eq!(cpu.details, RawJson::empty_object());
    }

    #[test]
    fn one_or_many_accepts_an_object_or_an_array() {
        let one: OneOrMany<ErrorBody> =
            serde_json::from_str(r#"{"error":"x"}"#).unwrap_or_else(|e| panic!("{e}"));
        let many: OneOrMany<ErrorBody> = serde_json::from_str(r#"[{"error":"x"},{"error":"y"}]"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(one.0.len(), 1);
        assert_eq!(many.0.len(), 2);
    }
}

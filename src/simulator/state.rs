//! The account behind the simulated API: VMs, their lifecycle and billing, the balance, SSH
//! keys, and the record of calls. Time-driven effects are events in a heap, processed in
//! chronological order whenever virtual time moves, so a month of billing for thousands of VMs
//! costs one heap operation per charge.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};

use chrono::{DateTime, NaiveTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::catalog::{CpuSpec, IMAGE_SUFFIXES, RamSpec};
use super::clock::{Clock, TooFar};
use super::error::ApiError;
use super::ident::{eip55, parse_public_key};
use super::ips::{IpPool, Slot};
use super::market::{Market, MatchError, Placement, cpu_metadata, ram_metadata};
use super::rng::SplitMix64;
use super::{BillingMode, SimulatorConfig};
use crate::domain::ids::VmId;
use crate::domain::money::Usdc;
use crate::fluence::types::{
    CreateVmRequest, CreatedVm, Estimate, OfferConstraints, Port, Protocol, RawJson, ResourceType,
    RunningInstance, SshKey, VmResource, VmStatus, VmStatusInfo, VmUpdate,
};

/// New -> Launching.
const NEW_SECONDS: i64 = 2;
/// InsufficientFunds -> Terminated.
const GRACE_SECONDS: i64 = 3600;
/// Stopped -> gone from the list.
const REMOVAL_SECONDS: i64 = 10;
const EPOCH_SECONDS: i64 = 24 * 3600;
const RESERVED_PORT: u16 = 10250;

/// `/_sim/config` switches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switches {
    pub price_drift: bool,
    pub decimals_without_leading_zero: bool,
    pub resource_amounts: ResourceAmounts,
    pub ssh_key_create_response: SshKeyCreateResponse,
    pub auth_failure_status: u16,
    pub stuck_launching: bool,
    pub created_id_case: IdCase,
    pub launch_seconds: u64,
    pub billing_mode: BillingMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceAmounts {
    /// VCPU and PUBLIC_IP with `quantity`, RAM and STORAGE with `supply` + `units`.
    Doc,
    /// `supply` + `units` on every resource, as the spec-derived client has them.
    SupplyEverywhere,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SshKeyCreateResponse {
    Object,
    ArraySnakeCase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdCase {
    Checksum,
    Lower,
    Upper,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum EventKind {
    Launch,
    Activate,
    Bill,
    GraceEnd,
    Remove,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Event {
    at: DateTime<Utc>,
    seq: u64,
    vm: usize,
    kind: EventKind,
}

#[derive(Debug, Clone)]
pub struct Vm {
    pub id: String,
    pub name: String,
    pub status: VmStatus,
    /// Where the VM is in New -> Launching -> Active, whatever its money status.
    lifecycle: VmStatus,
    pub price: Usdc,
    pub reserved: Usdc,
    pub total_spent: Usdc,
    pub created_at: DateTime<Utc>,
    pub status_changed_at: DateTime<Utc>,
    pub next_billing_at: Option<DateTime<Utc>>,
    pub os_image: String,
    dc: usize,
    pub public_ip: Option<String>,
    /// The pool address behind `public_ip`, given back when the VM stops or is terminated.
    ip_slot: Option<Slot>,
    pub ports: Vec<Port>,
    /// The capacity held; `None` once given back.
    placement: Option<Placement>,
    cores: i64,
    ram_gib: i64,
    storage_gib: i64,
    cpu: CpuSpec,
    ram: RamSpec,
    storage_type: &'static str,
    stuck: bool,
    visible_from: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
    /// False once the VM has dropped out of `GET /vms/v3`.
    listed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Charge {
    pub vm_id: String,
    pub amount: Usdc,
    pub at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CallRecord {
    pub method: String,
    /// Without the query, so tests can match on it.
    pub path: String,
    /// The raw query string (`ids=0x..`), `null` when there is none.
    pub query: Option<String>,
    /// `None` when no answer was given (a reset or a hang).
    pub status: Option<u16>,
    pub body: Value,
}

/// How a fault changes a create.
#[derive(Debug, Clone, Copy, Default)]
pub struct CreateOptions {
    /// Create only this many of the VMs asked for.
    pub only: Option<u32>,
    /// Keep the new VMs out of the list and status answers for this many virtual seconds.
    pub hidden_for: Option<i64>,
}

pub struct State {
    pub clock: Clock,
    pub market: Market,
    pub switches: Switches,
    pub balance: Usdc,
    vms: Vec<Vm>,
    index: HashMap<String, usize>,
    events: BinaryHeap<Reverse<Event>>,
    seq: u64,
    rng: SplitMix64,
    ips: IpPool,
    /// VMs waiting for money: `SmallBalance` (reserve short) or `InsufficientFunds` (a charge
    /// unpaid, until its grace period ends); retried whenever the balance goes up.
    underfunded: BTreeSet<usize>,
    pub charges: Vec<Charge>,
    pub calls: Vec<CallRecord>,
    ssh_keys: Vec<SshKey>,
}

impl State {
    pub fn new(config: &SimulatorConfig, clock: Clock) -> State {
        let mut market = Market::generate(config.seed);
        market.drift = true;
        State {
            clock,
            market,
            switches: Switches {
                price_drift: true,
                decimals_without_leading_zero: false,
                resource_amounts: ResourceAmounts::Doc,
                ssh_key_create_response: SshKeyCreateResponse::Object,
                auth_failure_status: 403,
                stuck_launching: false,
                created_id_case: IdCase::Checksum,
                launch_seconds: config.launch_seconds.min(600),
                billing_mode: config.billing_mode,
            },
            balance: config.initial_balance,
            vms: Vec::new(),
            index: HashMap::new(),
            events: BinaryHeap::new(),
            seq: 0,
            // A stream apart from the marketplace's, so creating VMs never shifts the offers.
            rng: SplitMix64::new(config.seed ^ 0x5EED_0F1D),
            ips: IpPool::default(),
            underfunded: BTreeSet::new(),
            charges: Vec::new(),
            calls: Vec::new(),
            ssh_keys: Vec::new(),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Brings the state up to the current virtual time.
    pub fn sync(&mut self) {
        let now = self.now();
        while let Some(Reverse(event)) = self.events.peek() {
            if event.at > now {
                break;
            }
            let Some(Reverse(event)) = self.events.pop() else {
                break;
            };
            self.handle(event);
        }
    }

    pub fn advance(&mut self, seconds: i64) -> Result<(), TooFar> {
        self.sync();
        self.clock.advance(seconds)?;
        self.sync();
        Ok(())
    }

    pub fn set_drift(&mut self, drift: bool) {
        self.switches.price_drift = drift;
        self.market.drift = drift;
    }

    fn schedule(&mut self, at: DateTime<Utc>, vm: usize, kind: EventKind) {
        self.seq += 1;
        self.events.push(Reverse(Event {
            at,
            seq: self.seq,
            vm,
            kind,
        }));
    }

    fn handle(&mut self, event: Event) {
        let Event {
            at, vm: i, kind, ..
        } = event;
        match kind {
            EventKind::Launch => {
                let Some(vm) = self.vms.get_mut(i) else {
                    return;
                };
                if vm.lifecycle != VmStatus::New || vm.placement.is_none() {
                    return;
                }
                vm.lifecycle = VmStatus::Launching;
                if vm.status == VmStatus::New {
                    set_status(vm, VmStatus::Launching, at);
                }
                if !vm.stuck {
                    let seconds = i64::try_from(self.switches.launch_seconds).unwrap_or(0);
                    self.schedule(later(at, seconds), i, EventKind::Activate);
                }
            }
            EventKind::Activate => {
                let Some(vm) = self.vms.get_mut(i) else {
                    return;
                };
                if vm.lifecycle != VmStatus::Launching || vm.placement.is_none() {
                    return;
                }
                vm.lifecycle = VmStatus::Active;
                let slot = self.ips.allocate();
                vm.ip_slot = Some(slot);
                vm.public_ip = Some(IpPool::address(slot));
                if vm.status == VmStatus::Launching {
                    set_status(vm, VmStatus::Active, at);
                }
            }
            EventKind::Bill => self.bill(i, at),
            EventKind::GraceEnd => {
                // Only the grace period this event was scheduled for: a VM rescued and unpaid
                // again since then has a later grace end of its own.
                let ends_now = self.vms.get(i).is_some_and(|vm| {
                    vm.status == VmStatus::InsufficientFunds
                        && later(vm.status_changed_at, GRACE_SECONDS) <= at
                });
                if ends_now {
                    self.terminate_at(i, at);
                }
            }
            EventKind::Remove => {
                if let Some(vm) = self.vms.get_mut(i) {
                    if vm.status == VmStatus::Stopped {
                        vm.listed = false;
                    }
                }
            }
        }
    }

    fn bill(&mut self, i: usize, at: DateTime<Utc>) {
        let Some(vm) = self.vms.get(i) else {
            return;
        };
        let billable = matches!(
            vm.status,
            VmStatus::New | VmStatus::Launching | VmStatus::Active | VmStatus::SmallBalance
        );
        if vm.next_billing_at != Some(at) || !billable {
            return;
        }
        // A top-up may have become possible since the last attempt (a refund, say).
        self.try_top_up(i, at);
        if !self.settle(i, at, at) {
            let Some(vm) = self.vms.get_mut(i) else {
                return;
            };
            // `nextBillingAt` stays at this missed instant while the epoch is unpaid: it is the
            // charge still due, and the one a rescue pays before billing resumes from it.
            set_status(vm, VmStatus::InsufficientFunds, at);
            self.underfunded.insert(i);
            self.schedule(later(at, GRACE_SECONDS), i, EventKind::GraceEnd);
        }
    }

    /// Charges the epoch that fell due at `due` from the reserve, at `at` (later than `due` for a
    /// rescue), schedules the next charge after `at` on `due`'s schedule, and refills the reserve
    /// (or marks the VM `SmallBalance`). False, changing nothing, when the reserve falls short.
    fn settle(&mut self, i: usize, at: DateTime<Utc>, due: DateTime<Utc>) -> bool {
        let mode = self.switches.billing_mode;
        let Some(vm) = self.vms.get_mut(i) else {
            return false;
        };
        let charged = vm
            .reserved
            .checked_sub(vm.price)
            .filter(|left| *left >= Usdc::ZERO)
            .zip(vm.total_spent.checked_add(vm.price));
        let Some((reserved, total_spent)) = charged else {
            return false;
        };
        vm.reserved = reserved;
        vm.total_spent = total_spent;
        self.charges.push(Charge {
            vm_id: vm.id.clone(),
            amount: vm.price,
            at: crate::fluence::timefmt::format_vm(&at),
        });
        let mut next = next_billing(mode, due, at);
        // A rescue late enough to miss more than one instant skips them: they are not owed.
        while next <= at {
            next = next_billing(mode, next, next);
        }
        vm.next_billing_at = Some(next);
        if vm.status == VmStatus::InsufficientFunds {
            let back = vm.lifecycle.clone();
            set_status(vm, back, at);
        }
        self.schedule(next, i, EventKind::Bill);
        if !self.try_top_up(i, at) {
            if let Some(vm) = self.vms.get_mut(i) {
                if vm.status != VmStatus::SmallBalance {
                    set_status(vm, VmStatus::SmallBalance, at);
                }
            }
            self.underfunded.insert(i);
        }
        true
    }

    /// Refills the reserve to one epoch from the account; true when the reserve is full. An
    /// `InsufficientFunds` VM is left to [`State::try_rescue`], which also owes a charge.
    fn try_top_up(&mut self, i: usize, at: DateTime<Utc>) -> bool {
        let Some(vm) = self.vms.get_mut(i) else {
            return false;
        };
        if vm.status == VmStatus::InsufficientFunds {
            return false;
        }
        let need = vm.price.checked_sub(vm.reserved).unwrap_or(Usdc::ZERO);
        if need > Usdc::ZERO {
            let Some(left) = self.balance.checked_sub(need).filter(|b| *b >= Usdc::ZERO) else {
                return false;
            };
            self.balance = left;
            vm.reserved = vm.price;
        }
        if vm.status == VmStatus::SmallBalance {
            let back = vm.lifecycle.clone();
            set_status(vm, back, at);
        }
        self.underfunded.remove(&i);
        true
    }

    /// An `InsufficientFunds` VM within its grace period whose missed charge the account can now
    /// cover: the reserve is made whole, the missed epoch charged now, and the VM resumes (or
    /// is `SmallBalance` if the reserve cannot be refilled after that charge).
    fn try_rescue(&mut self, i: usize, at: DateTime<Utc>) {
        let Some(vm) = self.vms.get_mut(i) else {
            return;
        };
        if vm.status != VmStatus::InsufficientFunds {
            return;
        }
        let Some(due) = vm.next_billing_at else {
            return;
        };
        let need = vm.price.checked_sub(vm.reserved).unwrap_or(Usdc::ZERO);
        let Some(left) = self.balance.checked_sub(need).filter(|b| *b >= Usdc::ZERO) else {
            return;
        };
        let (balance, reserved) = (self.balance, vm.reserved);
        self.balance = left;
        vm.reserved = vm.price;
        if !self.settle(i, at, due) {
            // Only a total beyond micro-USDC's range gets here; undo the top-up.
            self.balance = balance;
            if let Some(vm) = self.vms.get_mut(i) {
                vm.reserved = reserved;
            }
        }
    }

    /// Retries every VM waiting for money, in creation order, after the balance went up.
    fn retry_top_ups(&mut self) {
        let now = self.now();
        let waiting: Vec<usize> = self.underfunded.iter().copied().collect();
        for i in waiting {
            let unpaid = self
                .vms
                .get(i)
                .is_some_and(|vm| vm.status == VmStatus::InsufficientFunds);
            if unpaid {
                self.try_rescue(i, now);
            } else {
                self.try_top_up(i, now);
            }
        }
    }

    pub fn set_balance(&mut self, balance: Usdc) {
        self.sync();
        self.balance = balance;
        self.retry_top_ups();
    }

    fn terminate_at(&mut self, i: usize, at: DateTime<Utc>) {
        let Some(vm) = self.vms.get_mut(i) else {
            return;
        };
        set_status(vm, VmStatus::Terminated, at);
        vm.public_ip = None;
        if let Some(slot) = vm.ip_slot.take() {
            self.ips.release(slot);
        }
        vm.next_billing_at = None;
        let placement = vm.placement.take();
        self.underfunded.remove(&i);
        if let Some(placement) = placement {
            self.market.release(&placement);
        }
    }

    /// The provider ends a VM; its reserve stays until the user deletes it.
    pub fn provider_terminate(&mut self, id: &str) -> Result<(), ApiError> {
        self.sync();
        let i = self.live_index(id).ok_or_else(|| vm_not_found(id))?;
        let terminal = self
            .vms
            .get(i)
            .is_some_and(|vm| matches!(vm.status, VmStatus::Terminated | VmStatus::Stopped));
        if !terminal {
            let now = self.now();
            self.terminate_at(i, now);
        }
        Ok(())
    }

    fn live_index(&self, id: &str) -> Option<usize> {
        let i = *self.index.get(&id.to_ascii_lowercase())?;
        self.vms.get(i).filter(|vm| vm.listed).map(|_| i)
    }

    // -----------------------------------------------------------------------------------------
    // Marketplace and VMs
    // -----------------------------------------------------------------------------------------

    pub fn estimate(
        &mut self,
        constraints: &OfferConstraints,
        instances: u32,
    ) -> Result<Estimate, ApiError> {
        self.sync();
        let plan = self
            .market
            .plan(constraints, instances, self.now())
            .map_err(match_error)?;
        let total = sum(plan.iter().map(|p| p.price)).ok_or_else(too_large)?;
        let deposit = total.checked_mul(2).ok_or_else(too_large)?;
        let max = plan.iter().map(|p| p.price).max().unwrap_or(Usdc::ZERO);
        Ok(Estimate {
            deposit_amount_usdc: deposit,
            deposit_epochs: 2,
            total_price_per_epoch: total,
            max_price_per_epoch: max,
            instances,
        })
    }

    pub fn create(
        &mut self,
        request: &CreateVmRequest,
        options: CreateOptions,
    ) -> Result<Vec<CreatedVm>, ApiError> {
        self.sync();
        let config = &request.vm_configuration;
        validate_name(&config.name)?;
        validate_image(&config.os_image)?;
        validate_ports(&config.open_ports)?;
        if request.instances < 1 {
            return Err(ApiError::unprocessable("instances must be at least 1"));
        }
        self.validate_ssh_keys(&config.ssh_keys)?;
        let constraints = request.constraints.clone().unwrap_or_default();
        let now = self.now();
        let mut plan = self
            .market
            .plan(&constraints, request.instances, now)
            .map_err(match_error)?;
        // A deposit too large to represent is certainly more than the balance.
        let deposit = |plan: &[Placement]| {
            sum(plan.iter().map(|p| p.price)).and_then(|total| total.checked_mul(2))
        };
        let insufficient = || ApiError::unprocessable("Insufficient balance");
        if deposit(&plan).is_none_or(|deposit| self.balance < deposit) {
            return Err(insufficient());
        }
        if let Some(only) = options.only {
            plan.truncate(usize::try_from(only).unwrap_or(usize::MAX));
        }
        // Taken before anything changes, so a failure here leaves no half-made VM behind.
        self.balance = deposit(&plan)
            .and_then(|deposit| self.balance.checked_sub(deposit))
            .filter(|left| *left >= Usdc::ZERO)
            .ok_or_else(insufficient)?;
        let mut ports = vec![Port {
            port: 22,
            protocol: Protocol::Tcp,
        }];
        for port in &config.open_ports {
            if !ports.contains(port) {
                ports.push(port.clone());
            }
        }
        let visible_from = later(now, options.hidden_for.unwrap_or(0).max(0));
        let mut created = Vec::with_capacity(plan.len());
        for placement in plan {
            let price = placement.price;
            if !self.market.take(&placement) {
                // The plan was made from this same state a moment ago, so this cannot happen;
                // if it did, the VM's deposit goes back rather than vanishing.
                let deposit = price.checked_mul(2).unwrap_or(price);
                self.balance = refunded(self.balance, deposit);
                continue;
            }
            let id = self.mint_id();
            let Some(offer) = self.market.offers.get(placement.offer) else {
                continue;
            };
            let next = next_billing(self.switches.billing_mode, now, now);
            let vm = Vm {
                id: id.clone(),
                name: config.name.clone(),
                status: VmStatus::New,
                lifecycle: VmStatus::New,
                price,
                reserved: price,
                total_spent: price,
                created_at: now,
                status_changed_at: now,
                next_billing_at: Some(next),
                os_image: config.os_image.clone(),
                dc: offer.dc,
                public_ip: None,
                ip_slot: None,
                ports: ports.clone(),
                cores: offer.config.cores,
                ram_gib: offer.config.ram_gib,
                storage_gib: offer.config.storage_gib
                    + i64::try_from(placement.extra_storage).unwrap_or(0),
                cpu: offer.cpu,
                ram: offer.ram,
                storage_type: offer.storage_type,
                placement: Some(placement),
                stuck: self.switches.stuck_launching,
                visible_from,
                deleted_at: None,
                listed: true,
            };
            let i = self.vms.len();
            self.index.insert(id.to_ascii_lowercase(), i);
            self.vms.push(vm);
            self.charges.push(Charge {
                vm_id: id.clone(),
                amount: price,
                at: crate::fluence::timefmt::format_vm(&now),
            });
            self.schedule(later(now, NEW_SECONDS), i, EventKind::Launch);
            self.schedule(next, i, EventKind::Bill);
            let shown = match self.switches.created_id_case {
                IdCase::Checksum => id,
                IdCase::Lower => id.to_ascii_lowercase(),
                IdCase::Upper => format!("0x{}", id.get(2..).unwrap_or("").to_ascii_uppercase()),
            };
            created.push(CreatedVm {
                vm_id: VmId::new(shown),
                vm_name: config.name.clone(),
            });
        }
        Ok(created)
    }

    fn mint_id(&mut self) -> String {
        loop {
            let id = eip55(&self.rng.hex(40));
            if !self.index.contains_key(&id.to_ascii_lowercase()) {
                return id;
            }
        }
    }

    fn validate_ssh_keys(&self, keys: &[String]) -> Result<(), ApiError> {
        if keys.is_empty() {
            return Err(ApiError::unprocessable("sshKeys must not be empty"));
        }
        for key in keys {
            let known = parse_public_key(key).is_some()
                || self.ssh_keys.iter().any(|k| k.name == key.trim());
            if !known {
                return Err(ApiError::unprocessable(format!(
                    "SSH key {:?} is neither a public key nor a registered key name",
                    key.trim()
                )));
            }
        }
        Ok(())
    }

    fn visible(&self, vm: &Vm, now: DateTime<Utc>) -> bool {
        vm.listed && vm.visible_from <= now
    }

    pub fn list(&mut self) -> Vec<RunningInstance> {
        self.sync();
        let now = self.now();
        self.vms
            .iter()
            .filter(|vm| self.visible(vm, now))
            .map(|vm| self.instance(vm))
            .collect()
    }

    pub fn statuses(&mut self, ids: &[String]) -> Vec<VmStatusInfo> {
        self.sync();
        let now = self.now();
        let mut seen = HashSet::new();
        ids.iter()
            .filter_map(|id| self.live_index(id))
            .filter(|i| seen.insert(*i))
            .filter_map(|i| self.vms.get(i))
            .filter(|vm| self.visible(vm, now))
            .map(|vm| VmStatusInfo {
                id: VmId::new(vm.id.clone()),
                status: vm.status.clone(),
                status_changed_at: Some(vm.status_changed_at),
                public_ip: vm.public_ip.clone(),
            })
            .collect()
    }

    fn instance(&self, vm: &Vm) -> RunningInstance {
        let terminated = vm.status == VmStatus::Terminated;
        let everywhere = self.switches.resource_amounts == ResourceAmounts::SupplyEverywhere;
        let counted = |kind: ResourceType, n: i64, units: &str, details: Value, metadata: Value| {
            let n = u64::try_from(n).unwrap_or(0);
            VmResource {
                kind,
                quantity: (!everywhere).then_some(n),
                supply: everywhere.then_some(n),
                units: everywhere.then(|| units.to_owned()),
                details: RawJson::of(&details),
                metadata: RawJson::of(&metadata),
            }
        };
        let sized = |kind: ResourceType, n: i64, details: Value, metadata: Value| VmResource {
            kind,
            quantity: None,
            supply: Some(u64::try_from(n).unwrap_or(0)),
            units: Some("GiB".to_owned()),
            details: RawJson::of(&details),
            metadata: RawJson::of(&metadata),
        };
        RunningInstance {
            id: VmId::new(vm.id.clone()),
            vm_name: Some(vm.name.clone()),
            status: vm.status.clone(),
            price_per_epoch: vm.price,
            resources: vec![
                counted(
                    ResourceType::Vcpu,
                    vm.cores,
                    "vCPU",
                    json!({ "model": vm.cpu.model }),
                    cpu_metadata(&vm.cpu),
                ),
                sized(
                    ResourceType::Ram,
                    vm.ram_gib,
                    json!({ "manufacturer": vm.ram.manufacturer, "speed": vm.ram.speed }),
                    ram_metadata(&vm.ram),
                ),
                sized(
                    ResourceType::Storage,
                    vm.storage_gib,
                    json!({}),
                    json!({ "type": vm.storage_type }),
                ),
                counted(
                    ResourceType::PublicIp,
                    1,
                    "IPv4",
                    json!({}),
                    json!({ "version": "4" }),
                ),
            ],
            created_at: vm.created_at,
            next_billing_at: vm.next_billing_at,
            status_changed_at: Some(vm.status_changed_at),
            os_image: Some(vm.os_image.clone()),
            datacenter: if terminated {
                None
            } else {
                self.market.datacenter(vm.dc)
            },
            public_ip: vm.public_ip.clone(),
            ports: vm.ports.clone(),
            reserved_balance: vm.reserved,
            total_spent: vm.total_spent,
        }
    }

    /// Validates the whole batch before applying any of it.
    pub fn patch(&mut self, updates: &[VmUpdate]) -> Result<(), ApiError> {
        self.sync();
        let mut targets = Vec::with_capacity(updates.len());
        for update in updates {
            let i = self
                .live_index(update.id.as_str())
                .ok_or_else(|| vm_not_found(update.id.as_str()))?;
            if let Some(name) = &update.vm_name {
                validate_name(name)?;
            }
            if let Some(ports) = &update.open_ports {
                validate_ports(ports)?;
            }
            targets.push(i);
        }
        for (update, i) in updates.iter().zip(targets) {
            let Some(vm) = self.vms.get_mut(i) else {
                continue;
            };
            if let Some(name) = &update.vm_name {
                vm.name = name.clone();
            }
            if let Some(ports) = &update.open_ports {
                // Fluence replaces the set: 22/tcp is closed unless it is listed.
                let mut set: Vec<Port> = Vec::with_capacity(ports.len());
                for port in ports {
                    if !set.contains(port) {
                        set.push(port.clone());
                    }
                }
                vm.ports = set;
            }
        }
        Ok(())
    }

    /// Returns the ids removed and one transaction hash; unknown ids change nothing.
    pub fn delete(&mut self, ids: &[VmId]) -> Result<(Vec<VmId>, Vec<String>), ApiError> {
        self.sync();
        let mut targets = Vec::with_capacity(ids.len());
        for id in ids {
            let i = self
                .live_index(id.as_str())
                .ok_or_else(|| vm_not_found(id.as_str()))?;
            if !targets.contains(&i) {
                targets.push(i);
            }
        }
        let now = self.now();
        let mut removed = Vec::with_capacity(targets.len());
        for i in targets {
            let Some(vm) = self.vms.get_mut(i) else {
                continue;
            };
            removed.push(VmId::new(vm.id.clone()));
            if vm.status == VmStatus::Stopped {
                continue;
            }
            self.balance = refunded(self.balance, vm.reserved);
            vm.reserved = Usdc::ZERO;
            vm.deleted_at = Some(now);
            vm.next_billing_at = None;
            self.underfunded.remove(&i);
            if vm.status == VmStatus::Terminated {
                // Deleting a terminated VM only finalises its record.
                vm.listed = false;
                continue;
            }
            set_status(vm, VmStatus::Stopped, now);
            vm.public_ip = None;
            if let Some(slot) = vm.ip_slot.take() {
                self.ips.release(slot);
            }
            let placement = vm.placement.take();
            if let Some(placement) = placement {
                self.market.release(&placement);
            }
            self.schedule(later(now, REMOVAL_SECONDS), i, EventKind::Remove);
        }
        self.retry_top_ups();
        if removed.is_empty() {
            return Ok((removed, Vec::new()));
        }
        let transaction = format!("0x{}", self.rng.hex(64));
        Ok((removed, vec![transaction]))
    }

    // -----------------------------------------------------------------------------------------
    // SSH keys
    // -----------------------------------------------------------------------------------------

    pub fn ssh_keys(&self) -> Vec<SshKey> {
        self.ssh_keys.clone()
    }

    /// Returns the key and whether it is new.
    pub fn add_ssh_key(
        &mut self,
        name: &str,
        public_key: &str,
    ) -> Result<(SshKey, bool), ApiError> {
        let parsed = parse_public_key(public_key)
            .ok_or_else(|| ApiError::unprocessable("Invalid SSH public key"))?;
        if let Some(existing) = self
            .ssh_keys
            .iter()
            .find(|k| k.fingerprint == parsed.fingerprint)
        {
            return Ok((existing.clone(), false));
        }
        let name = name.trim();
        if name.is_empty() {
            return Err(ApiError::unprocessable("SSH key name must not be empty"));
        }
        if self.ssh_keys.iter().any(|k| k.name == name) {
            return Err(ApiError::unprocessable(
                "An SSH key with this name already exists",
            ));
        }
        let key = SshKey {
            name: name.to_owned(),
            fingerprint: parsed.fingerprint,
            algorithm: parsed.algorithm,
            comment: parsed.comment,
            public_key: public_key.trim().to_owned(),
            active: true,
            created_at: self.now(),
        };
        self.ssh_keys.push(key.clone());
        Ok((key, true))
    }

    pub fn delete_ssh_key(&mut self, fingerprint: &str) -> Result<(), ApiError> {
        let before = self.ssh_keys.len();
        self.ssh_keys.retain(|k| k.fingerprint != fingerprint);
        if self.ssh_keys.len() == before {
            return Err(ApiError::not_found("SSH key not found"));
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Ground truth
    // -----------------------------------------------------------------------------------------

    pub fn ground_truth(&mut self) -> Value {
        self.sync();
        let vms: Vec<Value> = self
            .vms
            .iter()
            .map(|vm| {
                json!({
                    "id": vm.id,
                    "name": vm.name,
                    "status": vm.status.as_str(),
                    "price_per_epoch": vm.price,
                    "total_charged": vm.total_spent,
                    "created_at": crate::fluence::timefmt::format_vm(&vm.created_at),
                    "deleted_at": vm.deleted_at.map(|t| crate::fluence::timefmt::format_vm(&t)),
                })
            })
            .collect();
        json!({
            "now": crate::fluence::timefmt::format_vm(&self.now()),
            "vms": vms,
            "charges": self.charges,
            "balance": self.balance,
            "calls": self.calls,
        })
    }
}

fn set_status(vm: &mut Vm, status: VmStatus, at: DateTime<Utc>) {
    vm.status = status;
    vm.status_changed_at = at;
}

/// `None` when the total would leave micro-USDC's range.
fn sum(mut prices: impl Iterator<Item = Usdc>) -> Option<Usdc> {
    prices.try_fold(Usdc::ZERO, Usdc::checked_add)
}

fn too_large() -> ApiError {
    ApiError::unprocessable("Total price is too large")
}

/// A refund added to the balance. It saturates rather than fails: the reserve has to go
/// somewhere, and a balance of nine trillion USDC is past any test's meaning anyway.
fn refunded(balance: Usdc, refund: Usdc) -> Usdc {
    Usdc::from_micros(balance.micros().saturating_add(refund.micros()))
}

/// `at` plus `seconds`, saturating at the end of chrono's calendar. Every input is bounded (the
/// clock by a century, fault delays by a year), so saturation is not reached in practice; if it
/// were, an event that never comes is better than a panic that poisons every later request.
fn later(at: DateTime<Utc>, seconds: i64) -> DateTime<Utc> {
    TimeDelta::try_seconds(seconds)
        .and_then(|delta| at.checked_add_signed(delta))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn vm_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("VM {id} not found"))
}

fn match_error(error: MatchError) -> ApiError {
    ApiError::unprocessable(error.to_string())
}

/// The next charge after `after`: 24 h after the previous one per instance, or the next
/// 17:55 UTC in the global mode of the 2025 docs.
pub fn next_billing(
    mode: BillingMode,
    previous: DateTime<Utc>,
    after: DateTime<Utc>,
) -> DateTime<Utc> {
    match mode {
        BillingMode::PerInstance => later(previous, EPOCH_SECONDS),
        BillingMode::Global => {
            let time = NaiveTime::from_hms_opt(17, 55, 0).unwrap_or_default();
            let today = after.date_naive().and_time(time).and_utc();
            if today > after {
                today
            } else {
                later(today, EPOCH_SECONDS)
            }
        }
    }
}

pub fn validate_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(ApiError::unprocessable(
            "Invalid name: only letters, digits and hyphens are allowed",
        ));
    }
    Ok(())
}

pub fn validate_image(url: &str) -> Result<(), ApiError> {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    if !IMAGE_SUFFIXES.iter().any(|suffix| path.ends_with(suffix)) {
        return Err(ApiError::unprocessable(format!(
            "Unsupported osImage: it must end with one of {}",
            IMAGE_SUFFIXES.join(" ")
        )));
    }
    Ok(())
}

pub fn validate_ports(ports: &[Port]) -> Result<(), ApiError> {
    for port in ports {
        if port.port == RESERVED_PORT {
            return Err(ApiError::unprocessable("Port 10250 is reserved"));
        }
        if port.port == 0 {
            return Err(ApiError::unprocessable("Port 0 is not a valid port"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        crate::fluence::timefmt::parse(text).unwrap_or_default()
    }

    #[test]
    fn global_billing_is_the_next_1755_utc() {
        let mode = BillingMode::Global;
        let t = at("2025-11-03T17:45:00Z");
        assert_eq!(next_billing(mode, t, t), at("2025-11-03T17:55:00Z"));
        let t = at("2025-11-03T17:55:00Z");
        assert_eq!(next_billing(mode, t, t), at("2025-11-04T17:55:00Z"));
        let t = at("2025-11-03T09:00:00Z");
        assert_eq!(
            next_billing(BillingMode::PerInstance, t, t),
            at("2025-11-04T09:00:00Z")
        );
    }

    #[test]
    fn names_images_and_ports_follow_the_documented_rules() {
        assert!(validate_name("web-1").is_ok());
        assert!(validate_name("web_1").is_err());
        assert!(validate_name("").is_err());
        assert!(validate_image("https://x/y.img.xz").is_ok());
        assert!(validate_image("https://x/y.iso").is_err());
        let reserved = Port {
            port: 10250,
            protocol: Protocol::Tcp,
        };
        assert!(validate_ports(&[reserved]).is_err());
    }
}

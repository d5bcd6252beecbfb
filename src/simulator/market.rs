//! The seeded marketplace: offers, their (drifting) prices, capacity, and the matching rules of
//! api-shapes.md 12.3 shared by offers, estimate and deploy so the three can never disagree.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::catalog::{CONFIGURATIONS, CPUS, ConfigSpec, DATACENTERS, DatacenterSpec, RAMS};
use super::catalog::{CpuSpec, RamSpec, STORAGE_TYPES};
use super::rng::{SplitMix64, hash_words};
use crate::domain::money::Usdc;
use crate::fluence::types::{
    AdditionalSupply, AvailableHardware, CpuHardware, Datacenter, DatacenterInfo, MarketOffering,
    MemoryHardware, OfferConfiguration, OfferConstraints, OfferResource, OfferServer, ResourceType,
    StorageHardware,
};

/// Drift is at most this many per mille either way.
const DRIFT_PER_MILLE: u64 = 50;
const PPM: i64 = 1_000_000;

/// Per-unit base prices of an offer, in micro-USDC per epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitPrices {
    pub vcpu: i64,
    pub ram: i64,
    pub storage: i64,
    pub ip: i64,
    /// Additional storage, per GiB.
    pub extra_storage: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub available: u32,
    /// Free additional storage, GiB, of the offer's storage type.
    pub storage_free: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub id: u64,
    pub config: ConfigSpec,
    pub dc: usize,
    pub cpu: CpuSpec,
    pub ram: RamSpec,
    pub storage_type: &'static str,
    pub base: UnitPrices,
    pub per_vm_limit: Option<u64>,
    pub servers: Vec<Server>,
    /// Set by `/_sim/market`; relative to the generated prices.
    pub multiplier_ppm: i64,
}

/// An offer's prices at one instant; the configuration price is the exact sum of the units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prices {
    pub units: UnitPrices,
    pub configuration: i64,
}

/// Where one VM goes and what it costs per epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub offer: usize,
    pub server: usize,
    pub price: Usdc,
    /// Additional storage taken from the server, GiB.
    pub extra_storage: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatchError {
    #[error("{0}")]
    Invalid(String),
    #[error("No suitable offer found")]
    NoSuitableOffer,
    #[error("Not enough offers found")]
    NotEnoughOffers,
}

#[derive(Debug, Clone)]
pub struct DatacenterEntry {
    pub spec: DatacenterSpec,
    pub id: String,
}

#[derive(Debug, Clone)]
pub struct Market {
    seed: u64,
    pub drift: bool,
    pub datacenters: Vec<DatacenterEntry>,
    pub offers: Vec<Offer>,
}

/// The additional storage asked for, after validation: total GiB and its type.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct ExtraAsk {
    gib: u64,
    kinds: BTreeSet<String>,
}

impl Market {
    pub fn generate(seed: u64) -> Market {
        let mut rng = SplitMix64::new(seed);
        let datacenters = DATACENTERS
            .iter()
            .map(|spec| DatacenterEntry {
                spec: *spec,
                id: format!(
                    "{}-{}-4{}-{}-{}",
                    rng.hex(8),
                    rng.hex(4),
                    rng.hex(3),
                    rng.hex(4),
                    rng.hex(12)
                ),
            })
            .collect();
        let mut offers = Vec::new();
        for (config_index, config) in CONFIGURATIONS.iter().enumerate() {
            for dc in 0..DATACENTERS.len() {
                // The smallest configuration is everywhere, so "the smallest available" is
                // always the first; larger ones are patchier, as on a real marketplace.
                let count = if config_index == 0 || rng.chance(80) {
                    rng.range(1, 2)
                } else {
                    0
                };
                for _ in 0..count {
                    let id = u64::try_from(offers.len()).unwrap_or(u64::MAX);
                    offers.push(generate_offer(&mut rng, id, *config, dc));
                }
            }
        }
        Market {
            seed,
            drift: true,
            datacenters,
            offers,
        }
    }

    pub fn datacenter(&self, index: usize) -> Option<Datacenter> {
        self.datacenters
            .get(index)
            .map(|dc| wire_datacenter(&dc.spec))
    }

    /// The drift factor of an offer in the hour containing `now`, per mille.
    fn drift_per_mille(&self, offer: &Offer, now: DateTime<Utc>) -> i64 {
        if !self.drift {
            return 1000;
        }
        let hour = u64::try_from(now.timestamp().div_euclid(3600)).unwrap_or(0);
        let spread = hash_words(&[self.seed, offer.id, hour]) % (2 * DRIFT_PER_MILLE + 1);
        950 + i64::try_from(spread).unwrap_or(0)
    }

    /// `None` when a price would not fit in micro-USDC or would be negative: such an offer is
    /// left out everywhere rather than sold at a wrapped or saturated price.
    pub fn prices(&self, offer: &Offer, now: DateTime<Utc>) -> Option<Prices> {
        let drift = self.drift_per_mille(offer, now);
        let scale = |base: i64| -> Option<i64> {
            let wide = i128::from(base)
                .checked_mul(i128::from(drift))?
                .checked_mul(i128::from(offer.multiplier_ppm))?
                / (1000 * i128::from(PPM));
            i64::try_from(wide).ok().filter(|price| *price >= 0)
        };
        let units = UnitPrices {
            vcpu: scale(offer.base.vcpu)?,
            ram: scale(offer.base.ram)?,
            storage: scale(offer.base.storage)?,
            ip: scale(offer.base.ip)?,
            extra_storage: scale(offer.base.extra_storage)?,
        };
        let configuration = units
            .vcpu
            .checked_mul(offer.config.cores)?
            .checked_add(units.ram.checked_mul(offer.config.ram_gib)?)?
            .checked_add(units.storage.checked_mul(offer.config.storage_gib)?)?
            .checked_add(units.ip)?;
        Some(Prices {
            units,
            configuration,
        })
    }

    /// Offers matching the constraints, as `POST /marketplace/offers` lists them.
    pub fn list(
        &self,
        constraints: &OfferConstraints,
        now: DateTime<Utc>,
    ) -> Result<Vec<MarketOffering>, MatchError> {
        validate_constraints(constraints)?;
        let ask = extra_ask(constraints);
        let mut found: Vec<(i64, u64, MarketOffering)> = Vec::new();
        for offer in &self.offers {
            let Some(price) = self.candidate_price(offer, constraints, &ask, now) else {
                continue;
            };
            let Some(prices) = self.prices(offer, now) else {
                continue;
            };
            let servers: Vec<&Server> = offer
                .servers
                .iter()
                .filter(|server| server_slots(offer, server, &ask) > 0)
                .collect();
            if servers.is_empty() {
                continue;
            }
            let Some(datacenter) = self.datacenter(offer.dc) else {
                continue;
            };
            let supply = |free: u64| AdditionalSupply {
                kind: ResourceType::Storage,
                metadata: json!({ "type": offer.storage_type }),
                price: Usdc::from_micros(prices.units.extra_storage),
                supply: free,
                units: "GiB".to_owned(),
                per_vm_limit: offer.per_vm_limit,
            };
            let largest = servers.iter().map(|s| s.storage_free).max().unwrap_or(0);
            let offering = MarketOffering {
                configuration: OfferConfiguration {
                    slug: offer.config.slug.to_owned(),
                    price: Usdc::from_micros(prices.configuration),
                },
                resources: offer_resources(offer, &prices),
                datacenter,
                servers: servers
                    .iter()
                    .map(|server| OfferServer {
                        available_basic_instances: server.available,
                        additional_resources: vec![supply(server.storage_free)],
                    })
                    .collect(),
                max_additional_supply: vec![supply(largest)],
            };
            found.push((price, offer.id, offering));
        }
        found.sort_by_key(|(price, id, _)| (*price, *id));
        Ok(found.into_iter().map(|(_, _, offering)| offering).collect())
    }

    /// Chooses where `instances` VMs go: cheapest first, greedily across servers.
    pub fn plan(
        &self,
        constraints: &OfferConstraints,
        instances: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<Placement>, MatchError> {
        validate_constraints(constraints)?;
        if instances < 1 {
            return Err(MatchError::Invalid("instances must be at least 1".into()));
        }
        let ask = extra_ask(constraints);
        let mut candidates: Vec<(usize, i64)> = self
            .offers
            .iter()
            .enumerate()
            .filter_map(|(index, offer)| {
                // api-shapes 12.3 drops an offer for its filters, its price, `perVmLimit` and
                // free storage only. A full offer stays a candidate, so running out of slots
                // is "Not enough offers found" from the fill below, never "No suitable offer".
                let storage_fits =
                    ask.gib == 0 || offer.servers.iter().any(|s| s.storage_free >= ask.gib);
                let price = self.candidate_price(offer, constraints, &ask, now)?;
                storage_fits.then_some((index, price))
            })
            .collect();
        if constraints.basic_configuration.is_none() {
            let smallest = candidates
                .iter()
                .filter_map(|(index, _)| self.offers.get(*index))
                .map(|offer| config_rank(offer.config.slug))
                .min();
            candidates.retain(|(index, _)| {
                self.offers.get(*index).map(|o| config_rank(o.config.slug)) == smallest
            });
        }
        if candidates.is_empty() {
            return Err(MatchError::NoSuitableOffer);
        }
        candidates.sort_by_key(|(index, price)| (*price, *index));
        let wanted = usize::try_from(instances).unwrap_or(usize::MAX);
        let mut placements = Vec::with_capacity(wanted.min(1024));
        'fill: for (index, price) in candidates {
            let Some(offer) = self.offers.get(index) else {
                continue;
            };
            for (server_index, server) in offer.servers.iter().enumerate() {
                let slots = server_slots(offer, server, &ask);
                for _ in 0..slots {
                    if placements.len() == wanted {
                        break 'fill;
                    }
                    placements.push(Placement {
                        offer: index,
                        server: server_index,
                        price: Usdc::from_micros(price),
                        extra_storage: ask.gib,
                    });
                }
            }
        }
        if placements.len() < wanted {
            return Err(MatchError::NotEnoughOffers);
        }
        Ok(placements)
    }

    /// Takes one VM's capacity; `false` when the server has no room left.
    pub fn take(&mut self, placement: &Placement) -> bool {
        let Some(server) = self
            .offers
            .get_mut(placement.offer)
            .and_then(|offer| offer.servers.get_mut(placement.server))
        else {
            return false;
        };
        if server.available == 0 || server.storage_free < placement.extra_storage {
            return false;
        }
        server.available -= 1;
        server.storage_free -= placement.extra_storage;
        true
    }

    pub fn release(&mut self, placement: &Placement) {
        if let Some(server) = self
            .offers
            .get_mut(placement.offer)
            .and_then(|offer| offer.servers.get_mut(placement.server))
        {
            server.available = server.available.saturating_add(1);
            server.storage_free = server.storage_free.saturating_add(placement.extra_storage);
        }
    }

    /// `/_sim/market`: re-prices and/or re-sizes the offers of a configuration and/or country.
    /// Returns how many offers matched.
    pub fn adjust(
        &mut self,
        configuration: Option<&str>,
        country: Option<&str>,
        multiplier_ppm: Option<i64>,
        capacity: Option<u32>,
    ) -> usize {
        let datacenters = self.datacenters.clone();
        let mut matched = 0;
        for offer in &mut self.offers {
            let config_ok = configuration.is_none_or(|slug| offer.config.slug == slug);
            let country_ok = country.is_none_or(|code| {
                datacenters
                    .get(offer.dc)
                    .is_some_and(|dc| dc.spec.country.eq_ignore_ascii_case(code))
            });
            if !(config_ok && country_ok) {
                continue;
            }
            matched += 1;
            if let Some(ppm) = multiplier_ppm {
                offer.multiplier_ppm = ppm;
            }
            if let Some(total) = capacity {
                // Spread the new total evenly, the remainder on the first servers.
                let count = u32::try_from(offer.servers.len()).unwrap_or(1).max(1);
                for (i, server) in offer.servers.iter_mut().enumerate() {
                    let i = u32::try_from(i).unwrap_or(0);
                    server.available = total / count + u32::from(i < total % count);
                }
            }
        }
        matched
    }

    pub fn countries(&self) -> Vec<String> {
        let codes: BTreeSet<&str> = self
            .offers
            .iter()
            .filter_map(|offer| self.datacenters.get(offer.dc))
            .map(|dc| dc.spec.country)
            .collect();
        codes.into_iter().map(str::to_owned).collect()
    }

    pub fn hardware(&self) -> AvailableHardware {
        let cpu: BTreeSet<CpuHardware> = self
            .offers
            .iter()
            .map(|o| CpuHardware {
                manufacturer: o.cpu.manufacturer.to_owned(),
                architecture: o.cpu.architecture.to_owned(),
            })
            .collect();
        let memory: BTreeSet<MemoryHardware> = self
            .offers
            .iter()
            .map(|o| MemoryHardware {
                kind: o.ram.kind.to_owned(),
                generation: o.ram.generation.to_owned(),
            })
            .collect();
        let storage: BTreeSet<StorageHardware> = self
            .offers
            .iter()
            .map(|o| StorageHardware {
                kind: o.storage_type.to_owned(),
            })
            .collect();
        AvailableHardware {
            cpu: cpu.into_iter().collect(),
            memory: memory.into_iter().collect(),
            storage: storage.into_iter().collect(),
        }
    }

    pub fn datacenter_list(&self) -> Vec<DatacenterInfo> {
        self.datacenters
            .iter()
            .map(|dc| DatacenterInfo {
                id: dc.id.clone(),
                country_code: dc.spec.country.to_owned(),
                city_code: dc.spec.city.to_owned(),
                index: dc.spec.index,
                tier: dc.spec.tier,
                certifications: dc
                    .spec
                    .certifications
                    .iter()
                    .map(|c| (*c).to_owned())
                    .collect(),
                slug: format!(
                    "{}-{}-{}",
                    dc.spec.country.to_ascii_lowercase(),
                    dc.spec.city.to_ascii_lowercase(),
                    dc.spec.index
                ),
            })
            .collect()
    }

    /// The per-VM price of an offer if it passes every filter, else `None`.
    fn candidate_price(
        &self,
        offer: &Offer,
        constraints: &OfferConstraints,
        ask: &ExtraAsk,
        now: DateTime<Utc>,
    ) -> Option<i64> {
        if !self.matches_filters(offer, constraints) {
            return None;
        }
        if ask.gib > 0 {
            let kind_ok = ask.kinds.len() == 1
                && ask
                    .kinds
                    .iter()
                    .all(|k| k.eq_ignore_ascii_case(offer.storage_type));
            let limit_ok = offer.per_vm_limit.is_none_or(|limit| ask.gib <= limit);
            if !(kind_ok && limit_ok) {
                return None;
            }
        }
        let prices = self.prices(offer, now)?;
        let extra = i64::try_from(ask.gib)
            .ok()?
            .checked_mul(prices.units.extra_storage)?;
        let price = prices.configuration.checked_add(extra)?;
        let cap = constraints.max_total_price_per_epoch_usd;
        if cap.is_some_and(|cap| price > cap.micros()) {
            return None;
        }
        Some(price)
    }

    fn matches_filters(&self, offer: &Offer, constraints: &OfferConstraints) -> bool {
        if let Some(slug) = &constraints.basic_configuration {
            if offer.config.slug != slug {
                return false;
            }
        }
        if let Some(filter) = &constraints.datacenter {
            let country = self.datacenters.get(offer.dc).map(|dc| dc.spec.country);
            if !filter.countries.is_empty()
                && !filter
                    .countries
                    .iter()
                    .any(|c| country.is_some_and(|own| own.eq_ignore_ascii_case(c)))
            {
                return false;
            }
        }
        let Some(hardware) = &constraints.hardware else {
            return true;
        };
        let same =
            |a: &Option<String>, b: &str| a.as_deref().is_some_and(|a| a.eq_ignore_ascii_case(b));
        let cpu_ok = hardware.cpu.as_ref().is_none_or(|entries| {
            entries.is_empty()
                || entries.iter().any(|e| {
                    same(&e.manufacturer, offer.cpu.manufacturer)
                        && same(&e.architecture, offer.cpu.architecture)
                })
        });
        let memory_ok = hardware.memory.as_ref().is_none_or(|entries| {
            entries.is_empty()
                || entries.iter().any(|e| {
                    same(&e.kind, offer.ram.kind) && same(&e.generation, offer.ram.generation)
                })
        });
        let storage_ok = hardware.storage.as_ref().is_none_or(|entries| {
            entries.is_empty() || entries.iter().any(|e| same(&e.kind, offer.storage_type))
        });
        cpu_ok && memory_ok && storage_ok
    }
}

fn generate_offer(rng: &mut SplitMix64, id: u64, config: ConfigSpec, dc: usize) -> Offer {
    let cpu = *rng.pick(&CPUS).unwrap_or(&CPUS[0]);
    // Zen 4 comes with DDR5; older parts mostly with DDR4.
    let ram = if cpu.generation == "4" || rng.chance(25) {
        RAMS[1]
    } else {
        RAMS[0]
    };
    let storage_type = *rng.pick(&STORAGE_TYPES).unwrap_or(&STORAGE_TYPES[0]);
    let storage = 1_200 + 100 * signed(rng.range(0, 8));
    let base = UnitPrices {
        vcpu: 70_000 + 2_500 * signed(rng.range(0, 12)),
        ram: 20_000 + 500 * signed(rng.range(0, 20)),
        storage,
        ip: 5_000 + 500 * signed(rng.range(0, 5)),
        extra_storage: storage * signed(rng.range(70, 90)) / 100 / 100 * 100,
    };
    let per_vm_limit = *rng
        .pick(&[Some(500), Some(1000), Some(2000), None])
        .unwrap_or(&None);
    let servers = (0..rng.range(1, 3))
        .map(|_| Server {
            available: u32::try_from(rng.range(2, 10)).unwrap_or(2),
            storage_free: 100 * rng.range(2, 20),
        })
        .collect();
    Offer {
        id,
        config,
        dc,
        cpu,
        ram,
        storage_type,
        base,
        per_vm_limit,
        servers,
        multiplier_ppm: PPM,
    }
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(0)
}

fn config_rank(slug: &str) -> usize {
    CONFIGURATIONS
        .iter()
        .position(|c| c.slug == slug)
        .unwrap_or(usize::MAX)
}

/// How many more VMs of the ask fit on a server.
fn server_slots(offer: &Offer, server: &Server, ask: &ExtraAsk) -> u32 {
    if ask.gib == 0 {
        return server.available;
    }
    if offer.per_vm_limit.is_some_and(|limit| ask.gib > limit) {
        return 0;
    }
    let by_storage = u32::try_from(server.storage_free / ask.gib).unwrap_or(u32::MAX);
    server.available.min(by_storage)
}

fn extra_ask(constraints: &OfferConstraints) -> ExtraAsk {
    let mut ask = ExtraAsk::default();
    let entries = constraints
        .additional_resources
        .as_ref()
        .and_then(|r| r.storage.as_ref());
    for entry in entries.into_iter().flatten() {
        if entry.supply > 0 {
            ask.gib = ask.gib.saturating_add(entry.supply);
            ask.kinds.insert(entry.kind.to_ascii_lowercase());
        }
    }
    ask
}

/// The documented constraint rules (api-shapes.md 12.2), answered with 422.
pub fn validate_constraints(constraints: &OfferConstraints) -> Result<(), MatchError> {
    let invalid = |message: &str| Err(MatchError::Invalid(message.to_owned()));
    if let Some(slug) = &constraints.basic_configuration {
        if !CONFIGURATIONS.iter().any(|c| c.slug == slug) {
            return Err(MatchError::Invalid(format!(
                "Unknown basic configuration: {slug}"
            )));
        }
    }
    let storage_asked = constraints
        .additional_resources
        .as_ref()
        .and_then(|r| r.storage.as_ref())
        .is_some_and(|s| !s.is_empty());
    let hardware = constraints.hardware.as_ref();
    let storage_filtered = hardware
        .and_then(|h| h.storage.as_ref())
        .is_some_and(|s| !s.is_empty());
    if storage_asked && !storage_filtered {
        return invalid("additionalResources requires hardware.storage");
    }
    for entry in constraints
        .additional_resources
        .iter()
        .flat_map(|r| r.storage.iter().flatten())
    {
        if entry.units != "GiB" {
            return Err(MatchError::Invalid(format!(
                "Unsupported units {:?}: only GiB",
                entry.units
            )));
        }
        if !STORAGE_TYPES
            .iter()
            .any(|t| t.eq_ignore_ascii_case(&entry.kind))
        {
            return Err(MatchError::Invalid(format!(
                "Unknown storage type {:?}",
                entry.kind
            )));
        }
    }
    if let Some(hardware) = hardware {
        let cpu_incomplete = hardware
            .cpu
            .iter()
            .flatten()
            .any(|e| e.manufacturer.is_none() || e.architecture.is_none());
        if cpu_incomplete {
            return invalid("hardware.cpu entries need manufacturer and architecture");
        }
        let memory_incomplete = hardware
            .memory
            .iter()
            .flatten()
            .any(|e| e.kind.is_none() || e.generation.is_none());
        if memory_incomplete {
            return invalid("hardware.memory entries need type and generation");
        }
        if hardware.storage.iter().flatten().any(|e| e.kind.is_none()) {
            return invalid("hardware.storage entries need type");
        }
    }
    Ok(())
}

fn wire_datacenter(spec: &DatacenterSpec) -> Datacenter {
    Datacenter {
        country_code: spec.country.to_owned(),
        city_code: spec.city.to_owned(),
        city_index: spec.index,
        tier: spec.tier,
        certifications: spec
            .certifications
            .iter()
            .map(|c| (*c).to_owned())
            .collect(),
    }
}

pub fn cpu_metadata(cpu: &CpuSpec) -> serde_json::Value {
    json!({
        "manufacturer": cpu.manufacturer,
        "brand": cpu.brand,
        "architecture": cpu.architecture,
        "generation": cpu.generation,
    })
}

pub fn ram_metadata(ram: &RamSpec) -> serde_json::Value {
    json!({ "type": ram.kind, "generation": ram.generation })
}

fn offer_resources(offer: &Offer, prices: &Prices) -> Vec<OfferResource> {
    vec![
        OfferResource {
            kind: ResourceType::Vcpu,
            metadata: cpu_metadata(&offer.cpu),
            price: Usdc::from_micros(prices.units.vcpu),
        },
        OfferResource {
            kind: ResourceType::Ram,
            metadata: ram_metadata(&offer.ram),
            price: Usdc::from_micros(prices.units.ram),
        },
        OfferResource {
            kind: ResourceType::Storage,
            metadata: json!({ "type": offer.storage_type }),
            price: Usdc::from_micros(prices.units.storage),
        },
        OfferResource {
            kind: ResourceType::PublicIp,
            metadata: json!({ "version": "4" }),
            price: Usdc::from_micros(prices.units.ip),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fluence::types::{AdditionalResources, AdditionalStorage, DatacenterFilter};

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(seconds, 0).unwrap_or_default()
    }

    #[test]
    fn the_seed_reproduces_the_marketplace() {
        assert_eq!(Market::generate(7).offers, Market::generate(7).offers);
        assert_ne!(Market::generate(7).offers, Market::generate(8).offers);
    }

    #[test]
    fn unit_prices_multiply_out_to_the_configuration_price() {
        let market = Market::generate(42);
        for offer in &market.offers {
            for hour in 0..48 {
                let Some(p) = market.prices(offer, at(1_700_000_000 + hour * 3600)) else {
                    panic!("the generated prices are in range");
                };
                let c = offer.config;
                assert_eq!(
                    p.configuration,
                    p.units.vcpu * c.cores
                        + p.units.ram * c.ram_gib
                        + p.units.storage * c.storage_gib
                        + p.units.ip
                );
                assert!((66_500..=105_000).contains(&p.units.vcpu), "{p:?}");
            }
        }
    }

    #[test]
    fn prices_drift_by_the_hour_and_can_be_frozen() {
        let mut market = Market::generate(42);
        let offer = market.offers[0].clone();
        let hours: BTreeSet<Option<i64>> = (0..24)
            .map(|h| {
                market
                    .prices(&offer, at(1_700_000_000 + h * 3600))
                    .map(|p| p.configuration)
            })
            .collect();
        assert!(hours.len() > 1);
        market.drift = false;
        let frozen: BTreeSet<Option<i64>> = (0..24)
            .map(|h| {
                market
                    .prices(&offer, at(1_700_000_000 + h * 3600))
                    .map(|p| p.configuration)
            })
            .collect();
        assert_eq!(frozen.len(), 1);
    }

    #[test]
    fn plan_fills_cheapest_first_and_refuses_what_does_not_fit() {
        let market = Market::generate(42);
        let now = at(1_700_000_000);
        let constraints = OfferConstraints {
            basic_configuration: Some(CONFIGURATIONS[0].slug.into()),
            datacenter: Some(DatacenterFilter {
                countries: vec!["DE".into()],
            }),
            ..Default::default()
        };
        let slots: u32 = market
            .offers
            .iter()
            .filter(|o| o.config.slug == CONFIGURATIONS[0].slug && matches!(o.dc, 0 | 1))
            .flat_map(|o| o.servers.iter().map(|s| s.available))
            .sum();
        let plan = market.plan(&constraints, slots, now).unwrap_or_default();
        assert_eq!(plan.len(), usize::try_from(slots).unwrap_or(0));
        assert!(plan.windows(2).all(|w| w[0].price <= w[1].price));
        assert_eq!(
            market.plan(&constraints, slots + 1, now),
            Err(MatchError::NotEnoughOffers)
        );
        let capped = OfferConstraints {
            max_total_price_per_epoch_usd: Some(Usdc::from_micros(1)),
            ..constraints
        };
        assert_eq!(
            market.plan(&capped, 1, now),
            Err(MatchError::NoSuitableOffer)
        );
    }

    #[test]
    fn a_multiplier_that_would_overflow_leaves_the_offer_out_instead_of_wrapping() {
        let mut market = Market::generate(42);
        let now = at(1_700_000_000);
        for offer in &mut market.offers {
            offer.multiplier_ppm = i64::MAX;
        }
        let constraints = OfferConstraints::default();
        let listed = market.list(&constraints, now).unwrap_or_default();
        // The small configurations still fit in micro-USDC; the large ones would not.
        assert!(!listed.is_empty() && listed.len() < market.offers.len());
        assert!(listed.iter().all(|o| o.configuration.price > Usdc::ZERO));
        let large = OfferConstraints {
            basic_configuration: Some(CONFIGURATIONS[3].slug.into()),
            ..Default::default()
        };
        assert_eq!(market.list(&large, now).map(|l| l.len()), Ok(0));
        assert_eq!(
            market.plan(&large, 1, now),
            Err(MatchError::NoSuitableOffer)
        );
        // A large but representable multiplier gives large, positive prices.
        for offer in &mut market.offers {
            offer.multiplier_ppm = 1000 * PPM;
        }
        let listed = market.list(&constraints, now).unwrap_or_default();
        assert!(!listed.is_empty());
        assert!(
            listed
                .iter()
                .all(|o| o.configuration.price > Usdc::from_micros(1_000_000))
        );
    }

    #[test]
    fn extra_storage_needs_a_storage_filter() {
        let constraints = OfferConstraints {
            additional_resources: Some(AdditionalResources {
                storage: Some(vec![AdditionalStorage {
                    supply: 20,
                    units: "GiB".into(),
                    kind: "NVMe".into(),
                }]),
            }),
            ..Default::default()
        };
        assert!(matches!(
            validate_constraints(&constraints),
            Err(MatchError::Invalid(_))
        ));
    }
}

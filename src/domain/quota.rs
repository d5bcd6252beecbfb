//! Team quotas and the resources they limit.

use serde::{Deserialize, Serialize};

use super::money::Usdc;

/// What one VM (or a sum of VMs) holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    pub vcpus: u64,
    pub ram_gib: u64,
    pub storage_gib: u64,
}

impl Resources {
    pub const ZERO: Resources = Resources {
        vcpus: 0,
        ram_gib: 0,
        storage_gib: 0,
    };

    pub fn checked_add(self, other: Resources) -> Option<Resources> {
        Some(Resources {
            vcpus: self.vcpus.checked_add(other.vcpus)?,
            ram_gib: self.ram_gib.checked_add(other.ram_gib)?,
            storage_gib: self.storage_gib.checked_add(other.storage_gib)?,
        })
    }

    pub fn checked_mul(self, factor: u64) -> Option<Resources> {
        Some(Resources {
            vcpus: self.vcpus.checked_mul(factor)?,
            ram_gib: self.ram_gib.checked_mul(factor)?,
            storage_gib: self.storage_gib.checked_mul(factor)?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error("configuration {0:?} is not of the form cpu-<n>-ram-<n>gb-storage-<n>gb")]
    UnknownConfiguration(String),
    #[error("configuration {0:?} with the extra storage is too large")]
    TooLarge(String),
}

/// The resources of one VM of a Fluence configuration slug (`cpu-2-ram-4gb-storage-25gb`), plus
/// extra storage. The slug is read strictly: anything Fluence might name differently is refused
/// rather than guessed, since quotas are only as good as this count.
pub fn resources_of(slug: &str, extra_storage_gib: u64) -> Result<Resources, QuotaError> {
    let unknown = || QuotaError::UnknownConfiguration(slug.to_owned());
    let rest = slug.strip_prefix("cpu-").ok_or_else(unknown)?;
    let (vcpus, rest) = rest.split_once("-ram-").ok_or_else(unknown)?;
    let (ram_gib, rest) = rest.split_once("gb-storage-").ok_or_else(unknown)?;
    let storage_gib = rest.strip_suffix("gb").ok_or_else(unknown)?;
    let vcpus = count(vcpus).ok_or_else(unknown)?;
    let ram_gib = count(ram_gib).ok_or_else(unknown)?;
    let storage_gib = count(storage_gib).ok_or_else(unknown)?;
    if vcpus == 0 || ram_gib == 0 {
        return Err(unknown());
    }
    let storage_gib = storage_gib
        .checked_add(extra_storage_gib)
        .ok_or_else(|| QuotaError::TooLarge(slug.to_owned()))?;
    Ok(Resources {
        vcpus,
        ram_gib,
        storage_gib,
    })
}

/// ASCII decimal digits without a leading zero (except `0` itself), within `u64`.
fn count(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if text.len() > 1 && text.starts_with('0') {
        return None;
    }
    text.parse().ok()
}

/// A team's limits; `None` (JSON `null`, or the field left out) means no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    #[serde(default)]
    pub max_vms: Option<u64>,
    #[serde(default)]
    pub max_vcpus: Option<u64>,
    #[serde(default)]
    pub max_ram_gib: Option<u64>,
    #[serde(default)]
    pub max_storage_gib: Option<u64>,
    #[serde(default)]
    pub max_instances_per_deployment: Option<u64>,
    /// Per VM per epoch; a decimal string, as all money in the gateway's API.
    #[serde(default, with = "crate::domain::money::decimal_string_option")]
    pub max_price_per_epoch: Option<Usdc>,
    #[serde(default)]
    pub allowed_countries: Option<Vec<String>>,
    #[serde(default)]
    pub allowed_configurations: Option<Vec<String>>,
}

/// What a team holds now: its live VMs plus the deployments admitted but not yet settled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub vms: u64,
    pub resources: Resources,
}

impl Usage {
    /// This usage with `instances` more VMs of `per_vm` each. Saturates: a figure at the limit
    /// of `u64` is past every quota.
    pub fn plus(self, instances: u64, per_vm: Resources) -> Usage {
        let add = |used: u64, each: u64| used.saturating_add(each.saturating_mul(instances));
        Usage {
            vms: self.vms.saturating_add(instances),
            resources: Resources {
                vcpus: add(self.resources.vcpus, per_vm.vcpus),
                ram_gib: add(self.resources.ram_gib, per_vm.ram_gib),
                storage_gib: add(self.resources.storage_gib, per_vm.storage_gib),
            },
        }
    }
}

#[cfg(test)]
// A failed expectation in a test is the test failing, which is what it should do.
#[allow(clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_a_configuration_and_adds_extra_storage() {
        assert_eq!(
            resources_of("cpu-2-ram-4gb-storage-25gb", 50),
            Ok(Resources {
                vcpus: 2,
                ram_gib: 4,
                storage_gib: 75
            })
        );
        assert_eq!(
            resources_of("cpu-8-ram-16gb-storage-0gb", 0),
            Ok(Resources {
                vcpus: 8,
                ram_gib: 16,
                storage_gib: 0
            })
        );
    }

    #[test]
    fn refuses_anything_but_the_exact_form() {
        for slug in [
            "",
            "cpu-0-ram-4gb-storage-25gb",
            "cpu-2-ram-0gb-storage-25gb",
            "cpu-02-ram-4gb-storage-25gb",
            "cpu-2-ram-4gb-storage-025gb",
            "cpu-2-ram-4GB-storage-25gb",
            "CPU-2-ram-4gb-storage-25gb",
            "cpu-2-ram-4gb-storage-25",
            "cpu-2-ram-4gb-storage-25gb ",
            " cpu-2-ram-4gb-storage-25gb",
            "cpu-+2-ram-4gb-storage-25gb",
            "cpu--2-ram-4gb-storage-25gb",
            "cpu-2-ram-4gb-storage-25gb-x",
            "cpu-2-ram-4.5gb-storage-25gb",
            "cpu-２-ram-4gb-storage-25gb",
            "cpu-2-ram-4gb-storage-25gb-storage-1gb",
            "cpu-2-ram-4gb",
            "cpu-99999999999999999999-ram-4gb-storage-25gb",
        ] {
            assert_eq!(
                resources_of(slug, 0),
                Err(QuotaError::UnknownConfiguration(slug.to_owned())),
                "{slug:?}"
            );
        }
        assert_eq!(
            resources_of("cpu-2-ram-4gb-storage-25gb", u64::MAX),
            Err(QuotaError::TooLarge(
                "cpu-2-ram-4gb-storage-25gb".to_owned()
            ))
        );
    }

    #[test]
    fn the_product_example_quotas_deserialise() {
        let quotas: Quotas = serde_json::from_str(
            r#"{"max_vms":20,"max_vcpus":64,"max_ram_gib":128,"max_storage_gib":2000,
                "max_instances_per_deployment":10,"max_price_per_epoch":"5",
                "allowed_countries":["DE","FR"],"allowed_configurations":null}"#,
        )
        .expect("the PRODUCT.md example");
        assert_eq!(
            quotas,
            Quotas {
                max_vms: Some(20),
                max_vcpus: Some(64),
                max_ram_gib: Some(128),
                max_storage_gib: Some(2000),
                max_instances_per_deployment: Some(10),
                max_price_per_epoch: Some(Usdc::from_micros(5_000_000)),
                allowed_countries: Some(vec!["DE".to_owned(), "FR".to_owned()]),
                allowed_configurations: None,
            }
        );
    }

    #[test]
    fn missing_quotas_are_no_limit_and_unknown_ones_are_refused() {
        let quotas: Quotas = serde_json::from_str("{}").expect("empty quotas");
        assert_eq!(quotas, Quotas::default());
        assert!(serde_json::from_str::<Quotas>(r#"{"max_gpus":1}"#).is_err());
        assert!(serde_json::from_str::<Quotas>(r#"{"max_vms":-1}"#).is_err());
        assert!(serde_json::from_str::<Quotas>(r#"{"max_price_per_epoch":"0.1234567"}"#).is_err());
        let json = serde_json::to_value(Quotas::default()).expect("serialises");
        assert_eq!(json["max_vms"], serde_json::Value::Null);
        assert_eq!(json["allowed_countries"], serde_json::Value::Null);
    }

    #[test]
    fn quotas_round_trip_through_json() {
        let quotas = Quotas {
            max_vms: Some(3),
            max_price_per_epoch: Some(Usdc::from_micros(312_500)),
            allowed_configurations: Some(vec!["cpu-2-ram-4gb-storage-25gb".to_owned()]),
            ..Quotas::default()
        };
        let json = serde_json::to_string(&quotas).expect("serialises");
        assert_eq!(serde_json::from_str::<Quotas>(&json).ok(), Some(quotas));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(100_000))]

        #[test]
        fn any_well_formed_slug_reads_back_its_numbers(
            c in 1..=u64::MAX, m in 1..=u64::MAX, s in any::<u64>(), extra in any::<u64>(),
        ) {
            let slug = format!("cpu-{c}-ram-{m}gb-storage-{s}gb");
            let result = resources_of(&slug, extra);
            match s.checked_add(extra) {
                Some(storage_gib) => prop_assert_eq!(
                    result,
                    Ok(Resources { vcpus: c, ram_gib: m, storage_gib })
                ),
                None => prop_assert_eq!(result, Err(QuotaError::TooLarge(slug))),
            }
        }

        #[test]
        fn arbitrary_slugs_never_panic(slug in "\\PC{0,40}", extra in any::<u64>()) {
            let _ = resources_of(&slug, extra);
        }

        #[test]
        fn checked_resource_ops_agree_with_wide_arithmetic(
            a in any::<(u64, u64, u64)>(), b in any::<(u64, u64, u64)>(), n in any::<u64>(),
        ) {
            let x = Resources { vcpus: a.0, ram_gib: a.1, storage_gib: a.2 };
            let y = Resources { vcpus: b.0, ram_gib: b.1, storage_gib: b.2 };
            let fits = |v: u128| u64::try_from(v).ok();
            let sum = (|| Some(Resources {
                vcpus: fits(u128::from(a.0) + u128::from(b.0))?,
                ram_gib: fits(u128::from(a.1) + u128::from(b.1))?,
                storage_gib: fits(u128::from(a.2) + u128::from(b.2))?,
            }))();
            prop_assert_eq!(x.checked_add(y), sum);
            let product = (|| Some(Resources {
                vcpus: fits(u128::from(a.0) * u128::from(n))?,
                ram_gib: fits(u128::from(a.1) * u128::from(n))?,
                storage_gib: fits(u128::from(a.2) * u128::from(n))?,
            }))();
            prop_assert_eq!(x.checked_mul(n), product);
        }
    }
}

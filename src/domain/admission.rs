//! The admission rule (PRODUCT.md section 4): a deployment is admitted only if its commitment fits
//! what the team has available and every quota holds. Every reason to refuse is reported, so a
//! team can fix all of them at once.

use std::fmt;

use super::money::Usdc;
use super::quota::{Quotas, Resources, Usage};

/// A team's budget at the moment of the decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BudgetSnapshot {
    pub cap: Usdc,
    pub spent: Usdc,
    pub committed: Usdc,
    pub reserved: Usdc,
}

impl BudgetSnapshot {
    /// `cap - spent - committed - reserved` in micro-USDC. Negative when the team is already past
    /// its cap; wider than `i64` so that it is exact for any inputs.
    pub fn available(&self) -> i128 {
        i128::from(self.cap.micros())
            - i128::from(self.spent.micros())
            - i128::from(self.committed.micros())
            - i128::from(self.reserved.micros())
    }
}

/// One deployment request, as the rule sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub instances: u64,
    pub configuration: &'a str,
    pub resources_per_vm: Resources,
    /// The countries the deploy is restricted to; empty means Fluence may pick any.
    pub countries: &'a [String],
    /// The highest per-VM price of the estimate; sent upstream as the ceiling.
    pub max_price_per_epoch_per_vm: Usdc,
    pub epochs: i64,
}

/// Why a deployment is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `available` may be negative (shown as such) when the team is already past its cap.
    BudgetExceeded {
        needed: Usdc,
        available: Usdc,
    },
    /// The commitment does not fit in an amount (or its price or epochs are negative).
    CommitmentOverflow,
    /// `quota` is the quota's field name: `max_vms`, `max_vcpus`, `max_ram_gib`, `max_storage_gib`.
    QuotaExceeded {
        quota: &'static str,
        limit: u64,
        requested: u64,
        in_use: u64,
    },
    PriceAboveQuota {
        limit: Usdc,
        price: Usdc,
    },
    CountryNotAllowed {
        country: String,
    },
    /// The team has a country allow-list but the request names no country, which would let
    /// Fluence place the VMs anywhere.
    CountryUnspecified {
        allowed: Vec<String>,
    },
    ConfigurationNotAllowed {
        configuration: String,
    },
    TooManyInstances {
        limit: u64,
        requested: u64,
    },
}

impl Refusal {
    /// The stable machine code (PRODUCT.md section 2). Every quota-derived refusal is
    /// `quota_exceeded`; [`Refusal::quota`] says which quota.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::BudgetExceeded { .. } | Refusal::CommitmentOverflow => "budget_exceeded",
            Refusal::QuotaExceeded { .. }
            | Refusal::PriceAboveQuota { .. }
            | Refusal::CountryNotAllowed { .. }
            | Refusal::CountryUnspecified { .. }
            | Refusal::ConfigurationNotAllowed { .. }
            | Refusal::TooManyInstances { .. } => "quota_exceeded",
        }
    }

    /// The name of the quota field that refused, for quota refusals.
    pub fn quota(&self) -> Option<&'static str> {
        match self {
            Refusal::BudgetExceeded { .. } | Refusal::CommitmentOverflow => None,
            Refusal::QuotaExceeded { quota, .. } => Some(quota),
            Refusal::PriceAboveQuota { .. } => Some("max_price_per_epoch"),
            Refusal::CountryNotAllowed { .. } | Refusal::CountryUnspecified { .. } => {
                Some("allowed_countries")
            }
            Refusal::ConfigurationNotAllowed { .. } => Some("allowed_configurations"),
            Refusal::TooManyInstances { .. } => Some("max_instances_per_deployment"),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::BudgetExceeded { needed, available } => {
                let short =
                    saturating_usdc(i128::from(needed.micros()) - i128::from(available.micros()));
                write!(
                    f,
                    "needs {needed} USDC, {available} available ({short} USDC short)"
                )
            }
            Refusal::CommitmentOverflow => f.write_str(
                "the commitment (instances x price per epoch x epochs) is too large to count",
            ),
            Refusal::QuotaExceeded {
                quota,
                limit,
                requested,
                in_use,
            } => {
                let total = u128::from(*in_use) + u128::from(*requested);
                let over = total.saturating_sub(u128::from(*limit));
                write!(
                    f,
                    "{quota} is {limit}: {in_use} in use + {requested} requested = {total}, {over} over"
                )
            }
            Refusal::PriceAboveQuota { limit, price } => {
                let over = saturating_usdc(i128::from(price.micros()) - i128::from(limit.micros()));
                write!(
                    f,
                    "price per epoch {price} USDC is above max_price_per_epoch {limit} USDC by {over} USDC"
                )
            }
            Refusal::CountryNotAllowed { country } => {
                write!(f, "country {country:?} is not in allowed_countries")
            }
            Refusal::CountryUnspecified { allowed } => write!(
                f,
                "no country requested, but the team may deploy only in {}; name at least one",
                allowed.join(", ")
            ),
            Refusal::ConfigurationNotAllowed { configuration } => {
                write!(
                    f,
                    "configuration {configuration:?} is not in allowed_configurations"
                )
            }
            Refusal::TooManyInstances { limit, requested } => write!(
                f,
                "{requested} instances requested, max_instances_per_deployment is {limit} ({} over)",
                requested.saturating_sub(*limit)
            ),
        }
    }
}

/// The outcome: admitted exactly when `refusals` is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What the deployment would hold; `i64::MAX` micro-USDC when it cannot be counted.
    pub commitment: Usdc,
    pub refusals: Vec<Refusal>,
}

impl Decision {
    pub fn admitted(&self) -> bool {
        self.refusals.is_empty()
    }
}

/// `instances x max_price_per_epoch x epochs`, or `None` when that does not fit in an amount or a
/// factor is negative (a negative commitment would make room in the budget instead of using it).
pub fn commitment(instances: u64, max_price_per_epoch: Usdc, epochs: i64) -> Option<Usdc> {
    if max_price_per_epoch.micros() < 0 || epochs < 0 {
        return None;
    }
    let price = u128::try_from(max_price_per_epoch.micros()).ok()?;
    let epochs = u128::try_from(epochs).ok()?;
    // u64 x i64 x i64 fits in u128 only for some inputs, hence the checks.
    let total = u128::from(instances)
        .checked_mul(price)?
        .checked_mul(epochs)?;
    i64::try_from(total).ok().map(Usdc::from_micros)
}

/// Applies the admission rule. Pure: the caller reads the snapshot, usage and quotas inside the
/// same write transaction in which it records the hold, so the decision cannot go stale.
pub fn decide(
    budget: &BudgetSnapshot,
    quotas: &Quotas,
    usage: &Usage,
    request: &Request<'_>,
) -> Decision {
    let mut refusals = Vec::new();

    let commitment = commitment(
        request.instances,
        request.max_price_per_epoch_per_vm,
        request.epochs,
    );
    let available = budget.available();
    match commitment {
        None => refusals.push(Refusal::CommitmentOverflow),
        // The one comparison rule: a commitment equal to what is available is admitted.
        Some(needed) if i128::from(needed.micros()) > available => {
            refusals.push(Refusal::BudgetExceeded {
                needed,
                available: saturating_usdc(available),
            });
        }
        Some(_) => {}
    }

    if let Some(limit) = quotas.max_instances_per_deployment {
        if request.instances > limit {
            refusals.push(Refusal::TooManyInstances {
                limit,
                requested: request.instances,
            });
        }
    }

    let per_vm = request.resources_per_vm;
    let checks = [
        ("max_vms", quotas.max_vms, usage.vms, 1),
        (
            "max_vcpus",
            quotas.max_vcpus,
            usage.resources.vcpus,
            per_vm.vcpus,
        ),
        (
            "max_ram_gib",
            quotas.max_ram_gib,
            usage.resources.ram_gib,
            per_vm.ram_gib,
        ),
        (
            "max_storage_gib",
            quotas.max_storage_gib,
            usage.resources.storage_gib,
            per_vm.storage_gib,
        ),
    ];
    for (quota, limit, in_use, each) in checks {
        let Some(limit) = limit else { continue };
        // In u128 so that no request, however large, wraps under a limit.
        let requested = u128::from(request.instances) * u128::from(each);
        if u128::from(in_use) + requested > u128::from(limit) {
            refusals.push(Refusal::QuotaExceeded {
                quota,
                limit,
                requested: u64::try_from(requested).unwrap_or(u64::MAX),
                in_use,
            });
        }
    }

    if let Some(limit) = quotas.max_price_per_epoch {
        if request.max_price_per_epoch_per_vm > limit {
            refusals.push(Refusal::PriceAboveQuota {
                limit,
                price: request.max_price_per_epoch_per_vm,
            });
        }
    }

    if let Some(allowed) = &quotas.allowed_countries {
        if request.countries.is_empty() {
            refusals.push(Refusal::CountryUnspecified {
                allowed: allowed.clone(),
            });
        }
        let mut reported: Vec<&str> = Vec::new();
        for country in request.countries {
            // Country codes are compared without case: "de" and "DE" are the same place.
            let is_allowed = allowed.iter().any(|a| a.eq_ignore_ascii_case(country));
            let seen = reported.iter().any(|r| r.eq_ignore_ascii_case(country));
            if !is_allowed && !seen {
                reported.push(country);
                refusals.push(Refusal::CountryNotAllowed {
                    country: country.clone(),
                });
            }
        }
    }

    if let Some(allowed) = &quotas.allowed_configurations {
        if !allowed.iter().any(|a| a == request.configuration) {
            refusals.push(Refusal::ConfigurationNotAllowed {
                configuration: request.configuration.to_owned(),
            });
        }
    }

    Decision {
        commitment: commitment.unwrap_or(Usdc::from_micros(i64::MAX)),
        refusals,
    }
}

/// What the team holds once `request` is admitted with `commitment`: the commitment reserved,
/// and the request's instances in use as the quotas count them (what a fresh read of the holds
/// would show). The admissions of one batch are each decided against what the ones before
/// them left (`deploy::admissions`). It saturates: an admitted request fits the cap and every
/// quota set, so only a team without quotas could reach the limits, and a saturated figure
/// refuses whatever follows.
pub fn after_admission(
    budget: &BudgetSnapshot,
    usage: &Usage,
    request: &Request<'_>,
    commitment: Usdc,
) -> (BudgetSnapshot, Usage) {
    let reserved = Usdc::from_micros(budget.reserved.micros().saturating_add(commitment.micros()));
    (
        BudgetSnapshot {
            reserved,
            ..*budget
        },
        usage.plus(request.instances, request.resources_per_vm),
    )
}

fn saturating_usdc(micros: i128) -> Usdc {
    let clamped = micros.clamp(i128::from(i64::MIN), i128::from(i64::MAX));
    Usdc::from_micros(i64::try_from(clamped).unwrap_or(i64::MAX))
}

#[cfg(test)]
// A failed expectation in a test is the test failing, which is what it should do.
#[allow(clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn usdc(text: &str) -> Usdc {
        Usdc::parse(text).expect("test amount")
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    const SMALL: Resources = Resources {
        vcpus: 2,
        ram_gib: 4,
        storage_gib: 25,
    };

    fn product_quotas() -> Quotas {
        Quotas {
            max_vms: Some(20),
            max_vcpus: Some(64),
            max_ram_gib: Some(128),
            max_storage_gib: Some(2000),
            max_instances_per_deployment: Some(10),
            max_price_per_epoch: Some(usdc("5")),
            allowed_countries: Some(strings(&["DE", "FR"])),
            allowed_configurations: None,
        }
    }

    fn budget(cap: &str, spent: &str, committed: &str, reserved: &str) -> BudgetSnapshot {
        BudgetSnapshot {
            cap: usdc(cap),
            spent: usdc(spent),
            committed: usdc(committed),
            reserved: usdc(reserved),
        }
    }

    #[test]
    fn commitment_is_instances_times_price_times_epochs() {
        assert_eq!(commitment(2, usdc("0.3125"), 7), Some(usdc("4.375")));
        assert_eq!(commitment(0, usdc("1"), 7), Some(Usdc::ZERO));
        assert_eq!(commitment(u64::MAX, usdc("1"), 2), None);
        assert_eq!(commitment(1, Usdc::from_micros(i64::MAX), 2), None);
        assert_eq!(commitment(1, usdc("1"), -2), None);
        assert_eq!(commitment(1, Usdc::from_micros(-1), 2), None);
    }

    #[test]
    fn admits_a_request_that_fits() {
        let countries = strings(&["DE"]);
        let request = Request {
            instances: 2,
            configuration: "cpu-2-ram-4gb-storage-25gb",
            resources_per_vm: SMALL,
            countries: &countries,
            max_price_per_epoch_per_vm: usdc("0.3125"),
            epochs: 7,
        };
        let decision = decide(
            &budget("500", "100", "50", "0"),
            &product_quotas(),
            &Usage::default(),
            &request,
        );
        assert_eq!(
            decision,
            Decision {
                commitment: usdc("4.375"),
                refusals: vec![]
            }
        );
        assert!(decision.admitted());
    }

    #[test]
    fn the_exact_boundary_admits_and_one_micro_more_refuses() {
        let countries = strings(&["DE"]);
        let request = Request {
            instances: 2,
            configuration: "cpu-2-ram-4gb-storage-25gb",
            resources_per_vm: SMALL,
            countries: &countries,
            max_price_per_epoch_per_vm: usdc("0.3125"),
            epochs: 7,
        };
        let quotas = Quotas::default();
        let usage = Usage::default();
        assert!(decide(&budget("10", "3", "2.625", "0"), &quotas, &usage, &request).admitted());
        let decision = decide(
            &budget("10", "3", "2.625", "0.000001"),
            &quotas,
            &usage,
            &request,
        );
        assert_eq!(
            decision.refusals,
            vec![Refusal::BudgetExceeded {
                needed: usdc("4.375"),
                available: usdc("4.374999")
            }]
        );
        assert_eq!(
            decision.refusals[0].to_string(),
            "needs 4.375 USDC, 4.374999 available (0.000001 USDC short)"
        );
    }

    #[test]
    fn a_team_past_its_cap_can_admit_nothing_and_is_told_how_far_past() {
        let countries = strings(&["DE"]);
        let request = Request {
            instances: 1,
            configuration: "cpu-2-ram-4gb-storage-25gb",
            resources_per_vm: SMALL,
            countries: &countries,
            max_price_per_epoch_per_vm: Usdc::from_micros(1),
            epochs: 2,
        };
        let decision = decide(
            &budget("10", "8", "5.25", "0"),
            &Quotas::default(),
            &Usage::default(),
            &request,
        );
        assert_eq!(
            decision.refusals[0].to_string(),
            "needs 0.000002 USDC, -3.25 available (3.250002 USDC short)"
        );
        assert_eq!(decision.refusals[0].code(), "budget_exceeded");
    }

    #[test]
    fn every_reason_is_reported() {
        let countries = strings(&["DE", "US", "us", "BR"]);
        let request = Request {
            instances: 12,
            configuration: "cpu-8-ram-16gb-storage-25gb",
            resources_per_vm: Resources {
                vcpus: 8,
                ram_gib: 16,
                storage_gib: 200,
            },
            countries: &countries,
            max_price_per_epoch_per_vm: usdc("12.5"),
            epochs: 2,
        };
        let quotas = Quotas {
            allowed_configurations: Some(strings(&["cpu-2-ram-4gb-storage-25gb"])),
            ..product_quotas()
        };
        let usage = Usage {
            vms: 10,
            resources: Resources {
                vcpus: 20,
                ram_gib: 40,
                storage_gib: 250,
            },
        };
        let decision = decide(&budget("100", "0", "0", "0"), &quotas, &usage, &request);
        let text: Vec<String> = decision.refusals.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            vec![
                "needs 300 USDC, 100 available (200 USDC short)",
                "12 instances requested, max_instances_per_deployment is 10 (2 over)",
                "max_vms is 20: 10 in use + 12 requested = 22, 2 over",
                "max_vcpus is 64: 20 in use + 96 requested = 116, 52 over",
                "max_ram_gib is 128: 40 in use + 192 requested = 232, 104 over",
                "max_storage_gib is 2000: 250 in use + 2400 requested = 2650, 650 over",
                "price per epoch 12.5 USDC is above max_price_per_epoch 5 USDC by 7.5 USDC",
                "country \"US\" is not in allowed_countries",
                "country \"BR\" is not in allowed_countries",
                "configuration \"cpu-8-ram-16gb-storage-25gb\" is not in allowed_configurations",
            ]
        );
        let quotas: Vec<Option<&str>> = decision.refusals.iter().map(Refusal::quota).collect();
        assert_eq!(quotas[0], None);
        assert_eq!(quotas[1], Some("max_instances_per_deployment"));
        assert_eq!(quotas[9], Some("allowed_configurations"));
    }

    #[test]
    fn an_allow_list_needs_the_request_to_name_a_country() {
        let request = Request {
            instances: 1,
            configuration: "cpu-2-ram-4gb-storage-25gb",
            resources_per_vm: SMALL,
            countries: &[],
            max_price_per_epoch_per_vm: usdc("0.3"),
            epochs: 2,
        };
        let decision = decide(
            &budget("100", "0", "0", "0"),
            &product_quotas(),
            &Usage::default(),
            &request,
        );
        assert_eq!(
            decision.refusals,
            vec![Refusal::CountryUnspecified {
                allowed: strings(&["DE", "FR"])
            }]
        );
        assert_eq!(
            decision.refusals[0].to_string(),
            "no country requested, but the team may deploy only in DE, FR; name at least one"
        );
        // Without an allow-list, no country is fine.
        let decision = decide(
            &budget("100", "0", "0", "0"),
            &Quotas::default(),
            &Usage::default(),
            &request,
        );
        assert!(decision.admitted());
    }

    #[test]
    fn huge_requests_are_refused_not_wrapped() {
        let countries = strings(&["DE"]);
        let request = Request {
            instances: u64::MAX,
            configuration: "cpu-2-ram-4gb-storage-25gb",
            resources_per_vm: Resources {
                vcpus: u64::MAX,
                ram_gib: u64::MAX,
                storage_gib: u64::MAX,
            },
            countries: &countries,
            max_price_per_epoch_per_vm: Usdc::from_micros(i64::MAX),
            epochs: i64::MAX,
        };
        let max = Usdc::from_micros(i64::MAX);
        let decision = decide(
            &BudgetSnapshot {
                cap: max,
                ..BudgetSnapshot::default()
            },
            &product_quotas(),
            &Usage {
                vms: u64::MAX,
                resources: request.resources_per_vm,
            },
            &request,
        );
        assert_eq!(decision.refusals[0], Refusal::CommitmentOverflow);
        assert!(decision.refusals.iter().any(|r| matches!(
            r,
            Refusal::QuotaExceeded {
                quota: "max_vcpus",
                requested: u64::MAX,
                ..
            }
        )));
        assert_eq!(decision.commitment, max);
    }

    /// An owned request, so that strategies can build one.
    #[derive(Debug, Clone)]
    struct Case {
        budget: BudgetSnapshot,
        quotas: Quotas,
        usage: Usage,
        instances: u64,
        configuration: String,
        per_vm: Resources,
        countries: Vec<String>,
        price: Usdc,
        epochs: i64,
    }

    impl Case {
        fn decide(&self) -> Decision {
            let request = Request {
                instances: self.instances,
                configuration: &self.configuration,
                resources_per_vm: self.per_vm,
                countries: &self.countries,
                max_price_per_epoch_per_vm: self.price,
                epochs: self.epochs,
            };
            decide(&self.budget, &self.quotas, &self.usage, &request)
        }
    }

    const COUNTRIES: [&str; 4] = ["DE", "FR", "US", "NL"];
    const CONFIGURATIONS: [&str; 3] = [
        "cpu-2-ram-4gb-storage-25gb",
        "cpu-4-ram-8gb-storage-25gb",
        "cpu-8-ram-16gb-storage-25gb",
    ];

    fn small_usdc() -> impl Strategy<Value = Usdc> {
        (0..=1_000_000_000_i64).prop_map(Usdc::from_micros)
    }

    fn resources(max: u64) -> impl Strategy<Value = Resources> {
        (0..=max, 0..=max, 0..=max).prop_map(|(vcpus, ram_gib, storage_gib)| Resources {
            vcpus,
            ram_gib,
            storage_gib,
        })
    }

    fn subset(items: &'static [&'static str]) -> impl Strategy<Value = Vec<String>> {
        proptest::sample::subsequence(items, 0..=items.len())
            .prop_map(|v| v.into_iter().map(str::to_owned).collect())
    }

    fn quotas() -> impl Strategy<Value = Quotas> {
        let limit = || proptest::option::of(0..=200_u64);
        (
            (limit(), limit(), limit(), limit(), limit()),
            proptest::option::of(small_usdc()),
            proptest::option::of(subset(&COUNTRIES)),
            proptest::option::of(subset(&CONFIGURATIONS)),
        )
            .prop_map(
                |((vms, vcpus, ram, storage, per), price, countries, configs)| Quotas {
                    max_vms: vms,
                    max_vcpus: vcpus,
                    max_ram_gib: ram,
                    max_storage_gib: storage,
                    max_instances_per_deployment: per,
                    max_price_per_epoch: price,
                    allowed_countries: countries,
                    allowed_configurations: configs,
                },
            )
    }

    /// Realistic magnitudes, so that both outcomes are common.
    fn case() -> impl Strategy<Value = Case> {
        (
            (small_usdc(), small_usdc(), small_usdc(), small_usdc()),
            quotas(),
            (0..=50_u64, resources(100)),
            (
                0..=20_u64,
                proptest::sample::select(&CONFIGURATIONS[..]),
                resources(16),
            ),
            subset(&COUNTRIES),
            (0..=50_000_000_i64, 0..=40_i64),
        )
            .prop_map(
                |(
                    (cap, spent, committed, reserved),
                    quotas,
                    (vms, held),
                    (n, config, per_vm),
                    countries,
                    (price, epochs),
                )| {
                    Case {
                        budget: BudgetSnapshot {
                            cap: Usdc::from_micros(cap.micros() * 4),
                            spent,
                            committed,
                            reserved,
                        },
                        quotas,
                        usage: Usage {
                            vms,
                            resources: held,
                        },
                        instances: n,
                        configuration: config.to_owned(),
                        per_vm,
                        countries,
                        price: Usdc::from_micros(price),
                        epochs,
                    }
                },
            )
    }

    /// Any values at all, including the extremes.
    fn wild_case() -> impl Strategy<Value = Case> {
        let any_usdc = || any::<i64>().prop_map(Usdc::from_micros);
        let any_resources = || {
            any::<(u64, u64, u64)>().prop_map(|(vcpus, ram_gib, storage_gib)| Resources {
                vcpus,
                ram_gib,
                storage_gib,
            })
        };
        let limit = || proptest::option::of(any::<u64>());
        (
            (any_usdc(), any_usdc(), any_usdc(), any_usdc()),
            (
                limit(),
                limit(),
                limit(),
                limit(),
                limit(),
                proptest::option::of(any_usdc()),
            ),
            (any::<u64>(), any_resources(), any::<u64>(), any_resources()),
            (any_usdc(), any::<i64>()),
            proptest::option::of(proptest::collection::vec("\\PC{0,3}", 0..4)),
            proptest::collection::vec("\\PC{0,3}", 0..4),
        )
            .prop_map(
                |(
                    (cap, spent, committed, reserved),
                    (vms, vcpus, ram, storage, per, max_price),
                    (used_vms, held, n, per_vm),
                    (price, epochs),
                    allowed,
                    countries,
                )| Case {
                    budget: BudgetSnapshot {
                        cap,
                        spent,
                        committed,
                        reserved,
                    },
                    quotas: Quotas {
                        max_vms: vms,
                        max_vcpus: vcpus,
                        max_ram_gib: ram,
                        max_storage_gib: storage,
                        max_instances_per_deployment: per,
                        max_price_per_epoch: max_price,
                        allowed_countries: allowed,
                        allowed_configurations: None,
                    },
                    usage: Usage {
                        vms: used_vms,
                        resources: held,
                    },
                    instances: n,
                    configuration: "cpu-2-ram-4gb-storage-25gb".to_owned(),
                    per_vm,
                    countries,
                    price,
                    epochs,
                },
            )
    }

    /// One change that can only make a request harder to admit.
    #[derive(Debug, Clone)]
    enum Tightening {
        Spend(i64),
        LowerCap(i64),
        MoreInstances(u64),
        HigherPrice(i64),
        MoreEpochs(i64),
        MoreUsage(u64, Resources),
        BiggerVm(Resources),
        LowerLimit(usize, u64),
        LowerPriceLimit(i64),
        DropAllowedCountry(usize),
        AddRequestedCountry(usize),
        DropAllowedConfiguration(usize),
    }

    fn tightening() -> impl Strategy<Value = Tightening> {
        prop_oneof![
            (1..=100_000_000_i64).prop_map(Tightening::Spend),
            (1..=100_000_000_i64).prop_map(Tightening::LowerCap),
            (1..=5_u64).prop_map(Tightening::MoreInstances),
            (1..=1_000_000_i64).prop_map(Tightening::HigherPrice),
            (1..=5_i64).prop_map(Tightening::MoreEpochs),
            (0..=5_u64, resources(20)).prop_map(|(n, r)| Tightening::MoreUsage(n, r)),
            resources(4).prop_map(Tightening::BiggerVm),
            (0..5_usize, 0..=200_u64).prop_map(|(i, d)| Tightening::LowerLimit(i, d)),
            (0..=1_000_000_i64).prop_map(Tightening::LowerPriceLimit),
            (0..4_usize).prop_map(Tightening::DropAllowedCountry),
            (0..4_usize).prop_map(Tightening::AddRequestedCountry),
            (0..3_usize).prop_map(Tightening::DropAllowedConfiguration),
        ]
    }

    fn tighten(case: &Case, change: &Tightening) -> Case {
        let mut c = case.clone();
        let add = |a: Usdc, d: i64| Usdc::from_micros(a.micros() + d);
        let lower = |limit: Option<u64>, d: u64| Some(limit.map_or(d, |l| l.saturating_sub(d)));
        match change {
            Tightening::Spend(d) => c.budget.spent = add(c.budget.spent, *d),
            Tightening::LowerCap(d) => c.budget.cap = add(c.budget.cap, -d),
            Tightening::MoreInstances(d) => c.instances += d,
            Tightening::HigherPrice(d) => c.price = add(c.price, *d),
            Tightening::MoreEpochs(d) => c.epochs += d,
            Tightening::MoreUsage(n, r) => {
                c.usage.vms += n;
                c.usage.resources = c
                    .usage
                    .resources
                    .checked_add(*r)
                    .unwrap_or(c.usage.resources);
            }
            Tightening::BiggerVm(r) => c.per_vm = c.per_vm.checked_add(*r).unwrap_or(c.per_vm),
            Tightening::LowerLimit(i, d) => {
                let q = &mut c.quotas;
                let limit = [
                    &mut q.max_vms,
                    &mut q.max_vcpus,
                    &mut q.max_ram_gib,
                    &mut q.max_storage_gib,
                    &mut q.max_instances_per_deployment,
                ]
                .into_iter()
                .nth(*i)
                .expect("five limits");
                *limit = lower(*limit, *d);
            }
            Tightening::LowerPriceLimit(d) => {
                let limit = c
                    .quotas
                    .max_price_per_epoch
                    .map_or(*d, |l| (l.micros() - d).max(0));
                c.quotas.max_price_per_epoch = Some(Usdc::from_micros(limit));
            }
            Tightening::DropAllowedCountry(i) => {
                let list = c
                    .quotas
                    .allowed_countries
                    .get_or_insert_with(|| COUNTRIES.iter().map(|s| (*s).to_owned()).collect());
                list.retain(|x| x != COUNTRIES[*i]);
            }
            // An empty list means "anywhere", so only a list that names countries can grow
            // stricter by naming one more.
            Tightening::AddRequestedCountry(i) => {
                if !c.countries.is_empty() {
                    c.countries.push(COUNTRIES[*i].to_owned());
                }
            }
            Tightening::DropAllowedConfiguration(i) => {
                let list = c.quotas.allowed_configurations.get_or_insert_with(|| {
                    CONFIGURATIONS.iter().map(|s| (*s).to_owned()).collect()
                });
                list.retain(|x| x != CONFIGURATIONS[*i]);
            }
        }
        c
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(100_000))]

        #[test]
        fn an_admitted_request_fits_under_the_cap(case in case()) {
            let decision = case.decide();
            let b = case.budget;
            if decision.admitted() {
                let total = i128::from(b.spent.micros())
                    + i128::from(b.committed.micros())
                    + i128::from(b.reserved.micros())
                    + i128::from(decision.commitment.micros());
                prop_assert!(total <= i128::from(b.cap.micros()));
            }
            let expected = commitment(case.instances, case.price, case.epochs);
            match expected {
                Some(needed) => {
                    prop_assert_eq!(decision.commitment, needed);
                    let over = i128::from(needed.micros()) > b.available();
                    let refused_for_budget = decision
                        .refusals
                        .iter()
                        .any(|r| matches!(r, Refusal::BudgetExceeded { .. }));
                    prop_assert_eq!(over, refused_for_budget);
                }
                None => prop_assert!(decision.refusals.contains(&Refusal::CommitmentOverflow)),
            }
        }

        #[test]
        fn a_request_that_fits_everything_is_admitted(case in case(), slack in 0..=1_000_i64) {
            // Set every limit to exactly what the request brings the team to, and the cap to
            // exactly what is needed (plus some slack).
            let mut c = case;
            let needed = commitment(c.instances, c.price, c.epochs).expect("small inputs fit");
            let after = c.usage.resources
                .checked_add(c.per_vm.checked_mul(c.instances).expect("fits"))
                .expect("fits");
            c.budget.cap = Usdc::from_micros(
                c.budget.spent.micros() + c.budget.committed.micros() + c.budget.reserved.micros()
                    + needed.micros() + slack,
            );
            c.quotas = Quotas {
                max_vms: Some(c.usage.vms + c.instances),
                max_vcpus: Some(after.vcpus),
                max_ram_gib: Some(after.ram_gib),
                max_storage_gib: Some(after.storage_gib),
                max_instances_per_deployment: Some(c.instances),
                max_price_per_epoch: Some(c.price),
                allowed_countries: c.quotas.allowed_countries.map(|mut allowed| {
                    allowed.extend(c.countries.iter().cloned());
                    allowed
                }),
                allowed_configurations: Some(vec![c.configuration.clone()]),
            };
            if c.quotas.allowed_countries.is_some() && c.countries.is_empty() {
                c.countries.push("DE".to_owned());
                if let Some(allowed) = &mut c.quotas.allowed_countries {
                    allowed.push("DE".to_owned());
                }
            }
            let decision = c.decide();
            prop_assert!(decision.admitted(), "{:?}", decision.refusals);
            prop_assert_eq!(decision.commitment, needed);
        }

        #[test]
        fn tightening_never_turns_a_refusal_into_an_admission(
            case in case(),
            change in tightening(),
        ) {
            let before = case.decide();
            let after = tighten(&case, &change).decide();
            if !before.admitted() {
                prop_assert!(!after.admitted(), "{:?} admitted after {:?}", case, change);
            }
            // Whatever refused before still refuses, for the same reason.
            for refusal in &before.refusals {
                prop_assert!(
                    after.refusals.iter().any(|r| r.code() == refusal.code()
                        && r.quota() == refusal.quota()),
                    "{:?} lost after {:?}", refusal, change
                );
            }
        }

        #[test]
        fn admissions_decided_in_turn_never_admit_more_than_fits(
            case in case(),
            requests in proptest::collection::vec(
                (0..=20_u64, resources(16), 0..=50_000_000_i64, 0..=40_i64),
                1..12,
            ),
        ) {
            // One batch: each request decided against what the admitted ones before it left.
            let (mut budget, mut usage) = (case.budget, case.usage);
            let mut admitted = Usage::default();
            let mut held = 0_i128;
            for (instances, per_vm, price, epochs) in requests {
                let request = Request {
                    instances,
                    configuration: &case.configuration,
                    resources_per_vm: per_vm,
                    countries: &case.countries,
                    max_price_per_epoch_per_vm: Usdc::from_micros(price),
                    epochs,
                };
                let decision = decide(&budget, &case.quotas, &usage, &request);
                if decision.admitted() {
                    held += i128::from(decision.commitment.micros());
                    admitted.vms += instances;
                    admitted.resources = admitted.resources
                        .checked_add(per_vm.checked_mul(instances).expect("small"))
                        .expect("small");
                    (budget, usage) = after_admission(&budget, &usage, &request, decision.commitment);
                }
            }
            let b = case.budget;
            if held > 0 {
                prop_assert!(held <= b.available(), "held {} of {}", held, b.available());
            }
            prop_assert_eq!(i128::from(budget.reserved.micros()), i128::from(b.reserved.micros()) + held);
            let q = &case.quotas;
            let fits = |limit: Option<u64>, before: u64, added: u64| {
                added == 0 || limit.is_none_or(|l| before + added <= l)
            };
            prop_assert!(fits(q.max_vms, case.usage.vms, admitted.vms));
            prop_assert!(fits(q.max_vcpus, case.usage.resources.vcpus, admitted.resources.vcpus));
            prop_assert!(fits(q.max_ram_gib, case.usage.resources.ram_gib, admitted.resources.ram_gib));
            prop_assert!(fits(
                q.max_storage_gib,
                case.usage.resources.storage_gib,
                admitted.resources.storage_gib
            ));
            prop_assert_eq!(usage.vms, case.usage.vms + admitted.vms);
        }

        #[test]
        fn no_input_panics_or_wraps(case in wild_case()) {
            let decision = case.decide();
            let b = case.budget;
            if decision.admitted() {
                let total = i128::from(b.spent.micros())
                    + i128::from(b.committed.micros())
                    + i128::from(b.reserved.micros())
                    + i128::from(decision.commitment.micros());
                prop_assert!(total <= i128::from(b.cap.micros()));
                prop_assert!(decision.commitment.micros() >= 0);
            }
            for refusal in &decision.refusals {
                let _ = refusal.to_string();
            }
        }
    }
}

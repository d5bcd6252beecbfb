//! Fluence's billing calendar: a VM is charged once per 24 h epoch, at `next_billing_at` and every
//! 24 h after it, plus once when it is deployed.

use chrono::{DateTime, NaiveTime, TimeDelta, Utc};

use super::money::Usdc;

/// One billing epoch.
pub const EPOCH: TimeDelta = TimeDelta::hours(24);

/// [`EPOCH`] in microseconds, for the same rule computed by SQLite (`store::budget`).
pub const EPOCH_MICROS: i64 = 24 * 3600 * 1_000_000;

/// Fluence moves two epochs of rent at deploy (one charged, one held in reserve), so no deploy
/// can commit less than this.
pub const DEPOSIT_EPOCHS: i64 = 2;

/// How many instants `next_billing_at + k * 24 h` (k >= 0) fall strictly before `end`.
pub fn billing_instants_before(next_billing_at: DateTime<Utc>, end: DateTime<Utc>) -> i64 {
    if next_billing_at >= end {
        return 0;
    }
    // Nanosecond arithmetic in i128 so that sub-second gaps and spans of centuries are both exact.
    let gap = nanos(end - next_billing_at);
    let epoch = nanos(EPOCH);
    let count = (gap + epoch - 1) / epoch;
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// What a live VM will still be charged before the period ends: its price times the billing
/// instants before `period_end`, or before `expires_at` if sooner. `None` when it overflows.
/// A VM without `next_billing_at` (Fluence omits it once a VM is terminated) will not be charged.
pub fn committed(
    price_per_epoch: Usdc,
    next_billing_at: Option<DateTime<Utc>>,
    period_end: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
) -> Option<Usdc> {
    let Some(next_billing_at) = next_billing_at else {
        return Some(Usdc::ZERO);
    };
    let end = expires_at.map_or(period_end, |expires| expires.min(period_end));
    price_per_epoch.checked_mul(billing_instants_before(next_billing_at, end))
}

/// When Fluence charges a VM after the charge at deploy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillingSchedule {
    /// Every 24 h from activation (Fluence's 2026 documentation; the simulator's default).
    PerInstance,
    /// Every day at one UTC time for every VM (the 2025 documentation: 17:55 UTC).
    DailyAt(NaiveTime),
}

/// The epochs a new deployment must be held for, per-instance billing: the charge at deploy plus
/// every later instant `now + k * 24 h` (k >= 1) before the period ends (or the TTL, if sooner),
/// and never fewer than Fluence's two-epoch deposit.
///
/// `guard` widens the end: the gateway's clock and Fluence's may disagree, and a deploy that lands
/// just before a boundary by our clock may be billed once more by theirs (RELIABILITY T1). Holding
/// an epoch too many is released when the VMs settle; holding one too few can break the cap.
/// A negative guard is treated as zero, since it could only make the estimate short.
pub fn deployment_epochs(
    now: DateTime<Utc>,
    period_end: DateTime<Utc>,
    ttl_end: Option<DateTime<Utc>>,
    guard: TimeDelta,
) -> i64 {
    deployment_epochs_on(
        BillingSchedule::PerInstance,
        now,
        period_end,
        ttl_end,
        guard,
    )
}

/// [`deployment_epochs`] for a given schedule. With a fixed daily time, the first charge after
/// the deploy can come minutes later (a deploy at 17:45 pays again at 17:55), so counting
/// `now + k * 24 h` would fall one epoch short; this counts the schedule's own instants instead,
/// widened by `guard` on both sides for clock skew.
pub fn deployment_epochs_on(
    schedule: BillingSchedule,
    now: DateTime<Utc>,
    period_end: DateTime<Utc>,
    ttl_end: Option<DateTime<Utc>>,
    guard: TimeDelta,
) -> i64 {
    let guard = guard.max(TimeDelta::zero());
    let end = ttl_end.map_or(period_end, |ttl| ttl.min(period_end));
    let end = end
        .checked_add_signed(guard)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let later = match schedule {
        BillingSchedule::PerInstance => match now.checked_add_signed(EPOCH) {
            Some(first) => billing_instants_before(first, end),
            None => 0,
        },
        BillingSchedule::DailyAt(time) => {
            let from = now
                .checked_sub_signed(guard)
                .unwrap_or(DateTime::<Utc>::MIN_UTC);
            match first_daily_after(from, time) {
                Some(first) => billing_instants_before(first, end),
                None => 0,
            }
        }
    };
    later.saturating_add(1).max(DEPOSIT_EPOCHS)
}

/// The first instant at `time` UTC strictly after `after`.
fn first_daily_after(after: DateTime<Utc>, time: NaiveTime) -> Option<DateTime<Utc>> {
    let same_day = after.date_naive().and_time(time).and_utc();
    if same_day > after {
        Some(same_day)
    } else {
        same_day.checked_add_signed(EPOCH)
    }
}

fn nanos(delta: TimeDelta) -> i128 {
    i128::from(delta.num_seconds()) * 1_000_000_000 + i128::from(delta.subsec_nanos())
}

#[cfg(test)]
// A failed expectation in a test is the test failing, which is what it should do.
#[allow(clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("test timestamp")
            .with_timezone(&Utc)
    }

    fn usdc(text: &str) -> Usdc {
        Usdc::parse(text).expect("test amount")
    }

    fn five_to_six() -> NaiveTime {
        NaiveTime::from_hms_opt(17, 55, 0).expect("valid time")
    }

    #[test]
    fn the_epoch_in_microseconds_is_the_epoch() {
        assert_eq!(EPOCH.num_microseconds(), Some(EPOCH_MICROS));
    }

    #[test]
    fn instants_across_a_utc_month() {
        let end = at("2026-04-01T00:00:00Z");
        // 09:14 on March 4, 5, ..., 31: 28 instants.
        assert_eq!(billing_instants_before(at("2026-03-04T09:14:27Z"), end), 28);
        assert_eq!(billing_instants_before(at("2026-03-31T23:59:59Z"), end), 1);
        assert_eq!(billing_instants_before(end, end), 0);
        assert_eq!(billing_instants_before(at("2026-04-02T00:00:00Z"), end), 0);
        // An instant exactly on the end is not before it.
        assert_eq!(billing_instants_before(at("2026-03-30T00:00:00Z"), end), 2);
        assert_eq!(
            billing_instants_before(at("2026-03-29T23:59:59.999999999Z"), end),
            3
        );
    }

    #[test]
    fn committed_stops_at_the_period_end_or_the_expiry() {
        let price = usdc("0.3125");
        let next = Some(at("2026-03-30T12:00:00Z"));
        let end = at("2026-04-01T00:00:00Z");
        assert_eq!(committed(price, next, end, None), Some(usdc("0.625")));
        assert_eq!(
            committed(price, next, end, Some(at("2026-03-31T12:00:00Z"))),
            Some(usdc("0.3125"))
        );
        assert_eq!(
            committed(price, next, end, Some(at("2026-05-01T00:00:00Z"))),
            Some(usdc("0.625"))
        );
        assert_eq!(committed(price, None, end, None), Some(Usdc::ZERO));
        assert_eq!(
            committed(Usdc::from_micros(i64::MAX), next, end, None),
            None
        );
    }

    #[test]
    fn a_deploy_holds_the_charge_at_deploy_and_every_later_instant() {
        let end = at("2026-04-01T00:00:00Z");
        let now = at("2026-03-25T12:00:00Z");
        // At deploy, then 26th..31st at 12:00.
        assert_eq!(deployment_epochs(now, end, None, TimeDelta::zero()), 7);
        // A TTL of 48 h: at deploy and at +24 h; +48 h is when it ends.
        let ttl = Some(now + TimeDelta::hours(48));
        assert_eq!(deployment_epochs(now, end, ttl, TimeDelta::zero()), 2);
        // With a guard band the instant on the TTL's end is held too.
        assert_eq!(deployment_epochs(now, end, ttl, TimeDelta::minutes(10)), 3);
        // The deposit is the floor, even when the period ends in a minute.
        let late = at("2026-03-31T23:59:00Z");
        assert_eq!(deployment_epochs(late, end, None, TimeDelta::zero()), 2);
        assert_eq!(deployment_epochs(end, end, None, TimeDelta::zero()), 2);
    }

    #[test]
    fn a_deploy_just_before_the_boundary_counts_the_extra_epoch() {
        let end = at("2026-04-01T00:00:00Z");
        let guard = TimeDelta::minutes(10);
        // Deploy at 23:55 on the 29th: at deploy, then 23:55 on the 30th; the 31st at 23:55 is
        // before the end. 3 in any case.
        assert_eq!(
            deployment_epochs(at("2026-03-29T23:55:00Z"), end, None, guard),
            3
        );
        // Deploy at 00:05 on the 30th by our clock; Fluence may think it is 23:58 on the 29th
        // and charge again at 23:58 on the 31st. The guard holds that epoch.
        let now = at("2026-03-30T00:05:00Z");
        assert_eq!(deployment_epochs(now, end, None, TimeDelta::zero()), 2);
        assert_eq!(deployment_epochs(now, end, None, guard), 3);
        // A negative guard is not allowed to shorten the hold.
        assert_eq!(
            deployment_epochs(now, end, None, -TimeDelta::hours(5)),
            deployment_epochs(now, end, None, TimeDelta::zero())
        );
    }

    #[test]
    fn daily_billing_charges_again_minutes_after_a_late_deploy() {
        let end = at("2026-03-28T00:00:00Z");
        let now = at("2026-03-25T17:45:00Z");
        let daily = BillingSchedule::DailyAt(five_to_six());
        // At deploy, then 17:55 on the 25th, 26th and 27th.
        assert_eq!(
            deployment_epochs_on(daily, now, end, None, TimeDelta::zero()),
            4
        );
        // Per instance: at deploy, then 17:45 on the 26th and 27th.
        assert_eq!(deployment_epochs(now, end, None, TimeDelta::zero()), 3);
        // At 17:56 by our clock Fluence may still be before 17:55.
        let after = at("2026-03-25T17:56:00Z");
        assert_eq!(
            deployment_epochs_on(daily, after, end, None, TimeDelta::zero()),
            3
        );
        assert_eq!(
            deployment_epochs_on(daily, after, end, None, TimeDelta::minutes(10)),
            4
        );
    }

    fn instant() -> impl Strategy<Value = DateTime<Utc>> {
        let low = at("2000-01-01T00:00:00Z").timestamp();
        let high = at("2100-01-01T00:00:00Z").timestamp();
        (low..=high, 0..1_000_000_000_u32)
            .prop_map(|(secs, nanos)| DateTime::from_timestamp(secs, nanos).expect("in range"))
    }

    /// Up to 400 days either way, to the nanosecond.
    fn span() -> impl Strategy<Value = TimeDelta> {
        (-400 * 86_400_i64..=400 * 86_400, 0..1_000_000_000_u32).prop_map(|(secs, nanos)| {
            TimeDelta::seconds(secs) + TimeDelta::nanoseconds(i64::from(nanos))
        })
    }

    fn guard() -> impl Strategy<Value = TimeDelta> {
        (0..=3_600_i64).prop_map(TimeDelta::seconds)
    }

    fn brute_force_instants(first: DateTime<Utc>, end: DateTime<Utc>) -> i64 {
        let mut count = 0;
        let mut instant = first;
        while instant < end {
            count += 1;
            instant += EPOCH;
        }
        count
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(100_000))]

        #[test]
        fn instants_match_a_brute_force_count(first in instant(), gap in span()) {
            let end = first + gap;
            prop_assert_eq!(billing_instants_before(first, end), brute_force_instants(first, end));
        }

        #[test]
        fn deployment_epochs_grow_with_the_end_and_never_drop_below_the_deposit(
            now in instant(),
            a in span(),
            b in span(),
            ttl in proptest::option::of(span()),
            guard in guard(),
            daily in proptest::option::of((0..24_u32, 0..60_u32)),
        ) {
            let schedule = match daily {
                Some((h, m)) => BillingSchedule::DailyAt(
                    NaiveTime::from_hms_opt(h, m, 0).expect("valid time"),
                ),
                None => BillingSchedule::PerInstance,
            };
            let (near, far) = (now + a.min(b), now + a.max(b));
            let ttl = ttl.map(|t| now + t);
            let near_epochs = deployment_epochs_on(schedule, now, near, ttl, guard);
            let far_epochs = deployment_epochs_on(schedule, now, far, ttl, guard);
            prop_assert!(near_epochs >= DEPOSIT_EPOCHS);
            prop_assert!(near_epochs <= far_epochs);
            // A wider guard never holds less.
            let wider = deployment_epochs_on(schedule, now, far, ttl, guard + TimeDelta::seconds(1));
            prop_assert!(far_epochs <= wider);
        }

        #[test]
        fn per_instance_epochs_match_a_brute_force_count(
            now in instant(),
            gap in span(),
            guard in guard(),
        ) {
            let end = now + gap + guard;
            let expected = (1 + brute_force_instants(now + EPOCH, end)).max(DEPOSIT_EPOCHS);
            prop_assert_eq!(deployment_epochs(now, now + gap, None, guard), expected);
        }

        #[test]
        fn daily_epochs_cover_any_skew_within_the_guard(
            now in instant(),
            gap in span(),
            skew in -3_600_i64..=3_600,
            h in 0..24_u32,
            m in 0..60_u32,
        ) {
            // Fluence's clock reads `now + skew`; it charges at deploy and at each daily instant
            // after that, before the period ends.
            let time = NaiveTime::from_hms_opt(h, m, 0).expect("valid time");
            let end = now + gap;
            let provider_now = now + TimeDelta::seconds(skew);
            let charged = match first_daily_after(provider_now, time) {
                Some(first) => 1 + brute_force_instants(first, end),
                None => 1,
            };
            let guard = TimeDelta::seconds(skew.abs());
            let held = deployment_epochs_on(BillingSchedule::DailyAt(time), now, end, None, guard);
            prop_assert!(held >= charged);
        }

        #[test]
        fn committed_matches_price_times_instants(
            micros in 0..=1_000_000_000_i64,
            next in proptest::option::of(instant()),
            gap in span(),
            expiry in proptest::option::of(span()),
        ) {
            let price = Usdc::from_micros(micros);
            let period_end = next.unwrap_or(DateTime::UNIX_EPOCH) + gap;
            let expires_at = expiry.map(|e| period_end + e);
            let result = committed(price, next, period_end, expires_at);
            let expected = match next {
                None => 0,
                Some(first) => {
                    let end = expires_at.map_or(period_end, |e| e.min(period_end));
                    micros * brute_force_instants(first, end)
                }
            };
            prop_assert_eq!(result, Some(Usdc::from_micros(expected)));
        }
    }
}

//! Budget periods: calendar months in UTC that may start on a day other than the 1st.

use chrono::{DateTime, Datelike, NaiveDate, Utc};

/// The latest day a period may start on: every month has it, so a period is always a whole
/// calendar month and never has to be clipped in February.
pub const MAX_START_DAY: u8 = 28;

/// A monthly budget period in UTC, starting at 00:00:00 on `start_day` of each month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BudgetPeriod {
    pub start_day: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    #[error("start day {0} is not between 1 and {MAX_START_DAY}")]
    StartDayOutOfRange(u8),
}

impl Default for BudgetPeriod {
    fn default() -> Self {
        BudgetPeriod { start_day: 1 }
    }
}

impl BudgetPeriod {
    pub fn monthly(start_day: u8) -> Result<Self, PeriodError> {
        if (1..=MAX_START_DAY).contains(&start_day) {
            Ok(BudgetPeriod { start_day })
        } else {
            Err(PeriodError::StartDayOutOfRange(start_day))
        }
    }

    /// `(period_start, resets_at)`: the most recent `start_day` 00:00:00 UTC at or before `now`
    /// (inclusive), and the same day one calendar month later (exclusive).
    ///
    /// The field is public, so a value built without [`BudgetPeriod::monthly`] is clamped into
    /// 1..=28 rather than trusted. Within chrono's representable range (years beyond ±262 000)
    /// the bounds saturate at its limits instead of panicking.
    pub fn bounds(&self, now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
        let day = u32::from(self.start_day.clamp(1, MAX_START_DAY));
        let (year, month) = if now.day() >= day {
            (now.year(), now.month())
        } else {
            previous_month(now.year(), now.month())
        };
        let (next_year, next_month) = next_month(year, month);
        let start = midnight(year, month, day).unwrap_or(DateTime::<Utc>::MIN_UTC);
        let resets_at = midnight(next_year, next_month, day).unwrap_or(DateTime::<Utc>::MAX_UTC);
        (start, resets_at)
    }
}

fn previous_month(year: i32, month: u32) -> (i32, u32) {
    if month == 1 {
        (year - 1, 12)
    } else {
        (year, month - 1)
    }
}

fn next_month(year: i32, month: u32) -> (i32, u32) {
    if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    }
}

fn midnight(year: i32, month: u32, day: u32) -> Option<DateTime<Utc>> {
    NaiveDate::from_ymd_opt(year, month, day)
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .map(|naive| naive.and_utc())
}

#[cfg(test)]
// A failed expectation in a test is the test failing, which is what it should do.
#[allow(clippy::expect_used)]
mod tests {
    use super::*;
    use chrono::TimeDelta;
    use proptest::prelude::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("test timestamp")
            .with_timezone(&Utc)
    }

    #[test]
    fn start_day_must_be_between_1_and_28() {
        assert_eq!(BudgetPeriod::monthly(1), Ok(BudgetPeriod::default()));
        assert!(BudgetPeriod::monthly(28).is_ok());
        assert_eq!(
            BudgetPeriod::monthly(0),
            Err(PeriodError::StartDayOutOfRange(0))
        );
        assert_eq!(
            BudgetPeriod::monthly(29),
            Err(PeriodError::StartDayOutOfRange(29))
        );
    }

    #[test]
    fn a_calendar_month_by_default() {
        let period = BudgetPeriod::default();
        assert_eq!(
            period.bounds(at("2026-02-14T12:00:00Z")),
            (at("2026-02-01T00:00:00Z"), at("2026-03-01T00:00:00Z"))
        );
        assert_eq!(
            period.bounds(at("2026-12-31T23:59:59.999Z")),
            (at("2026-12-01T00:00:00Z"), at("2027-01-01T00:00:00Z"))
        );
        // The reset instant itself belongs to the new period.
        assert_eq!(
            period.bounds(at("2027-01-01T00:00:00Z")),
            (at("2027-01-01T00:00:00Z"), at("2027-02-01T00:00:00Z"))
        );
    }

    #[test]
    fn a_period_starting_on_the_15th() {
        let period = BudgetPeriod::monthly(15).expect("valid day");
        assert_eq!(
            period.bounds(at("2026-03-20T08:00:00Z")),
            (at("2026-03-15T00:00:00Z"), at("2026-04-15T00:00:00Z"))
        );
        assert_eq!(
            period.bounds(at("2026-03-14T23:59:59Z")),
            (at("2026-02-15T00:00:00Z"), at("2026-03-15T00:00:00Z"))
        );
        assert_eq!(
            period.bounds(at("2026-01-10T00:00:00Z")),
            (at("2025-12-15T00:00:00Z"), at("2026-01-15T00:00:00Z"))
        );
        assert_eq!(
            period.bounds(at("2026-03-15T00:00:00Z")).0,
            at("2026-03-15T00:00:00Z")
        );
    }

    #[test]
    fn an_out_of_range_start_day_is_clamped_not_trusted() {
        let period = BudgetPeriod { start_day: 31 };
        assert_eq!(
            period.bounds(at("2026-02-28T12:00:00Z")),
            (at("2026-02-28T00:00:00Z"), at("2026-03-28T00:00:00Z"))
        );
        let period = BudgetPeriod { start_day: 0 };
        assert_eq!(
            period.bounds(at("2026-02-28T12:00:00Z")).0,
            at("2026-02-01T00:00:00Z")
        );
    }

    fn instant() -> impl Strategy<Value = DateTime<Utc>> {
        // Years 1900..=2200, to the nanosecond.
        let low = at("1900-01-01T00:00:00Z").timestamp();
        let high = at("2200-12-31T23:59:59Z").timestamp();
        (low..=high, 0..1_000_000_000_u32)
            .prop_map(|(secs, nanos)| DateTime::from_timestamp(secs, nanos).expect("in range"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(100_000))]

        #[test]
        fn now_lies_inside_its_period(day in 1..=MAX_START_DAY, now in instant()) {
            let (start, resets_at) = BudgetPeriod::monthly(day).expect("valid").bounds(now);
            prop_assert!(start <= now && now < resets_at);
            prop_assert_eq!(start.day(), u32::from(day));
            prop_assert_eq!(start.time(), chrono::NaiveTime::MIN);
        }

        #[test]
        fn periods_tile_time(day in 1..=MAX_START_DAY, now in instant()) {
            let period = BudgetPeriod::monthly(day).expect("valid");
            let (start, resets_at) = period.bounds(now);
            prop_assert_eq!(period.bounds(resets_at).0, resets_at);
            prop_assert_eq!(period.bounds(start), (start, resets_at));
            let just_before = start - TimeDelta::nanoseconds(1);
            prop_assert_eq!(period.bounds(just_before).1, start);
            let length = resets_at - start;
            prop_assert!(length >= TimeDelta::days(28) && length <= TimeDelta::days(31));
        }
    }
}

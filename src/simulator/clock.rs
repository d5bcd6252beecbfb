//! Virtual time.
//!
//! The simulator's clock only ever moves forward. In wall mode it follows real time from its
//! start (plus any explicit advances); in manual mode it moves only when `/_sim/clock` says so,
//! which makes tests exact and independent of how slow the machine is.

use std::time::Instant;

use chrono::{DateTime, TimeDelta, Utc};

/// The most the clock may be advanced in total. A century is more than any test needs, and it
/// keeps every instant the simulator computes (now plus an epoch, a grace period or a visibility
/// delay) far inside chrono's range, so an advance can never leave a clock that panics later.
pub const MAX_ADVANCE_SECONDS: i64 = 100 * 366 * 24 * 3600;

/// How virtual time moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClockMode {
    /// Virtual time = start + real time elapsed + advances.
    #[default]
    Wall,
    /// Virtual time = start + advances; nothing else moves it.
    Manual,
}

/// An advance the clock refused; the clock is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "advance_seconds would move the clock more than {MAX_ADVANCE_SECONDS} seconds (100 years) past its start"
)]
pub struct TooFar;

#[derive(Debug, Clone)]
pub struct Clock {
    mode: ClockMode,
    start: DateTime<Utc>,
    real_start: Instant,
    advanced: TimeDelta,
}

impl Clock {
    pub fn new(mode: ClockMode, start: DateTime<Utc>) -> Self {
        Clock {
            mode,
            start,
            real_start: Instant::now(),
            advanced: TimeDelta::zero(),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        let real = match self.mode {
            ClockMode::Wall => TimeDelta::from_std(self.real_start.elapsed()).unwrap_or_default(),
            ClockMode::Manual => TimeDelta::zero(),
        };
        // `advance` keeps this in range; saturating only matters for a start time configured
        // at the very end of chrono's calendar, where a frozen clock beats a panic.
        self.start
            .checked_add_signed(self.advanced)
            .and_then(|t| t.checked_add_signed(real))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// Moves time forward; negative amounts are ignored so time never runs backwards. An
    /// advance past [`MAX_ADVANCE_SECONDS`] in total is refused without changing anything.
    pub fn advance(&mut self, seconds: i64) -> Result<(), TooFar> {
        if seconds <= 0 {
            return Ok(());
        }
        let total = TimeDelta::try_seconds(seconds)
            .and_then(|delta| self.advanced.checked_add(&delta))
            .filter(|total| total.num_seconds() <= MAX_ADVANCE_SECONDS)
            .filter(|total| self.start.checked_add_signed(*total).is_some())
            .ok_or(TooFar)?;
        self.advanced = total;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap_or_default()
    }

    #[test]
    fn manual_time_moves_only_when_advanced() {
        let mut clock = Clock::new(ClockMode::Manual, start());
        assert_eq!(clock.now(), start());
        assert_eq!(clock.advance(90), Ok(()));
        assert_eq!(clock.advance(-1000), Ok(()));
        assert_eq!(clock.now(), start() + TimeDelta::seconds(90));
    }

    #[test]
    fn an_advance_beyond_a_century_is_refused_and_changes_nothing() {
        let mut clock = Clock::new(ClockMode::Manual, start());
        assert_eq!(clock.advance(i64::MAX), Err(TooFar));
        assert_eq!(clock.advance(10_000_000_000_000), Err(TooFar));
        assert_eq!(clock.now(), start());
        assert_eq!(clock.advance(MAX_ADVANCE_SECONDS - 10), Ok(()));
        assert_eq!(clock.advance(11), Err(TooFar));
        assert_eq!(clock.advance(10), Ok(()));
        assert_eq!(
            clock.now(),
            start() + TimeDelta::seconds(MAX_ADVANCE_SECONDS)
        );
    }
}

//! Virtual time.
//!
//! The simulator's clock only ever moves forward. In wall mode it follows real time from its
//! start (plus any explicit advances); in manual mode it moves only when `/_sim/clock` says so,
//! which makes tests exact and independent of how slow the machine is.

use std::time::Instant;

use chrono::{DateTime, Duration, Utc};

/// How virtual time moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClockMode {
    /// Virtual time = start + real time elapsed + advances.
    #[default]
    Wall,
    /// Virtual time = start + advances; nothing else moves it.
    Manual,
}

#[derive(Debug, Clone)]
pub struct Clock {
    mode: ClockMode,
    start: DateTime<Utc>,
    real_start: Instant,
    advanced: Duration,
}

impl Clock {
    pub fn new(mode: ClockMode, start: DateTime<Utc>) -> Self {
        Clock {
            mode,
            start,
            real_start: Instant::now(),
            advanced: Duration::zero(),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        let real = match self.mode {
            ClockMode::Wall => Duration::from_std(self.real_start.elapsed()).unwrap_or_default(),
            ClockMode::Manual => Duration::zero(),
        };
        self.start + self.advanced + real
    }

    /// Moves time forward; negative amounts are ignored so time never runs backwards.
    pub fn advance(&mut self, seconds: i64) {
        if seconds > 0 {
            self.advanced += Duration::seconds(seconds);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_time_moves_only_when_advanced() {
        let start = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        let mut clock = Clock::new(ClockMode::Manual, start);
        assert_eq!(clock.now(), start);
        clock.advance(90);
        clock.advance(-1000);
        assert_eq!(clock.now(), start + Duration::seconds(90));
    }
}

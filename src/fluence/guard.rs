//! What stands between the gateway and a slow or failing Fluence (RELIABILITY.md G4, G6).
//!
//! - A **bulkhead**: at most `max_in_flight` calls are out at once. A call beyond that is not
//!   queued but refused at once, so a hung upstream cannot pile up tasks, sockets and memory in
//!   the gateway, and a caller waiting on it learns quickly that it must come back later.
//! - A **circuit breaker**: after `failures` consecutive calls that got no usable answer (a
//!   transport failure or a 5xx), Fluence is left alone for `open_for`. Then one call, the
//!   probe, is let through; its success closes the breaker, its failure opens it again. While it
//!   is open nothing reaches Fluence, deploys wait in `admitted` with their hold, and the jobs
//!   that read Fluence skip their run.
//!
//! A refusal is [`FluenceError::HeldBack`]: the request was provably never sent, so a deploy
//! refused here is tried again later rather than reconciled.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::fluence::error::{Endpoint, FluenceError, HeldBack};

/// The guard's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardConfig {
    pub max_in_flight: usize,
    /// Consecutive failed calls that open the breaker.
    pub failures: u32,
    /// How long the breaker stays open before a probe is let through.
    pub open_for: Duration,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            max_in_flight: 128,
            failures: 5,
            open_for: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Default)]
struct Breaker {
    consecutive_failures: u32,
    /// `Some` while open: calls are refused until then, and one probe after.
    open_until: Option<Instant>,
    probe_out: bool,
}

#[derive(Debug)]
pub struct UpstreamGuard {
    config: GuardConfig,
    slots: Arc<Semaphore>,
    breaker: Mutex<Breaker>,
}

/// Leave to make one call; give the outcome back with [`Pass::finish`]. Dropped unfinished (the
/// caller gave up waiting), it frees its slot and, if it was the probe, lets another probe go.
#[derive(Debug)]
pub struct Pass<'a> {
    guard: &'a UpstreamGuard,
    _slot: OwnedSemaphorePermit,
    probe: bool,
    finished: bool,
}

impl UpstreamGuard {
    pub fn new(config: GuardConfig) -> UpstreamGuard {
        UpstreamGuard {
            slots: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            config,
            breaker: Mutex::new(Breaker::default()),
        }
    }

    fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A pass for one call to `endpoint`, or the reason it may not be made now.
    pub fn enter(&self, endpoint: Endpoint) -> Result<Pass<'_>, FluenceError> {
        let probe = {
            let mut breaker = self.breaker();
            match breaker.open_until {
                None => false,
                Some(until) if Instant::now() < until || breaker.probe_out => {
                    return Err(FluenceError::HeldBack {
                        endpoint,
                        reason: HeldBack::CircuitOpen,
                    });
                }
                Some(_) => {
                    breaker.probe_out = true;
                    true
                }
            }
        };
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => Ok(Pass {
                guard: self,
                _slot: slot,
                probe,
                finished: false,
            }),
            Err(_) => {
                if probe {
                    self.breaker().probe_out = false;
                }
                Err(FluenceError::HeldBack {
                    endpoint,
                    reason: HeldBack::Saturated {
                        limit: self.config.max_in_flight,
                    },
                })
            }
        }
    }

    /// Calls out now.
    pub fn in_flight(&self) -> usize {
        self.config
            .max_in_flight
            .max(1)
            .saturating_sub(self.slots.available_permits())
    }

    /// Whether calls are being refused by the breaker.
    pub fn is_open(&self) -> bool {
        self.breaker().open_until.is_some()
    }

    pub fn config(&self) -> GuardConfig {
        self.config
    }

    fn record(&self, probe: bool, failed: bool) {
        let mut breaker = self.breaker();
        if probe {
            breaker.probe_out = false;
        }
        if failed {
            breaker.consecutive_failures = breaker.consecutive_failures.saturating_add(1);
            let was_open = breaker.open_until.is_some();
            if probe || breaker.consecutive_failures >= self.config.failures {
                breaker.open_until = Some(Instant::now() + self.config.open_for);
                if !was_open {
                    tracing::warn!(
                        failures = breaker.consecutive_failures,
                        open_secs = self.config.open_for.as_secs(),
                        "Fluence keeps failing; calls are held back until a probe succeeds"
                    );
                }
            }
        } else {
            breaker.consecutive_failures = 0;
            if breaker.open_until.take().is_some() {
                tracing::info!("Fluence answers again; calls resume");
            }
        }
    }
}

/// Whether a call's outcome counts against Fluence's health: no answer, or a 5xx. A 4xx or an
/// odd body is still an answer, and a refusal by the guard itself says nothing new.
fn is_failure<T>(result: &Result<T, FluenceError>) -> bool {
    match result {
        Ok(_) => false,
        Err(FluenceError::Transport { .. }) => true,
        Err(FluenceError::Status { status, .. }) => *status >= 500,
        Err(FluenceError::Decode { .. } | FluenceError::HeldBack { .. }) => false,
    }
}

impl Pass<'_> {
    pub fn finish<T>(mut self, result: &Result<T, FluenceError>) {
        self.finished = true;
        self.guard.record(self.probe, is_failure(result));
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if !self.finished && self.probe {
            self.guard.breaker().probe_out = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure() -> Result<(), FluenceError> {
        Err(FluenceError::Status {
            endpoint: Endpoint::ListVms,
            status: 503,
            message: None,
        })
    }

    fn guard(max_in_flight: usize, failures: u32, open_for: Duration) -> UpstreamGuard {
        UpstreamGuard::new(GuardConfig {
            max_in_flight,
            failures,
            open_for,
        })
    }

    /// One call through the guard that ends with `result`.
    fn call(guard: &UpstreamGuard, result: Result<(), FluenceError>) {
        if let Ok(pass) = guard.enter(Endpoint::ListVms) {
            pass.finish(&result);
        }
    }

    fn held_back(result: Result<Pass<'_>, FluenceError>) -> Option<HeldBack> {
        match result {
            Err(FluenceError::HeldBack { reason, .. }) => Some(reason),
            _ => None,
        }
    }

    #[test]
    fn the_bulkhead_refuses_the_call_beyond_its_size_and_frees_slots() {
        let guard = guard(2, 5, Duration::from_secs(30));
        let a = guard.enter(Endpoint::ListVms).ok();
        let b = guard.enter(Endpoint::ListVms).ok();
        assert_eq!(guard.in_flight(), 2);
        assert_eq!(
            held_back(guard.enter(Endpoint::Deploy)),
            Some(HeldBack::Saturated { limit: 2 })
        );
        drop(a);
        assert!(
            guard.enter(Endpoint::Deploy).is_ok(),
            "a freed slot is reused"
        );
        drop(b);
    }

    #[test]
    fn consecutive_failures_open_the_breaker_and_a_success_resets_the_count() {
        let guard = guard(8, 3, Duration::from_secs(3600));
        for _ in 0..2 {
            call(&guard, failure());
        }
        call(&guard, Ok(()));
        for _ in 0..2 {
            call(&guard, failure());
        }
        assert!(!guard.is_open(), "the success in between reset the count");
        call(&guard, failure());
        assert!(guard.is_open());
        assert_eq!(
            held_back(guard.enter(Endpoint::Deploy)),
            Some(HeldBack::CircuitOpen)
        );
    }

    #[test]
    fn after_the_open_period_one_probe_goes_and_its_outcome_decides() {
        let guard = guard(8, 1, Duration::from_millis(20));
        call(&guard, failure());
        assert!(guard.is_open());
        std::thread::sleep(Duration::from_millis(30));
        let probe = guard.enter(Endpoint::ListVms);
        assert!(probe.is_ok(), "the probe is let through");
        assert_eq!(
            held_back(guard.enter(Endpoint::ListVms)),
            Some(HeldBack::CircuitOpen),
            "one probe at a time"
        );
        if let Ok(probe) = probe {
            probe.finish(&failure());
        }
        assert_eq!(
            held_back(guard.enter(Endpoint::ListVms)),
            Some(HeldBack::CircuitOpen),
            "a failed probe opens it again"
        );
        std::thread::sleep(Duration::from_millis(30));
        call(&guard, Ok(()));
        assert!(!guard.is_open(), "a successful probe closes it");
        assert!(guard.enter(Endpoint::Deploy).is_ok());
    }

    #[test]
    fn a_probe_abandoned_by_its_caller_lets_the_next_one_go() {
        let guard = guard(8, 1, Duration::from_millis(1));
        call(&guard, failure());
        std::thread::sleep(Duration::from_millis(5));
        drop(guard.enter(Endpoint::ListVms));
        assert!(guard.enter(Endpoint::ListVms).is_ok());
    }

    #[test]
    fn answers_that_prove_fluence_is_up_do_not_count_as_failures() {
        let guard = guard(8, 1, Duration::from_secs(3600));
        let refused: Result<(), FluenceError> = Err(FluenceError::Status {
            endpoint: Endpoint::Deploy,
            status: 422,
            message: None,
        });
        call(&guard, refused);
        assert!(!guard.is_open());
    }
}

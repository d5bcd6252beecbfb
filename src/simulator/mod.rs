//! A faithful, stateful stand-in for the Fluence v3 API (PRODUCT.md section 7).
//!
//! It serves the Fluence endpoints of `shared/fluence/api-shapes.md` with the wire types of
//! [`crate::fluence::types`], over a seeded marketplace and a virtual clock, plus a `/_sim/`
//! control API (no key) that lets tests move time, inject faults and read the ground truth.

mod catalog;
mod clock;
mod control;
mod error;
mod faults;
mod ident;
mod ips;
mod market;
mod rng;
mod routes;
mod server;
mod state;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use clock::ClockMode;
pub use state::next_billing;

use crate::domain::money::Usdc;
use faults::Faults;
use state::State;

/// When VMs are charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BillingMode {
    /// Every 24 h from creation (the 2026 docs).
    #[default]
    PerInstance,
    /// Daily at 17:55 UTC for everyone (the 2025 docs).
    Global,
}

#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// Reproduces the marketplace and the ids minted.
    pub seed: u64,
    /// Keys accepted in `X-API-KEY` or `Authorization: Bearer`.
    pub api_keys: Vec<SecretString>,
    pub clock: ClockMode,
    /// Virtual time at creation; the wall clock when `None`.
    pub start_time: Option<DateTime<Utc>>,
    pub initial_balance: Usdc,
    /// Launching -> Active, in virtual seconds (0..=600).
    pub launch_seconds: u64,
    pub billing_mode: BillingMode,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            seed: 42,
            api_keys: vec![SecretString::from("sim-key")],
            clock: ClockMode::Wall,
            start_time: None,
            initial_balance: Usdc::from_micros(10_000_000_000),
            launch_seconds: 90,
            billing_mode: BillingMode::PerInstance,
        }
    }
}

/// The simulator: cheap to clone, one shared state inside.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    faults: Mutex<Faults>,
    api_keys: Vec<SecretString>,
}

impl Simulator {
    pub fn new(config: SimulatorConfig) -> Simulator {
        let start = config.start_time.unwrap_or_else(Utc::now);
        let clock = clock::Clock::new(config.clock, start);
        let state = State::new(&config, clock);
        Simulator {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                faults: Mutex::new(Faults::default()),
                api_keys: config.api_keys,
            }),
        }
    }

    /// The Fluence endpoints and the `/_sim/` control API.
    pub fn router(&self) -> axum::Router {
        routes::router(self.clone()).merge(control::router(self.clone()))
    }

    /// Serves on the listener until `shutdown` resolves. Connections still busy (a hung
    /// request, say) get a short grace period and are then dropped.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        server::serve(self.router(), listener, shutdown).await
    }

    /// The shared state; callers bring it up to now with `sync`. A poisoned lock is still usable
    /// because every mutation keeps the state consistent at each step.
    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn faults(&self) -> MutexGuard<'_, Faults> {
        self.inner
            .faults
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A simulator serving on `127.0.0.1` in a background task.
pub struct SimulatorHandle {
    addr: SocketAddr,
    simulator: Simulator,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl SimulatorHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn simulator(&self) -> &Simulator {
        &self.simulator
    }

    /// Stops serving and waits for the server task to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SimulatorHandle {
    fn drop(&mut self) {
        // Dropping the sender also wakes the server; sending first just says it on purpose.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Binds `127.0.0.1:0` and serves a new simulator in the background.
pub async fn spawn(config: SimulatorConfig) -> std::io::Result<SimulatorHandle> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let simulator = Simulator::new(config);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(simulator.clone().serve(listener, async move {
        let _ = stopped.await;
    }));
    Ok(SimulatorHandle {
        addr,
        simulator,
        stop: Some(stop),
        task: Some(task),
    })
}

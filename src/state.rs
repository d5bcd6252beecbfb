//! Shared application state, given to handlers with `with_state`.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::auth::BootstrapToken;
use crate::config::{Settings, UpstreamMode};
use crate::fluence::FluenceClient;
use crate::http::limits::RateLimits;
use crate::store::Store;

/// Cloned for every request, by axum and by each layer that holds it, so it is one `Arc`: a
/// clone is one reference count, not one per field (a profile of a cached endpoint under load
/// had 10 % of the gateway's time in cloning and dropping the fields one by one).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub store: Store,
    pub fluence: FluenceClient,
    pub upstream: Arc<UpstreamInfo>,
    pub settings: Arc<Settings>,
    pub started_at: DateTime<Utc>,
    pub limits: Arc<RateLimits>,
    pub bootstrap: BootstrapToken,
    /// Keys read from the database recently, so that most requests read none.
    pub keys: Arc<crate::auth::cache::KeyCache>,
    /// The last readiness probe of the upstream: when, and its error if it failed. One probe
    /// at a time, shared by every `/readyz` caller meanwhile.
    pub upstream_probe: Arc<tokio::sync::Mutex<Option<ProbeOutcome>>>,
    pub jobs: Arc<crate::jobs::Jobs>,
    pub catalog: Arc<crate::deploy::catalog::CatalogCache>,
    /// Deployments waiting to be admitted, decided a batch at a time (`deploy::admissions`).
    pub admissions: crate::deploy::admissions::Admissions,
    /// Wakes the deploy worker when a deployment is submitted.
    pub deployer_wake: crate::jobs::deployer::Wake,
    /// The catalog endpoints' last answers from a fresh copy (`http::catalog`).
    pub catalog_answers: Arc<crate::http::catalog::Answers>,
    /// `GET /v1/vms` pages, kept while the inventory version they were read at stands.
    pub vm_pages: Arc<crate::http::pages::Pages>,
    /// `GET /v1/offers` answers, kept until the price sampler of this process stores a snapshot,
    /// and for a few seconds at most (a snapshot stored by another process sharing the
    /// database shows within that time).
    pub offer_pages: Arc<crate::http::pages::Pages>,
    /// `GET /v1/teams/{team}` answers, kept until this process changes a team, and for
    /// `auth.key_cache_secs` at most (a change by another process sharing the database shows
    /// within that time, as a revocation does).
    pub team_views: Arc<crate::http::pages::Pages>,
    /// The process's request and upstream-call counters, served by `GET /metrics`; the
    /// Fluence client above holds the same registry.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// When the upstream was last probed, and the error if the probe failed.
pub type ProbeOutcome = (std::time::Instant, Option<String>);

/// What the gateway talks to, as shown in `/healthz`, `/readyz` and the start-up log.
#[derive(Debug, Clone)]
pub struct UpstreamInfo {
    pub mode: UpstreamMode,
    /// Where requests go: the real API, an external simulator, or the built-in one's address.
    pub base_url: String,
}

impl UpstreamInfo {
    pub fn is_simulated(&self) -> bool {
        self.mode == UpstreamMode::Simulator
    }
}

//! Shared application state, given to handlers with `with_state`.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::auth::BootstrapToken;
use crate::config::{Settings, UpstreamMode};
use crate::fluence::FluenceClient;
use crate::http::limits::RateLimits;
use crate::store::Store;

#[derive(Clone)]
pub struct AppState {
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

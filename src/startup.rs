//! The one start-up path: [`run`] takes settings, a bound listener and a shutdown future.
//! `main` passes the configured address and SIGINT/SIGTERM; tests pass `127.0.0.1:0` and a
//! future of their own.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::BootstrapToken;
use crate::auth::cache::KeyCache;
use crate::config::{AuthSchemeSetting, Settings, SimBilling, SimClock, UpstreamMode};
use crate::fluence::guard::GuardConfig;
use crate::fluence::{AuthScheme, ClientConfig, FluenceClient};
use crate::http;
use crate::http::limits::{RateLimits, prune_periodically};
use crate::simulator::{BillingMode, ClockMode, Simulator, SimulatorConfig};
use crate::state::{AppState, Shared, UpstreamInfo};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("upstream: {0}")]
    Upstream(String),
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Serve(std::io::Error),
    #[error("recovering deployments: {0}")]
    Recovery(String),
}

/// Builds the gateway and serves it on `listener` until `shutdown` resolves, then drains:
/// in-flight requests and background work get `server.shutdown_grace_secs` to finish.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    let started = std::time::Instant::now();
    let settings = Arc::new(settings);
    let store = Store::connect(&settings.database).await?;
    store.bind_upstream_mode(settings.upstream.mode).await?;

    // Background work (the built-in simulator now, the jobs later) stops on this token.
    let background = CancellationToken::new();
    let (upstream, api_key, simulator_task) = start_upstream(&settings, &background).await?;
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let fluence = FluenceClient::new(ClientConfig {
        base_url: upstream.base_url.clone(),
        api_key,
        auth: match settings.upstream.auth_scheme {
            AuthSchemeSetting::XApiKey => AuthScheme::XApiKey,
            AuthSchemeSetting::Bearer => AuthScheme::Bearer,
        },
        connect_timeout: Duration::from_millis(settings.upstream.connect_timeout_ms),
        request_timeout: Duration::from_millis(settings.upstream.request_timeout_ms),
    })
    .map_err(|e| StartupError::Upstream(e.to_string()))?
    .with_guard(GuardConfig {
        max_in_flight: settings.upstream.max_in_flight as usize,
        failures: settings.upstream.breaker_failures,
        open_for: Duration::from_secs(settings.upstream.breaker_open_secs),
    })
    .with_metrics(metrics.clone());

    let limits = RateLimits::new(&settings.rate_limit);
    let state = AppState::new(Shared {
        store: store.clone(),
        fluence,
        upstream: Arc::new(upstream),
        settings: settings.clone(),
        started_at: Utc::now(),
        limits: limits.clone(),
        bootstrap: BootstrapToken::new(settings.secrets.admin_token.as_ref()),
        keys: Arc::new(KeyCache::new(
            Duration::from_secs(settings.auth.key_cache_secs),
            settings.auth.key_cache_entries,
        )),
        upstream_probe: Arc::default(),
        jobs: Arc::new(crate::jobs::Jobs::new(&settings.jobs)),
        catalog: Arc::default(),
        catalog_answers: Arc::default(),
        vm_pages: Arc::default(),
        admissions: Default::default(),
        deployer_wake: crate::jobs::deployer::Wake::new(settings.jobs.deployer_concurrency),
        team_views: Arc::new(crate::http::pages::Pages::with_max_age(
            Duration::from_secs(settings.auth.key_cache_secs),
        )),
        offer_pages: Arc::new(crate::http::pages::Pages::with_max_age(
            Duration::from_secs(5),
        )),
        metrics,
    });
    // Deployments a previous process was sending have an unknown outcome now; the deployer's
    // first run (right away) reconciles them and resumes everything else.
    let recovered = crate::deploy::reconcile::recover(&state)
        .await
        .map_err(|e| StartupError::Recovery(e.to_string()))?;
    if recovered > 0 {
        tracing::warn!(
            recovered,
            "deployments left mid-deploy by a previous run will be reconciled"
        );
    }
    let jobs = crate::jobs::spawn(&state, &background);
    let pruner = tokio::spawn(prune_periodically(
        limits,
        Duration::from_secs(settings.rate_limit.prune_interval_secs),
        background.clone(),
    ));
    let app = http::router(
        state.clone(),
        http::Limits {
            body_bytes: settings.server.body_limit_bytes,
            request_timeout: settings.request_timeout(),
        },
    );

    let addr = listener.local_addr().map_err(StartupError::Serve)?;
    if state.upstream.is_simulated() {
        tracing::warn!(
            upstream = %state.upstream.base_url,
            "upstream is the built-in Fluence SIMULATOR: no real VM is created, no real money is spent"
        );
    }
    tracing::info!(
        listen = %addr,
        upstream_mode = state.upstream.mode.as_str(),
        upstream = %state.upstream.base_url,
        database = %settings.database.url,
        startup_ms = started.elapsed().as_millis() as u64,
        "fluence-gateway ready"
    );

    let stop = CancellationToken::new();
    let trigger = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });
    let grace = settings.shutdown_grace();
    let server = http::serve::serve(app, listener, settings.header_read_timeout(), stop.clone());
    tokio::select! {
        () = server => {},
        () = async { stop.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_secs = grace.as_secs(), "requests still open after the shutdown grace period; closing them");
        }
    }

    // Requests are drained; now background work, then the upstream it may still be using.
    background.cancel();
    let _ = pruner.await;
    for job in jobs {
        if tokio::time::timeout(grace, job).await.is_err() {
            tracing::warn!(
                "a background job did not stop within the grace period; it resumes at the next start"
            );
        }
    }
    if let Some(task) = simulator_task {
        if tokio::time::timeout(grace, task).await.is_err() {
            tracing::warn!("built-in simulator did not stop within the grace period");
        }
    }
    store.close().await;
    tracing::info!("fluence-gateway stopped");
    Ok(())
}

/// The upstream's address and the key to present to it. In simulator mode this starts the
/// built-in simulator on its own loopback listener, so the gateway reaches it over HTTP through
/// the same client it uses for Fluence: there is no second code path to drift.
async fn start_upstream(
    settings: &Settings,
    background: &CancellationToken,
) -> Result<(UpstreamInfo, SecretString, Option<JoinHandle<()>>), StartupError> {
    match settings.upstream.mode {
        UpstreamMode::Fluence => {
            let key = settings.secrets.fluence_api_key.clone().ok_or_else(|| {
                StartupError::Upstream("FLUENCE_API_KEY is required in `fluence` mode".into())
            })?;
            let info = UpstreamInfo {
                mode: UpstreamMode::Fluence,
                base_url: settings.upstream.base_url.trim_end_matches('/').to_owned(),
            };
            Ok((info, key, None))
        }
        UpstreamMode::Simulator => {
            // The simulator accepts the configured key if there is one, else a fresh random
            // key that never leaves this process.
            let key = settings.secrets.fluence_api_key.clone().unwrap_or_else(|| {
                SecretString::from(format!("sim-{}", uuid::Uuid::new_v4().simple()))
            });
            let sim = &settings.simulator;
            let config = SimulatorConfig {
                seed: sim.seed,
                api_keys: vec![key.clone()],
                clock: match sim.clock {
                    SimClock::Wall => ClockMode::Wall,
                    SimClock::Manual => ClockMode::Manual,
                },
                start_time: None,
                initial_balance: sim.initial_balance,
                launch_seconds: sim.launch_seconds,
                billing_mode: match sim.billing_mode {
                    SimBilling::PerInstance => BillingMode::PerInstance,
                    SimBilling::Global => BillingMode::Global,
                },
            };
            let listener =
                TcpListener::bind(sim.listen)
                    .await
                    .map_err(|source| StartupError::Bind {
                        what: "the built-in simulator",
                        addr: sim.listen,
                        source,
                    })?;
            let addr = listener.local_addr().map_err(StartupError::Serve)?;
            let stop = background.clone();
            let task = tokio::spawn(async move {
                let served = Simulator::new(config)
                    .serve(listener, async move { stop.cancelled().await })
                    .await;
                if let Err(error) = served {
                    tracing::error!(%error, "built-in simulator stopped");
                }
            });
            tracing::info!(%addr, "built-in simulator listening (control API under /_sim/)");
            let info = UpstreamInfo {
                mode: UpstreamMode::Simulator,
                base_url: format!("http://{addr}"),
            };
            Ok((info, key, Some(task)))
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}

//! Liveness and readiness.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

/// A successful upstream call this recent counts as a healthy upstream without a new probe.
const UPSTREAM_FRESH: chrono::TimeDelta = chrono::TimeDelta::seconds(30);
/// A readiness probe of the upstream gives up after this long.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// A probe's outcome answers `/readyz` for this long before the upstream is asked again.
const PROBE_REUSE: Duration = Duration::from_secs(5);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

/// Liveness: the process answers. Also says, unmistakably, which upstream is in use.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "alive; `upstream` says which upstream is in use")))]
async fn healthz(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": state.started_at.to_rfc3339(),
        "upstream": upstream_summary(&state),
    }))
}

/// Readiness: the database answers and the upstream answered recently (probed if not).
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "ready"), (status = 503, description = "not ready, with the failing check")))]
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let database = match state.store.ping().await {
        Ok(()) => json!({ "ok": true }),
        Err(error) => {
            tracing::warn!(%error, "readiness: database check failed");
            json!({ "ok": false, "error": "database unreachable" })
        }
    };
    let fresh = state
        .fluence
        .last_success()
        .is_some_and(|at| Utc::now() - at < UPSTREAM_FRESH);
    let probe_error = if fresh {
        None
    } else {
        probe_upstream(&state).await
    };
    let mut upstream = upstream_summary(&state);
    upstream["ok"] = json!(probe_error.is_none());
    upstream["last_success_at"] = json!(state.fluence.last_success().map(|t| t.to_rfc3339()));
    if let Some(error) = probe_error {
        upstream["error"] = json!(error);
    }
    let ready = database["ok"] == json!(true) && upstream["ok"] == json!(true);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // Each job's last run, without its detail: this endpoint is open, and a failure's detail
    // (ids, upstream errors) is for admins, at `GET /v1/jobs`.
    let jobs: Vec<Value> = state
        .jobs
        .statuses()
        .into_iter()
        .map(|job| {
            json!({
                "job": job.job,
                "last_finished_at": job.last_finished_at,
                "last_duration_ms": job.last_duration_ms,
                "last_outcome": job.last_outcome,
            })
        })
        .collect();
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": { "database": database, "upstream": upstream },
        "jobs": jobs,
    });
    (status, Json(body))
}

/// Probes the upstream, at most once per [`PROBE_REUSE`]: unauthenticated `/readyz` traffic
/// must not turn into upstream traffic, least of all while the upstream is down. Concurrent
/// callers wait for the one probe in flight and share its result.
async fn probe_upstream(state: &AppState) -> Option<String> {
    let mut last = state.upstream_probe.lock().await;
    if let Some((at, outcome)) = last.as_ref() {
        if at.elapsed() < PROBE_REUSE {
            return outcome.clone();
        }
    }
    let outcome = match tokio::time::timeout(PROBE_TIMEOUT, state.fluence.countries()).await {
        Ok(Ok(_)) => None,
        Ok(Err(error)) => {
            tracing::warn!(%error, "readiness: upstream probe failed");
            Some(error.to_string())
        }
        Err(_) => Some("upstream probe timed out".to_owned()),
    };
    *last = Some((std::time::Instant::now(), outcome.clone()));
    outcome
}

fn upstream_summary(state: &AppState) -> Value {
    let upstream = &state.upstream;
    let mut summary = json!({
        "mode": upstream.mode.as_str(),
        "simulated": upstream.is_simulated(),
        "base_url": upstream.base_url,
    });
    if upstream.is_simulated() {
        summary["notice"] = json!(
            "SIMULATOR: the built-in Fluence simulator answers every upstream call; no real VM is created and no real money is spent"
        );
    }
    summary
}

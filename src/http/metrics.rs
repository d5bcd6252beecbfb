//! `GET /metrics` and the layer that counts every request (see [`crate::metrics`]).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::metrics::{CONTENT_TYPE, Metrics, method_label};
use crate::state::AppState;

/// The route label of a request no route matched (the 404 fallback).
const UNMATCHED: &str = "unmatched";

/// Counts and times each request by its route template (never the raw path, which holds ids),
/// method and final status. It sits outside the panic, timeout and body-limit layers, so a
/// panic's 500, a timeout's 408 and a 413 are counted with the status the client got. A
/// request whose client hung up before the answer is not counted: it has no status.
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.observe_http(
        route.as_deref().unwrap_or(UNMATCHED),
        method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// The Prometheus exposition. Open like `/healthz`: it holds counts and team budget figures,
/// never a secret or an id beyond team ids. When the database cannot be read, the in-memory
/// series are still served, with `gateway_metrics_db_up 0`, so a scrape shows the outage
/// instead of failing with it.
pub async fn scrape(State(state): State<AppState>) -> Response {
    let database = match crate::metrics::read_database(&state.store).await {
        Ok(snapshot) => Some(snapshot),
        Err(error) => {
            tracing::warn!(%error, "metrics: cannot read the database");
            None
        }
    };
    let mut body = state
        .metrics
        .render(&state.jobs.statuses(), database.as_ref());
    body.push_str(&crate::metrics::render_guard(state.fluence.guard()));
    body.push_str(&crate::metrics::render_limits(&state.limits));
    body.push_str(&crate::metrics::render_key_cache(&state.keys));
    body.push_str(&crate::metrics::render_admissions(&state.admissions));
    body.push_str(&crate::metrics::render_script_commits(
        state.store.script_counts(),
    ));
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        body,
    )
        .into_response()
}

//! `Idempotency-Key` on every state-changing request (PRODUCT.md section 2): the same key with
//! the same request replays the first answer byte for byte; with a different request it is a
//! 422 `idempotency_key_reused`; while the first is still running, a 409. Keys are scoped per
//! team (admin keys: per key), so one team's key value means nothing to another.
//!
//! The request runs in a task of its own: a client that hangs up (or the request timeout)
//! cannot leave the record in flight with the work half done.

use axum::body::{Body, to_bytes};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::TimeDelta;
use sha2::{Digest, Sha256};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::idempotency::{self, Record};
use crate::store::time::now;

pub const HEADER: &str = "idempotency-key";
/// The longest key accepted.
pub const MAX_KEY_LEN: usize = 255;
/// How long an in-flight record is trusted to belong to a live request; after that (its
/// process died) the key may be claimed again. Longer than any request may run.
const LOCK: TimeDelta = TimeDelta::minutes(5);

/// What an outer layer tells the handler about the request's `Idempotency-Key`: the key within
/// its scope, and the digest of the request it was first used for.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub scoped_key: String,
    pub request_hash: String,
}

/// Keys are per team; an admin key (which has no team) is its own scope.
pub fn scope_of(principal: &Principal) -> String {
    match &principal.team {
        Some(team) => format!("team:{team}"),
        None => format!("admin:{}", principal.actor),
    }
}

pub async fn layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let changes_state = matches!(
        *request.method(),
        Method::POST | Method::PATCH | Method::DELETE | Method::PUT
    );
    // Only the deployments route knows `dry_run`; anywhere else the parameter is refused by the
    // route (or ignored), and must not switch idempotency off.
    let dry_run = request.uri().path() == "/v1/deployments"
        && request.uri().query().is_some_and(|q| {
            form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "dry_run" && v == "true")
        });
    let Some(key) = request.headers().get(HEADER).cloned() else {
        return next.run(request).await;
    };
    if !changes_state || dry_run {
        return next.run(request).await;
    }
    // The claim, the handler and the stored answer run in a task of their own, so that a
    // client that hangs up (or the request timeout) cannot drop this future between a claim
    // that committed and the work it promises: that left the key `in_flight` for LOCK, every
    // retry a 409, and nothing done (RELIABILITY.md A10 caught it).
    match tokio::spawn(run(state, key, request, next)).await {
        Ok(Ok(response) | Err(response)) => response,
        Err(error) => ApiError::internal(error).into_response(),
    }
}

async fn run(
    state: AppState,
    key: HeaderValue,
    request: Request,
    next: Next,
) -> Result<Response, Response> {
    let key = match key.to_str() {
        Ok(k)
            if !k.is_empty()
                && k.len() <= MAX_KEY_LEN
                && k.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            k.to_owned()
        }
        _ => {
            return Err(ApiError::field(
                "Idempotency-Key",
                format!("must be 1-{MAX_KEY_LEN} visible ASCII characters"),
            )
            .into_response());
        }
    };
    let (mut parts, body) = request.into_parts();
    // Authenticate first: the scope is the caller's team, and an unauthenticated request must
    // not touch idempotency records at all. The principal rides along for the handler.
    let principal = Principal::from_request_parts(&mut parts, &state)
        .await
        .map_err(IntoResponse::into_response)?;
    parts.extensions.insert(principal.clone());
    let bytes = to_bytes(body, state.settings.server.body_limit_bytes)
        .await
        .map_err(|_| ApiError::PayloadTooLarge.into_response())?;
    let scope = scope_of(&principal);
    let mut hasher = Sha256::new();
    hasher.update(parts.method.as_str().as_bytes());
    hasher.update(b" ");
    hasher.update(
        parts
            .uri
            .path_and_query()
            .map_or("", |p| p.as_str())
            .as_bytes(),
    );
    hasher.update(b"\n");
    hasher.update(&bytes);
    let request_hash = hex(&hasher.finalize());

    let at = now();
    let retention = TimeDelta::hours(
        i64::try_from(state.settings.jobs.idempotency_retention_hours).unwrap_or(24),
    );
    let claimed = async {
        let mut tx = state.store.begin_write().await?;
        match idempotency::get(&mut tx, &scope, &key, at).await? {
            Some(
                Record::Done {
                    request_hash: h, ..
                }
                | Record::InFlight {
                    request_hash: h, ..
                },
            ) if h != request_hash => {
                return Err(ApiError::IdempotencyKeyReused);
            }
            Some(Record::Done {
                status,
                content_type,
                body,
                ..
            }) => return Ok(Some(replay(status, content_type, body))),
            Some(Record::InFlight { locked_until, .. }) if locked_until > at => {
                return Err(ApiError::Conflict(
                    "A request with this Idempotency-Key is still being processed; retry shortly."
                        .into(),
                ));
            }
            _ => {}
        }
        idempotency::begin(
            &mut tx,
            &scope,
            &key,
            &request_hash,
            at,
            at + LOCK,
            at + retention,
        )
        .await?;
        tx.commit().await?;
        Ok::<_, ApiError>(None)
    }
    .await
    .map_err(IntoResponse::into_response)?;
    if let Some(replayed) = claimed {
        return Ok(replayed);
    }
    state
        .settings
        .failpoints
        .hit("idempotency.after_claim")
        .await;

    parts.extensions.insert(Claimed {
        scoped_key: format!("{scope}|{key}"),
        request_hash: request_hash.clone(),
    });
    let request = Request::from_parts(parts, Body::from(bytes));
    let store = state.store.clone();
    let task = tokio::spawn(async move {
        // The handler in a task of its own, so that a panic in it is seen here and the claim
        // is dropped (the client may retry) instead of staying in flight.
        let response = match tokio::spawn(next.run(request)).await {
            Ok(response) => response,
            Err(error) => {
                let forgotten = async {
                    let mut tx = store.begin_write().await?;
                    idempotency::forget(&mut tx, &scope, &key).await?;
                    tx.commit().await?;
                    Ok::<(), crate::store::StoreError>(())
                }
                .await;
                if let Err(error) = forgotten {
                    tracing::error!(%error, "idempotency claim of a failed request could not be dropped");
                }
                return ApiError::internal(error).into_response();
            }
        };
        let (parts, body) = response.into_parts();
        // Handlers answer with small JSON bodies; the cap only guards against a surprise.
        let bytes = to_bytes(body, 1 << 20).await.unwrap_or_default();
        let status = parts.status;
        let outcome = async {
            let mut tx = store.begin_write().await?;
            if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                // Nothing happened that a retry could duplicate; let the client try again.
                idempotency::forget(&mut tx, &scope, &key).await?;
            } else {
                let secret = parts
                    .headers
                    .get(header::CACHE_CONTROL)
                    .is_some_and(|v| v.as_bytes() == b"no-store");
                let content_type = parts
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok());
                let (content_type, body) = if secret {
                    (None, None)
                } else {
                    (content_type, Some(bytes.as_ref()))
                };
                idempotency::finish(&mut tx, &scope, &key, status.as_u16(), content_type, body)
                    .await?;
            }
            tx.commit().await?;
            Ok::<(), crate::store::StoreError>(())
        }
        .await;
        if let Err(error) = outcome {
            tracing::error!(%error, "idempotency record could not be completed; it unlocks after its lock time");
        }
        Response::from_parts(parts, Body::from(bytes))
    });
    task.await
        .map_err(|e| ApiError::internal(e).into_response())
}

fn replay(status: u16, content_type: Option<String>, body: Option<Vec<u8>>) -> Response {
    let Some(body) = body else {
        return ApiError::Conflict(
            "This Idempotency-Key's request already succeeded; its answer held a secret shown only once and was not kept."
                .into(),
        )
        .into_response();
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    if let Some(value) = content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

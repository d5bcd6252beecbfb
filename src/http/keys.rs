//! API keys: a team's member and viewer keys under `/v1/teams/{team}/keys`, and the admin keys
//! (which belong to no team) under `/v1/keys`. A secret appears once, in the answer to its
//! creation; afterwards only its prefix is shown.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{AdminPrincipal, JsonBody, Query, RequestId};
use super::page::{List, Page};
use super::teams::{ListParams, authorize_admin_on, not_found};
use crate::auth::{self, Principal, Role};
use crate::domain::team::validate_name;
use crate::error::{ApiError, FieldErrors};
use crate::state::AppState;
use crate::store::audit::{self, NewAuditEntry};
use crate::store::keys::{self, KeyRecord};
use crate::store::teams;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_key, list_keys))
        .routes(routes!(revoke_key))
        .routes(routes!(list_admin_keys))
        .routes(routes!(revoke_admin_key))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    #[schema(example = "ci-deployer")]
    pub name: String,
    /// `member` (read, deploy, change its team's VMs) or `viewer` (read only). Admin keys
    /// belong to no team and are minted with `fluence-gateway admin create-key`.
    pub role: Role,
    /// When the key stops working; must be in the future.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub team: Option<String>,
    /// The visible start of the key, for recognising it.
    pub prefix: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// `active`, `expired` or `revoked`.
    pub status: &'static str,
}

/// The creation answer: the key's view plus the secret, shown this once.
#[derive(Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key_info: KeyView,
    /// The whole key, to send as `Authorization: Bearer <key>`. It is not stored and cannot be
    /// shown again.
    #[serde(serialize_with = "expose")]
    #[schema(value_type = String)]
    pub key: SecretString,
}

fn expose<S: serde::Serializer>(secret: &SecretString, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(secret.expose_secret())
}

impl KeyView {
    pub fn of(record: KeyRecord) -> KeyView {
        let status = if record.revoked_at.is_some() {
            "revoked"
        } else if !auth::is_active(&record, Utc::now()) {
            "expired"
        } else {
            "active"
        };
        KeyView {
            role: record.role,
            id: record.id,
            name: record.name,
            team: record.team_id,
            prefix: record.prefix,
            expires_at: record.expires_at,
            created_at: record.created_at,
            revoked_at: record.revoked_at,
            status,
        }
    }
}

/// The answer to a key's creation, which must not be kept by any cache on the way.
pub fn created_response(record: KeyRecord, token: SecretString) -> Response {
    let mut response = (
        StatusCode::CREATED,
        axum::Json(CreatedKey {
            key_info: KeyView::of(record),
            key: token,
        }),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Mint a member or viewer key for a team.
#[utoipa::path(post, path = "/v1/teams/{team}/keys", tag = "keys", request_body = CreateKey,
    params(("team" = String, Path, description = "team id")),
    responses((status = 201, body = CreatedKey), (status = 404), (status = 422)),
    security(("bearer" = [])))]
async fn create_key(
    State(state): State<AppState>,
    principal: Principal,
    RequestId(request_id): RequestId,
    Path(team_id): Path<String>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    authorize_admin_on(&principal, &team_id)?;
    let input: CreateKey = body.parse()?;
    let now = crate::store::time::now();
    let mut problems = FieldErrors::default();
    let name = validate_name(&input.name).unwrap_or_else(|e| {
        problems.add("name", e);
        String::new()
    });
    if input.role == Role::Admin {
        problems.add(
            "role",
            "must be `member` or `viewer`; admin keys belong to no team and are minted with \
             `fluence-gateway admin create-key`",
        );
    }
    if input.expires_at.is_some_and(|at| at <= now) {
        problems.add("expires_at", "must be in the future");
    }
    problems.finish()?;

    let mut tx = state.store.begin_write().await?;
    let team = teams::get(&mut tx, &team_id).await?.ok_or_else(not_found)?;
    let (record, token) = KeyRecord::mint(
        name,
        input.role,
        Some(team.id.to_string()),
        now,
        input.expires_at,
    )
    .map_err(ApiError::internal)?;
    keys::insert(&mut tx, &record).await?;
    audit::record(
        &mut tx,
        NewAuditEntry {
            actor: &principal.actor,
            actor_role: principal.role.as_str(),
            action: "key.create",
            target_type: "key",
            target_id: &record.id,
            team_id: Some(team.id.as_str()),
            before: None,
            after: Some(record.summary()),
            request_id: request_id.as_deref(),
        },
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(created_response(record, token))
}

/// A team's keys (never their secrets).
#[utoipa::path(get, path = "/v1/teams/{team}/keys", tag = "keys",
    params(("team" = String, Path, description = "team id"), ListParams),
    responses((status = 200, body = inline(List<KeyView>)), (status = 404)),
    security(("bearer" = [])))]
async fn list_keys(
    State(state): State<AppState>,
    principal: Principal,
    Path(team_id): Path<String>,
    Query(params): Query<ListParams>,
) -> Result<axum::Json<List<KeyView>>, ApiError> {
    authorize_admin_on(&principal, &team_id)?;
    let page = Page::parse(params.limit, params.cursor.as_deref())?;
    let mut conn = state.store.pool().acquire().await?;
    let team = teams::get(&mut conn, &team_id)
        .await?
        .ok_or_else(not_found)?;
    let rows = keys::list(
        &mut conn,
        Some(team.id.as_str()),
        page.after.as_deref(),
        page.fetch(),
    )
    .await?;
    Ok(axum::Json(page.finish(rows, |k| k.id.clone(), KeyView::of)))
}

/// Revoke a team's key; it stops working on its next request.
#[utoipa::path(delete, path = "/v1/teams/{team}/keys/{key_id}", tag = "keys",
    params(("team" = String, Path, description = "team id"), ("key_id" = String, Path)),
    responses((status = 204), (status = 404)), security(("bearer" = [])))]
async fn revoke_key(
    State(state): State<AppState>,
    principal: Principal,
    RequestId(request_id): RequestId,
    Path((team_id, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    authorize_admin_on(&principal, &team_id)?;
    let mut tx = state.store.begin_write().await?;
    let team = teams::get(&mut tx, &team_id).await?.ok_or_else(not_found)?;
    revoke(
        &mut tx,
        &principal,
        request_id.as_deref(),
        Some(team.id.as_str()),
        &key_id,
    )
    .await?;
    let _forget = state.keys.forget_all_after();
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The admin keys (which belong to no team), never their secrets.
#[utoipa::path(get, path = "/v1/keys", tag = "keys", params(ListParams),
    responses((status = 200, body = inline(List<KeyView>))), security(("bearer" = [])))]
async fn list_admin_keys(
    State(state): State<AppState>,
    AdminPrincipal(_admin): AdminPrincipal,
    Query(params): Query<ListParams>,
) -> Result<axum::Json<List<KeyView>>, ApiError> {
    let page = Page::parse(params.limit, params.cursor.as_deref())?;
    let mut conn = state.store.pool().acquire().await?;
    let rows = keys::list(&mut conn, None, page.after.as_deref(), page.fetch()).await?;
    Ok(axum::Json(page.finish(rows, |k| k.id.clone(), KeyView::of)))
}

/// Revoke an admin key; it stops working on its next request.
#[utoipa::path(delete, path = "/v1/keys/{key_id}", tag = "keys",
    params(("key_id" = String, Path)),
    responses((status = 204), (status = 404)), security(("bearer" = [])))]
async fn revoke_admin_key(
    State(state): State<AppState>,
    AdminPrincipal(principal): AdminPrincipal,
    RequestId(request_id): RequestId,
    Path(key_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let mut tx = state.store.begin_write().await?;
    revoke(&mut tx, &principal, request_id.as_deref(), None, &key_id).await?;
    let _forget = state.keys.forget_all_after();
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes a key of `team` (or an admin key, for `None`) and audits it; revoking a revoked key
/// changes nothing.
async fn revoke(
    conn: &mut sqlx::SqliteConnection,
    principal: &Principal,
    request_id: Option<&str>,
    team: Option<&str>,
    key_id: &str,
) -> Result<(), ApiError> {
    let before = keys::get(conn, team, key_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("No such key.".into()))?;
    if before.revoked_at.is_some() {
        return Ok(());
    }
    let now = crate::store::time::now();
    keys::revoke(conn, key_id, now).await?;
    let after = KeyRecord {
        revoked_at: Some(now),
        ..before.clone()
    };
    audit::record(
        conn,
        NewAuditEntry {
            actor: &principal.actor,
            actor_role: principal.role.as_str(),
            action: "key.revoke",
            target_type: "key",
            target_id: key_id,
            team_id: team,
            before: Some(before.summary()),
            after: Some(after.summary()),
            request_id,
        },
        now,
    )
    .await?;
    Ok(())
}

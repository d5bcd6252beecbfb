//! `/v1/teams/{team}/keys`: a team's API keys. The secret appears once, in the answer to its
//! creation; afterwards only its prefix is shown.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{JsonBody, Query, RequestId};
use super::page::{List, Page};
use super::teams::{ListParams, require_admin, visible_team};
use crate::auth::{self, Principal, Role};
use crate::error::{ApiError, FieldError};
use crate::state::AppState;
use crate::store::audit::{self, NewAuditEntry};
use crate::store::keys::{self, KeyRecord};
use crate::store::time::new_id;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_key, list_keys))
        .routes(routes!(revoke_key))
}

const MAX_NAME_CHARS: usize = 100;

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
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key_info: KeyView,
    /// The whole key, to send as `Authorization: Bearer <key>`. It is not stored and cannot be
    /// shown again.
    pub key: String,
}

fn view(record: KeyRecord) -> KeyView {
    let now = crate::store::time::now();
    let status = if record.revoked_at.is_some() {
        "revoked"
    } else if !auth::is_active(&record, now) {
        "expired"
    } else {
        "active"
    };
    KeyView {
        role: Role::parse(&record.role).unwrap_or(Role::Viewer),
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

/// What the audit trail says of a key: never its secret or digest.
fn summary(record: &KeyRecord) -> serde_json::Value {
    json!({
        "id": record.id, "name": record.name, "role": record.role, "team": record.team_id,
        "prefix": record.prefix, "expires_at": record.expires_at, "revoked_at": record.revoked_at,
    })
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
) -> Result<(StatusCode, axum::Json<CreatedKey>), ApiError> {
    let mut tx = state.store.begin_write().await?;
    let team = visible_team(&mut tx, &principal, &team_id).await?;
    require_admin(&principal)?;
    let input: CreateKey = body.parse()?;
    let now = crate::store::time::now();
    let mut problems = Vec::new();
    let name = input.name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        problems.push(FieldError {
            field: "name".into(),
            message: format!("must be 1-{MAX_NAME_CHARS} characters with no control characters"),
        });
    }
    if input.role == Role::Admin {
        problems.push(FieldError {
            field: "role".into(),
            message: "must be `member` or `viewer`; admin keys belong to no team and are minted \
                      with `fluence-gateway admin create-key`"
                .into(),
        });
    }
    if input.expires_at.is_some_and(|at| at <= now) {
        problems.push(FieldError {
            field: "expires_at".into(),
            message: "must be in the future".into(),
        });
    }

    if !problems.is_empty() {
        return Err(ApiError::Validation(problems));
    }
    let minted = auth::mint().map_err(ApiError::internal)?;
    let record = KeyRecord {
        id: new_id("key"),
        prefix: minted.prefix,
        secret_sha256: minted.secret_sha256,
        name: name.to_owned(),
        role: input.role.as_str().to_owned(),
        team_id: Some(team.id.to_string()),
        created_at: now,
        expires_at: input.expires_at,
        revoked_at: None,
    };
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
            after: Some(summary(&record)),
            request_id: request_id.as_deref(),
        },
        now,
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedKey {
            key_info: view(record),
            key: minted.token.expose_secret().to_owned(),
        }),
    ))
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
    let page = Page::parse(params.limit, params.cursor.as_deref())?;
    let mut conn = state.store.pool().acquire().await?;
    let team = visible_team(&mut conn, &principal, &team_id).await?;
    require_admin(&principal)?;
    let rows = keys::list_for_team(
        &mut conn,
        team.id.as_str(),
        page.after.as_deref(),
        page.fetch(),
    )
    .await?;
    Ok(axum::Json(page.finish(rows, |k| k.id.clone(), view)))
}

/// Revoke a key; it stops working on its next request.
#[utoipa::path(delete, path = "/v1/teams/{team}/keys/{key_id}", tag = "keys",
    params(("team" = String, Path, description = "team id"), ("key_id" = String, Path)),
    responses((status = 204), (status = 404)), security(("bearer" = [])))]
async fn revoke_key(
    State(state): State<AppState>,
    principal: Principal,
    RequestId(request_id): RequestId,
    Path((team_id, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let mut tx = state.store.begin_write().await?;
    let team = visible_team(&mut tx, &principal, &team_id).await?;
    require_admin(&principal)?;
    let before = keys::get(&mut tx, team.id.as_str(), &key_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("No such key.".into()))?;
    if before.revoked_at.is_some() {
        return Ok(StatusCode::NO_CONTENT);
    }
    let now = crate::store::time::now();
    keys::revoke(&mut tx, &key_id, now).await?;
    let after = KeyRecord {
        revoked_at: Some(now),
        ..before.clone()
    };
    audit::record(
        &mut tx,
        NewAuditEntry {
            actor: &principal.actor,
            actor_role: principal.role.as_str(),
            action: "key.revoke",
            target_type: "key",
            target_id: &key_id,
            team_id: Some(team.id.as_str()),
            before: Some(summary(&before)),
            after: Some(summary(&after)),
            request_id: request_id.as_deref(),
        },
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

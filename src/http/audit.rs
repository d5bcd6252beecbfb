//! `GET /v1/audit`: who changed what, newest first.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{AdminPrincipal, Query};
use super::page::{List, Page};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::audit::{self, AuditEntry, AuditFilter};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_audit))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Only entries about this team.
    pub team: Option<String>,
    /// A key id, `bootstrap-admin`, `cli` or `job:<name>`.
    pub actor: Option<String>,
    /// e.g. `team.create`, `key.revoke`.
    pub action: Option<String>,
    /// e.g. `team`, `key`.
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    /// Inclusive, RFC 3339.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive, RFC 3339.
    pub to: Option<DateTime<Utc>>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditView {
    pub id: String,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub actor_role: String,
    pub action: String,
    pub target_type: String,
    pub target_id: String,
    pub team: Option<String>,
    #[schema(value_type = Object)]
    pub before: Option<Value>,
    #[schema(value_type = Object)]
    pub after: Option<Value>,
    pub request_id: Option<String>,
}

impl From<AuditEntry> for AuditView {
    fn from(entry: AuditEntry) -> AuditView {
        AuditView {
            id: entry.id,
            at: entry.at,
            actor: entry.actor,
            actor_role: entry.actor_role,
            action: entry.action,
            target_type: entry.target_type,
            target_id: entry.target_id,
            team: entry.team_id,
            before: entry.before,
            after: entry.after,
            request_id: entry.request_id,
        }
    }
}

/// The audit trail, newest first, filtered.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditParams),
    responses((status = 200, body = inline(List<AuditView>))), security(("bearer" = [])))]
async fn list_audit(
    State(state): State<AppState>,
    AdminPrincipal(_admin): AdminPrincipal,
    Query(params): Query<AuditParams>,
) -> Result<axum::Json<List<AuditView>>, ApiError> {
    let page = Page::parse(params.limit, params.cursor.as_deref())?;
    let filter = AuditFilter {
        team_id: params.team,
        actor: params.actor,
        action: params.action,
        target_type: params.target_type,
        target_id: params.target_id,
        from: params.from,
        to: params.to,
    };
    let mut conn = state.store.pool().acquire().await?;
    let rows = audit::list(&mut conn, &filter, page.after.as_deref(), page.fetch()).await?;
    Ok(axum::Json(page.finish(
        rows,
        |e| e.id.clone(),
        AuditView::from,
    )))
}

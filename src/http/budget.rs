//! `GET /v1/teams/{team}/budget`: where a team stands against its cap this period.

use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::teams::visible_team;
use crate::auth::Principal;
use crate::domain::admission::BudgetSnapshot;
use crate::domain::money::Usdc;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::budget;
use crate::store::teams::Team;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_budget))
}

/// `available = cap - spent - committed - reserved`; it is negative when a team's live VMs
/// alone already exceed its cap.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BudgetStatus {
    pub team: String,
    pub period: &'static str,
    pub period_start: DateTime<Utc>,
    pub resets_at: DateTime<Utc>,
    #[schema(value_type = String)]
    pub cap: Usdc,
    /// Charges observed this period.
    #[schema(value_type = String)]
    pub spent: Usdc,
    /// What live VMs will still be charged before the period ends (or their TTL).
    #[schema(value_type = String)]
    pub committed: Usdc,
    /// Held for deployments admitted but not yet settled.
    #[schema(value_type = String)]
    pub reserved: Usdc,
    #[schema(value_type = String)]
    pub available: Usdc,
    pub alerts_fired: Vec<u8>,
}

/// Computes a team's status at `now` from the ledger, its live VMs and its open holds.
pub async fn status_of(
    conn: &mut sqlx::SqliteConnection,
    team: &Team,
    now: DateTime<Utc>,
) -> Result<BudgetStatus, ApiError> {
    let standing = budget::standing(&mut *conn, team, now).await?;
    let BudgetSnapshot {
        cap,
        spent,
        committed,
        reserved,
    } = standing.budget;
    let available = cap
        .checked_sub(spent)
        .and_then(|a| a.checked_sub(committed))
        .and_then(|a| a.checked_sub(reserved))
        .ok_or_else(|| ApiError::internal("available amount overflows"))?;
    Ok(BudgetStatus {
        team: team.id.as_str().to_owned(),
        period: "month",
        period_start: standing.period_start,
        resets_at: standing.resets_at,
        cap,
        spent,
        committed,
        reserved,
        available,
        alerts_fired: budget::alerts_fired(conn, team.id.as_str(), standing.period_start).await?,
    })
}

/// A team's budget status.
#[utoipa::path(get, path = "/v1/teams/{team}/budget", tag = "teams",
    params(("team" = String, Path, description = "team id")),
    responses((status = 200, body = BudgetStatus), (status = 404)), security(("bearer" = [])))]
async fn get_budget(
    State(state): State<AppState>,
    principal: Principal,
    Path(team_id): Path<String>,
) -> Result<axum::Json<BudgetStatus>, ApiError> {
    // One read transaction: in WAL mode it sees one snapshot, so a settlement committing
    // meanwhile is counted either before or after, never twice or not at all.
    let mut snapshot = state.store.pool().begin().await?;
    let team = visible_team(&mut snapshot, &principal, &team_id).await?;
    let status = status_of(&mut snapshot, &team, crate::store::time::now()).await?;
    snapshot.rollback().await?;
    Ok(axum::Json(status))
}

//! `/v1/teams`: teams with their budget and quotas.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{JsonBody, Query, RequestId};
use super::page::{List, Page};
use crate::auth::Principal;
use crate::domain::money::Usdc;
use crate::domain::quota::{Quotas, resources_of};
use crate::domain::team::{TeamId, validate_alert_thresholds};
use crate::error::{ApiError, FieldError};
use crate::state::AppState;
use crate::store::audit::{self, NewAuditEntry};
use crate::store::teams::{self, Team};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_team, list_teams))
        .routes(routes!(get_team, update_team, delete_team))
}

const DEFAULT_THRESHOLDS: [u8; 3] = [50, 80, 100];
const MAX_NAME_CHARS: usize = 100;

#[derive(Debug, Serialize, ToSchema)]
pub struct TeamView {
    pub id: String,
    pub name: String,
    pub budget: BudgetView,
    /// Every quota; `null` means no limit.
    #[schema(value_type = Object)]
    pub quotas: Quotas,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BudgetView {
    /// Always `month`: a calendar month in UTC.
    pub period: &'static str,
    /// The day of the month each period starts on (1-28).
    pub period_start_day: u8,
    /// USDC per period, as a decimal string.
    #[schema(value_type = String, example = "500")]
    pub cap: Usdc,
    /// Percent of the cap at which an alert is recorded, once per period.
    pub alert_thresholds: Vec<u8>,
}

impl From<Team> for TeamView {
    fn from(team: Team) -> TeamView {
        TeamView {
            id: team.id.to_string(),
            name: team.name,
            budget: BudgetView {
                period: "month",
                period_start_day: team.period_start_day,
                cap: team.cap,
                alert_thresholds: team.alert_thresholds,
            },
            quotas: team.quotas,
            created_at: team.created_at,
            updated_at: team.updated_at,
        }
    }
}

/// The audit summary of a team: its whole public view.
fn summary(team: &Team) -> Value {
    serde_json::to_value(TeamView::from(team.clone())).unwrap_or(Value::Null)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTeam {
    /// A slug: lower-case letters, digits and single hyphens, 2-32 characters.
    #[schema(example = "ml")]
    pub id: String,
    #[schema(example = "ML Platform")]
    pub name: String,
    pub budget: BudgetInput,
    /// Any of `max_vms`, `max_vcpus`, `max_ram_gib`, `max_storage_gib`,
    /// `max_instances_per_deployment`, `max_price_per_epoch`, `allowed_countries`,
    /// `allowed_configurations`; absent or `null` means no limit.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub quotas: Option<Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetInput {
    /// Only `month` (the default).
    #[serde(default)]
    pub period: Option<String>,
    /// 1-28; default 1.
    #[serde(default)]
    pub period_start_day: Option<u8>,
    /// USDC per period, a decimal string with at most 6 decimals.
    #[schema(example = "500")]
    pub cap: String,
    /// Percents of the cap; default `[50, 80, 100]`.
    #[serde(default)]
    pub alert_thresholds: Option<Vec<u32>>,
}

/// A partial change; quotas are merged key by key (`null` lifts a limit).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTeam {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub budget: Option<BudgetPatch>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub quotas: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetPatch {
    #[serde(default)]
    pub period: Option<String>,
    #[serde(default)]
    pub period_start_day: Option<u8>,
    #[serde(default)]
    pub cap: Option<String>,
    #[serde(default)]
    pub alert_thresholds: Option<Vec<u32>>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// 1-500, default 50.
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Collects every field problem of a request before answering.
#[derive(Default)]
struct Problems(Vec<FieldError>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.0))
        }
    }
}

fn check_name(name: &str, problems: &mut Problems) {
    let chars = name.chars().count();
    if name.trim().is_empty() || chars > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        problems.add(
            "name",
            format!("must be 1-{MAX_NAME_CHARS} characters with no control characters"),
        );
    }
}

fn check_period(period: Option<&str>, start_day: Option<u8>, problems: &mut Problems) {
    if period.is_some_and(|p| p != "month") {
        problems.add("budget.period", "must be `month`");
    }
    if start_day.is_some_and(|d| !(1..=28).contains(&d)) {
        problems.add("budget.period_start_day", "must be between 1 and 28");
    }
}

fn parse_cap(cap: &str, problems: &mut Problems) -> Usdc {
    Usdc::parse(cap).unwrap_or_else(|e| {
        problems.add(
            "budget.cap",
            format!("must be a decimal string of USDC with at most 6 decimals; it {e}"),
        );
        Usdc::ZERO
    })
}

fn parse_thresholds(thresholds: &[u32], problems: &mut Problems) -> Vec<u8> {
    validate_alert_thresholds(thresholds).unwrap_or_else(|e| {
        problems.add("budget.alert_thresholds", e.to_string());
        Vec::new()
    })
}

/// Decodes and checks quotas, naming each bad one as `quotas.<name>`.
fn parse_quotas(value: Value, problems: &mut Problems) -> Quotas {
    // serde would also read a struct from a positional array; quotas are named or nothing.
    if !value.is_object() {
        problems.add("quotas", "must be an object of named quotas");
        return Quotas::default();
    }
    let quotas: Quotas = match serde_path_to_error::deserialize(&value) {
        Ok(quotas) => quotas,
        Err(error) => {
            let path = error.path().to_string();
            let field = if path == "." {
                "quotas".to_owned()
            } else {
                format!("quotas.{path}")
            };
            problems.add(field, error.into_inner().to_string());
            return Quotas::default();
        }
    };
    for (i, country) in quotas.allowed_countries.iter().flatten().enumerate() {
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
            problems.add(
                format!("quotas.allowed_countries[{i}]"),
                "must be an ISO 3166-1 alpha-2 code in upper case, e.g. DE",
            );
        }
    }
    for (i, slug) in quotas.allowed_configurations.iter().flatten().enumerate() {
        if let Err(e) = resources_of(slug, 0) {
            problems.add(format!("quotas.allowed_configurations[{i}]"), e.to_string());
        }
    }
    quotas
}

/// Loads a team the principal may see; a team key naming another team gets the same 404 as
/// an id that does not exist.
pub async fn visible_team(
    conn: &mut sqlx::SqliteConnection,
    principal: &Principal,
    team: &str,
) -> Result<Team, ApiError> {
    if !principal.can_see_team(team) {
        return Err(not_found());
    }
    teams::get(conn, team).await?.ok_or_else(not_found)
}

pub fn not_found() -> ApiError {
    ApiError::NotFound("No such team.".into())
}

pub fn require_admin(principal: &Principal) -> Result<(), ApiError> {
    if principal.is_admin() {
        Ok(())
    } else {
        Err(ApiError::Forbidden("This needs an admin key.".into()))
    }
}

/// Create a team.
#[utoipa::path(post, path = "/v1/teams", tag = "teams", request_body = CreateTeam,
    responses((status = 201, body = TeamView), (status = 409, description = "the id is taken"),
              (status = 422, description = "invalid fields")),
    security(("bearer" = [])))]
async fn create_team(
    State(state): State<AppState>,
    principal: Principal,
    RequestId(request_id): RequestId,
    body: JsonBody,
) -> Result<(StatusCode, axum::Json<TeamView>), ApiError> {
    require_admin(&principal)?;
    let input: CreateTeam = body.parse()?;
    let mut problems = Problems::default();
    let id = TeamId::parse(&input.id)
        .map_err(|e| problems.add("id", e.to_string()))
        .ok();
    check_name(&input.name, &mut problems);
    check_period(
        input.budget.period.as_deref(),
        input.budget.period_start_day,
        &mut problems,
    );
    let cap = parse_cap(&input.budget.cap, &mut problems);
    let thresholds = match &input.budget.alert_thresholds {
        Some(t) => parse_thresholds(t, &mut problems),
        None => DEFAULT_THRESHOLDS.to_vec(),
    };
    let quotas = match input.quotas {
        None | Some(Value::Null) => Quotas::default(),
        Some(value) => parse_quotas(value, &mut problems),
    };
    problems.finish()?;
    // Present whenever no problem was found; the `else` only keeps this free of a panic.
    let Some(id) = id else {
        return Err(ApiError::field("id", "is not a valid team id"));
    };

    let now = crate::store::time::now();
    let team = Team {
        id,
        name: input.name,
        cap,
        period_start_day: input.budget.period_start_day.unwrap_or(1),
        alert_thresholds: thresholds,
        quotas,
        created_at: now,
        updated_at: now,
    };
    let mut tx = state.store.begin_write().await?;
    if teams::id_taken(&mut tx, &team.id).await? {
        return Err(ApiError::Conflict(format!(
            "A team with id `{}` exists or existed; team ids are never reused.",
            team.id
        )));
    }
    teams::insert(&mut tx, &team).await?;
    audit::record(
        &mut tx,
        NewAuditEntry {
            actor: &principal.actor,
            actor_role: principal.role.as_str(),
            action: "team.create",
            target_type: "team",
            target_id: team.id.as_str(),
            team_id: Some(team.id.as_str()),
            before: None,
            after: Some(summary(&team)),
            request_id: request_id.as_deref(),
        },
        now,
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, axum::Json(team.into())))
}

/// List teams: every team for an admin, its own for a team key.
#[utoipa::path(get, path = "/v1/teams", tag = "teams", params(ListParams),
    responses((status = 200, body = inline(List<TeamView>))), security(("bearer" = [])))]
async fn list_teams(
    State(state): State<AppState>,
    principal: Principal,
    Query(params): Query<ListParams>,
) -> Result<axum::Json<List<TeamView>>, ApiError> {
    let page = Page::parse(params.limit, params.cursor.as_deref())?;
    let mut conn = state.store.pool().acquire().await?;
    let rows = match &principal.team {
        None => teams::list(&mut conn, page.after.as_deref(), page.fetch()).await?,
        Some(own) => teams::get(&mut conn, own.as_str())
            .await?
            .into_iter()
            .filter(|team| {
                page.after
                    .as_deref()
                    .is_none_or(|after| team.id.as_str() > after)
            })
            .collect(),
    };
    Ok(axum::Json(page.finish(
        rows,
        |team| team.id.to_string(),
        TeamView::from,
    )))
}

/// One team.
#[utoipa::path(get, path = "/v1/teams/{team}", tag = "teams",
    params(("team" = String, Path, description = "team id")),
    responses((status = 200, body = TeamView), (status = 404)), security(("bearer" = [])))]
async fn get_team(
    State(state): State<AppState>,
    principal: Principal,
    Path(team): Path<String>,
) -> Result<axum::Json<TeamView>, ApiError> {
    let mut conn = state.store.pool().acquire().await?;
    let team = visible_team(&mut conn, &principal, &team).await?;
    Ok(axum::Json(team.into()))
}

/// Change a team's name, budget or quotas (audited).
#[utoipa::path(patch, path = "/v1/teams/{team}", tag = "teams", request_body = UpdateTeam,
    params(("team" = String, Path, description = "team id")),
    responses((status = 200, body = TeamView), (status = 404), (status = 422)),
    security(("bearer" = [])))]
async fn update_team(
    State(state): State<AppState>,
    principal: Principal,
    RequestId(request_id): RequestId,
    Path(team_id): Path<String>,
    body: JsonBody,
) -> Result<axum::Json<TeamView>, ApiError> {
    let mut tx = state.store.begin_write().await?;
    let before = visible_team(&mut tx, &principal, &team_id).await?;
    require_admin(&principal)?;
    let patch: UpdateTeam = body.parse()?;

    let mut problems = Problems::default();
    let mut after = before.clone();
    if let Some(name) = patch.name {
        check_name(&name, &mut problems);
        after.name = name;
    }
    if let Some(budget) = patch.budget {
        check_period(
            budget.period.as_deref(),
            budget.period_start_day,
            &mut problems,
        );
        if let Some(day) = budget.period_start_day {
            after.period_start_day = day;
        }
        if let Some(cap) = budget.cap {
            after.cap = parse_cap(&cap, &mut problems);
        }
        if let Some(thresholds) = budget.alert_thresholds {
            after.alert_thresholds = parse_thresholds(&thresholds, &mut problems);
        }
    }
    if let Some(changes) = patch.quotas {
        let mut merged = match serde_json::to_value(&before.quotas) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        merged.extend(changes);
        after.quotas = parse_quotas(Value::Object(merged), &mut problems);
    }
    problems.finish()?;
    if after == before {
        return Ok(axum::Json(before.into()));
    }
    let now = crate::store::time::now();
    after.updated_at = now;
    teams::update(&mut tx, &after).await?;
    audit::record(
        &mut tx,
        NewAuditEntry {
            actor: &principal.actor,
            actor_role: principal.role.as_str(),
            action: "team.update",
            target_type: "team",
            target_id: after.id.as_str(),
            team_id: Some(after.id.as_str()),
            before: Some(summary(&before)),
            after: Some(summary(&after)),
            request_id: request_id.as_deref(),
        },
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(axum::Json(after.into()))
}

/// Delete a team; refused while it has live VMs or deployments in flight. Its keys are revoked
/// and its id stays taken.
#[utoipa::path(delete, path = "/v1/teams/{team}", tag = "teams",
    params(("team" = String, Path, description = "team id")),
    responses((status = 204), (status = 404), (status = 409, description = "live VMs or deployments in flight")),
    security(("bearer" = [])))]
async fn delete_team(
    State(state): State<AppState>,
    principal: Principal,
    RequestId(request_id): RequestId,
    Path(team_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let mut tx = state.store.begin_write().await?;
    let team = visible_team(&mut tx, &principal, &team_id).await?;
    require_admin(&principal)?;
    let (vms, in_flight) = teams::live_work(&mut tx, &team.id).await?;
    if vms > 0 || in_flight > 0 {
        return Err(ApiError::Conflict(format!(
            "Team `{}` still has {vms} live VM(s) and {in_flight} deployment(s) in flight.",
            team.id
        )));
    }
    let now = crate::store::time::now();
    teams::soft_delete(&mut tx, &team.id, now).await?;
    audit::record(
        &mut tx,
        NewAuditEntry {
            actor: &principal.actor,
            actor_role: principal.role.as_str(),
            action: "team.delete",
            target_type: "team",
            target_id: team.id.as_str(),
            team_id: Some(team.id.as_str()),
            before: Some(summary(&team)),
            after: None,
            request_id: request_id.as_deref(),
        },
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

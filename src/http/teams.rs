//! `/v1/teams`: teams with their budget and quotas.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{AdminPrincipal, JsonBody, Query, RequestId, patch_field, patch_object};
use super::page::{List, Page};
use crate::auth::Principal;
use crate::domain::money::Usdc;
use crate::domain::quota::{Quotas, resources_of};
use crate::domain::team::{TeamId, validate_alert_thresholds, validate_name};
use crate::error::{ApiError, FieldErrors};
use crate::state::AppState;
use crate::store::audit::{self, NewAuditEntry};
use crate::store::teams::{self, Team};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_team, list_teams))
        .routes(routes!(get_team, update_team, delete_team))
}

const DEFAULT_THRESHOLDS: [u8; 3] = [50, 80, 100];
/// Entries an allow-list may hold.
const MAX_LIST_ENTRIES: usize = 300;
/// Quotas are stored as SQLite integers.
const MAX_QUOTA: u64 = i64::MAX as u64;

#[derive(Debug, Serialize, ToSchema)]
pub struct TeamView {
    pub id: String,
    pub name: String,
    pub budget: BudgetView,
    /// Every quota; `null` means no limit.
    #[schema(value_type = Object)]
    pub quotas: Quotas,
    pub policies: Policies,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// How the gateway treats a team's VMs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Policies {
    /// Delete VMs the provider terminated (default true): Fluence keeps their reserved
    /// balance until they are deleted.
    pub finalize_terminated: bool,
}

/// A change of policies; absent fields are left as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoliciesInput {
    #[serde(default)]
    pub finalize_terminated: Option<bool>,
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
            policies: Policies {
                finalize_terminated: team.finalize_terminated,
            },
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
    /// `max_instances_per_deployment`, `max_price_per_epoch` (a decimal string),
    /// `allowed_countries`, `allowed_configurations`; absent or `null` means no limit.
    /// Kept raw so that its problems are reported with the other fields' (and a duplicated
    /// quota is refused rather than silently overwritten).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub quotas: Option<Box<RawValue>>,
    #[serde(default)]
    pub policies: Option<PoliciesInput>,
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

/// A partial change: absent fields are left as they are. Quotas change one by one; a quota set
/// to `null` lifts that limit.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTeam {
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(value_type = Option<String>)]
    pub name: Option<Option<String>>,
    #[serde(default, deserialize_with = "patch_object")]
    #[schema(value_type = Option<BudgetPatch>)]
    pub budget: Option<Option<BudgetPatch>>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub quotas: Option<Box<RawValue>>,
    #[serde(default)]
    pub policies: Option<PoliciesInput>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetPatch {
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(value_type = Option<String>)]
    pub period: Option<Option<String>>,
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(value_type = Option<u8>)]
    pub period_start_day: Option<Option<u8>>,
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(value_type = Option<String>)]
    pub cap: Option<Option<String>>,
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(value_type = Option<Vec<u32>>)]
    pub alert_thresholds: Option<Option<Vec<u32>>>,
}

/// Each quota: absent leaves it, `null` lifts it, a value sets it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotasPatch {
    #[serde(default, deserialize_with = "patch_field")]
    max_vms: Option<Option<u64>>,
    #[serde(default, deserialize_with = "patch_field")]
    max_vcpus: Option<Option<u64>>,
    #[serde(default, deserialize_with = "patch_field")]
    max_ram_gib: Option<Option<u64>>,
    #[serde(default, deserialize_with = "patch_field")]
    max_storage_gib: Option<Option<u64>>,
    #[serde(default, deserialize_with = "patch_field")]
    max_instances_per_deployment: Option<Option<u64>>,
    #[serde(default, deserialize_with = "patch_field")]
    max_price_per_epoch: Option<Option<String>>,
    #[serde(default, deserialize_with = "patch_field")]
    allowed_countries: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "patch_field")]
    allowed_configurations: Option<Option<Vec<String>>>,
}

impl QuotasPatch {
    fn apply(self, quotas: &mut Quotas, problems: &mut FieldErrors) {
        fn set<T>(target: &mut Option<T>, change: Option<Option<T>>) {
            if let Some(value) = change {
                *target = value;
            }
        }
        set(&mut quotas.max_vms, self.max_vms);
        set(&mut quotas.max_vcpus, self.max_vcpus);
        set(&mut quotas.max_ram_gib, self.max_ram_gib);
        set(&mut quotas.max_storage_gib, self.max_storage_gib);
        set(
            &mut quotas.max_instances_per_deployment,
            self.max_instances_per_deployment,
        );
        set(&mut quotas.allowed_countries, self.allowed_countries);
        set(
            &mut quotas.allowed_configurations,
            self.allowed_configurations,
        );
        match self.max_price_per_epoch {
            None => {}
            Some(None) => quotas.max_price_per_epoch = None,
            Some(Some(text)) => match Usdc::parse(&text) {
                Ok(price) => quotas.max_price_per_epoch = Some(price),
                Err(e) => problems.add(
                    "quotas.max_price_per_epoch",
                    format!("must be a decimal string of USDC with at most 6 decimals; it {e}"),
                ),
            },
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// 1-500, default 50.
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

fn check_name(name: &str, problems: &mut FieldErrors) -> String {
    validate_name(name).unwrap_or_else(|e| {
        problems.add("name", e);
        String::new()
    })
}

fn check_period(period: Option<&str>, start_day: Option<u8>, problems: &mut FieldErrors) {
    if period.is_some_and(|p| p != "month") {
        problems.add("budget.period", "must be `month`");
    }
    if start_day.is_some_and(|d| !(1..=28).contains(&d)) {
        problems.add("budget.period_start_day", "must be between 1 and 28");
    }
}

fn parse_cap(cap: &str, problems: &mut FieldErrors) -> Usdc {
    Usdc::parse(cap).unwrap_or_else(|e| {
        problems.add(
            "budget.cap",
            format!("must be a decimal string of USDC with at most 6 decimals; it {e}"),
        );
        Usdc::ZERO
    })
}

fn parse_thresholds(thresholds: &[u32], problems: &mut FieldErrors) -> Vec<u8> {
    validate_alert_thresholds(thresholds).unwrap_or_else(|e| {
        problems.add("budget.alert_thresholds", e);
        Vec::new()
    })
}

/// Decodes a raw quotas object into `T`, naming the field at fault as `quotas.<name>`; `None`
/// for `null`, and for any problem (which is recorded).
fn decode_quotas<T: serde::de::DeserializeOwned>(
    raw: &RawValue,
    problems: &mut FieldErrors,
) -> Option<T> {
    let text = raw.get().trim_start();
    if text.starts_with("null") {
        return None;
    }
    // serde would also read a struct from a positional array; quotas are named or nothing.
    if !text.starts_with('{') {
        problems.add("quotas", "must be an object of named quotas, or null");
        return None;
    }
    match super::extract::parse_json::<T>(text.as_bytes()) {
        Ok(value) => Some(value),
        Err(ApiError::Validation(errors)) => {
            for error in errors {
                problems.add(format!("quotas.{}", error.field), error.message);
            }
            None
        }
        Err(other) => {
            problems.add("quotas", other.to_string());
            None
        }
    }
}

/// Checks quotas beyond their types, naming each bad one as `quotas.<name>[i]`; allow-lists
/// come back without duplicates.
fn check_quotas(quotas: &mut Quotas, problems: &mut FieldErrors) {
    let numbers = [
        ("max_vms", quotas.max_vms),
        ("max_vcpus", quotas.max_vcpus),
        ("max_ram_gib", quotas.max_ram_gib),
        ("max_storage_gib", quotas.max_storage_gib),
        (
            "max_instances_per_deployment",
            quotas.max_instances_per_deployment,
        ),
    ];
    for (name, value) in numbers {
        if value.is_some_and(|v| v > MAX_QUOTA) {
            problems.add(
                format!("quotas.{name}"),
                format!("must be at most {MAX_QUOTA}"),
            );
        }
    }
    for (name, list) in [
        ("allowed_countries", &mut quotas.allowed_countries),
        ("allowed_configurations", &mut quotas.allowed_configurations),
    ] {
        if let Some(list) = list {
            if list.len() > MAX_LIST_ENTRIES {
                problems.add(
                    format!("quotas.{name}"),
                    format!("may list at most {MAX_LIST_ENTRIES} entries"),
                );
            }
            let mut seen = std::collections::HashSet::new();
            list.retain(|entry| seen.insert(entry.clone()));
        }
    }
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

/// For admin-only changes to a team: 404 for a team the principal cannot see, 403 for a team
/// key on its own team. Checked before any write lock is taken or any body is read.
pub fn authorize_admin_on(principal: &Principal, team: &str) -> Result<(), ApiError> {
    if !principal.can_see_team(team) {
        return Err(not_found());
    }
    require_admin(principal)
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
    AdminPrincipal(principal): AdminPrincipal,
    RequestId(request_id): RequestId,
    body: JsonBody,
) -> Result<(StatusCode, axum::Json<TeamView>), ApiError> {
    let input: CreateTeam = body.parse()?;
    let mut problems = FieldErrors::default();
    let id = TeamId::parse(&input.id)
        .map_err(|e| problems.add("id", e.to_string()))
        .ok();
    let name = check_name(&input.name, &mut problems);
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
    let mut quotas = input
        .quotas
        .and_then(|raw| decode_quotas::<Quotas>(&raw, &mut problems))
        .unwrap_or_default();
    check_quotas(&mut quotas, &mut problems);
    problems.finish()?;
    // Present whenever no problem was found; the `else` only keeps this free of a panic.
    let Some(id) = id else {
        return Err(ApiError::field("id", "is not a valid team id"));
    };

    let now = crate::store::time::now();
    let team = Team {
        id,
        name,
        cap,
        period_start_day: input.budget.period_start_day.unwrap_or(1),
        alert_thresholds: thresholds,
        quotas,
        finalize_terminated: input
            .policies
            .and_then(|p| p.finalize_terminated)
            .unwrap_or(true),
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
    state.team_views.forget();
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
    let rows = if principal.is_admin() {
        teams::list(&mut conn, page.after.as_deref(), page.fetch()).await?
    } else {
        match &principal.team {
            Some(own) => teams::get(&mut conn, own.as_str())
                .await?
                .into_iter()
                .filter(|team| {
                    page.after
                        .as_deref()
                        .is_none_or(|after| team.id.as_str() > after)
                })
                .collect(),
            None => Vec::new(),
        }
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
) -> Result<Response, ApiError> {
    if !principal.can_see_team(&team) {
        return Err(not_found());
    }
    // Read before the row: a change committing meanwhile moves it.
    let generation = state.team_views.generation();
    if let Some(body) = state.team_views.get(&team, generation) {
        return Ok(super::encoded_json(body));
    }
    let mut conn = state.store.pool().acquire().await?;
    let found = teams::get(&mut conn, &team).await?.ok_or_else(not_found)?;
    drop(conn);
    let body = Bytes::from(serde_json::to_vec(&TeamView::from(found)).map_err(ApiError::internal)?);
    state.team_views.keep(team, generation, body.clone());
    Ok(super::encoded_json(body))
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
    authorize_admin_on(&principal, &team_id)?;
    let patch: UpdateTeam = body.parse()?;
    let mut tx = state.store.begin_write().await?;
    let before = teams::get(&mut tx, &team_id).await?.ok_or_else(not_found)?;

    let mut problems = FieldErrors::default();
    let mut after = before.clone();
    match patch.name {
        None => {}
        Some(None) => problems.add("name", "cannot be null"),
        Some(Some(name)) => after.name = check_name(&name, &mut problems),
    }
    match patch.budget {
        None => {}
        Some(None) => problems.add("budget", "cannot be null"),
        Some(Some(budget)) => {
            let required = |field: &str, problems: &mut FieldErrors| {
                problems.add(format!("budget.{field}"), "cannot be null")
            };
            match budget.period {
                Some(None) => required("period", &mut problems),
                Some(Some(period)) => check_period(Some(&period), None, &mut problems),
                None => {}
            }
            match budget.period_start_day {
                Some(None) => required("period_start_day", &mut problems),
                Some(Some(day)) => {
                    check_period(None, Some(day), &mut problems);
                    after.period_start_day = day;
                }
                None => {}
            }
            match budget.cap {
                Some(None) => required("cap", &mut problems),
                Some(Some(cap)) => after.cap = parse_cap(&cap, &mut problems),
                None => {}
            }
            match budget.alert_thresholds {
                Some(None) => required("alert_thresholds", &mut problems),
                Some(Some(t)) => after.alert_thresholds = parse_thresholds(&t, &mut problems),
                None => {}
            }
        }
    }
    if let Some(raw) = patch.quotas {
        match decode_quotas::<QuotasPatch>(&raw, &mut problems) {
            Some(changes) => changes.apply(&mut after.quotas, &mut problems),
            // `"quotas": null` lifts every limit.
            None if raw.get().trim() == "null" => after.quotas = Quotas::default(),
            None => {}
        }
    }
    if let Some(finalize) = patch.policies.and_then(|p| p.finalize_terminated) {
        after.finalize_terminated = finalize;
    }
    check_quotas(&mut after.quotas, &mut problems);
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
    state.team_views.forget();
    Ok(axum::Json(after.into()))
}

/// Delete a team; refused while it has live VMs or deployments in flight. Its keys are revoked
/// (each revocation audited) and its id stays taken.
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
    authorize_admin_on(&principal, &team_id)?;
    let mut tx = state.store.begin_write().await?;
    let team = teams::get(&mut tx, &team_id).await?.ok_or_else(not_found)?;
    let (vms, in_flight) = teams::live_work(&mut tx, &team.id).await?;
    if vms > 0 || in_flight > 0 {
        return Err(ApiError::Conflict(format!(
            "Team `{}` still has {vms} live VM(s) and {in_flight} deployment(s) in flight.",
            team.id
        )));
    }
    let now = crate::store::time::now();
    let revoked = teams::soft_delete(&mut tx, &team.id, now).await?;
    let entry = |action, target_type, target_id, before, after| NewAuditEntry {
        actor: &principal.actor,
        actor_role: principal.role.as_str(),
        action,
        target_type,
        target_id,
        team_id: Some(team.id.as_str()),
        before,
        after,
        request_id: request_id.as_deref(),
    };
    for key in &revoked {
        let after = crate::store::keys::KeyRecord {
            revoked_at: Some(now),
            ..key.clone()
        };
        let (before, after) = (key.summary(), after.summary());
        audit::record(
            &mut tx,
            entry("key.revoke", "key", &key.id, Some(before), Some(after)),
            now,
        )
        .await?;
    }
    audit::record(
        &mut tx,
        entry(
            "team.delete",
            "team",
            team.id.as_str(),
            Some(summary(&team)),
            None,
        ),
        now,
    )
    .await?;
    // Its keys were revoked with it.
    let _forget = state.keys.forget_all_after();
    tx.commit().await?;
    state.team_views.forget();
    Ok(StatusCode::NO_CONTENT)
}

//! `/v1/deployments`: submit a deploy (or dry-run it), follow it, cancel it before it is sent.
//! The request is validated whole before anything is stored; the pipeline (`deploy`) does the
//! rest in the background, so the answer is a 202 with the deployment as queued.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{JsonBody, Query, RequestId};
use super::idempotency::Claimed;
use super::page::{List, Page};
use crate::auth::Principal;
use crate::deploy::Spec;
use crate::deploy::spec::ExtraStorage;
use crate::deploy::worker::{self, estimate_json, refusals_json, upstream_refusal};
use crate::domain::deploy_input::{
    self, MAX_DEPLOYMENT_NAME_LEN, PortProtocol, validate_deployment_name,
};
use crate::domain::deployment::{PriceVerdict, Status, price_verdict, upstream_name};
use crate::domain::image::{ImageRef, parse_image};
use crate::domain::money::Usdc;
use crate::domain::quota::resources_of;
use crate::error::{ApiError, FieldErrors};
use crate::fluence::types::{HardwareFilter, Port, Protocol};
use crate::state::AppState;
use crate::store::audit::{self, NewAuditEntry};
use crate::store::deployments::{self, Changes, Deployment};
use crate::store::script::Script;
use crate::store::teams::{self, Team};
use crate::store::time::{new_id, now};
use crate::store::{budget, deployments::usage};

/// The most instances one deployment may ask for, whatever the team's quota says: a bound on
/// what one request can make the gateway (and Fluence) do.
pub const MAX_INSTANCES: i64 = 50;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_deployment, list_deployments))
        .routes(routes!(get_deployment))
        .routes(routes!(cancel_deployment))
}

/// The deploy request of PRODUCT.md section 5.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// Letters, digits and hyphens; its VMs are named `<name>-<8 characters of the id>`.
    #[schema(example = "web")]
    pub name: String,
    #[schema(example = 2)]
    pub instances: i64,
    /// A basic configuration slug; omitted means the smallest the team may use.
    #[serde(default)]
    #[schema(example = "cpu-2-ram-4gb-storage-25gb")]
    pub configuration: Option<String>,
    /// ISO alpha-2 codes; Fluence picks among them.
    #[serde(default)]
    pub countries: Option<Vec<String>>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub hardware: Option<HardwareFilter>,
    #[serde(default)]
    pub extra_storage: Option<Vec<ExtraStorageInput>>,
    /// Per VM per epoch, a decimal string. With `start_before`, a deployment whose best offer
    /// is dearer waits for a cheaper one.
    #[serde(default)]
    #[schema(example = "1.5")]
    pub max_price_per_epoch: Option<String>,
    /// A default-image slug (`GET /vms/v3/default_images`) or an `https` image URL.
    #[schema(example = "ubuntu-24-04-x64")]
    pub image: String,
    pub ssh_keys: Vec<String>,
    #[serde(default)]
    pub open_ports: Option<Vec<PortInput>>,
    /// The VMs are deleted this many hours after they are deployed.
    #[serde(default)]
    pub ttl_hours: Option<i64>,
    #[serde(default)]
    pub start_before: Option<DateTime<Utc>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtraStorageInput {
    pub gib: i64,
    /// `SSD`, `NVMe` or `HDD`.
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortInput {
    pub port: i64,
    /// `tcp` (default), `udp` or `sctp`.
    #[serde(default)]
    pub protocol: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    /// Validate, estimate and decide without storing or sending anything.
    pub dry_run: Option<bool>,
    /// For admin keys: the team to deploy for (required). Team keys deploy for their own.
    pub team: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListDeploymentsParams {
    /// Admin keys only: one team's deployments.
    pub team: Option<String>,
    pub status: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeploymentView {
    pub id: String,
    pub team: String,
    pub name: String,
    /// `queued`, `estimating`, `waiting_for_price`, `admitted`, `deploying`, `deployed`,
    /// `rejected`, `failed`, `cancelled`, `expired` or `unknown`.
    pub status: String,
    pub instances: u32,
    pub configuration: String,
    pub countries: Vec<String>,
    pub image: String,
    pub max_price_per_epoch: Option<String>,
    pub ttl_hours: Option<u32>,
    pub start_before: Option<DateTime<Utc>>,
    /// The name its VMs carry at Fluence.
    pub upstream_name: String,
    #[schema(value_type = Option<Object>)]
    pub estimate: Option<Value>,
    /// What was held against the budget: instances x price ceiling x epochs.
    pub commitment: Option<String>,
    /// The per-VM price ceiling sent to Fluence.
    pub price_ceiling: Option<String>,
    pub epochs: Option<i64>,
    /// Why it was rejected, failed, expired or is waiting: `{code, message, ...}`.
    #[schema(value_type = Option<Object>)]
    pub reason: Option<Value>,
    pub vms: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub forwarded_at: Option<DateTime<Utc>>,
    /// When its hold became its VMs' commitment, or was released.
    pub settled_at: Option<DateTime<Utc>>,
}

impl DeploymentView {
    fn of(d: Deployment, vms: Vec<String>) -> DeploymentView {
        let spec: Option<Spec> = serde_json::from_value(d.spec.clone()).ok();
        DeploymentView {
            id: d.id,
            team: d.team_id,
            name: d.name,
            status: d.status.as_str().to_owned(),
            instances: d.instances,
            configuration: d.configuration,
            countries: spec
                .as_ref()
                .map(|s| s.countries.clone())
                .unwrap_or_default(),
            image: spec.as_ref().map(|s| s.image.clone()).unwrap_or_default(),
            max_price_per_epoch: spec
                .as_ref()
                .and_then(|s| s.max_price_per_epoch)
                .map(|p| p.to_string()),
            ttl_hours: spec.as_ref().and_then(|s| s.ttl_hours),
            start_before: spec.as_ref().and_then(|s| s.start_before),
            upstream_name: d.upstream_name,
            estimate: d.estimate,
            commitment: d.commitment.map(|c| c.to_string()),
            price_ceiling: d.max_price.map(|c| c.to_string()),
            epochs: d.epochs,
            reason: d.reason,
            vms,
            created_at: d.created_at,
            updated_at: d.updated_at,
            forwarded_at: d.forwarded_at,
            settled_at: d.settled_at,
        }
    }
}

/// The answer to a dry run.
#[derive(Debug, Serialize, ToSchema)]
pub struct DryRun {
    /// `admit`, `reject` or `wait` (too expensive now, may wait until `start_before`).
    pub decision: &'static str,
    #[schema(value_type = Vec<Object>)]
    pub reasons: Vec<Value>,
    #[schema(value_type = Option<Object>)]
    pub estimate: Option<Value>,
    pub commitment: Option<String>,
    pub epochs: Option<i64>,
    #[schema(value_type = Object)]
    pub budget_after: Value,
    #[schema(value_type = Object)]
    pub quota_after: Value,
}

/// Whom a request acts for: a team key's own team, or the `?team=` an admin names.
fn target_team(principal: &Principal, team: Option<&str>) -> Result<String, ApiError> {
    match (&principal.team, team) {
        (Some(own), None) => Ok(own.as_str().to_owned()),
        (Some(own), Some(named)) if named == own.as_str() => Ok(own.as_str().to_owned()),
        (Some(_), Some(_)) => Err(super::teams::not_found()),
        (None, Some(named)) => Ok(named.to_owned()),
        (None, None) => Err(ApiError::field(
            "team",
            "admin keys must name the team to deploy for with `?team=`",
        )),
    }
}

/// Submit a deployment (202, queued), or with `?dry_run=true` see what would happen (200).
#[utoipa::path(post, path = "/v1/deployments", tag = "deployments",
    params(CreateParams), request_body = DeployRequest,
    responses((status = 202, body = DeploymentView), (status = 200, body = DryRun),
              (status = 404), (status = 409), (status = 422)),
    security(("bearer" = [])))]
async fn create_deployment(
    State(state): State<AppState>,
    principal: Principal,
    RequestId(request_id): RequestId,
    claimed: Option<Extension<Claimed>>,
    Query(params): Query<CreateParams>,
    body: JsonBody,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let dry_run = params.dry_run.unwrap_or(false);
    let team_id = target_team(&principal, params.team.as_deref())?;
    if !dry_run && !principal.can_write() {
        return Err(ApiError::Forbidden(
            "Viewer keys may only dry-run deployments.".into(),
        ));
    }
    let team = {
        let mut conn = state.store.pool().acquire().await?;
        teams::get(&mut conn, &team_id)
            .await?
            .ok_or_else(super::teams::not_found)?
    };
    let input: DeployRequest = body.parse()?;
    let spec = validate(&state, &team, input).await?;
    if dry_run {
        return Ok(axum::Json(dry_run_of(&state, &team, &spec).await?).into_response());
    }

    // Set by the idempotency layer when the request carries an `Idempotency-Key`.
    let claimed = claimed.map(|Extension(c)| c);
    let at = now();
    let id = new_id("dep");
    let per_vm = resources_of(&spec.configuration, spec.extra_storage_gib())
        .map_err(|e| ApiError::field("configuration", e.to_string()))?;
    let deployment = Deployment {
        upstream_name: upstream_name(&spec.name, &id),
        id,
        team_id: team.id.as_str().to_owned(),
        name: spec.name.clone(),
        status: Status::Queued,
        spec: serde_json::to_value(&spec).map_err(ApiError::internal)?,
        instances: spec.instances,
        configuration: spec.configuration.clone(),
        per_vm,
        estimate: None,
        max_price: None,
        commitment: None,
        epochs: None,
        reason_code: None,
        reason: None,
        idempotency_key: claimed.as_ref().map(|c| c.scoped_key.clone()),
        request_hash: claimed.as_ref().map(|c| c.request_hash.clone()),
        created_by: principal.actor.clone(),
        created_at: at,
        updated_at: at,
        forwarded_at: None,
        unknown_since: None,
        settled_at: None,
        next_check_at: None,
    };
    // The idempotency record may have been lost with a crash between this insert and the
    // record's completion; the deployment itself remembers its key, so a retry finds it: the
    // insert is made only if no deployment of the team carries the key yet.
    let since = claimed.as_ref().map(|_| at - retention(&state));
    let mut script = Script::new();
    deployments::push_insert(&mut script, &deployment, since);
    audit::push_record_of_change(
        &mut script,
        NewAuditEntry {
            actor: &principal.actor,
            actor_role: principal.role.as_str(),
            action: "deployment.create",
            target_type: "deployment",
            target_id: &deployment.id,
            team_id: Some(team.id.as_str()),
            before: None,
            after: Some(
                json!({"status": "queued", "name": spec.name, "instances": spec.instances,
                               "configuration": spec.configuration, "image": spec.image}),
            ),
            request_id: request_id.as_deref(),
        },
        at,
    );
    if state.store.run(script).await?.is_empty() {
        // Not inserted: a deployment made with the key exists, or the team was deleted.
        if let (Some(claimed), Some(since)) = (&claimed, since) {
            let mut conn = state.store.pool().acquire().await?;
            let existing = deployments::by_idempotency_key(
                &mut conn,
                team.id.as_str(),
                &claimed.scoped_key,
                since,
            )
            .await?;
            if let Some(existing) = existing {
                if existing.request_hash.as_deref() != Some(claimed.request_hash.as_str()) {
                    return Err(ApiError::IdempotencyKeyReused);
                }
                let vms = deployments::vm_ids(&mut conn, &existing.id).await?;
                return Ok((
                    StatusCode::ACCEPTED,
                    axum::Json(DeploymentView::of(existing, vms)),
                )
                    .into_response());
            }
        }
        return Err(super::teams::not_found());
    }
    if state.settings.jobs.deployer_on_submit {
        state.deployer_wake.submitted();
    }
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(DeploymentView::of(deployment, Vec::new())),
    )
        .into_response())
}

fn retention(state: &AppState) -> chrono::TimeDelta {
    chrono::TimeDelta::hours(
        i64::try_from(state.settings.jobs.idempotency_retention_hours).unwrap_or(i64::MAX / 7200),
    )
}

/// Checks every field, resolving what the request leaves to the gateway (the configuration,
/// the image's download URL). Every problem is reported at once.
async fn validate(state: &AppState, team: &Team, input: DeployRequest) -> Result<Spec, ApiError> {
    let mut problems = FieldErrors::default();
    let quotas = &team.quotas;
    let name = validate_deployment_name(&input.name).unwrap_or_else(|e| {
        problems.add("name", e);
        String::new()
    });
    let ceiling = quotas
        .max_instances_per_deployment
        .map_or(MAX_INSTANCES, |q| {
            i64::try_from(q).unwrap_or(i64::MAX).min(MAX_INSTANCES)
        });
    if !(1..=ceiling).contains(&input.instances) {
        problems.add(
            "instances",
            format!("must be between 1 and {ceiling} (the team's max_instances_per_deployment, at most {MAX_INSTANCES})"),
        );
    }
    let countries = deploy_input::validate_countries(&input.countries.unwrap_or_default())
        .unwrap_or_else(|e| {
            problems.add("countries", e);
            Vec::new()
        });
    if let Some(allowed) = &quotas.allowed_countries {
        if countries.is_empty() {
            problems.add(
                "countries",
                format!(
                    "the team may deploy only in {}; name at least one",
                    allowed.join(", ")
                ),
            );
        }
        for (i, country) in countries.iter().enumerate() {
            if !allowed.iter().any(|a| a.eq_ignore_ascii_case(country)) {
                problems.add(
                    format!("countries[{i}]"),
                    format!("{country} is not in the team's allowed_countries"),
                );
            }
        }
    }
    let extra: Vec<(i64, String)> = input
        .extra_storage
        .unwrap_or_default()
        .into_iter()
        .map(|s| (s.gib, s.kind))
        .collect();
    let extra_storage = deploy_input::validate_extra_storage(&extra).unwrap_or_else(|e| {
        problems.add("extra_storage", e);
        Vec::new()
    });
    if !extra_storage.is_empty()
        && input
            .hardware
            .as_ref()
            .and_then(|h| h.storage.as_ref())
            .is_none_or(Vec::is_empty)
    {
        problems.add(
            "hardware.storage",
            "is required with extra_storage (Fluence matches extra storage by storage type)",
        );
    }
    let max_price = input.max_price_per_epoch.as_deref().and_then(|text| {
        Usdc::parse(text)
            .map_err(|e| {
                problems.add(
                    "max_price_per_epoch",
                    format!("must be a decimal string of USDC with at most 6 decimals; it {e}"),
                );
            })
            .ok()
    });
    if max_price.is_some_and(Usdc::is_zero) {
        problems.add("max_price_per_epoch", "must be more than 0");
    }
    let ssh_keys = deploy_input::validate_ssh_keys(&input.ssh_keys).unwrap_or_else(|e| {
        problems.add("ssh_keys", e);
        Vec::new()
    });
    let ports: Vec<(i64, String)> = input
        .open_ports
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.port, p.protocol.unwrap_or_else(|| "tcp".into())))
        .collect();
    let open_ports = deploy_input::validate_ports(&ports)
        .map(|ports| ports.into_iter().map(port_of).collect())
        .unwrap_or_else(|e| {
            problems.add("open_ports", e);
            Vec::new()
        });
    let ttl_hours = input.ttl_hours.and_then(|h| {
        deploy_input::validate_ttl_hours(h)
            .map_err(|e| problems.add("ttl_hours", e))
            .ok()
    });
    let at = now();
    if input.start_before.is_some_and(|t| t <= at) {
        problems.add("start_before", "must be in the future");
    }
    if input.start_before.is_some() && max_price.is_none() {
        problems.add(
            "start_before",
            "only means something with max_price_per_epoch (it bounds the wait for a price)",
        );
    }
    let image = parse_image(&input.image)
        .map_err(|e| problems.add("image", e))
        .ok();
    if let Some(configuration) = &input.configuration {
        if let Err(e) = resources_of(configuration, 0) {
            problems.add("configuration", e.to_string());
        } else if quotas
            .allowed_configurations
            .as_ref()
            .is_some_and(|allowed| !allowed.contains(configuration))
        {
            problems.add(
                "configuration",
                "is not in the team's allowed_configurations",
            );
        }
    }
    problems.finish()?;

    // Only now, with a request that is valid on its face, ask Fluence's catalog.
    let configuration = match input.configuration {
        Some(configuration) => configuration,
        None => smallest_configuration(state, team).await?,
    };
    let (image, os_image) = match image {
        Some(ImageRef::Url(url)) => (url.clone(), url),
        Some(ImageRef::Slug(slug)) => {
            let images = state
                .catalog
                .default_images(&state.fluence)
                .await
                .map_err(unavailable)?;
            let Some(found) = images.iter().find(|i| i.slug == slug) else {
                let known: Vec<&str> = images.iter().map(|i| i.slug.as_str()).collect();
                return Err(ApiError::field(
                    "image",
                    format!("is not a default image; known slugs: {}", known.join(", ")),
                ));
            };
            (slug.clone(), found.download_url.clone())
        }
        None => return Err(ApiError::field("image", "is required")),
    };
    let instances = u32::try_from(input.instances)
        .map_err(|_| ApiError::field("instances", "is out of range"))?;
    debug_assert!(name.len() <= MAX_DEPLOYMENT_NAME_LEN);
    Ok(Spec {
        name,
        instances,
        configuration,
        countries,
        hardware: input.hardware,
        extra_storage: extra_storage
            .into_iter()
            .map(|(gib, kind)| ExtraStorage { gib, kind })
            .collect(),
        max_price_per_epoch: max_price,
        image,
        os_image,
        ssh_keys,
        open_ports,
        ttl_hours,
        start_before: input.start_before,
    })
}

fn port_of((port, protocol): (u16, PortProtocol)) -> Port {
    Port {
        port,
        protocol: match protocol {
            PortProtocol::Tcp => Protocol::Tcp,
            PortProtocol::Udp => Protocol::Udp,
            PortProtocol::Sctp => Protocol::Sctp,
        },
    }
}

fn unavailable(error: String) -> ApiError {
    tracing::warn!(%error, "Fluence catalog unavailable");
    ApiError::UpstreamUnavailable(
        "Fluence's catalog cannot be read right now; nothing was stored. Retry later.".into(),
    )
}

/// The smallest configuration the team may use: of its allow-list, or else of Fluence's.
async fn smallest_configuration(state: &AppState, team: &Team) -> Result<String, ApiError> {
    let candidates = match &team.quotas.allowed_configurations {
        Some(allowed) => allowed.clone(),
        None => state
            .catalog
            .configurations(&state.fluence)
            .await
            .map_err(unavailable)?,
    };
    candidates
        .into_iter()
        .filter_map(|slug| resources_of(&slug, 0).ok().map(|r| (r, slug)))
        .min_by_key(|(r, slug)| (r.vcpus, r.ram_gib, r.storage_gib, slug.clone()))
        .map(|(_, slug)| slug)
        .ok_or_else(|| {
            ApiError::field(
                "configuration",
                "no configuration is available to this team; name one",
            )
        })
}

/// The dry run: the same estimate and admission rule as the worker, on a read snapshot.
async fn dry_run_of(state: &AppState, team: &Team, spec: &Spec) -> Result<DryRun, ApiError> {
    let estimate = match state.fluence.estimate(&spec.estimate_request()).await {
        Ok(estimate) => estimate,
        Err(error) if error.is_definite_rejection() && error.status() != Some(429) => {
            let (_, reason) = upstream_refusal(&error);
            let mut conn = state.store.pool().begin().await?;
            let standing = budget::standing(&mut conn, team, now()).await?;
            let used = usage(&mut conn, team.id.as_str()).await?;
            conn.rollback().await?;
            return Ok(DryRun {
                decision: "reject",
                reasons: vec![reason],
                estimate: None,
                commitment: None,
                epochs: None,
                budget_after: budget_json(&standing.budget, Usdc::ZERO),
                quota_after: quota_json(team, &used),
            });
        }
        Err(error) => {
            tracing::warn!(%error, "estimate for a dry run failed");
            return Err(ApiError::UpstreamUnavailable(
                "Fluence's estimate is unavailable right now. Retry later.".into(),
            ));
        }
    };
    let price = estimate.max_price_per_epoch;
    let at = now();
    let may_wait = spec.start_before.is_some_and(|t| at < t);
    let verdict = price_verdict(
        price.micros(),
        spec.max_price_per_epoch.map(Usdc::micros),
        may_wait,
    );
    let mut snapshot = state.store.pool().begin().await?;
    let standing = budget::standing(&mut snapshot, team, at).await?;
    let used = usage(&mut snapshot, team.id.as_str()).await?;
    snapshot.rollback().await?;
    let per_vm = resources_of(&spec.configuration, spec.extra_storage_gib())
        .map_err(|e| ApiError::field("configuration", e.to_string()))?;
    let guard = chrono::TimeDelta::seconds(
        i64::try_from(state.settings.jobs.billing_guard_secs).unwrap_or(i64::MAX),
    );
    let epochs = worker::hold_epochs(at, standing.resets_at, spec.ttl_hours, guard);
    let decision = worker::decide(spec, per_vm, &team.quotas, &standing, &used, price, epochs);
    let mut reasons = refusals_json(&decision);
    let limit = spec.max_price_per_epoch.unwrap_or(Usdc::ZERO);
    let verdict_word = match verdict {
        PriceVerdict::Proceed if decision.admitted() => "admit",
        PriceVerdict::Proceed => "reject",
        PriceVerdict::Wait => {
            reasons.push(json!({"code": "price_above_limit",
                "message": format!("best offer {price} USDC per VM per epoch is above max_price_per_epoch {limit}; it would wait until start_before")}));
            "wait"
        }
        PriceVerdict::TooExpensive => {
            reasons.push(json!({"code": "price_above_limit",
                "message": format!("best offer {price} USDC per VM per epoch is above max_price_per_epoch {limit}")}));
            "reject"
        }
    };
    let after_used = used.plus(u64::from(spec.instances), per_vm);
    Ok(DryRun {
        decision: verdict_word,
        reasons,
        estimate: Some(estimate_json(&estimate)),
        commitment: Some(decision.commitment.to_string()),
        epochs: Some(epochs),
        budget_after: budget_json(&standing.budget, decision.commitment),
        quota_after: quota_json(team, &after_used),
    })
}

fn budget_json(budget: &crate::domain::admission::BudgetSnapshot, held: Usdc) -> Value {
    let reserved = budget.reserved.checked_add(held).unwrap_or(budget.reserved);
    let available = budget.available() - i128::from(held.micros());
    json!({
        "cap": budget.cap.to_string(),
        "spent": budget.spent.to_string(),
        "committed": budget.committed.to_string(),
        "reserved": reserved.to_string(),
        "available": i64::try_from(available).map_or_else(|_| "overflow".to_owned(), |a| Usdc::from_micros(a).to_string()),
    })
}

fn quota_json(team: &Team, used: &crate::domain::quota::Usage) -> Value {
    let q = &team.quotas;
    json!({
        "vms": {"used": used.vms, "limit": q.max_vms},
        "vcpus": {"used": used.resources.vcpus, "limit": q.max_vcpus},
        "ram_gib": {"used": used.resources.ram_gib, "limit": q.max_ram_gib},
        "storage_gib": {"used": used.resources.storage_gib, "limit": q.max_storage_gib},
    })
}

/// The deployments the key may see: its team's; an admin's, all or one team's.
#[utoipa::path(get, path = "/v1/deployments", tag = "deployments",
    params(ListDeploymentsParams),
    responses((status = 200, body = List<DeploymentView>), (status = 422)),
    security(("bearer" = [])))]
async fn list_deployments(
    State(state): State<AppState>,
    principal: Principal,
    Query(params): Query<ListDeploymentsParams>,
) -> Result<axum::Json<List<DeploymentView>>, ApiError> {
    let page = Page::parse(params.limit, params.cursor.as_deref())?;
    let team = match (&principal.team, params.team.as_deref()) {
        (Some(own), None) => Some(own.as_str().to_owned()),
        (Some(own), Some(named)) if named == own.as_str() => Some(named.to_owned()),
        (Some(_), Some(_)) => return Err(super::teams::not_found()),
        (None, named) => named.map(str::to_owned),
    };
    let status = params
        .status
        .as_deref()
        .map(|s| {
            s.parse::<Status>()
                .map_err(|_| ApiError::field("status", "is not a deployment status"))
        })
        .transpose()?;
    let mut snapshot = state.store.pool().begin().await?;
    let rows = deployments::list(
        &mut snapshot,
        team.as_deref(),
        status,
        page.after.as_deref(),
        page.fetch(),
    )
    .await?;
    let mut with_vms = Vec::with_capacity(rows.len());
    for row in rows {
        let vms = deployments::vm_ids(&mut snapshot, &row.id).await?;
        with_vms.push((row, vms));
    }
    snapshot.rollback().await?;
    Ok(axum::Json(page.finish(
        with_vms,
        |(d, _)| d.id.clone(),
        |(d, vms)| DeploymentView::of(d, vms),
    )))
}

fn deployment_not_found() -> ApiError {
    ApiError::NotFound("No such deployment.".into())
}

async fn visible_deployment(
    conn: &mut sqlx::SqliteConnection,
    principal: &Principal,
    id: &str,
) -> Result<Deployment, ApiError> {
    match deployments::get(conn, id).await? {
        Some(d) if principal.can_see_team(&d.team_id) => Ok(d),
        _ => Err(deployment_not_found()),
    }
}

/// One deployment: status, estimate, commitment, VMs, reason.
#[utoipa::path(get, path = "/v1/deployments/{id}", tag = "deployments",
    params(("id" = String, Path, description = "deployment id")),
    responses((status = 200, body = DeploymentView), (status = 404)),
    security(("bearer" = [])))]
async fn get_deployment(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<axum::Json<DeploymentView>, ApiError> {
    let mut snapshot = state.store.pool().begin().await?;
    let deployment = visible_deployment(&mut snapshot, &principal, &id).await?;
    let vms = deployments::vm_ids(&mut snapshot, &deployment.id).await?;
    snapshot.rollback().await?;
    Ok(axum::Json(DeploymentView::of(deployment, vms)))
}

/// Cancel a deployment that has not been sent to Fluence yet; its hold is released.
#[utoipa::path(post, path = "/v1/deployments/{id}/cancel", tag = "deployments",
    params(("id" = String, Path, description = "deployment id")),
    responses((status = 200, body = DeploymentView), (status = 404), (status = 409)),
    security(("bearer" = [])))]
async fn cancel_deployment(
    State(state): State<AppState>,
    principal: Principal,
    RequestId(request_id): RequestId,
    Path(id): Path<String>,
) -> Result<axum::Json<DeploymentView>, ApiError> {
    {
        let mut conn = state.store.pool().acquire().await?;
        visible_deployment(&mut conn, &principal, &id).await?;
    }
    if !principal.can_write() {
        return Err(ApiError::Forbidden("Viewer keys cannot cancel.".into()));
    }
    let at = now();
    let mut tx = state.store.begin_write().await?;
    let before = visible_deployment(&mut tx, &principal, &id).await?;
    let cancellable = [
        Status::Queued,
        Status::Estimating,
        Status::WaitingForPrice,
        Status::Admitted,
    ];
    let moved = deployments::transition(
        &mut tx,
        &id,
        &cancellable,
        Status::Cancelled,
        Changes {
            reason: Some((
                "cancelled".into(),
                json!({"code": "cancelled", "message": format!("cancelled by {}", principal.actor)}),
            )),
            settled_at: Some(at),
            ..Changes::default()
        },
        at,
    )
    .await?;
    if !moved {
        return Err(ApiError::Conflict(format!(
            "The deployment is {}; only a deployment not yet sent to Fluence can be cancelled.",
            before.status
        )));
    }
    deployments::release_hold(&mut tx, &id, at).await?;
    audit::record(
        &mut tx,
        NewAuditEntry {
            actor: &principal.actor,
            actor_role: principal.role.as_str(),
            action: "deployment.cancel",
            target_type: "deployment",
            target_id: &id,
            team_id: Some(&before.team_id),
            before: Some(json!({"status": before.status})),
            after: Some(json!({"status": "cancelled"})),
            request_id: request_id.as_deref(),
        },
        at,
    )
    .await?;
    let after = deployments::get(&mut tx, &id)
        .await?
        .ok_or_else(deployment_not_found)?;
    tx.commit().await?;
    Ok(axum::Json(DeploymentView::of(after, Vec::new())))
}

//! `/v1/vms`: the inventory, served from SQLite (team-scoped; admins see every VM, unowned ones
//! included), and the two changes a team may make: rename and ports (`PATCH`), delete.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{JsonBody, Query, RequestId};
use super::page::{List, Page};
use crate::auth::Principal;
use crate::domain::deploy_input::{self, PortProtocol, validate_deployment_name};
use crate::domain::ids::VmId;
use crate::domain::ports::{PortChange, next_ports};
use crate::error::{ApiError, FieldErrors};
use crate::fluence::FluenceError;
use crate::fluence::types::{PatchVmsRequest, Port, Protocol, VmUpdate};
use crate::state::AppState;
use crate::store::audit::{self, NewAuditEntry};
use crate::store::time::now;
use crate::store::vms::{self, Owner, VmRecord};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_vms))
        .routes(routes!(get_vm, update_vm, delete_vm))
        .routes(routes!(list_vm_events))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VmEventView {
    pub at: DateTime<Utc>,
    /// `status_changed`, `terminated_by_provider`, `discovered_unowned`, `disappeared`,
    /// `delete_requested` (a deletion is being asked of Fluence), `deleted`.
    pub kind: String,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub detail: Value,
}

/// What happened to a VM, as the inventory sync saw it, oldest first.
#[utoipa::path(get, path = "/v1/vms/{id}/events", tag = "vms",
    params(("id" = String, Path, description = "Fluence's VM id"), super::teams::ListParams),
    responses((status = 200, body = List<VmEventView>), (status = 404)), security(("bearer" = [])))]
async fn list_vm_events(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Query(params): Query<super::teams::ListParams>,
) -> Result<axum::Json<List<VmEventView>>, ApiError> {
    let page = Page::parse(params.limit, params.cursor.as_deref())?;
    let after = match page.after.as_deref() {
        None => None,
        Some(text) => Some(
            text.parse::<i64>()
                .map_err(|_| ApiError::field("cursor", "is not a cursor this API returned"))?,
        ),
    };
    let mut conn = state.store.pool().acquire().await?;
    let vm = visible_vm(&mut conn, &principal, &id).await?;
    let rows = vms::events(&mut conn, &vm.id, after, page.fetch()).await?;
    Ok(axum::Json(page.finish(
        rows,
        |e| e.id.to_string(),
        |e| VmEventView {
            at: e.at,
            kind: e.kind,
            from_status: e.from_status,
            to_status: e.to_status,
            detail: e.detail,
        },
    )))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VmView {
    /// Fluence's id, lower-case; compared without case.
    pub id: String,
    /// `null` for a VM created outside the gateway (shown to admins only).
    pub team: Option<String>,
    pub deployment_id: Option<String>,
    pub name: String,
    /// Fluence's status (`New`, `Launching`, `Active`, `SmallBalance`, `InsufficientFunds`,
    /// `Terminated`, `Stopped`), or `Deleted` once removed.
    pub status: String,
    pub public_ip: Option<String>,
    pub price_per_epoch: String,
    pub total_spent: String,
    pub reserved_balance: String,
    pub next_billing_at: Option<DateTime<Utc>>,
    pub configuration: Option<String>,
    pub vcpus: i64,
    pub ram_gib: i64,
    pub storage_gib: i64,
    #[schema(value_type = Option<Object>)]
    pub datacenter: Value,
    #[schema(value_type = Vec<Object>)]
    pub open_ports: Value,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    /// When the provider terminated it.
    pub terminated_at: Option<DateTime<Utc>>,
}

impl VmView {
    fn of(vm: VmRecord) -> VmView {
        VmView {
            id: vm.id,
            team: vm.team_id,
            deployment_id: vm.deployment_id,
            name: vm.name,
            status: vm.status,
            public_ip: vm.public_ip,
            price_per_epoch: vm.price_per_epoch.to_string(),
            total_spent: vm.total_spent.to_string(),
            reserved_balance: vm.reserved_balance.to_string(),
            next_billing_at: vm.next_billing_at,
            configuration: vm.configuration,
            vcpus: vm.vcpus,
            ram_gib: vm.ram_gib,
            storage_gib: vm.storage_gib,
            datacenter: vm.datacenter,
            open_ports: if vm.open_ports.is_null() {
                json!([])
            } else {
                vm.open_ports
            },
            created_at: vm.created_at,
            expires_at: vm.expires_at,
            deleted_at: vm.deleted_at,
            terminated_at: vm.terminated_at,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListVmsParams {
    /// Admin keys: one team's VMs.
    pub team: Option<String>,
    /// Admin keys: only VMs created outside the gateway.
    pub unowned: Option<bool>,
    pub status: Option<String>,
    /// Include deleted VMs (default false).
    pub include_deleted: Option<bool>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// The VMs the key may see, by id.
#[utoipa::path(get, path = "/v1/vms", tag = "vms", params(ListVmsParams),
    responses((status = 200, body = List<VmView>), (status = 422)), security(("bearer" = [])))]
async fn list_vms(
    State(state): State<AppState>,
    principal: Principal,
    Query(params): Query<ListVmsParams>,
) -> Result<Response, ApiError> {
    let page = Page::parse(params.limit, params.cursor.as_deref())?;
    let owner = match (&principal.team, params.team.as_deref(), params.unowned) {
        (Some(_), _, Some(true)) => return Err(super::teams::not_found()),
        (Some(own), None, _) => Owner::Team(own.as_str()),
        (Some(own), Some(named), _) if named == own.as_str() => Owner::Team(own.as_str()),
        (Some(_), Some(_), _) => return Err(super::teams::not_found()),
        (None, Some(_), Some(true)) => {
            return Err(ApiError::field("unowned", "cannot be combined with team"));
        }
        (None, _, Some(true)) => Owner::Unowned,
        (None, Some(named), _) => Owner::Team(named),
        (None, None, _) => Owner::Any,
    };
    let status = params.status.as_deref();
    let include_deleted = params.include_deleted.unwrap_or(false);
    // Everything the rows depend on; the key's role only through `owner`.
    let request = format!(
        "{owner:?} {status:?} {include_deleted} {:?} {}",
        page.after, page.limit
    );
    let mut conn = state.store.pool().acquire().await?;
    let version = vms::inventory_version(&mut conn).await?;
    if let Some(body) = state.vm_pages.get(&request, version) {
        return Ok(super::encoded_json(body));
    }
    let rows = vms::list(
        &mut conn,
        owner,
        status,
        include_deleted,
        page.after.as_deref(),
        page.fetch(),
    )
    .await?;
    drop(conn);
    let answer = page.finish(rows, |vm| vm.id.clone(), VmView::of);
    let body = Bytes::from(serde_json::to_vec(&answer).map_err(ApiError::internal)?);
    state.vm_pages.keep(request, version, body.clone());
    Ok(super::encoded_json(body))
}

fn vm_not_found() -> ApiError {
    ApiError::NotFound("No such VM.".into())
}

/// A VM the principal may see: its team's, or any for an admin. A foreign or unowned VM is the
/// 404 of an id that does not exist.
async fn visible_vm(
    conn: &mut sqlx::SqliteConnection,
    principal: &Principal,
    id: &str,
) -> Result<VmRecord, ApiError> {
    let vm = vms::get(conn, &VmId::new(id).canonical())
        .await?
        .ok_or_else(vm_not_found)?;
    let visible = match (&principal.team, &vm.team_id) {
        (None, _) => true,
        (Some(own), Some(team)) => own.as_str() == team,
        (Some(_), None) => false,
    };
    if visible { Ok(vm) } else { Err(vm_not_found()) }
}

/// One VM.
#[utoipa::path(get, path = "/v1/vms/{id}", tag = "vms",
    params(("id" = String, Path, description = "Fluence's VM id, any letter case")),
    responses((status = 200, body = VmView), (status = 404)), security(("bearer" = [])))]
async fn get_vm(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<axum::Json<VmView>, ApiError> {
    let mut conn = state.store.pool().acquire().await?;
    Ok(axum::Json(VmView::of(
        visible_vm(&mut conn, &principal, &id).await?,
    )))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateVm {
    pub name: Option<String>,
    /// The full list wanted (22/tcp is kept unless `allow_closing_ssh`).
    pub open_ports: Option<Vec<PortEntry>>,
    pub add_ports: Option<Vec<PortEntry>>,
    pub remove_ports: Option<Vec<PortEntry>>,
    /// Consent to a set without 22/tcp (logged and audited).
    #[serde(default)]
    pub allow_closing_ssh: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortEntry {
    pub port: i64,
    /// `tcp` (default), `udp` or `sctp`.
    pub protocol: Option<String>,
}

fn ports_of(
    field: &str,
    entries: Option<Vec<PortEntry>>,
    problems: &mut FieldErrors,
) -> Vec<(u16, PortProtocol)> {
    let entries: Vec<(i64, String)> = entries
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.port, p.protocol.unwrap_or_else(|| "tcp".into())))
        .collect();
    deploy_input::validate_ports(&entries).unwrap_or_else(|e| {
        problems.add(field, e);
        Vec::new()
    })
}

/// The ports a VM has, from its last listing or the gateway's last change of them. Unknown
/// (never listed, nothing recorded) counts as 22/tcp alone; an empty set is empty: SSH was
/// closed on request, and an edit must not open it again unasked.
fn current_ports(vm: &VmRecord) -> Vec<(u16, PortProtocol)> {
    if vm.open_ports.is_null() {
        return vec![crate::domain::ports::SSH];
    }
    let listed: Vec<Port> = serde_json::from_value(vm.open_ports.clone()).unwrap_or_default();
    listed.iter().map(port_of).collect()
}

fn port_of(port: &Port) -> (u16, PortProtocol) {
    let protocol = match port.protocol {
        Protocol::Tcp => PortProtocol::Tcp,
        Protocol::Udp => PortProtocol::Udp,
        Protocol::Sctp => PortProtocol::Sctp,
    };
    (port.port, protocol)
}

fn wire_ports(ports: &[(u16, PortProtocol)]) -> Vec<Port> {
    ports
        .iter()
        .map(|(port, protocol)| Port {
            port: *port,
            protocol: match protocol {
                PortProtocol::Tcp => Protocol::Tcp,
                PortProtocol::Udp => Protocol::Udp,
                PortProtocol::Sctp => Protocol::Sctp,
            },
        })
        .collect()
}

/// What a failed change at Fluence means for the client; its body is never passed on.
fn upstream_error(action: &str, error: &FluenceError) -> ApiError {
    if error.is_ambiguous() {
        ApiError::UpstreamUnavailable(format!(
            "Fluence did not confirm the {action}; it may or may not have happened. Retrying is safe."
        ))
    } else if error.is_definite_rejection() {
        ApiError::UpstreamRejected(format!(
            "Fluence refused the {action} (status {}); nothing was changed.",
            error.status().unwrap_or_default()
        ))
    } else {
        ApiError::UpstreamUnavailable(format!(
            "Fluence could not be reached for the {action}; nothing was changed."
        ))
    }
}

/// Rename a VM and change its open ports. The full port set sent to Fluence is computed here:
/// 22/tcp stays open unless `allow_closing_ssh` is true; 10250 is refused.
#[utoipa::path(patch, path = "/v1/vms/{id}", tag = "vms",
    params(("id" = String, Path, description = "Fluence's VM id")), request_body = UpdateVm,
    responses((status = 200, body = VmView), (status = 404), (status = 422), (status = 502), (status = 503)),
    security(("bearer" = [])))]
async fn update_vm(
    State(state): State<AppState>,
    principal: Principal,
    RequestId(request_id): RequestId,
    Path(id): Path<String>,
    body: JsonBody,
) -> Result<axum::Json<VmView>, ApiError> {
    let vm = {
        let mut conn = state.store.pool().acquire().await?;
        visible_vm(&mut conn, &principal, &id).await?
    };
    if !principal.can_write() {
        return Err(ApiError::Forbidden("Viewer keys cannot change VMs.".into()));
    }
    if vm.deleted_at.is_some() {
        return Err(ApiError::Conflict("The VM is deleted.".into()));
    }
    let input: UpdateVm = body.parse()?;
    let mut problems = FieldErrors::default();
    let name = input.name.as_deref().map(|name| {
        validate_deployment_name(name).unwrap_or_else(|e| {
            problems.add("name", e);
            String::new()
        })
    });
    let edit = input.add_ports.is_some() || input.remove_ports.is_some();
    if input.open_ports.is_some() && edit {
        problems.add(
            "open_ports",
            "give either the full list or add_ports/remove_ports, not both",
        );
    }
    let replace = input.open_ports.is_some();
    let change = if replace {
        Some(PortChange::Replace(ports_of(
            "open_ports",
            input.open_ports,
            &mut problems,
        )))
    } else if edit {
        Some(PortChange::Edit {
            add: ports_of("add_ports", input.add_ports, &mut problems),
            remove: ports_of("remove_ports", input.remove_ports, &mut problems),
        })
    } else {
        None
    };
    if name.is_none() && change.is_none() {
        problems.add(
            "name",
            "nothing to change: give name, open_ports, add_ports or remove_ports",
        );
    }
    problems.finish()?;
    let current = match (&change, vm.open_ports.is_null(), &vm.deployment_id) {
        // Not listed yet: what it was deployed with is what is open.
        (Some(_), true, Some(deployment_id)) => {
            let mut conn = state.store.pool().acquire().await?;
            let spec = match crate::store::deployments::get(&mut conn, deployment_id).await? {
                Some(d) => crate::deploy::worker::spec_of(&d).ok(),
                None => None,
            };
            let mut ports: Vec<(u16, PortProtocol)> = spec
                .map(|s| s.open_ports.iter().map(port_of).collect())
                .unwrap_or_default();
            ports.push(crate::domain::ports::SSH);
            ports
        }
        _ => current_ports(&vm),
    };
    let ports = match &change {
        Some(change) => Some(
            next_ports(&current, change, input.allow_closing_ssh).map_err(|e| {
                ApiError::field(if replace { "open_ports" } else { "add_ports" }, e)
            })?,
        ),
        None => None,
    };
    let closes_ssh = ports
        .as_ref()
        .is_some_and(|p| !p.contains(&crate::domain::ports::SSH));
    if closes_ssh {
        tracing::warn!(vm = %vm.id, actor = %principal.actor, "SSH (22/tcp) closed on request");
    }

    // Fluence first: the inventory only records what Fluence accepted.
    let update = VmUpdate {
        id: VmId::new(vm.fluence_id.clone()),
        vm_name: name.clone(),
        open_ports: ports.as_deref().map(wire_ports),
    };
    state
        .fluence
        .patch_vms(&PatchVmsRequest {
            updates: vec![update],
        })
        .await
        .map_err(|e| upstream_error("change", &e))?;

    let at = now();
    let new_name = name.clone().unwrap_or_else(|| vm.name.clone());
    let sent_ports = ports.as_deref().map(|ports| json!(wire_ports(ports)));
    let new_ports = sent_ports.clone().unwrap_or_else(|| vm.open_ports.clone());
    let mut tx = state.store.begin_write().await?;
    vms::set_name_and_ports(&mut tx, &vm.id, &new_name, sent_ports.as_ref(), at).await?;
    audit::record(
        &mut tx,
        NewAuditEntry {
            actor: &principal.actor,
            actor_role: principal.role.as_str(),
            action: "vm.update",
            target_type: "vm",
            target_id: &vm.id,
            team_id: vm.team_id.as_deref(),
            before: Some(json!({"name": vm.name, "open_ports": vm.open_ports})),
            after: Some(
                json!({"name": new_name, "open_ports": new_ports, "closed_ssh": closes_ssh}),
            ),
            request_id: request_id.as_deref(),
        },
        at,
    )
    .await?;
    let updated = vms::get(&mut tx, &vm.id).await?.ok_or_else(vm_not_found)?;
    tx.commit().await?;
    Ok(axum::Json(VmView::of(updated)))
}

/// Delete a VM: at Fluence first, then in the inventory, which releases its commitment.
#[utoipa::path(delete, path = "/v1/vms/{id}", tag = "vms",
    params(("id" = String, Path, description = "Fluence's VM id")),
    responses((status = 204), (status = 404), (status = 502), (status = 503)),
    security(("bearer" = [])))]
async fn delete_vm(
    State(state): State<AppState>,
    principal: Principal,
    RequestId(request_id): RequestId,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let vm = {
        let mut conn = state.store.pool().acquire().await?;
        visible_vm(&mut conn, &principal, &id).await?
    };
    if !principal.can_write() {
        return Err(ApiError::Forbidden("Viewer keys cannot delete VMs.".into()));
    }
    if vm.deleted_at.is_some() {
        return Ok(StatusCode::NO_CONTENT);
    }
    // Its last charges first: once deleted it is gone from Fluence's list for good. A failure
    // here only delays the deletion, it changes nothing.
    crate::inventory::observe_before_delete(&state, std::slice::from_ref(&vm.id))
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "last sighting before a deletion failed");
            ApiError::UpstreamUnavailable(
                "Fluence's VM list cannot be read right now; nothing was deleted. Retry later."
                    .into(),
            )
        })?;
    // The intent, durable before the call. A process killed after Fluence deleted the VM but
    // before the deletion is recorded below would otherwise leave it shown as live (and
    // counted against the team's budget) until the inventory sync has missed it for
    // MISSING_FOR; with this event the sync records it deleted as soon as it is unlisted.
    {
        let mut tx = state.store.begin_write().await?;
        vms::event(
            &mut tx,
            &vm.id,
            vm.team_id.as_deref(),
            vms::DELETE_REQUESTED,
            Some(&vm.status),
            None,
            None,
            now(),
        )
        .await?;
        tx.commit().await?;
    }
    let fluence_id = VmId::new(vm.fluence_id.clone());
    if let Err(error) = state
        .fluence
        .delete_vms(std::slice::from_ref(&fluence_id))
        .await
    {
        // Already gone at Fluence (deleted elsewhere, or a first attempt whose answer was
        // lost): its list says so, and then the deletion is simply recorded.
        let gone = error.is_definite_rejection()
            && state
                .fluence
                .list_vms()
                .await
                .is_ok_and(|listed| listed.iter().all(|v| v.id.canonical() != vm.id));
        if !gone {
            return Err(upstream_error("deletion", &error));
        }
    }
    let at = now();
    let mut tx = state.store.begin_write().await?;
    if vms::mark_deleted(&mut tx, &vm.id, at).await? {
        vms::event(
            &mut tx,
            &vm.id,
            vm.team_id.as_deref(),
            "deleted",
            Some(&vm.status),
            Some("Deleted"),
            None,
            at,
        )
        .await?;
        audit::record(
            &mut tx,
            NewAuditEntry {
                actor: &principal.actor,
                actor_role: principal.role.as_str(),
                action: "vm.delete",
                target_type: "vm",
                target_id: &vm.id,
                team_id: vm.team_id.as_deref(),
                before: Some(json!({"status": vm.status})),
                after: Some(json!({"status": "Deleted"})),
                request_id: request_id.as_deref(),
            },
            at,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

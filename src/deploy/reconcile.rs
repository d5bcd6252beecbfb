//! Settling from Fluence's own list: deployments whose deploy answer was lost (`unknown`, or
//! `deploying` left behind by a crash) are matched by the name the gateway gave their VMs, and
//! deployed ones have their hold turned into their VMs' commitment once every VM has shown up.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;

use super::StepError;
use super::worker::{audit_step, record_deployed, record_deployed_from, spec_of, to_unknown};
use crate::domain::deployment::Status;
use crate::fluence::types::RunningInstance;
use crate::state::AppState;
use crate::store::deployments::{self, Changes, Deployment, NewVm};
use crate::store::idempotency;
use crate::store::time::now;
use crate::store::vms;

/// Fluence's VMs, grouped by name for matching.
pub struct Listing {
    by_name: HashMap<String, Vec<RunningInstance>>,
    by_id: HashMap<String, RunningInstance>,
    /// When the list was asked for: what it shows is true as of then.
    listed_at: DateTime<Utc>,
}

impl Listing {
    pub fn new(vms: Vec<RunningInstance>, listed_at: DateTime<Utc>) -> Listing {
        let mut by_name: HashMap<String, Vec<RunningInstance>> = HashMap::new();
        let mut by_id = HashMap::new();
        for vm in vms {
            by_id.insert(vm.id.canonical(), vm.clone());
            if let Some(name) = vm.vm_name.clone() {
                by_name.entry(name).or_default().push(vm);
            }
        }
        Listing {
            by_name,
            by_id,
            listed_at,
        }
    }

    fn named(&self, name: &str) -> &[RunningInstance] {
        self.by_name.get(name).map_or(&[], Vec::as_slice)
    }
}

/// The seeded bug of the crash tests' mutation check (test builds only, see `failpoint`): a
/// recovery that re-sends what was out when the process died instead of reconciling it. The
/// reliability suite's B1 must catch it as a duplicate set.
const RESEND_ON_RESTART: &str = "recovery.resend_deploying";

/// On start: a `deploying` deployment was being sent by a process that is gone, so its outcome
/// is unknown and only Fluence's list can tell; and an `Idempotency-Key` claimed by a request of
/// that process will never be completed, so it is released for the client's retry (a deploy the
/// request did store is found again by its key). Idempotent: a second run finds nothing to move.
pub async fn recover(state: &AppState) -> Result<u64, StepError> {
    let at = now();
    let mut tx = state.store.begin_write().await?;
    let released = idempotency::release_in_flight(&mut tx).await?;
    if released > 0 {
        tracing::warn!(
            released,
            "Idempotency-Key claims of a previous run released"
        );
    }
    let open = deployments::open(&mut tx).await?;
    let mut moved = 0;
    for deployment in open.iter().filter(|d| d.status == Status::Deploying) {
        if state.settings.failpoints.is_set(RESEND_ON_RESTART) {
            // The seeded bug: hand the deploy back to the worker, which sends it again.
            deployments::transition(
                &mut tx,
                &deployment.id,
                &[Status::Deploying],
                Status::Admitted,
                Changes::default(),
                at,
            )
            .await?;
            continue;
        }
        let message =
            "the gateway restarted while the deploy was out; Fluence's VM list will settle it";
        if to_unknown(&mut tx, deployment, message, "restart", at).await? {
            moved += 1;
        }
    }
    tx.commit().await?;
    Ok(moved)
}

/// How long after the deploy call an absent VM still may appear. Never shorter than the
/// upstream timeout: another process's call may still be out that long.
fn grace(state: &AppState) -> TimeDelta {
    // The configured wait, plus the longest a live call may still be out (its timeout, and the
    // write lock its answer may wait for), so that a call another process is still making is
    // never declared failed under it.
    let settings = &state.settings;
    let millis = settings
        .jobs
        .reconcile_grace_secs
        .saturating_mul(1000)
        .saturating_add(settings.upstream.request_timeout_ms)
        .saturating_add(settings.database.busy_timeout_ms);
    TimeDelta::milliseconds(i64::try_from(millis).unwrap_or(i64::MAX / 1000))
}

/// Settles an `unknown` deployment (or a `deploying` one older than any call could be).
pub async fn settle_unknown(
    state: &AppState,
    deployment: &Deployment,
    listing: &Listing,
) -> Result<Status, StepError> {
    let at = now();
    let since = deployment
        .unknown_since
        .or(deployment.forwarded_at)
        .unwrap_or(deployment.updated_at);
    let found = listing.named(&deployment.upstream_name);
    if deployment.status == Status::Deploying && since + grace(state) > at {
        // Still within the time its own call may take; leave it to that call.
        return Ok(Status::Deploying);
    }
    if !found.is_empty() {
        adopt(state, deployment, found).await?;
        return Ok(Status::Deployed);
    }
    if since + grace(state) > at {
        return Ok(deployment.status);
    }
    let reason = json!({"code": "not_created",
        "message": "the deploy's answer was lost and none of its VMs appeared in Fluence's list; nothing was created"});
    super::worker::finish(
        state,
        deployment,
        &[Status::Unknown, Status::Deploying],
        Status::Failed,
        "not_created",
        reason,
    )
    .await?;
    Ok(Status::Failed)
}

/// Adopts the VMs found for a deployment and marks it deployed; a partial creation keeps what
/// exists (the hold settles to those VMs) and says so.
async fn adopt(
    state: &AppState,
    deployment: &Deployment,
    found: &[RunningInstance],
) -> Result<(), StepError> {
    let spec = spec_of(deployment)?;
    let vms: Vec<_> = found
        .iter()
        .map(|vm| (vm.id.clone(), vm.price_per_epoch))
        .collect();
    let reason = if found.len() < deployment.instances as usize {
        let message = format!(
            "reconciled from Fluence's list: {} of {} instances exist",
            found.len(),
            deployment.instances
        );
        (
            "partial".to_owned(),
            json!({"code": "partial", "message": message}),
        )
    } else {
        let message = "the deploy's answer was lost; its VMs were found in Fluence's list";
        (
            "reconciled".to_owned(),
            json!({"code": "reconciled", "message": message}),
        )
    };
    record_deployed(
        state,
        deployment,
        &spec,
        &vms,
        Some(reason),
        "deployment.reconciled",
    )
    .await
}

async fn insert_found(
    conn: &mut sqlx::SqliteConnection,
    deployment: &Deployment,
    vm: &RunningInstance,
    expires_at: Option<DateTime<Utc>>,
    at: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    deployments::insert_vm(
        conn,
        &NewVm {
            id: &vm.id.canonical(),
            fluence_id: vm.id.as_str(),
            team_id: &deployment.team_id,
            deployment_id: &deployment.id,
            name: &deployment.upstream_name,
            status: "New",
            price_per_epoch: vm.price_per_epoch,
            configuration: &deployment.configuration,
            resources: deployment.per_vm,
            expires_at,
            created_at: at,
        },
    )
    .await
}

/// A deployed deployment's hold settles once every one of its VMs has been seen in Fluence's
/// list: their own price, charges and next billing instant then count instead of the hold.
/// VMs of its name that the deploy answer did not mention are adopted too.
pub async fn settle_deployed(
    state: &AppState,
    deployment: &Deployment,
    listing: &Listing,
) -> Result<bool, StepError> {
    let at = now();
    let spec = spec_of(deployment)?;
    let mut tx = state.store.begin_write().await?;
    let recorded = deployments::vm_ids(&mut tx, &deployment.id).await?;
    // Its VMs by name, and the recorded ones by id too: a VM renamed by its team before the
    // hold settled no longer carries the deployment's name.
    let mut found: Vec<&RunningInstance> =
        listing.named(&deployment.upstream_name).iter().collect();
    for id in &recorded {
        if let Some(vm) = listing.by_id.get(id) {
            if !found.iter().any(|f| f.id.canonical() == *id) {
                found.push(vm);
            }
        }
    }
    let expires_at = spec.ttl_hours.and_then(|h| {
        deployment
            .updated_at
            .checked_add_signed(TimeDelta::hours(i64::from(h)))
    });
    for vm in found.iter().copied() {
        insert_found(&mut tx, deployment, vm, expires_at, at).await?;
        vms::observe(
            &mut tx,
            &vm.id.canonical(),
            &crate::inventory::sighting_of(vm),
            listing.listed_at,
        )
        .await?;
    }
    let seen: Vec<String> = found.iter().map(|vm| vm.id.canonical()).collect();
    let recorded = deployments::vm_ids(&mut tx, &deployment.id).await?;
    let since = deployment.forwarded_at.unwrap_or(deployment.updated_at);
    // A VM the answer named but Fluence never lists (removed before it was ever seen) would
    // keep the hold forever; after a generous wait it is recorded as gone. One whose deletion
    // was asked of Fluence is gone as soon as it is unlisted: the process that deleted it may
    // have died before recording it (RELIABILITY.md B2), and the hold must not wait an hour.
    let never_listed = at >= since + NEVER_LISTED_AFTER;
    for id in recorded.iter().filter(|id| !seen.contains(id)) {
        let (action, message) = if never_listed {
            (
                "vm.never_listed",
                "named in the deploy answer but never listed by Fluence; recorded as gone",
            )
        } else if vms::deletion_requested(&mut tx, id).await? {
            (
                "vm.deleted_unrecorded",
                "its deletion was asked of Fluence and Fluence no longer lists it; recorded as deleted",
            )
        } else {
            continue;
        };
        if vms::mark_deleted(&mut tx, id, at).await? {
            audit_step(
                &mut tx,
                deployment,
                action,
                json!({"vm": id, "message": message}),
                at,
            )
            .await?;
        }
    }
    let deleted = deployments::deleted_vm_ids(&mut tx, &deployment.id).await?;
    let all_seen = recorded
        .iter()
        .all(|id| seen.contains(id) || deleted.contains(id));
    // The hold turns into the VMs' own commitment only once that can be counted: each VM shows
    // its next billing instant (or is no longer billed), and when fewer VMs than asked for
    // exist, the rest have had the grace period to appear.
    let billable_known = found.iter().all(|vm| {
        vm.next_billing_at.is_some() || matches!(vm.status.as_str(), "Terminated" | "Stopped")
    });
    let stragglers_waited =
        recorded.len() >= deployment.instances as usize || at >= since + grace(state);
    let mut settled = false;
    if all_seen
        && billable_known
        && stragglers_waited
        && deployments::mark_settled(&mut tx, &deployment.id, at).await?
    {
        deployments::release_hold(&mut tx, &deployment.id, at).await?;
        audit_step(
            &mut tx,
            deployment,
            "deployment.settled",
            json!({"vms": recorded}),
            at,
        )
        .await?;
        settled = true;
    }
    state.settings.failpoints.hit("settle.before_commit").await;
    tx.commit().await?;
    Ok(settled)
}

/// How long a VM named in a deploy answer may stay out of Fluence's list before it is recorded
/// as gone (and its deployment's hold can settle).
pub const NEVER_LISTED_AFTER: TimeDelta = TimeDelta::hours(1);

/// How long after a deployment was declared failed its VMs are still looked for.
pub const LATE_ARRIVAL_WINDOW: TimeDelta = TimeDelta::days(7);

/// A deployment declared failed (nothing appeared within the grace period) whose VMs show up
/// later after all: they exist and are billed, so they are adopted and the deployment becomes
/// `deployed` after all, with reason `adopted_late`. Its hold was released, so they count
/// against the budget as live VMs from here on.
pub async fn adopt_late(
    state: &AppState,
    deployment: &Deployment,
    listing: &Listing,
) -> Result<bool, StepError> {
    let found = listing.named(&deployment.upstream_name);
    if found.is_empty() {
        return Ok(false);
    }
    let spec = spec_of(deployment)?;
    let vms: Vec<_> = found
        .iter()
        .map(|vm| (vm.id.clone(), vm.price_per_epoch))
        .collect();
    let message = format!(
        "declared failed when no VM had appeared, then {} of {} appeared in Fluence's list",
        found.len(),
        deployment.instances
    );
    tracing::warn!(deployment = %deployment.id, "VMs of a failed deployment appeared late; adopting them");
    record_deployed_from(
        state,
        deployment,
        &spec,
        &vms,
        &[Status::Failed],
        Changes {
            reason: Some((
                "adopted_late".to_owned(),
                json!({"code": "adopted_late", "message": message}),
            )),
            reopen: true,
            ..Changes::default()
        },
        "deployment.adopted_late",
    )
    .await?;
    Ok(true)
}

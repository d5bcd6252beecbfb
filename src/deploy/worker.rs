//! One deployment's way forward, a step at a time: estimate, price check, admission, forward.
//! Each step starts from what the database says and moves it with a compare-and-set, so a
//! step interrupted by a crash is simply taken again (before forwarding) or reconciled (after).

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};

use super::{ACTOR, Spec, StepError};
use crate::domain::admission::{self, Decision, Request};
use crate::domain::billing::{self, BillingSchedule};
use crate::domain::deployment::{PriceVerdict, Status, price_verdict};
use crate::domain::ids::VmId;
use crate::domain::money::Usdc;
use crate::fluence::FluenceError;
use crate::fluence::types::Estimate;
use crate::state::AppState;
use crate::store::audit::{self, NewAuditEntry};
use crate::store::budget::Standing;
use crate::store::deployments::{self, Changes, Deployment, NewVm};
use crate::store::script::Script;
use crate::store::time::now;

/// More steps than any way through the states takes (queued, estimating, admitted, deploying).
const MAX_STEPS: u32 = 8;

/// How often a deploy that provably never left is tried again before it is declared failed.
const SEND_ATTEMPTS: u32 = 3;

pub fn spec_of(deployment: &Deployment) -> Result<Spec, StepError> {
    serde_json::from_value(deployment.spec.clone())
        .map_err(|e| StepError::Spec(deployment.id.clone(), e.to_string()))
}

/// Takes the deployment as far as it can go now. Returns when it reaches a state that waits
/// for something (a price, a reconcile, a settlement) or a final one.
pub async fn advance(state: &AppState, mut deployment: Deployment) -> Result<Status, StepError> {
    let mut steps = 0;
    loop {
        let next = match deployment.status {
            Status::Queued => {
                let moved = move_to(
                    state,
                    &deployment,
                    &[Status::Queued],
                    Status::Estimating,
                    Changes::default(),
                )
                .await?;
                if !moved {
                    return Ok(deployment.status);
                }
                Status::Estimating
            }
            Status::WaitingForPrice => {
                let at = now();
                let spec = spec_of(&deployment)?;
                if spec.start_before.is_some_and(|deadline| at >= deadline) {
                    expire(state, &deployment).await?;
                    return Ok(Status::Expired);
                }
                if deployment.next_check_at.is_some_and(|next| next > at) {
                    return Ok(Status::WaitingForPrice);
                }
                let moved = move_to(
                    state,
                    &deployment,
                    &[Status::WaitingForPrice],
                    Status::Estimating,
                    Changes {
                        next_check_at: Some(None),
                        ..Changes::default()
                    },
                )
                .await?;
                if !moved {
                    return Ok(deployment.status);
                }
                Status::Estimating
            }
            Status::Estimating => estimate_and_admit(state, &deployment).await?,
            Status::Admitted => forward(state, &deployment).await?,
            other => return Ok(other),
        };
        // A step that ends waiting (for a price, for Fluence's list) ends this turn; the next
        // tick looks again. The step bound is a backstop against a cycle.
        steps += 1;
        if next == deployment.status
            || next.is_final()
            || matches!(next, Status::Unknown | Status::WaitingForPrice)
            || steps >= MAX_STEPS
        {
            return Ok(next);
        }
        // Re-read: the step may have written fields (estimate, hold) the next one needs.
        let mut conn = state.store.pool().acquire().await?;
        match deployments::get(&mut conn, &deployment.id).await? {
            Some(fresh) => deployment = fresh,
            None => return Ok(next),
        }
    }
}

/// A compare-and-set in its own write transaction.
async fn move_to(
    state: &AppState,
    deployment: &Deployment,
    from: &[Status],
    to: Status,
    changes: Changes,
) -> Result<bool, StepError> {
    let mut tx = state.store.begin_write().await?;
    let moved = deployments::transition(&mut tx, &deployment.id, from, to, changes, now()).await?;
    tx.commit().await?;
    Ok(moved)
}

/// Records the audit entry of a pipeline step.
pub(crate) async fn audit_step(
    conn: &mut sqlx::SqliteConnection,
    deployment: &Deployment,
    action: &str,
    after: Value,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    audit::record(conn, step_entry(deployment, action, after), at)
        .await
        .map(|_| ())
}

/// Adds the audit entry of a pipeline step to the script, written only if the statement before
/// it (the step's compare-and-set) moved the deployment.
pub(crate) fn push_audit_step(
    script: &mut Script,
    deployment: &Deployment,
    action: &str,
    after: Value,
    at: DateTime<Utc>,
) {
    audit::push_record_of_change(script, step_entry(deployment, action, after), at);
}

/// A pipeline step's audit entry: the worker acting on the deployment.
fn step_entry<'a>(deployment: &'a Deployment, action: &'a str, after: Value) -> NewAuditEntry<'a> {
    NewAuditEntry {
        actor: ACTOR,
        actor_role: "system",
        action,
        target_type: "deployment",
        target_id: &deployment.id,
        team_id: Some(&deployment.team_id),
        before: None,
        after: Some(after),
        request_id: None,
    }
}

/// Ends a deployment before forwarding, with a reason. Releases its hold if it had one.
pub(crate) async fn finish(
    state: &AppState,
    deployment: &Deployment,
    from: &[Status],
    to: Status,
    code: &str,
    reason: Value,
) -> Result<bool, StepError> {
    let at = now();
    let mut tx = state.store.begin_write().await?;
    let moved = deployments::transition(
        &mut tx,
        &deployment.id,
        from,
        to,
        Changes {
            reason: Some((code.to_owned(), reason.clone())),
            settled_at: Some(at),
            ..Changes::default()
        },
        at,
    )
    .await?;
    if moved {
        deployments::release_hold(&mut tx, &deployment.id, at).await?;
        audit_step(
            &mut tx,
            deployment,
            &format!("deployment.{to}"),
            json!({"status": to, "reason_code": code, "reason": reason}),
            at,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(moved)
}

async fn expire(state: &AppState, deployment: &Deployment) -> Result<bool, StepError> {
    finish(
        state,
        deployment,
        &[Status::WaitingForPrice, Status::Estimating],
        Status::Expired,
        "start_before_passed",
        json!({"code": "start_before_passed",
               "message": "no offer within max_price_per_epoch appeared before start_before"}),
    )
    .await
}

/// The epochs to hold a new deployment for. The gateway cannot see which billing calendar the
/// account is on (per-instance, or the daily 17:55 UTC charge of the 2025 documentation), so
/// it holds for whichever needs more; the excess is released when the VMs settle.
pub fn hold_epochs(
    at: DateTime<Utc>,
    resets_at: DateTime<Utc>,
    ttl_hours: Option<u32>,
    guard: TimeDelta,
) -> i64 {
    let ttl_end = ttl_hours.and_then(|h| at.checked_add_signed(TimeDelta::hours(i64::from(h))));
    let daily = chrono::NaiveTime::from_hms_opt(17, 55, 0)
        .map(|time| {
            billing::deployment_epochs_on(
                BillingSchedule::DailyAt(time),
                at,
                resets_at,
                ttl_end,
                guard,
            )
        })
        .unwrap_or(0);
    let per_instance =
        billing::deployment_epochs_on(BillingSchedule::PerInstance, at, resets_at, ttl_end, guard);
    daily.max(per_instance)
}

/// The admission rule's view of a deployment, and its decision against `standing`.
pub fn decide(
    spec: &Spec,
    per_vm: crate::domain::quota::Resources,
    quotas: &crate::domain::quota::Quotas,
    standing: &Standing,
    usage: &crate::domain::quota::Usage,
    price_per_vm: Usdc,
    epochs: i64,
) -> Decision {
    admission::decide(
        &standing.budget,
        quotas,
        usage,
        &Request {
            instances: u64::from(spec.instances),
            configuration: &spec.configuration,
            resources_per_vm: per_vm,
            countries: &spec.countries,
            max_price_per_epoch_per_vm: price_per_vm,
            epochs,
        },
    )
}

/// The refusals of a decision as the API shows them.
pub fn refusals_json(decision: &Decision) -> Vec<Value> {
    decision
        .refusals
        .iter()
        .map(|r| json!({"code": r.code(), "quota": r.quota(), "message": r.to_string()}))
        .collect()
}

pub fn estimate_json(estimate: &Estimate) -> Value {
    json!({
        "instances": estimate.instances,
        "max_price_per_epoch": estimate.max_price_per_epoch.to_string(),
        "total_price_per_epoch": estimate.total_price_per_epoch.to_string(),
        "deposit_amount": estimate.deposit_amount_usdc.to_string(),
        "deposit_epochs": estimate.deposit_epochs,
    })
}

/// Why an estimate could not be had, for a deployment's `reason`: Fluence's body is never passed
/// through (it may echo internals), only what the status means.
pub fn upstream_refusal(error: &FluenceError) -> (String, Value) {
    let (code, message) = match error.status() {
        Some(422) | Some(404) => (
            "no_offer",
            "no Fluence offer matches the configuration, countries and price ceiling",
        ),
        Some(400) => (
            "upstream_rejected",
            "Fluence refused the request as invalid",
        ),
        Some(401) | Some(403) => (
            "upstream_unauthorized",
            "the gateway's Fluence key was refused",
        ),
        Some(402) => (
            "upstream_insufficient_funds",
            "the Fluence account cannot pay for it",
        ),
        _ => ("upstream_rejected", "Fluence refused the request"),
    };
    (
        code.to_owned(),
        json!({"code": code, "message": message, "upstream_status": error.status()}),
    )
}

/// `estimating -> admitted | waiting_for_price | rejected | expired`.
async fn estimate_and_admit(
    state: &AppState,
    deployment: &Deployment,
) -> Result<Status, StepError> {
    let spec = spec_of(deployment)?;
    let estimate = match state.fluence.estimate(&spec.estimate_request()).await {
        Ok(estimate) => estimate,
        Err(error) if error.is_definite_rejection() && error.status() != Some(429) => {
            let (code, reason) = upstream_refusal(&error);
            finish(
                state,
                deployment,
                &[Status::Estimating],
                Status::Rejected,
                &code,
                reason,
            )
            .await?;
            return Ok(Status::Rejected);
        }
        // Fluence is unreachable or busy: the deployment stays where it is, nothing is held,
        // and the next tick asks again.
        Err(error) => return Err(error.into()),
    };
    let at = now();
    if spec.start_before.is_some_and(|deadline| at >= deadline) {
        // The estimate came too late (Fluence was unreachable, or a backlog): a deployment
        // that had to start before now does not start at all.
        expire(state, deployment).await?;
        return Ok(Status::Expired);
    }
    let price = estimate.max_price_per_epoch;
    let may_wait = spec.start_before.is_some_and(|deadline| at < deadline);
    match price_verdict(
        price.micros(),
        spec.max_price_per_epoch.map(Usdc::micros),
        may_wait,
    ) {
        PriceVerdict::Proceed => {}
        PriceVerdict::Wait => {
            let limit = spec.max_price_per_epoch.unwrap_or(Usdc::ZERO);
            let reason = json!({"code": "price_above_limit",
                "message": format!("best offer {price} USDC per VM per epoch is above max_price_per_epoch {limit}; waiting until start_before"),
                "price": price.to_string(), "limit": limit.to_string()});
            let interval = TimeDelta::seconds(
                i64::try_from(state.settings.jobs.price_recheck_secs).unwrap_or(60),
            );
            move_to(
                state,
                deployment,
                &[Status::Estimating],
                Status::WaitingForPrice,
                Changes {
                    estimate: Some(estimate_json(&estimate)),
                    reason: Some(("price_above_limit".into(), reason)),
                    next_check_at: Some(Some(at + interval)),
                    ..Changes::default()
                },
            )
            .await?;
            return Ok(Status::WaitingForPrice);
        }
        PriceVerdict::TooExpensive => {
            if spec.start_before.is_some() {
                expire(state, deployment).await?;
                return Ok(Status::Expired);
            }
            let limit = spec.max_price_per_epoch.unwrap_or(Usdc::ZERO);
            let over = price.saturating_sub(limit);
            let reason = json!({"code": "price_above_limit",
                "message": format!("best offer {price} USDC per VM per epoch is above max_price_per_epoch {limit} by {over}"),
                "price": price.to_string(), "limit": limit.to_string()});
            finish(
                state,
                deployment,
                &[Status::Estimating],
                Status::Rejected,
                "price_above_limit",
                reason,
            )
            .await?;
            return Ok(Status::Rejected);
        }
    }
    state
        .admissions
        .admit(state, deployment.clone(), spec, estimate)
        .await
}

/// `admitted -> deploying -> deployed | failed | unknown`: the one deploy call.
async fn forward(state: &AppState, deployment: &Deployment) -> Result<Status, StepError> {
    let spec = spec_of(deployment)?;
    let Some(ceiling) = deployment.max_price else {
        return Err(StepError::Spec(
            deployment.id.clone(),
            "admitted without a price ceiling".into(),
        ));
    };
    let request = spec.create_request(&deployment.upstream_name, ceiling);
    let fp = &state.settings.failpoints;
    for attempt in 1..=SEND_ATTEMPTS {
        // The intent, durable before anything leaves: from here a crash is reconciled. Its
        // time is the one its transaction took the write lock at, so the time a call may be
        // out is counted from no earlier than that.
        let intent_of = deployment.clone();
        let upstream_name = deployment.upstream_name.clone();
        let written = state
            .store
            .run_at(move |sent_at| {
                let mut intent = Script::new();
                deployments::push_transition(
                    &mut intent,
                    &intent_of.id,
                    &[Status::Admitted],
                    Status::Deploying,
                    Changes {
                        forwarded_at: Some(sent_at),
                        ..Changes::default()
                    },
                    sent_at,
                );
                push_audit_step(
                    &mut intent,
                    &intent_of,
                    "deployment.forward",
                    json!({"status": "deploying", "upstream_name": upstream_name,
                           "max_total_price_per_epoch_usd": ceiling.to_string(), "attempt": attempt}),
                    sent_at,
                );
                intent
            })
            .await?;
        if written.is_empty() {
            return Ok(Status::Admitted);
        }
        fp.hit("deploy.before_send").await;

        let answer = state.fluence.deploy(&request).await;
        fp.hit("deploy.after_response").await;
        match answer {
            Ok(created) if !created.is_empty() => {
                let vms: Vec<(VmId, Usdc)> =
                    created.into_iter().map(|vm| (vm.vm_id, ceiling)).collect();
                let partial = vms.len() < spec.instances as usize;
                let reason = partial.then(|| {
                    let message = format!(
                        "Fluence created {} of {} instances",
                        vms.len(),
                        spec.instances
                    );
                    (
                        "partial".to_owned(),
                        json!({"code": "partial", "message": message}),
                    )
                });
                record_deployed(
                    state,
                    deployment,
                    &spec,
                    &vms,
                    reason,
                    "deployment.deployed",
                )
                .await?;
                fp.hit("deploy.after_commit").await;
                return Ok(Status::Deployed);
            }
            // A success without VMs, or an answer that may hide a success: Fluence's list
            // decides, never a second POST.
            Ok(_) => return mark_unknown(state, deployment).await,
            Err(error) if error.is_held_back() => {
                // The gateway's own guard kept it back (bulkhead full, breaker open): nothing
                // left, so it waits in `admitted`, hold kept, for a later run. Not an attempt.
                tracing::info!(deployment = %deployment.id, %error, "deploy held back; sent on a later run");
                move_to(
                    state,
                    deployment,
                    &[Status::Deploying],
                    Status::Admitted,
                    Changes::default(),
                )
                .await?;
                return Ok(Status::Admitted);
            }
            Err(error) if error.is_ambiguous() => {
                tracing::warn!(deployment = %deployment.id, %error, "deploy outcome unknown; reconciling");
                return mark_unknown(state, deployment).await;
            }
            Err(error) if not_sent(&error) && attempt < SEND_ATTEMPTS => {
                // Provably not acted on: put it back and try again shortly.
                tracing::warn!(deployment = %deployment.id, %error, attempt, "deploy not sent; retrying");
                move_to(
                    state,
                    deployment,
                    &[Status::Deploying],
                    Status::Admitted,
                    Changes::default(),
                )
                .await?;
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            Err(error) => {
                let (code, reason) = if not_sent(&error) {
                    (
                        "upstream_unavailable".to_owned(),
                        json!({"code": "upstream_unavailable",
                               "message": "Fluence could not be reached; nothing was created"}),
                    )
                } else {
                    upstream_refusal(&error)
                };
                finish(
                    state,
                    deployment,
                    &[Status::Deploying],
                    Status::Failed,
                    &code,
                    reason,
                )
                .await?;
                return Ok(Status::Failed);
            }
        }
    }
    Ok(Status::Admitted)
}

/// Records a deployment's VMs (from the deploy answer, or found in Fluence's list) and marks it
/// deployed, in one transaction. VMs already recorded are left as they are.
pub(crate) async fn record_deployed(
    state: &AppState,
    deployment: &Deployment,
    spec: &Spec,
    vms: &[(VmId, Usdc)],
    reason: Option<(String, Value)>,
    action: &str,
) -> Result<(), StepError> {
    record_deployed_from(
        state,
        deployment,
        spec,
        vms,
        // `failed` too: if another process declared it failed while this call was out, the
        // VMs the answer names exist all the same, and they win.
        &[Status::Deploying, Status::Unknown, Status::Failed],
        Changes {
            reason,
            reopen: true,
            ..Changes::default()
        },
        action,
    )
    .await
}

/// [`record_deployed`] from given statuses, with given changes.
pub(crate) async fn record_deployed_from(
    state: &AppState,
    deployment: &Deployment,
    spec: &Spec,
    vms: &[(VmId, Usdc)],
    from: &[Status],
    changes: Changes,
    action: &str,
) -> Result<(), StepError> {
    let at = now();
    let expires_at = spec
        .ttl_hours
        .and_then(|h| at.checked_add_signed(TimeDelta::hours(i64::from(h))));
    let mut script = Script::new();
    for (id, price) in vms {
        deployments::push_insert_vm(
            &mut script,
            &NewVm {
                id: &id.canonical(),
                fluence_id: id.as_str(),
                team_id: &deployment.team_id,
                deployment_id: &deployment.id,
                name: &deployment.upstream_name,
                status: "New",
                price_per_epoch: *price,
                configuration: &deployment.configuration,
                resources: deployment.per_vm,
                expires_at,
                created_at: at,
            },
        );
    }
    deployments::push_transition(
        &mut script,
        &deployment.id,
        from,
        Status::Deployed,
        changes,
        at,
    );
    let ids: Vec<String> = vms.iter().map(|(id, _)| id.canonical()).collect();
    push_audit_step(
        &mut script,
        deployment,
        action,
        json!({"status": "deployed", "vms": ids}),
        at,
    );
    state.store.run(script).await?;
    Ok(())
}

/// The request provably had no effect: it never left, or Fluence asked to slow down.
fn not_sent(error: &FluenceError) -> bool {
    matches!(
        error,
        FluenceError::Transport {
            may_have_been_sent: false,
            ..
        }
    ) || error.status() == Some(429)
}

async fn mark_unknown(state: &AppState, deployment: &Deployment) -> Result<Status, StepError> {
    let mut tx = state.store.begin_write().await?;
    to_unknown(
        &mut tx,
        deployment,
        "Fluence's answer to the deploy was lost; its VM list will settle it",
        "answer_lost",
        now(),
    )
    .await?;
    tx.commit().await?;
    Ok(Status::Unknown)
}

/// `deploying -> unknown` inside the caller's transaction, audited with its cause; false if it
/// was no longer `deploying`.
pub(crate) async fn to_unknown(
    conn: &mut sqlx::SqliteConnection,
    deployment: &Deployment,
    message: &str,
    cause: &str,
    at: DateTime<Utc>,
) -> Result<bool, StepError> {
    let moved = deployments::transition(
        &mut *conn,
        &deployment.id,
        &[Status::Deploying],
        Status::Unknown,
        Changes {
            unknown_since: Some(at),
            reason: Some((
                "outcome_unknown".into(),
                json!({"code": "outcome_unknown", "message": message}),
            )),
            ..Changes::default()
        },
        at,
    )
    .await?;
    if moved {
        let after = json!({"status": "unknown", "cause": cause});
        audit_step(conn, deployment, "deployment.unknown", after, at).await?;
    }
    Ok(moved)
}

//! The admission step: budget, quotas and the hold, decided in one `BEGIN IMMEDIATE`
//! transaction, so that concurrent deployments of a team serialise on the database and never
//! admit more than fits.
//!
//! Deployments that reach admission while another admission holds the write lock wait in
//! [`Admissions`] and are then decided together, in one transaction: the team's budget standing
//! and quota usage are read once, and each deployment is decided against what the admissions
//! before it in the batch left ([`admission::after_admission`]), which is what reading them
//! again would show. One decision or a batch of them, the outcome is the same as deciding them
//! one by one in that order; a batch saves the two reads over the team's live VMs and holds
//! and the commit (an `fsync`) that each admission took on its own.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;
use tokio::sync::oneshot;

use super::Spec;
use super::StepError;
use super::worker::{decide, estimate_json, hold_epochs, push_audit_step, refusals_json};
use crate::domain::admission::{self, Decision, Request};
use crate::domain::deployment::Status;
use crate::domain::quota::Usage;
use crate::fluence::types::Estimate;
use crate::state::AppState;
use crate::store::budget::{self, Standing};
use crate::store::deployments::{self, Changes, Deployment};
use crate::store::script::Script;
use crate::store::teams::{self, Team};
use crate::store::time::now;

/// A deployment estimated and within its price, ready to be decided.
struct Candidate {
    deployment: Deployment,
    spec: Spec,
    estimate: Estimate,
    /// A decision taken before the write transaction: only the seeded race of the test builds
    /// (`admission.check_then_act`) has one, and the C1 test must catch it.
    early: Option<(Decision, i64)>,
}

struct Waiting {
    candidate: Candidate,
    /// The status the admission left it in, or why the batch failed (then nothing of it was
    /// written: the deployment is still `estimating`, and the next tick estimates it again).
    reply: oneshot::Sender<Result<Status, String>>,
}

/// The deployments waiting to be admitted, and the turn to admit them.
#[derive(Default)]
pub struct Admissions {
    waiting: Mutex<Vec<Waiting>>,
    /// Held by the one caller that is admitting a batch; the others wait for their answer or
    /// for the turn, whichever comes first.
    turn: tokio::sync::Mutex<()>,
    /// Batches committed, and the decisions they held (`GET /metrics`).
    batches: AtomicU64,
    decisions: AtomicU64,
}

impl Admissions {
    /// Batches committed so far, and the decisions they held.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.batches.load(Ordering::Relaxed),
            self.decisions.load(Ordering::Relaxed),
        )
    }

    /// Admits or rejects the deployment, alone or with others that wait at the same time.
    /// Returns `Admitted` or `Rejected`, or `Estimating` when the deployment had already moved
    /// on (cancelled meanwhile): nothing was held for it.
    pub async fn admit(
        &self,
        state: &AppState,
        deployment: Deployment,
        spec: Spec,
        estimate: Estimate,
    ) -> Result<Status, StepError> {
        let failpoints = &state.settings.failpoints;
        // The seeded race of the test builds: decide on a snapshot read outside the write
        // transaction, then write later.
        let early = if failpoints.is_set("admission.check_then_act") {
            let mut read = state.store.pool().begin().await?;
            let at = now();
            let view = read_view(&mut read, &deployment.team_id, at).await?;
            read.rollback().await?;
            failpoints.hit("admission.check_then_act").await;
            view.map(|view| view.decide(&deployment, &spec, &estimate, at, guard_band(state)))
        } else {
            None
        };
        let (reply, mut answer) = oneshot::channel();
        let candidate = Candidate {
            deployment,
            spec,
            estimate,
            early,
        };
        lock(&self.waiting).push(Waiting { candidate, reply });
        let status = loop {
            tokio::select! {
                biased;
                answered = &mut answer => {
                    // A sender dropped unanswered: the caller deciding the batch was stopped
                    // (shutdown) before it committed or before it answered; the database says
                    // which, and the next tick goes on from there.
                    let outcome = answered
                        .map_err(|_| StepError::Batch("the admission batch was dropped".into()))?;
                    break outcome.map_err(StepError::Batch)?;
                }
                _turn = self.turn.lock() => {
                    let batch = std::mem::take(&mut *lock(&self.waiting));
                    if !batch.is_empty() {
                        let decided = decide_batch(state, batch).await;
                        if decided > 0 {
                            self.batches.fetch_add(1, Ordering::Relaxed);
                            self.decisions.fetch_add(decided, Ordering::Relaxed);
                        }
                    }
                }
            }
        };
        if status == Status::Admitted {
            failpoints.hit("admission.after_commit").await;
        }
        Ok(status)
    }
}

/// The clock-skew guard band around billing instants.
fn guard_band(state: &AppState) -> TimeDelta {
    TimeDelta::seconds(i64::try_from(state.settings.jobs.billing_guard_secs).unwrap_or(i64::MAX))
}

fn lock(waiting: &Mutex<Vec<Waiting>>) -> std::sync::MutexGuard<'_, Vec<Waiting>> {
    waiting
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Decides the batch and answers each caller; returns how many were decided (admitted or
/// rejected), none if the batch failed.
async fn decide_batch(state: &AppState, batch: Vec<Waiting>) -> u64 {
    let (candidates, replies): (Vec<_>, Vec<_>) =
        batch.into_iter().map(|w| (w.candidate, w.reply)).unzip();
    match decide_all(state, &candidates).await {
        Ok(statuses) => {
            let decided = statuses
                .iter()
                .filter(|s| matches!(s, Status::Admitted | Status::Rejected))
                .count();
            for (reply, status) in replies.into_iter().zip(statuses) {
                // The caller may have gone (shutdown); what was decided is in the database.
                let _ = reply.send(Ok(status));
            }
            u64::try_from(decided).unwrap_or(u64::MAX)
        }
        Err(error) => {
            tracing::warn!(%error, deployments = candidates.len(), "admission batch failed");
            let message = error.to_string();
            for reply in replies {
                let _ = reply.send(Err(message.clone()));
            }
            0
        }
    }
}

/// A team as the admissions of one batch see it: read once, then moved by each admission.
struct TeamView {
    team: Team,
    standing: Standing,
    usage: Usage,
}

/// Decides every candidate in one write transaction, in order. The decisions are written by
/// one script: each a compare-and-set from `estimating`, known to succeed because the
/// candidates still estimating were read under the same write lock.
async fn decide_all(state: &AppState, candidates: &[Candidate]) -> Result<Vec<Status>, StepError> {
    let guard = guard_band(state);
    let mut tx = state.store.begin_write().await?;
    // Taken with the write lock held: every decision of the batch is at this instant.
    let at = now();
    let ids: Vec<&str> = candidates
        .iter()
        .map(|c| c.deployment.id.as_str())
        .collect();
    // One cancelled meanwhile is left as it is, and nothing is held for it; taken out once
    // decided, so a deployment that were twice in a batch would be decided once.
    let mut estimating = deployments::with_status(&mut tx, &ids, Status::Estimating).await?;
    let mut views: HashMap<String, Option<TeamView>> = HashMap::new();
    let mut script = Script::new();
    let mut statuses = Vec::with_capacity(candidates.len());
    for candidate in candidates {
        if !estimating.remove(&candidate.deployment.id) {
            statuses.push(Status::Estimating);
            continue;
        }
        let team_id = &candidate.deployment.team_id;
        if !views.contains_key(team_id) {
            let view = read_view(&mut tx, team_id, at).await?;
            views.insert(team_id.clone(), view);
        }
        let view = views.get_mut(team_id).and_then(Option::as_mut);
        statuses.push(decide_one(&mut script, candidate, view, at, guard));
    }
    let moved = script.run_in(&mut tx).await?.len();
    let decided = statuses
        .iter()
        .filter(|s| **s != Status::Estimating)
        .count();
    if moved != decided {
        // Cannot happen under the write lock; if it did, nothing of the batch is kept.
        return Err(StepError::Batch(format!(
            "{moved} of {decided} decided deployments moved"
        )));
    }
    tx.commit().await?;
    Ok(statuses)
}

impl TeamView {
    /// The admission rule against the team as it stands in this view.
    fn decide(
        &self,
        deployment: &Deployment,
        spec: &Spec,
        estimate: &Estimate,
        at: DateTime<Utc>,
        guard: TimeDelta,
    ) -> (Decision, i64) {
        let epochs = hold_epochs(at, self.standing.resets_at, spec.ttl_hours, guard);
        let decision = decide(
            spec,
            deployment.per_vm,
            &self.team.quotas,
            &self.standing,
            &self.usage,
            estimate.max_price_per_epoch,
            epochs,
        );
        (decision, epochs)
    }
}

async fn read_view(
    conn: &mut sqlx::SqliteConnection,
    team_id: &str,
    at: DateTime<Utc>,
) -> Result<Option<TeamView>, StepError> {
    let Some(team) = teams::get(&mut *conn, team_id).await? else {
        return Ok(None);
    };
    let standing = budget::standing(&mut *conn, &team, at).await?;
    let usage = deployments::usage(&mut *conn, team_id).await?;
    Ok(Some(TeamView {
        team,
        standing,
        usage,
    }))
}

/// Decides one candidate, still `estimating`, and adds its outcome to the batch's script; an
/// admission moves `view` on by what it holds.
fn decide_one(
    script: &mut Script,
    candidate: &Candidate,
    view: Option<&mut TeamView>,
    at: DateTime<Utc>,
    guard: TimeDelta,
) -> Status {
    let Candidate {
        deployment,
        spec,
        estimate,
        early,
    } = candidate;
    let Some(view) = view else {
        let reason = json!({"code": "team_deleted", "message": "the team was deleted"});
        // An estimating deployment holds nothing, so there is no hold to release.
        deployments::push_transition(
            script,
            &deployment.id,
            &[Status::Estimating],
            Status::Rejected,
            Changes {
                reason: Some(("team_deleted".into(), reason.clone())),
                settled_at: Some(at),
                ..Changes::default()
            },
            at,
        );
        push_audit_step(
            script,
            deployment,
            "deployment.rejected",
            json!({"status": "rejected", "reason_code": "team_deleted", "reason": reason}),
            at,
        );
        return Status::Rejected;
    };
    let price = estimate.max_price_per_epoch;
    let (decision, epochs) = match early {
        Some(decided) => decided.clone(),
        None => view.decide(deployment, spec, estimate, at, guard),
    };
    if !decision.admitted() {
        reject(script, deployment, estimate, &decision, epochs, at);
        return Status::Rejected;
    }
    deployments::push_transition(
        script,
        &deployment.id,
        &[Status::Estimating],
        Status::Admitted,
        Changes {
            estimate: Some(estimate_json(estimate)),
            max_price: Some(price),
            commitment: Some(decision.commitment),
            epochs: Some(epochs),
            ..Changes::default()
        },
        at,
    );
    deployments::push_hold_of_change(
        script,
        &deployment.id,
        &deployment.team_id,
        decision.commitment,
        at,
    );
    push_audit_step(
        script,
        deployment,
        "deployment.admit",
        json!({"status": "admitted", "commitment": decision.commitment.to_string(),
               "max_price_per_epoch": price.to_string(), "epochs": epochs}),
        at,
    );
    let request = Request {
        instances: u64::from(spec.instances),
        configuration: &spec.configuration,
        resources_per_vm: deployment.per_vm,
        countries: &spec.countries,
        max_price_per_epoch_per_vm: price,
        epochs,
    };
    let (budget, usage) = admission::after_admission(
        &view.standing.budget,
        &view.usage,
        &request,
        decision.commitment,
    );
    view.standing.budget = budget;
    view.usage = usage;
    Status::Admitted
}

fn reject(
    script: &mut Script,
    deployment: &Deployment,
    estimate: &Estimate,
    decision: &Decision,
    epochs: i64,
    at: DateTime<Utc>,
) {
    let refusals = refusals_json(decision);
    let code = decision
        .refusals
        .first()
        .map_or("rejected", |r| r.code())
        .to_owned();
    let message = decision
        .refusals
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let reason = json!({"code": code, "message": message, "refusals": refusals,
                        "commitment": decision.commitment.to_string()});
    deployments::push_transition(
        script,
        &deployment.id,
        &[Status::Estimating],
        Status::Rejected,
        Changes {
            estimate: Some(estimate_json(estimate)),
            max_price: Some(estimate.max_price_per_epoch),
            epochs: Some(epochs),
            reason: Some((code.clone(), reason.clone())),
            settled_at: Some(at),
            ..Changes::default()
        },
        at,
    );
    push_audit_step(
        script,
        deployment,
        "deployment.rejected",
        json!({"status": "rejected", "reason_code": code, "reason": reason}),
        at,
    );
}

//! `/v1/jobs`: each background job's last run, and running one now (admin only).

use axum::extract::{Path, State};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::AdminPrincipal;
use crate::error::ApiError;
use crate::jobs::{JobName, JobStatus};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_jobs))
        .routes(routes!(run_job))
}

/// Every job: interval, runs, failures, and its last run's time, duration and outcome.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs",
    responses((status = 200, body = Vec<JobStatus>)), security(("bearer" = [])))]
async fn list_jobs(
    State(state): State<AppState>,
    AdminPrincipal(_admin): AdminPrincipal,
) -> axum::Json<Vec<JobStatus>> {
    axum::Json(state.jobs.statuses())
}

/// Runs a job now (after a run in progress ends) and returns its outcome.
#[utoipa::path(post, path = "/v1/jobs/{job}/run", tag = "jobs",
    params(("job" = String, Path, description = "`deployer`, `reaper`, `prices` or `catalog`")),
    responses((status = 200, body = JobStatus), (status = 404)), security(("bearer" = [])))]
async fn run_job(
    State(state): State<AppState>,
    AdminPrincipal(principal): AdminPrincipal,
    Path(job): Path<String>,
) -> Result<axum::Json<JobStatus>, ApiError> {
    let job = JobName::parse(&job).ok_or_else(|| {
        ApiError::NotFound(format!(
            "No such job; jobs are {}.",
            JobName::ALL.map(JobName::as_str).join(", ")
        ))
    })?;
    tracing::info!(job = job.as_str(), actor = %principal.actor, "job run requested");
    // Detached, so that a client hanging up does not cut a run short mid-step.
    let runner = state.clone();
    let status = tokio::spawn(async move { runner.jobs.run(&runner, job).await })
        .await
        .map_err(ApiError::internal)?;
    Ok(axum::Json(status))
}

//! The deploy pipeline (PRODUCT.md sections 4-6): a deployment is estimated, admitted against
//! its team's budget and quotas in one write transaction that also writes its hold, recorded as
//! forwarded before the one deploy call, and settled from Fluence's own list whenever the
//! answer is lost. Nothing here ever sends a deploy twice.

pub mod admissions;
pub mod catalog;
pub mod reconcile;
pub mod spec;
pub mod worker;

use crate::fluence::FluenceError;
use crate::store::StoreError;

pub use spec::Spec;

/// Why a step could not run; the deployment stays where it was and the next tick retries.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("upstream: {0}")]
    Upstream(#[from] FluenceError),
    /// The admission batch it waited in failed (its error is logged once, by the batch).
    #[error("admission: {0}")]
    Batch(String),
    #[error("deployment {0}: its stored request does not decode: {1}")]
    Spec(String, String),
}

/// The actor the pipeline writes in the audit trail.
pub const ACTOR: &str = "job:deployer";

//! Named failpoints in the deploy pipeline, for the crash and race tests (RELIABILITY.md B1, C1).
//!
//! Only builds with the `failpoints` feature (test builds) honour them; a release build refuses
//! to start when any is configured, so a stray environment variable can never pause production.
//! The spec is `name=action;name=action`, with actions `pause` (print `FAILPOINT <name> reached`
//! to stderr and wait forever, for a harness to kill the process) and `sleep(ms)`.
//!
//! The points, in the order a deploy meets them (RELIABILITY.md B1's crash points):
//! `idempotency.after_claim` (1), `admission.after_commit` (2), `deploy.before_send` (3),
//! `deploy.after_response` (6), `deploy.after_commit` (7), `settle.before_commit` (8); and
//! `admission.check_then_act`, which with `sleep(ms)` turns the admission into the seeded race
//! of the C1 mutation check; and `recovery.resend_deploying` (set with any action, e.g.
//! `sleep(0)`), which makes start-up recovery re-send a deploy that was out instead of
//! reconciling it: the seeded bug of the B1 mutation check. Outside the pipeline,
//! `inventory.after_list` holds the inventory sync between Fluence's listing and its write.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Sleep(u64),
}

/// The configured failpoints; empty (and free to check) by default.
#[derive(Debug, Clone, Default)]
pub struct Failpoints(Arc<HashMap<String, Action>>);

impl Failpoints {
    pub fn parse(spec: &str) -> Result<Failpoints, String> {
        let mut points = HashMap::new();
        for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, action) = item
                .split_once('=')
                .ok_or_else(|| format!("failpoint `{item}` is not `name=action`"))?;
            let action = match action.trim() {
                "pause" => Action::Pause,
                other => {
                    let ms = other
                        .strip_prefix("sleep(")
                        .and_then(|rest| rest.strip_suffix(')'))
                        .and_then(|ms| ms.parse().ok())
                        .ok_or_else(|| {
                            format!("failpoint `{name}`: action must be `pause` or `sleep(ms)`")
                        })?;
                    Action::Sleep(ms)
                }
            };
            points.insert(name.trim().to_owned(), action);
        }
        if !points.is_empty() && !cfg!(feature = "failpoints") {
            return Err("failpoints are configured but this build has none".into());
        }
        Ok(Failpoints(Arc::new(points)))
    }

    pub fn is_set(&self, name: &str) -> bool {
        cfg!(feature = "failpoints") && self.0.contains_key(name)
    }

    /// Runs the action configured for `name`, if any.
    pub async fn hit(&self, name: &str) {
        if !cfg!(feature = "failpoints") {
            return;
        }
        match self.0.get(name) {
            None => {}
            Some(Action::Sleep(ms)) => tokio::time::sleep(Duration::from_millis(*ms)).await,
            Some(Action::Pause) => {
                eprintln!("FAILPOINT {name} reached");
                std::future::pending::<()>().await;
            }
        }
    }
}

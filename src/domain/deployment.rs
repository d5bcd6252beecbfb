//! A deployment's life (PRODUCT.md section 5): its states, which moves are allowed, and the name
//! its VMs carry upstream so that the gateway can always recognise its own.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    Estimating,
    WaitingForPrice,
    Admitted,
    /// The intent is recorded and the deploy call may be out: from here on the outcome is
    /// learnt from Fluence, never by sending again.
    Deploying,
    Deployed,
    Rejected,
    Failed,
    Cancelled,
    Expired,
    /// The deploy call's outcome is unknown (timeout, reset, 5xx); the reconciler settles it.
    Unknown,
}

impl Status {
    pub const ALL: [Status; 11] = [
        Status::Queued,
        Status::Estimating,
        Status::WaitingForPrice,
        Status::Admitted,
        Status::Deploying,
        Status::Deployed,
        Status::Rejected,
        Status::Failed,
        Status::Cancelled,
        Status::Expired,
        Status::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Estimating => "estimating",
            Status::WaitingForPrice => "waiting_for_price",
            Status::Admitted => "admitted",
            Status::Deploying => "deploying",
            Status::Deployed => "deployed",
            Status::Rejected => "rejected",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Expired => "expired",
            Status::Unknown => "unknown",
        }
    }

    /// No further move: the deployment's money is settled or was never held.
    /// (`deployed` is final as a status; its hold settles separately, see `settled_at`.)
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Deployed
                | Status::Rejected
                | Status::Failed
                | Status::Cancelled
                | Status::Expired
        )
    }

    /// Nothing has been sent to Fluence yet, so the deployment may still be cancelled.
    pub fn is_before_forwarding(self) -> bool {
        matches!(
            self,
            Status::Queued | Status::Estimating | Status::WaitingForPrice | Status::Admitted
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| format!("unknown deployment status {text:?}"))
    }
}

/// How many characters of the deployment id go into the upstream name: 8 characters of a ULID's
/// random part are 40 bits, so two deployments of one team with the same name will not collide
/// in practice, and the UNIQUE constraint on `upstream_name` catches it if they ever do.
pub const SHORT_ID_LEN: usize = 8;

/// The name every VM of a deployment carries upstream: `<name>-<short id>`, lower-case id.
/// Fluence allows letters, digits and hyphens, which both parts are made of.
pub fn upstream_name(name: &str, deployment_id: &str) -> String {
    let id = deployment_id.rsplit('_').next().unwrap_or(deployment_id);
    let start = id.len().saturating_sub(SHORT_ID_LEN);
    let short = id.get(start..).unwrap_or(id).to_ascii_lowercase();
    format!("{name}-{short}")
}

/// What to do with a deployment after its estimate, given the price limit it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriceVerdict {
    /// No limit, or the best offer fits it.
    Proceed,
    /// Too expensive now, but it may wait until `start_before`.
    Wait,
    /// Too expensive and it may not (or may no longer) wait.
    TooExpensive,
}

/// Cost-aware scheduling: with a `max_price_per_epoch` and a `start_before` still ahead, a
/// deployment whose price is above its limit waits for a cheaper offer.
pub fn price_verdict(
    price_per_vm_micros: i64,
    limit_micros: Option<i64>,
    may_wait: bool,
) -> PriceVerdict {
    match limit_micros {
        Some(limit) if price_per_vm_micros > limit => {
            if may_wait {
                PriceVerdict::Wait
            } else {
                PriceVerdict::TooExpensive
            }
        }
        _ => PriceVerdict::Proceed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_text() {
        for status in Status::ALL {
            assert_eq!(status.as_str().parse::<Status>(), Ok(status));
            assert_eq!(
                serde_json::to_value(status).ok(),
                Some(serde_json::Value::String(status.as_str().into()))
            );
        }
        assert!("Deployed".parse::<Status>().is_err());
    }

    #[test]
    fn only_unforwarded_deployments_are_cancellable() {
        let cancellable: Vec<_> = Status::ALL
            .into_iter()
            .filter(|s| s.is_before_forwarding())
            .collect();
        assert_eq!(
            cancellable,
            [
                Status::Queued,
                Status::Estimating,
                Status::WaitingForPrice,
                Status::Admitted
            ]
        );
        assert!(!Status::Deploying.is_final() && !Status::Unknown.is_final());
    }

    #[test]
    fn upstream_names_end_with_the_ids_random_tail_in_lower_case() {
        assert_eq!(
            upstream_name("web", "dep_01JDX3ZP6Q8W9E2R4T5Y7U1IOK"),
            "web-5y7u1iok"
        );
        assert_eq!(upstream_name("a", "dep_AB"), "a-ab");
    }

    #[test]
    fn a_price_above_the_limit_waits_only_when_it_may() {
        assert_eq!(price_verdict(10, None, false), PriceVerdict::Proceed);
        assert_eq!(price_verdict(10, Some(10), false), PriceVerdict::Proceed);
        assert_eq!(price_verdict(11, Some(10), true), PriceVerdict::Wait);
        assert_eq!(
            price_verdict(11, Some(10), false),
            PriceVerdict::TooExpensive
        );
    }
}

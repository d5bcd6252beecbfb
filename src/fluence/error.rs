//! What can go wrong when calling Fluence, typed so that callers can tell a refused request from
//! one whose outcome is unknown.
//!
//! The distinction matters because `POST /vms/v3` has no idempotency key and moves two epochs of
//! rent per VM: a deploy that *may* have taken effect must be reconciled against the VM list, never
//! blindly retried, while one that was definitely refused can be reported (or retried) safely.

use std::fmt;

use reqwest::Method;

/// One Fluence v3 endpoint. `Display` gives `"POST /vms/v3"`, the label used in metrics, logs and
/// the simulator's fault names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    Offers,
    BasicConfigurations,
    Countries,
    Hardware,
    Datacenters,
    DefaultImages,
    Estimate,
    Deploy,
    ListVms,
    VmStatuses,
    PatchVms,
    DeleteVms,
    ListSshKeys,
    CreateSshKey,
    DeleteSshKey,
}

impl Endpoint {
    /// Every endpoint, for building metric label sets and fault tables up front.
    pub const ALL: [Endpoint; 15] = [
        Endpoint::Offers,
        Endpoint::BasicConfigurations,
        Endpoint::Countries,
        Endpoint::Hardware,
        Endpoint::Datacenters,
        Endpoint::DefaultImages,
        Endpoint::Estimate,
        Endpoint::Deploy,
        Endpoint::ListVms,
        Endpoint::VmStatuses,
        Endpoint::PatchVms,
        Endpoint::DeleteVms,
        Endpoint::ListSshKeys,
        Endpoint::CreateSshKey,
        Endpoint::DeleteSshKey,
    ];

    pub fn method(self) -> Method {
        match self {
            Endpoint::BasicConfigurations
            | Endpoint::Countries
            | Endpoint::Hardware
            | Endpoint::Datacenters
            | Endpoint::DefaultImages
            | Endpoint::ListVms
            | Endpoint::VmStatuses
            | Endpoint::ListSshKeys => Method::GET,
            Endpoint::Offers | Endpoint::Estimate | Endpoint::Deploy | Endpoint::CreateSshKey => {
                Method::POST
            }
            Endpoint::PatchVms => Method::PATCH,
            Endpoint::DeleteVms | Endpoint::DeleteSshKey => Method::DELETE,
        }
    }

    /// The path without query string, relative to the base URL.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Offers => "/marketplace/offers",
            Endpoint::BasicConfigurations => "/marketplace/basic_configurations",
            Endpoint::Countries => "/marketplace/countries",
            Endpoint::Hardware => "/marketplace/hardware",
            Endpoint::Datacenters => "/v1/marketplace/datacenters",
            Endpoint::DefaultImages => "/vms/v3/default_images",
            Endpoint::Estimate => "/vms/v3/estimate",
            Endpoint::Deploy | Endpoint::ListVms | Endpoint::PatchVms | Endpoint::DeleteVms => {
                "/vms/v3"
            }
            Endpoint::VmStatuses => "/vms/v3/status",
            Endpoint::ListSshKeys | Endpoint::CreateSshKey | Endpoint::DeleteSshKey => "/ssh_keys",
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method(), self.path())
    }
}

/// A failed call to Fluence.
///
/// None of the variants ever holds the API key: it travels only in a request header (never in the
/// URL), headers are never copied into an error, and Fluence's error message is scrubbed of the
/// key before it is stored here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FluenceError {
    /// No complete HTTP response was received.
    #[error("{endpoint}: transport error ({}): {detail}", sent_phrase(*.may_have_been_sent))]
    Transport {
        endpoint: Endpoint,
        /// `false` only when the request provably never reached the server: the connection (TCP
        /// or TLS) could not be established, or the request could not even be built. A timeout,
        /// a reset after connecting or a broken response body all leave open whether Fluence
        /// acted on the request, so they are `true`; a deploy in that state must be reconciled,
        /// not retried.
        may_have_been_sent: bool,
        detail: String,
    },
    /// Fluence answered with a status other than 2xx (redirects are not followed, so 3xx lands
    /// here too).
    #[error("{endpoint}: HTTP {status}{}", message_suffix(.message.as_deref()))]
    Status {
        endpoint: Endpoint,
        status: u16,
        /// The `error` field of Fluence's `{"error": "..."}` body, truncated.
        message: Option<String>,
    },
    /// Fluence answered 2xx but the body is not what the endpoint returns.
    #[error("{endpoint}: undecodable HTTP {status} response: {detail}")]
    Decode {
        endpoint: Endpoint,
        status: u16,
        detail: String,
    },
    /// The gateway's own guard kept the call back (see `fluence::guard`): nothing was sent.
    #[error("{endpoint}: not sent: {reason}")]
    HeldBack {
        endpoint: Endpoint,
        reason: HeldBack,
    },
}

/// Why the guard kept a call back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeldBack {
    #[error("{limit} calls to Fluence are already out")]
    Saturated { limit: usize },
    #[error("Fluence has been failing; calls are paused until a probe succeeds")]
    CircuitOpen,
}

fn sent_phrase(may_have_been_sent: bool) -> &'static str {
    if may_have_been_sent {
        "request may have been sent"
    } else {
        "request not sent"
    }
}

fn message_suffix(message: Option<&str>) -> String {
    message.map(|m| format!(": {m}")).unwrap_or_default()
}

impl FluenceError {
    pub fn endpoint(&self) -> Endpoint {
        match self {
            FluenceError::Transport { endpoint, .. }
            | FluenceError::Status { endpoint, .. }
            | FluenceError::Decode { endpoint, .. }
            | FluenceError::HeldBack { endpoint, .. } => *endpoint,
        }
    }

    /// The HTTP status, when a response arrived.
    pub fn status(&self) -> Option<u16> {
        match self {
            FluenceError::Transport { .. } | FluenceError::HeldBack { .. } => None,
            FluenceError::Status { status, .. } | FluenceError::Decode { status, .. } => {
                Some(*status)
            }
        }
    }

    /// The key was refused. The v3 docs say 403, the newer API uses 401 for a bad key and 403
    /// for a forbidden one; for a gateway holding a single key both mean the key does not work.
    pub fn is_auth_failure(&self) -> bool {
        matches!(
            self,
            FluenceError::Status {
                status: 401 | 403,
                ..
            }
        )
    }

    /// Fluence refused the request (4xx), so it had no effect and the same request would be
    /// refused again.
    pub fn is_definite_rejection(&self) -> bool {
        matches!(
            self,
            FluenceError::Status {
                status: 400..=499,
                ..
            }
        )
    }

    /// The outcome of a mutating call is unknown: it may or may not have taken effect.
    ///
    /// That is a transport error after the request may have left, a 5xx (the server may have
    /// failed after acting), a 2xx whose body could not be read, and also any other non-4xx
    /// status such as an unfollowed 3xx: only a 4xx proves refusal, and guessing wrong on a deploy
    /// pays for duplicate VMs, so everything not provably refused counts as ambiguous.
    pub fn is_ambiguous(&self) -> bool {
        match self {
            FluenceError::Transport {
                may_have_been_sent, ..
            } => *may_have_been_sent,
            FluenceError::Status { status, .. } => !(400..=499).contains(status),
            FluenceError::Decode { .. } => true,
            FluenceError::HeldBack { .. } => false,
        }
    }

    /// The gateway's guard kept the call back: try again later, nothing happened upstream.
    pub fn is_held_back(&self) -> bool {
        matches!(self, FluenceError::HeldBack { .. })
    }
}

/// Why a [`ClientConfig`](crate::fluence::ClientConfig) cannot make a client. Never includes the
/// key itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientConfigError {
    #[error("invalid Fluence base URL: {0}")]
    BaseUrl(String),
    #[error("invalid Fluence API key: it must be non-empty printable ASCII")]
    ApiKey,
    #[error("invalid Fluence client timeouts: {0}")]
    Timeout(&'static str),
    #[error("cannot build the Fluence HTTP client: {0}")]
    Build(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_display_as_method_and_path() {
        assert_eq!(Endpoint::Deploy.to_string(), "POST /vms/v3");
        assert_eq!(Endpoint::DeleteVms.to_string(), "DELETE /vms/v3");
        assert_eq!(
            Endpoint::Datacenters.to_string(),
            "GET /v1/marketplace/datacenters"
        );
        let labels: std::collections::HashSet<String> =
            Endpoint::ALL.iter().map(ToString::to_string).collect();
        assert_eq!(labels.len(), Endpoint::ALL.len());
    }

    #[test]
    fn classification_separates_refusal_from_unknown_outcome() {
        let status = |status| FluenceError::Status {
            endpoint: Endpoint::Deploy,
            status,
            message: None,
        };
        assert!(status(403).is_auth_failure() && status(401).is_auth_failure());
        assert!(!status(422).is_auth_failure());
        assert!(status(422).is_definite_rejection() && !status(422).is_ambiguous());
        assert!(status(502).is_ambiguous() && !status(502).is_definite_rejection());
        assert!(status(302).is_ambiguous());
        let transport = |sent| FluenceError::Transport {
            endpoint: Endpoint::Deploy,
            may_have_been_sent: sent,
            detail: String::new(),
        };
        assert!(transport(true).is_ambiguous());
        assert!(!transport(false).is_ambiguous() && !transport(false).is_definite_rejection());
        assert_eq!(transport(true).status(), None);
        let decode = FluenceError::Decode {
            endpoint: Endpoint::Deploy,
            status: 201,
            detail: String::new(),
        };
        assert!(decode.is_ambiguous());
        assert_eq!(decode.status(), Some(201));
    }
}

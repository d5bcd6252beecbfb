//! Injected faults: what the next matching calls do instead of (or after) their normal work.

use serde::{Deserialize, Serialize};

/// The longest `delay` a fault may hold a call, in real milliseconds: ten minutes outlasts any
/// client timeout worth testing, and a bound keeps a typo from parking a request for ages.
pub const MAX_DELAY_MS: u64 = 10 * 60 * 1000;
/// The longest `visibility_delay`, in virtual seconds: a year is far beyond any eventual
/// consistency worth simulating and keeps the instant it ends well inside chrono's range.
pub const MAX_VISIBILITY_SECONDS: i64 = 365 * 24 * 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Answer an error and do nothing.
    ErrorBeforeCommit,
    /// Do the work, then answer an error.
    CommitThenError,
    /// Do the work, then reset the connection without an answer.
    CommitThenReset,
    /// Do the work, then never answer.
    CommitThenHang,
    /// Wait `delay_ms` (required) real milliseconds, then behave normally.
    Delay,
    /// Do the work, then answer the success status with a body that does not parse.
    MalformedBody,
    /// Create `instances_created` (required, any k >= 0) of the VMs asked for, then answer an
    /// error. A k above the number asked for creates them all: min(k, instances).
    CommitPartial,
    /// Create normally, but keep the new VMs out of lists for `seconds` (required) virtual
    /// seconds. (`seconds` on `commit_then_error`, `commit_then_reset`, `commit_then_hang` or
    /// `malformed_body` hides what they created in the same way.)
    VisibilityDelay,
}

impl FaultKind {
    /// Faults that stand for "the work was done, then something went wrong" (or that shape the
    /// work done). They fire only on a call that succeeded; on one the API refused anyway
    /// (a 4xx for a bad name, say) nothing was committed, so the real answer goes out and the
    /// fault stays armed for the next call.
    pub fn needs_commit(self) -> bool {
        matches!(
            self,
            FaultKind::CommitThenError
                | FaultKind::CommitThenReset
                | FaultKind::CommitThenHang
                | FaultKind::MalformedBody
                | FaultKind::CommitPartial
                | FaultKind::VisibilityDelay
        )
    }
}

/// The body of `POST /_sim/faults`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// `"METHOD /path"`, the path without its query.
    pub endpoint: String,
    pub fault: FaultKind,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub delay_ms: Option<u64>,
    #[serde(default)]
    pub count: Option<u32>,
    #[serde(default)]
    pub instances_created: Option<u32>,
    #[serde(default)]
    pub seconds: Option<i64>,
}

/// One armed fault, handed to the call that triggers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    pub status: u16,
    pub delay_ms: u64,
    pub instances_created: u32,
    pub seconds: i64,
}

#[derive(Debug, Clone)]
struct Armed {
    method: String,
    path: String,
    remaining: u32,
    fault: Fault,
}

#[derive(Debug, Default)]
pub struct Faults {
    armed: Vec<Armed>,
    /// Bumped by `clear`, so a fault taken before a clear is not given back after it.
    generation: u64,
}

/// A fault handed to a call, with what it takes to give it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub fault: Fault,
    method: String,
    path: String,
    generation: u64,
}

impl Faults {
    pub fn add(&mut self, spec: FaultSpec) -> Result<(), String> {
        let (method, path) = spec
            .endpoint
            .trim()
            .split_once(' ')
            .ok_or_else(|| "endpoint must look like \"POST /vms/v3\"".to_owned())?;
        let status = spec.status.unwrap_or(500);
        if !(100..=599).contains(&status) {
            return Err(format!("status {status} is not an HTTP status"));
        }
        // Without its amount a fault would silently do nothing (or create no VM at all).
        let missing = match spec.fault {
            FaultKind::Delay if spec.delay_ms.is_none() => Some("delay needs \"delay_ms\""),
            FaultKind::CommitPartial if spec.instances_created.is_none() => {
                Some("commit_partial needs \"instances_created\"")
            }
            FaultKind::VisibilityDelay if spec.seconds.is_none() => {
                Some("visibility_delay needs \"seconds\"")
            }
            _ => None,
        };
        if let Some(message) = missing {
            return Err(message.to_owned());
        }
        if spec.delay_ms.is_some_and(|ms| ms > MAX_DELAY_MS) {
            return Err(format!("delay_ms must be within 0..={MAX_DELAY_MS}"));
        }
        if spec
            .seconds
            .is_some_and(|s| !(0..=MAX_VISIBILITY_SECONDS).contains(&s))
        {
            return Err(format!(
                "seconds must be within 0..={MAX_VISIBILITY_SECONDS}"
            ));
        }
        self.armed.push(Armed {
            method: method.trim().to_ascii_uppercase(),
            path: normalise_path(path.trim()),
            remaining: spec.count.unwrap_or(1),
            fault: Fault {
                kind: spec.fault,
                status,
                delay_ms: spec.delay_ms.unwrap_or(0),
                instances_created: spec.instances_created.unwrap_or(0),
                seconds: spec.seconds.unwrap_or(0),
            },
        });
        Ok(())
    }

    pub fn clear(&mut self) {
        self.armed.clear();
        self.generation += 1;
    }

    /// The first armed fault for this call, used up by one.
    pub fn take(&mut self, method: &str, path: &str) -> Option<Taken> {
        let path = normalise_path(path);
        let position = self
            .armed
            .iter()
            .position(|a| a.remaining > 0 && a.method == method && a.path == path)?;
        let armed = self.armed.get_mut(position)?;
        armed.remaining -= 1;
        let taken = Taken {
            fault: armed.fault.clone(),
            method: armed.method.clone(),
            path: armed.path.clone(),
            generation: self.generation,
        };
        self.armed.retain(|a| a.remaining > 0);
        Some(taken)
    }

    /// Re-arms a fault taken by a call it did not fire on, first in line for its endpoint as
    /// it was. A fault cleared in the meantime stays cleared.
    pub fn give_back(&mut self, taken: Taken) {
        if taken.generation != self.generation {
            return;
        }
        let same =
            |a: &Armed| a.method == taken.method && a.path == taken.path && a.fault == taken.fault;
        if let Some(armed) = self.armed.iter_mut().find(|a| same(a)) {
            armed.remaining = armed.remaining.saturating_add(1);
            return;
        }
        self.armed.insert(
            0,
            Armed {
                method: taken.method,
                path: taken.path,
                remaining: 1,
                fault: taken.fault,
            },
        );
    }
}

fn normalise_path(path: &str) -> String {
    let path = path.split('?').next().unwrap_or(path);
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_fires_count_times_on_its_endpoint_only() {
        let mut faults = Faults::default();
        let spec = FaultSpec {
            endpoint: "post /vms/v3/".into(),
            fault: FaultKind::CommitThenError,
            status: Some(502),
            delay_ms: None,
            count: Some(2),
            instances_created: None,
            seconds: None,
        };
        assert!(faults.add(spec).is_ok());
        assert_eq!(faults.take("GET", "/vms/v3"), None);
        assert_eq!(
            faults.take("POST", "/vms/v3").map(|t| t.fault.status),
            Some(502)
        );
        assert!(faults.take("POST", "/vms/v3?x=1").is_some());
        assert_eq!(faults.take("POST", "/vms/v3"), None);
    }

    #[test]
    fn a_fault_given_back_fires_again_unless_cleared_meanwhile() {
        let mut faults = Faults::default();
        let spec = FaultSpec {
            endpoint: "POST /vms/v3".into(),
            fault: FaultKind::CommitThenError,
            status: None,
            delay_ms: None,
            count: Some(1),
            instances_created: None,
            seconds: None,
        };
        assert!(faults.add(spec).is_ok());
        let taken = faults.take("POST", "/vms/v3");
        assert_eq!(faults.take("POST", "/vms/v3"), None);
        faults.give_back(taken.clone().unwrap_or_else(|| panic!("armed")));
        assert_eq!(faults.take("POST", "/vms/v3"), taken);
        faults.clear();
        faults.give_back(taken.unwrap_or_else(|| panic!("armed")));
        assert_eq!(faults.take("POST", "/vms/v3"), None);
    }
}

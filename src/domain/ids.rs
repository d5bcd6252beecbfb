//! Identifiers.

use std::fmt;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};

/// A Fluence VM id: `0x` and 40 hex digits in EIP-55 mixed case.
///
/// Fluence has been seen returning the same id in a different letter case from create and from
/// list, so ids compare and hash case-insensitively while keeping the form they arrived in for
/// sending back.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VmId(String);

impl VmId {
    pub fn new(id: impl Into<String>) -> Self {
        VmId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The lower-case form, for storage keys and comparisons.
    pub fn canonical(&self) -> String {
        self.0.to_ascii_lowercase()
    }

    /// `0x` followed by exactly 40 hex digits, in any case.
    pub fn is_well_formed(&self) -> bool {
        self.0.len() == 42
            && (self.0.starts_with("0x") || self.0.starts_with("0X"))
            && self.0[2..].bytes().all(|b| b.is_ascii_hexdigit())
    }
}

impl PartialEq for VmId {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq_ignore_ascii_case(&other.0)
    }
}

impl Eq for VmId {}

impl Hash for VmId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for byte in self.0.bytes() {
            state.write_u8(byte.to_ascii_lowercase());
        }
    }
}

impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VmId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_differing_only_in_case_are_the_same_vm() {
        let a = VmId::new("0xA4c123B1612dd272d1371C17149d439536b3216F");
        let b = VmId::new("0xa4c123b1612dd272d1371c17149d439536b3216f");
        assert_eq!(a, b);
        let set: HashSet<VmId> = [a.clone(), b].into_iter().collect();
        assert_eq!(set.len(), 1);
        assert!(a.is_well_formed());
        assert!(!VmId::new("0x123").is_well_formed());
    }
}

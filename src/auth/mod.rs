//! API keys: how they are minted, stored and checked.
//!
//! A key reads `fgw_<16 hex>_<43 base64url>`. The first part (`fgw_` and 16 hex digits, 64
//! random bits) is the visible prefix that finds the row; the rest is a 256-bit secret stored
//! only as its SHA-256 digest. A check is one indexed lookup (in memory for a key checked in the
//! last few seconds, see `cache`) and one constant-time comparison of digests; an unknown prefix
//! is compared against a decoy digest, so the secret's check costs the same either way. (A known prefix also decodes its row; prefixes are not secret, they are
//! shown in key lists.) SHA-256 (not a password hash) is enough because the secret is random and
//! long, and it keeps a flood of bad keys cheap to refuse.

pub mod cache;

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::domain::team::TeamId;
use crate::store::keys::KeyRecord;

const PREFIX_TAG: &str = "fgw_";
const PREFIX_HEX_LEN: usize = 16;
const SECRET_BYTES: usize = 32;
const SECRET_LEN: usize = 43;
/// `fgw_` + 16 hex digits.
pub const PREFIX_LEN: usize = PREFIX_TAG.len() + PREFIX_HEX_LEN;

/// The actor name of the bootstrap admin token in the audit trail.
pub const BOOTSTRAP_ACTOR: &str = "bootstrap-admin";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, every team.
    Admin,
    /// Its team: read, deploy, change and delete its VMs.
    Member,
    /// Its team: read only.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is calling, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key id, or [`BOOTSTRAP_ACTOR`].
    pub actor: String,
    pub role: Role,
    /// The team of a member or viewer key; `None` for admins.
    pub team: Option<TeamId>,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether this principal may see `team` at all. A team key naming another team is treated
    /// exactly as if that team did not exist.
    pub fn can_see_team(&self, team: &str) -> bool {
        self.is_admin() || self.team.as_ref().is_some_and(|own| own.as_str() == team)
    }

    pub fn can_write(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Member)
    }
}

/// A freshly minted key: the full secret string (shown once) and what is stored.
pub struct MintedKey {
    pub token: SecretString,
    pub prefix: String,
    pub secret_sha256: Vec<u8>,
}

/// Mints a key from the operating system's CSPRNG.
pub fn mint() -> Result<MintedKey, getrandom::Error> {
    let mut prefix_bytes = [0u8; PREFIX_HEX_LEN / 2];
    let mut secret_bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut prefix_bytes)?;
    getrandom::fill(&mut secret_bytes)?;
    let prefix = format!("{PREFIX_TAG}{}", hex(&prefix_bytes));
    let secret = URL_SAFE_NO_PAD.encode(secret_bytes);
    let secret_sha256 = Sha256::digest(secret.as_bytes()).to_vec();
    Ok(MintedKey {
        token: SecretString::from(format!("{prefix}_{secret}")),
        prefix,
        secret_sha256,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A presented token split into its lookup prefix and its secret, if it has the shape of a key.
pub fn split_token(token: &str) -> Option<(&str, &str)> {
    let (prefix, rest) = (token.get(..PREFIX_LEN)?, token.get(PREFIX_LEN..)?);
    let secret = rest.strip_prefix('_')?;
    let hex_part = prefix.strip_prefix(PREFIX_TAG)?;
    let well_formed = hex_part
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && secret.len() == SECRET_LEN
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    well_formed.then_some((prefix, secret))
}

/// A digest that matches no key, compared against when the prefix is unknown so that unknown
/// and wrong keys cost the same.
const DECOY_DIGEST: [u8; 32] = [0xa5; 32];

/// Whether `secret` is the secret of `record` (when there is one), in constant time.
pub fn secret_matches(record: Option<&KeyRecord>, secret: &str) -> bool {
    let presented = Sha256::digest(secret.as_bytes());
    let stored: &[u8] = record.map_or(&DECOY_DIGEST, |r| r.secret_sha256.as_slice());
    let equal: bool = presented.as_slice().ct_eq(stored).into();
    equal && record.is_some()
}

/// Whether a stored key is usable now: neither revoked nor expired.
pub fn is_active(record: &KeyRecord, now: DateTime<Utc>) -> bool {
    record.revoked_at.is_none() && record.expires_at.is_none_or(|at| now < at)
}

/// The bootstrap admin token, kept as a digest so it can be compared in constant time.
#[derive(Clone, Default)]
pub struct BootstrapToken {
    digest: Option<[u8; 32]>,
}

impl BootstrapToken {
    pub fn new(token: Option<&SecretString>) -> Self {
        BootstrapToken {
            digest: token.map(|t| Sha256::digest(t.expose_secret().as_bytes()).into()),
        }
    }

    pub fn matches(&self, presented: &str) -> bool {
        match &self.digest {
            Some(digest) => {
                let presented = Sha256::digest(presented.as_bytes());
                presented.as_slice().ct_eq(digest).into()
            }
            None => false,
        }
    }
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.digest.is_some() {
            "BootstrapToken(set)"
        } else {
            "BootstrapToken(unset)"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_key_splits_back_into_its_prefix_and_matches_its_digest() {
        let minted = mint().unwrap_or_else(|e| panic!("{e}"));
        let token = minted.token.expose_secret();
        let (prefix, secret) = split_token(token).unwrap_or_else(|| panic!("shape: {token}"));
        assert_eq!(prefix, minted.prefix);
        let record = KeyRecord {
            id: "key_x".into(),
            prefix: minted.prefix.clone(),
            secret_sha256: minted.secret_sha256.clone(),
            name: "n".into(),
            role: Role::Member,
            team_id: Some("ml".into()),
            created_at: Utc::now(),
            expires_at: None,
            revoked_at: None,
        };
        assert!(secret_matches(Some(&record), secret));
        assert!(!secret_matches(None, secret));
        let mut wrong = secret.to_owned();
        wrong.replace_range(..1, if wrong.starts_with('A') { "B" } else { "A" });
        assert!(!secret_matches(Some(&record), &wrong));
    }

    #[test]
    fn tokens_of_the_wrong_shape_are_not_keys() {
        let minted = mint().unwrap_or_else(|e| panic!("{e}"));
        let token = minted.token.expose_secret().to_owned();
        for bad in [
            String::new(),
            token[..token.len() - 1].to_owned(),
            format!("{token}x"),
            token.to_uppercase(),
            format!(" {token}"),
            token.replacen("fgw_", "fgx_", 1),
        ] {
            assert!(split_token(&bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn keys_are_distinct() {
        let a = mint().unwrap_or_else(|e| panic!("{e}"));
        let b = mint().unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(a.prefix, b.prefix);
        assert_ne!(a.secret_sha256, b.secret_sha256);
    }
}

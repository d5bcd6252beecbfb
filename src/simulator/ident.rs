//! Identifiers the simulator mints or derives: EIP-55 VM ids, transaction hashes and OpenSSH
//! key fingerprints.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use sha2::{Digest, Sha256};
use sha3::Keccak256;

/// `0x` + the 40 hex digits in EIP-55 mixed case: a letter is upper case when the matching
/// nibble of Keccak-256 of the lower-case hex is 8 or more.
pub fn eip55(hex40: &str) -> String {
    let lower = hex40.to_ascii_lowercase();
    let hash = Keccak256::digest(lower.as_bytes());
    let mut out = String::with_capacity(42);
    out.push_str("0x");
    for (i, c) in lower.chars().enumerate() {
        let byte = hash.get(i / 2).copied().unwrap_or(0);
        let nibble = if i % 2 == 0 { byte >> 4 } else { byte & 0x0f };
        if c.is_ascii_alphabetic() && nibble >= 8 {
            out.push(c.to_ascii_uppercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A parsed OpenSSH public key line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedKey {
    pub algorithm: String,
    pub fingerprint: String,
    pub comment: String,
}

const ALGORITHMS: [&str; 7] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Parses `algorithm base64 [comment]`; the fingerprint is OpenSSH's `SHA256:` form of the
/// decoded key blob, so the same key always has the same fingerprint whatever its comment.
pub fn parse_public_key(line: &str) -> Option<ParsedKey> {
    let mut parts = line.split_whitespace();
    let algorithm = parts.next()?;
    let blob_text = parts.next()?;
    let comment = parts.collect::<Vec<_>>().join(" ");
    if !ALGORITHMS.contains(&algorithm) {
        return None;
    }
    let blob = STANDARD.decode(blob_text).ok()?;
    // The blob starts with its own algorithm name as an SSH string.
    let name_len = usize::try_from(u32::from_be_bytes(blob.get(..4)?.try_into().ok()?)).ok()?;
    if blob.get(4..4 + name_len)? != algorithm.as_bytes() {
        return None;
    }
    let digest = Sha256::digest(&blob);
    Some(ParsedKey {
        algorithm: algorithm.to_owned(),
        fingerprint: format!("SHA256:{}", STANDARD_NO_PAD.encode(digest)),
        comment,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_the_eip55_examples() {
        // Test vectors from EIP-55 itself.
        for id in [
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
            "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
            "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
        ] {
            assert_eq!(eip55(&id[2..]), id);
        }
    }

    #[test]
    fn the_documented_key_has_the_documented_fingerprint() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJPNRUbzCJj/DUYrxXA55JMWoZh+Upg7nGXMiLxDoo4b alice@laptop";
        let parsed = parse_public_key(key);
        assert_eq!(
            parsed.as_ref().map(|p| p.algorithm.as_str()),
            Some("ssh-ed25519")
        );
        assert_eq!(
            parsed.as_ref().map(|p| p.comment.as_str()),
            Some("alice@laptop")
        );
        assert_eq!(
            parsed.map(|p| p.fingerprint).as_deref(),
            Some("SHA256:FjcXCzoKRrOW+pjGfiJB5TGShTsTybxUBWnfG1lxnRI")
        );
        assert_eq!(parse_public_key("ssh-ed25519 not-base64!"), None);
        assert_eq!(parse_public_key("alice-laptop"), None);
    }
}

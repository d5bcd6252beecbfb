//! The plain fields of a deploy request other than `image`: deployment name, SSH keys, open
//! ports, countries, time to live and extra storage.
//!
//! Each validator takes the value as it arrived from JSON (signed integers, unchecked strings),
//! so out-of-range numbers are reported rather than lost in a conversion, and returns the value
//! in the form to send upstream. Errors are short client-facing messages ("must ...") without
//! the field name, which the caller adds; list validators prefix the index of the offending
//! entry, counting from 0 as JSON arrays do.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Longest deployment name. The upstream VM name is `<name>-<8 char short id>` and must stay
/// within 63 characters (a DNS label, as it becomes a hostname), hence 63 - 9 = 54.
pub const MAX_DEPLOYMENT_NAME_LEN: usize = 54;

/// Most SSH keys on one deployment.
pub const MAX_SSH_KEYS: usize = 10;

/// Longest SSH public key line in bytes; a 16384-bit RSA key is about 2.8 KB, so this only
/// stops abuse.
pub const MAX_SSH_KEY_LEN: usize = 16 * 1024;

/// Most open ports on one deployment.
pub const MAX_OPEN_PORTS: usize = 64;

/// Kubelet's port on Fluence hosts; opening it is refused outright.
pub const FORBIDDEN_PORT: u16 = 10250;

/// Most countries a deployment may be restricted to.
pub const MAX_COUNTRIES: usize = 50;

/// Longest time to live: one year.
pub const MAX_TTL_HOURS: u32 = 24 * 365;

/// Largest extra storage, per volume and in total.
pub const MAX_EXTRA_STORAGE_GIB: u64 = 64 * 1024;

/// Most extra storage volumes on one deployment.
pub const MAX_EXTRA_STORAGE_ENTRIES: usize = 4;

/// Key types Fluence's hosts accept in `authorized_keys`, with the number of SSH-string
/// fields in their wire format (RFC 4253, RFC 5656, RFC 8709, OpenSSH PROTOCOL.u2f), counting
/// the type itself. DSA is absent on purpose: OpenSSH disabled it by default years ago.
const SSH_KEY_TYPES: &[(&str, usize)] = &[
    ("ssh-ed25519", 2),
    ("ssh-rsa", 3),
    ("ecdsa-sha2-nistp256", 3),
    ("ecdsa-sha2-nistp384", 3),
    ("ecdsa-sha2-nistp521", 3),
    ("sk-ssh-ed25519@openssh.com", 3),
    ("sk-ecdsa-sha2-nistp256@openssh.com", 4),
];

/// Storage media Fluence offers for extra volumes, spelled as its API spells them.
const STORAGE_TYPES: &[&str] = &["SSD", "NVMe", "HDD"];

/// Checks a deployment name: 1 to 54 of `[A-Za-z0-9-]`, starting and ending with a letter or
/// digit, because it becomes part of a hostname. Returned unchanged.
pub fn validate_deployment_name(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    // Characters are checked before length so that a long non-ASCII name is told about the
    // characters, and so the length below counts ASCII bytes, i.e. characters.
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err("may contain only letters (A-Z, a-z), digits and hyphens".to_owned());
    }
    if name.len() > MAX_DEPLOYMENT_NAME_LEN {
        return Err(format!(
            "must be at most {MAX_DEPLOYMENT_NAME_LEN} characters long"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("must start and end with a letter or digit".to_owned());
    }
    Ok(name.to_owned())
}

/// Checks one OpenSSH public key line, `<type> <base64> [comment]`, and returns it normalised:
/// trimmed, single spaces between the parts, comment trimmed.
///
/// A trailing newline (as in the output of `cat id_ed25519.pub`) is trimmed off; a line break
/// *inside* the value is refused, because it would smuggle a second, unchecked line into
/// `authorized_keys`. Messages never quote the key: they say what is wrong and stay short.
pub fn validate_ssh_key(key: &str) -> Result<String, String> {
    const SHAPE: &str = "must be an OpenSSH public key line: `ssh-ed25519 AAAA... [comment]`";
    if key.len() > MAX_SSH_KEY_LEN {
        return Err(format!("must be at most {MAX_SSH_KEY_LEN} bytes long"));
    }
    let line = key.trim();
    if line.is_empty() {
        return Err(SHAPE.to_owned());
    }
    // U+2028 and U+2029 are not control characters, but YAML (which cloud-init reads keys from)
    // treats them as line breaks, so they can split a line just as `\n` can.
    if line
        .chars()
        .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}')
    {
        return Err("must be a single line without control characters".to_owned());
    }
    let Some((kind, rest)) = line.split_once(' ') else {
        return Err(SHAPE.to_owned());
    };
    let rest = rest.trim_start_matches(' ');
    let (body, comment) = match rest.split_once(' ') {
        Some((body, comment)) => (body, comment.trim()),
        None => (rest, ""),
    };
    let Some(&(_, field_count)) = SSH_KEY_TYPES.iter().find(|(name, _)| *name == kind) else {
        return Err(format!(
            "must start with a supported key type: {}",
            SSH_KEY_TYPES
                .iter()
                .map(|(name, _)| *name)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    let blob = STANDARD
        .decode(body)
        .map_err(|_| format!("{SHAPE}; the key data is not valid base64"))?;
    // The wire format starts with the key type as an SSH string (u32 big-endian length, then
    // the bytes). Requiring it to match the prefix catches keys pasted under the wrong label,
    // which sshd would otherwise silently ignore.
    if ssh_field(&blob).map(|(first, _)| first) != Some(kind.as_bytes()) {
        return Err("must have key data of the type named at its start".to_owned());
    }
    // Every supported key is a fixed number of SSH strings and nothing else, so a field count
    // mismatch or leftover bytes mean the key was truncated or mangled in copying.
    if ssh_fields(&blob).map(|fields| fields.len()) != Some(field_count) {
        return Err("must have complete key data (it looks truncated or corrupted)".to_owned());
    }
    if comment.is_empty() {
        Ok(format!("{kind} {body}"))
    } else {
        Ok(format!("{kind} {body} {comment}"))
    }
}

/// Splits a public key blob into its SSH strings (u32 big-endian length, then the bytes), or
/// `None` if the blob is not exactly a sequence of them.
fn ssh_fields(mut blob: &[u8]) -> Option<Vec<&[u8]>> {
    let mut fields = Vec::new();
    while !blob.is_empty() {
        let (field, rest) = ssh_field(blob)?;
        fields.push(field);
        blob = rest;
    }
    Some(fields)
}

/// The first SSH string of a blob and what follows it, or `None` if the blob is too short.
fn ssh_field(blob: &[u8]) -> Option<(&[u8], &[u8])> {
    let (length, rest) = blob.split_first_chunk::<4>()?;
    let length = usize::try_from(u32::from_be_bytes(*length)).ok()?;
    rest.split_at_checked(length)
}

/// Checks the SSH key list: 1 to [`MAX_SSH_KEYS`] entries (Fluence needs at least one), each a
/// valid key line. Duplicates (same type and key data, whatever the comment) are removed,
/// keeping the first. The count limit applies to the list as sent, before duplicates go.
pub fn validate_ssh_keys(keys: &[String]) -> Result<Vec<String>, String> {
    if keys.is_empty() {
        return Err("must contain at least one SSH public key".to_owned());
    }
    if keys.len() > MAX_SSH_KEYS {
        return Err(format!("may contain at most {MAX_SSH_KEYS} keys"));
    }
    let mut seen: Vec<String> = Vec::with_capacity(keys.len());
    let mut result = Vec::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        let line = validate_ssh_key(key).map_err(|e| format!("entry {i} {e}"))?;
        let identity = key_identity(&line).to_owned();
        if !seen.contains(&identity) {
            seen.push(identity);
            result.push(line);
        }
    }
    Ok(result)
}

/// `<type> <base64>` of a normalised key line: what identifies the key, without the comment.
fn key_identity(line: &str) -> &str {
    match line.match_indices(' ').nth(1) {
        Some((end, _)) => &line[..end],
        None => line,
    }
}

/// A transport protocol for an open port, as Fluence spells it in lower case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortProtocol {
    Tcp,
    Udp,
    Sctp,
}

impl PortProtocol {
    /// The lower-case name Fluence expects.
    pub fn as_str(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
            PortProtocol::Sctp => "sctp",
        }
    }
}

/// Checks one open port: 1 to 65535 but never [`FORBIDDEN_PORT`], with protocol `tcp`, `udp`
/// or `sctp` in lower case (Fluence's spelling; accepting other cases would only hide a client
/// bug).
pub fn validate_port(port: i64, protocol: &str) -> Result<(u16, PortProtocol), String> {
    let number = u16::try_from(port)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| "port must be between 1 and 65535".to_owned())?;
    if number == FORBIDDEN_PORT {
        return Err(format!(
            "port {FORBIDDEN_PORT} (the kubelet) may not be opened"
        ));
    }
    let protocol = match protocol {
        "tcp" => PortProtocol::Tcp,
        "udp" => PortProtocol::Udp,
        "sctp" => PortProtocol::Sctp,
        _ => return Err("protocol must be one of tcp, udp, sctp (in lower case)".to_owned()),
    };
    Ok((number, protocol))
}

/// Checks the open-port list: at most [`MAX_OPEN_PORTS`] entries as sent, each valid.
/// Duplicates are removed and the result is sorted, so equal requests produce equal upstream
/// calls. An empty list is fine: a VM need not expose anything.
pub fn validate_ports(ports: &[(i64, String)]) -> Result<Vec<(u16, PortProtocol)>, String> {
    if ports.len() > MAX_OPEN_PORTS {
        return Err(format!("may contain at most {MAX_OPEN_PORTS} ports"));
    }
    let mut result = ports
        .iter()
        .enumerate()
        .map(|(i, (port, protocol))| {
            validate_port(*port, protocol).map_err(|e| format!("entry {i} {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    result.sort_unstable();
    result.dedup();
    Ok(result)
}

/// Checks an ISO 3166-1 alpha-2 country code: exactly two ASCII letters, in any case, returned
/// upper-cased as Fluence expects. Whether the code is assigned is left to Fluence, whose list
/// of countries with capacity changes anyway.
pub fn validate_country(code: &str) -> Result<String, String> {
    if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err("must be an ISO 3166-1 alpha-2 country code, e.g. DE".to_owned());
    }
    Ok(code.to_ascii_uppercase())
}

/// Checks a country list: at most [`MAX_COUNTRIES`] entries as sent, each valid. Duplicates
/// (in any case) are removed, keeping the order of first appearance, which may express a
/// preference. An empty list means no restriction.
pub fn validate_countries(codes: &[String]) -> Result<Vec<String>, String> {
    if codes.len() > MAX_COUNTRIES {
        return Err(format!("may contain at most {MAX_COUNTRIES} countries"));
    }
    let mut result: Vec<String> = Vec::with_capacity(codes.len());
    for (i, code) in codes.iter().enumerate() {
        let code = validate_country(code).map_err(|e| format!("entry {i} {e}"))?;
        if !result.contains(&code) {
            result.push(code);
        }
    }
    Ok(result)
}

/// Checks a time to live in hours: 1 to [`MAX_TTL_HOURS`].
pub fn validate_ttl_hours(hours: i64) -> Result<u32, String> {
    u32::try_from(hours)
        .ok()
        .filter(|h| (1..=MAX_TTL_HOURS).contains(h))
        .ok_or_else(|| format!("must be between 1 and {MAX_TTL_HOURS} hours"))
}

/// Checks extra storage volumes as `(size in GiB, type)`: at most
/// [`MAX_EXTRA_STORAGE_ENTRIES`] volumes, each 1 to [`MAX_EXTRA_STORAGE_GIB`] GiB of type
/// `SSD`, `NVMe` or `HDD` (Fluence's exact spelling), and no more than
/// [`MAX_EXTRA_STORAGE_GIB`] in total. Order is kept: volumes attach in the order given.
pub fn validate_extra_storage(entries: &[(i64, String)]) -> Result<Vec<(u64, String)>, String> {
    if entries.len() > MAX_EXTRA_STORAGE_ENTRIES {
        return Err(format!(
            "may contain at most {MAX_EXTRA_STORAGE_ENTRIES} volumes"
        ));
    }
    let mut result = Vec::with_capacity(entries.len());
    let mut total: u64 = 0;
    for (i, (gib, kind)) in entries.iter().enumerate() {
        let gib = u64::try_from(*gib)
            .ok()
            .filter(|g| (1..=MAX_EXTRA_STORAGE_GIB).contains(g))
            .ok_or_else(|| {
                format!("entry {i} size must be between 1 and {MAX_EXTRA_STORAGE_GIB} GiB")
            })?;
        if !STORAGE_TYPES.contains(&kind.as_str()) {
            return Err(format!(
                "entry {i} type must be one of {}",
                STORAGE_TYPES.join(", ")
            ));
        }
        // Each size is at most 2^16 and there are at most 4, so this cannot overflow.
        total += gib;
        result.push((gib, kind.clone()));
    }
    if total > MAX_EXTRA_STORAGE_GIB {
        return Err(format!(
            "must add up to at most {MAX_EXTRA_STORAGE_GIB} GiB in total"
        ));
    }
    Ok(result)
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An SSH string: u32 big-endian length, then the bytes.
    fn ssh_string(bytes: &[u8]) -> Vec<u8> {
        let mut out = u32::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(bytes);
        out
    }

    /// A key body of the given type: the type, then as many 32-byte fields of `fill` as the
    /// type's wire format has. The shape is right; the numbers are not a real key.
    fn body(kind: &str, fill: u8) -> String {
        let fields = SSH_KEY_TYPES
            .iter()
            .find(|(name, _)| *name == kind)
            .map_or(2, |(_, count)| *count);
        let mut blob = ssh_string(kind.as_bytes());
        for _ in 1..fields {
            blob.extend(ssh_string(&[fill; 32]));
        }
        STANDARD.encode(blob)
    }

    fn ed25519(fill: u8) -> String {
        format!("ssh-ed25519 {}", body("ssh-ed25519", fill))
    }

    #[test]
    fn the_test_key_has_the_documented_wire_format() {
        let mut expected = vec![0, 0, 0, 11];
        expected.extend_from_slice(b"ssh-ed25519");
        expected.extend_from_slice(&[0, 0, 0, 32]);
        expected.extend_from_slice(&[7; 32]);
        assert_eq!(body("ssh-ed25519", 7), STANDARD.encode(expected));
    }

    #[test]
    fn deployment_names() {
        for good in ["a", "Z", "0", "web-1", "Web-Server-2", "a-b-c", "a--b"] {
            assert_eq!(validate_deployment_name(good), Ok(good.to_owned()));
        }
        let longest = "a".repeat(MAX_DEPLOYMENT_NAME_LEN);
        assert_eq!(validate_deployment_name(&longest), Ok(longest.clone()));
        assert_eq!(
            validate_deployment_name(&format!("{longest}b")),
            Err("must be at most 54 characters long".to_owned())
        );
        assert_eq!(
            validate_deployment_name(&"a".repeat(10 * 1024)),
            Err("must be at most 54 characters long".to_owned())
        );
        assert_eq!(
            validate_deployment_name(""),
            Err("must not be empty".to_owned())
        );
        for bad_chars in [
            "web_1",
            "web 1",
            " web",
            "web\n",
            "web.1",
            "wéb",
            "\u{0430}pple",
            "web\u{0}",
            "日本",
            "web/1",
        ] {
            assert_eq!(
                validate_deployment_name(bad_chars),
                Err("may contain only letters (A-Z, a-z), digits and hyphens".to_owned()),
                "{bad_chars:?}"
            );
        }
        // Unicode characters are refused as characters, not as too long.
        assert_eq!(
            validate_deployment_name(&"é".repeat(10 * 1024)),
            Err("may contain only letters (A-Z, a-z), digits and hyphens".to_owned())
        );
        for bad_ends in ["-web", "web-", "-"] {
            assert_eq!(
                validate_deployment_name(bad_ends),
                Err("must start and end with a letter or digit".to_owned())
            );
        }
    }

    #[test]
    fn ssh_keys_of_every_supported_type_are_accepted() {
        for (kind, _) in SSH_KEY_TYPES {
            let line = format!("{kind} {}", body(kind, 1));
            assert_eq!(validate_ssh_key(&line), Ok(line.clone()));
        }
    }

    #[test]
    fn real_keys_from_ssh_keygen_are_accepted_unchanged() {
        // Generated with OpenSSH's ssh-keygen for this test; only the public halves exist.
        let keys = [
            "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBGSkeyJ5a8QWbzAmjw+SgYgmeRJ6H3IMAPih6EVpqUxB3Twg1wJIh9wc/77IFMFuDJYhsp+gb+e4aD/B7z8xC2w= root@vm",
            "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBGaZlAt7sYyINhhAvwlbxbuYdHWmmW1DfLWCF/8GBJIezLzM2tK0MKqMBtJLO5eUCyO4nk2f0w3FETr9Ed8Oztv065RjQqHpkKk7Czo24fHoKpDLvrEXhjg6xfTMmsFaSQ== root@vm",
            "ecdsa-sha2-nistp521 AAAAE2VjZHNhLXNoYTItbmlzdHA1MjEAAAAIbmlzdHA1MjEAAACFBAAqwqOs4rRjQsYVMwxf6zpTQB0dzj2Id320DUHisO8wkahr1QUX/hHAKuKz7OZnC6sHJ7YYJHhxEes92RQdrNzLHwChRqox2kW4F22Ops+NQ4q+RNgpHvyEK3yqnZEX/FraJgNXN5bFmlbIehIfWFKUvD5VEQLga5BnDWJ0rC93cwqoKg== root@vm",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm2SLMTFwSwqVU5aG3Euvq8bTerPdhO8n2UsCUiNU+I me@host x",
            "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQCpiZFQMLQFhlyKiQCKPRWL4zQhJO7Iy1omXbYCpwjG4N+figZFrPAgb7pkZiDvtDjIcqC3MYdzMR/yCpHwK41SRZGmVBIYlXufa2odBB1Krum/UhUdpVgt8G1gUP8wlqp6hTb02HMTdzpZ4H2QZg/joQ1/7yWGSlwIoD2Clf9S4dRZsplqNhQvO9RphbcT2NjuymPLi39dmjcVxAAkksAfEjUxN/wcTuTV+d7GZ6jVYlAjD7ULiDIDoIwCErLMYh5eKY0LrcyNrTXsr6vTbAWxcoOSpeD9c9cm4Gkh50rwcganIZCrCc1wy+dXAut7F+231tJr+mN5rWzt8NrpYUZwoRlB9YpACGU1Bm3k/uBa/ADwDn6DljxSXU4VtrTgj1YVpFtZkPAwutL0IwVAje5/8oR7ONkQoePh9eoRDmOtkjRTK2Q9xGbflHqScyToxpyLijhUSDJgqlLdtAJaTenT3Jt6AnBxJGjWTSfUWrwYbFSgfN/ythf1P4DknVFyC38= me@host x",
        ];
        for key in keys {
            assert_eq!(validate_ssh_key(&format!("{key}\n")), Ok(key.to_owned()));
        }
    }

    #[test]
    fn ssh_keys_are_normalised() {
        let b = body("ssh-ed25519", 7);
        let cases = [
            (format!("ssh-ed25519 {b}"), format!("ssh-ed25519 {b}")),
            (format!("ssh-ed25519 {b}\n"), format!("ssh-ed25519 {b}")),
            (format!("ssh-ed25519 {b}\r\n"), format!("ssh-ed25519 {b}")),
            (
                format!("  ssh-ed25519   {b}   alice@laptop  "),
                format!("ssh-ed25519 {b} alice@laptop"),
            ),
            (
                format!("ssh-ed25519 {b} Alice Smith (work laptop) ünïcode ✓"),
                format!("ssh-ed25519 {b} Alice Smith (work laptop) ünïcode ✓"),
            ),
            (
                format!("ssh-ed25519 {b} two  spaces kept"),
                format!("ssh-ed25519 {b} two  spaces kept"),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(validate_ssh_key(&input), Ok(expected), "{input:?}");
        }
    }

    #[test]
    fn malformed_ssh_keys_are_refused_without_echoing_them() {
        let b = body("ssh-ed25519", 7);
        let rsa_body = body("ssh-rsa", 7);
        // Padding is required, so this key needs some for the unpadded case below to mean anything.
        assert!(rsa_body.ends_with('='));
        assert!(validate_ssh_key(&format!("ssh-rsa {rsa_body}")).is_ok());
        let bad = [
            String::new(),
            "   ".to_owned(),
            "ssh-ed25519".to_owned(),
            b.clone(),
            format!("ssh-dss {}", body("ssh-dss", 7)),
            format!("SSH-ED25519 {b}"),
            format!("ssh-ed25519x {b}"),
            format!("ssh-ed25519\t{b}"),
            format!("ssh-ed25519 {rsa_body}"),
            format!("ssh-rsa {b}"),
            format!("ssh-ed25519 {b}!"),
            format!("ssh-rsa {}", rsa_body.trim_end_matches('=')),
            format!("ssh-ed25519 {}", &b[..b.len() - 4]),
            "ssh-ed25519 not base64 at all".to_owned(),
            "ssh-ed25519 AAAA".to_owned(),
            format!(
                "ssh-ed25519 {}",
                STANDARD.encode(ssh_string(b"ssh-ed25519"))
            ),
            format!(
                "ssh-ed25519 {}",
                STANDARD.encode([0xff, 0xff, 0xff, 0xff, 1])
            ),
            format!("ssh-ed25519 {b}\nssh-ed25519 {b} attacker"),
            format!("ssh-ed25519 {b} comment\nssh-rsa {rsa_body}"),
            format!("ssh-ed25519 {b} comment\rmore"),
            format!("ssh-ed25519 {b} com\0ment"),
            format!("ssh-ed25519 {b} com\u{1b}[31mment"),
            format!("ssh-ed25519 {b} a\u{2028}ssh-rsa {rsa_body}"),
            format!("ssh-ed25519 {b} a\u{85}b"),
            format!("\u{feff}ssh-ed25519 {b}"),
            format!("ssh-ed25519 {b} {}", "c".repeat(MAX_SSH_KEY_LEN)),
        ];
        for key in &bad {
            let message = validate_ssh_key(key).expect_err(key);
            assert!(message.len() < 200, "{message}");
            assert!(!message.contains(&b[4..20]), "{message}");
            assert!(!message.contains("attacker"), "{message}");
            assert!(message.starts_with("must"), "{message}");
        }
        assert_eq!(
            validate_ssh_key(&format!("ssh-ed25519 {b}\nssh-ed25519 {b}")),
            Err("must be a single line without control characters".to_owned())
        );
        assert_eq!(
            validate_ssh_key(&format!("ssh-ed25519 {rsa_body}")),
            Err("must have key data of the type named at its start".to_owned())
        );
        // Truncated by a whole base64 quantum: still valid base64, but the last field is cut.
        assert_eq!(
            validate_ssh_key(&format!("ssh-ed25519 {}", &b[..b.len() - 4])),
            Err("must have complete key data (it looks truncated or corrupted)".to_owned())
        );
        // A field too many.
        let mut long_blob = STANDARD.decode(&b).unwrap();
        long_blob.extend(ssh_string(b"extra"));
        assert_eq!(
            validate_ssh_key(&format!("ssh-ed25519 {}", STANDARD.encode(long_blob))),
            Err("must have complete key data (it looks truncated or corrupted)".to_owned())
        );
        assert!(
            validate_ssh_key(&format!("ssh-foo {b}"))
                .unwrap_err()
                .starts_with("must start with a supported key type: ssh-ed25519, ssh-rsa")
        );
        assert_eq!(
            validate_ssh_key("ssh-ed25519 A@@@"),
            Err(
                "must be an OpenSSH public key line: `ssh-ed25519 AAAA... [comment]`; the key \
                 data is not valid base64"
                    .to_owned()
            )
        );
    }

    #[test]
    fn ssh_key_length_limit() {
        let b = body("ssh-ed25519", 7);
        let prefix = format!("ssh-ed25519 {b} ");
        let at_limit = format!("{prefix}{}", "c".repeat(MAX_SSH_KEY_LEN - prefix.len()));
        assert_eq!(at_limit.len(), MAX_SSH_KEY_LEN);
        assert!(validate_ssh_key(&at_limit).is_ok());
        assert_eq!(
            validate_ssh_key(&format!("{at_limit}c")),
            Err("must be at most 16384 bytes long".to_owned())
        );
    }

    #[test]
    fn ssh_key_lists() {
        assert_eq!(
            validate_ssh_keys(&[]),
            Err("must contain at least one SSH public key".to_owned())
        );
        let ten: Vec<String> = (0..10).map(ed25519).collect();
        assert_eq!(validate_ssh_keys(&ten), Ok(ten.clone()));
        let eleven: Vec<String> = (0..11).map(ed25519).collect();
        assert_eq!(
            validate_ssh_keys(&eleven),
            Err("may contain at most 10 keys".to_owned())
        );
        // Duplicates by type and body, whatever the comment or spacing, keep the first.
        let keys = vec![
            format!("{} first", ed25519(1)),
            ed25519(2),
            format!("{} second", ed25519(1)),
            format!("  {}  ", ed25519(2)),
            ed25519(3),
        ];
        assert_eq!(
            validate_ssh_keys(&keys),
            Ok(vec![
                format!("{} first", ed25519(1)),
                ed25519(2),
                ed25519(3)
            ])
        );
        // The count limit is on the list as sent.
        let eleven_same: Vec<String> = (0..11).map(|_| ed25519(1)).collect();
        assert!(validate_ssh_keys(&eleven_same).is_err());
        // The offending entry is named by index.
        let keys = vec![ed25519(1), "ssh-ed25519 no!pe".to_owned()];
        assert!(
            validate_ssh_keys(&keys)
                .unwrap_err()
                .starts_with("entry 1 must be an OpenSSH public key line")
        );
    }

    #[test]
    fn single_ports() {
        assert_eq!(validate_port(1, "tcp"), Ok((1, PortProtocol::Tcp)));
        assert_eq!(validate_port(22, "udp"), Ok((22, PortProtocol::Udp)));
        assert_eq!(
            validate_port(65535, "sctp"),
            Ok((65535, PortProtocol::Sctp))
        );
        assert_eq!(validate_port(10249, "tcp"), Ok((10249, PortProtocol::Tcp)));
        assert_eq!(validate_port(10251, "tcp"), Ok((10251, PortProtocol::Tcp)));
        let out_of_range = Err("port must be between 1 and 65535".to_owned());
        for port in [0, -1, 65536, i64::MAX, i64::MIN, 1 << 32] {
            assert_eq!(validate_port(port, "tcp"), out_of_range, "{port}");
        }
        for protocol in ["tcp", "udp", "sctp"] {
            assert_eq!(
                validate_port(10250, protocol),
                Err("port 10250 (the kubelet) may not be opened".to_owned())
            );
        }
        for protocol in ["TCP", "Udp", "", "icmp", " tcp", "tcp\n", "all"] {
            assert_eq!(
                validate_port(80, protocol),
                Err("protocol must be one of tcp, udp, sctp (in lower case)".to_owned()),
                "{protocol:?}"
            );
        }
        assert_eq!(PortProtocol::Tcp.as_str(), "tcp");
        assert_eq!(PortProtocol::Udp.as_str(), "udp");
        assert_eq!(PortProtocol::Sctp.as_str(), "sctp");
    }

    #[test]
    fn port_lists() {
        let list = |items: &[(i64, &str)]| -> Vec<(i64, String)> {
            items.iter().map(|(p, s)| (*p, (*s).to_owned())).collect()
        };
        assert_eq!(validate_ports(&[]), Ok(vec![]));
        assert_eq!(
            validate_ports(&list(&[
                (443, "tcp"),
                (22, "tcp"),
                (443, "udp"),
                (22, "tcp")
            ])),
            Ok(vec![
                (22, PortProtocol::Tcp),
                (443, PortProtocol::Tcp),
                (443, PortProtocol::Udp),
            ])
        );
        assert_eq!(
            validate_ports(&list(&[(22, "tcp"), (10250, "tcp")])),
            Err("entry 1 port 10250 (the kubelet) may not be opened".to_owned())
        );
        let max: Vec<(i64, String)> = (1..=64).map(|p| (p, "tcp".to_owned())).collect();
        assert_eq!(validate_ports(&max).map(|v| v.len()), Ok(64));
        let too_many: Vec<(i64, String)> = (1..=65).map(|p| (p, "tcp".to_owned())).collect();
        assert_eq!(
            validate_ports(&too_many),
            Err("may contain at most 64 ports".to_owned())
        );
    }

    #[test]
    fn countries() {
        assert_eq!(validate_country("DE"), Ok("DE".to_owned()));
        assert_eq!(validate_country("de"), Ok("DE".to_owned()));
        assert_eq!(validate_country("uS"), Ok("US".to_owned()));
        for bad in [
            "",
            "D",
            "DEU",
            "D1",
            "12",
            "D ",
            "ÄÖ",
            "Ä",
            "d\n",
            "\u{0}\u{0}",
        ] {
            assert_eq!(
                validate_country(bad),
                Err("must be an ISO 3166-1 alpha-2 country code, e.g. DE".to_owned()),
                "{bad:?}"
            );
        }
        let codes: Vec<String> = ["nl", "DE", "NL", "de", "US"]
            .iter()
            .map(|c| (*c).to_owned())
            .collect();
        assert_eq!(
            validate_countries(&codes),
            Ok(vec!["NL".to_owned(), "DE".to_owned(), "US".to_owned()])
        );
        assert_eq!(validate_countries(&[]), Ok(vec![]));
        let fifty: Vec<String> = (0..50).map(|_| "DE".to_owned()).collect();
        assert_eq!(validate_countries(&fifty), Ok(vec!["DE".to_owned()]));
        let fifty_one: Vec<String> = (0..51).map(|_| "DE".to_owned()).collect();
        assert_eq!(
            validate_countries(&fifty_one),
            Err("may contain at most 50 countries".to_owned())
        );
        assert_eq!(
            validate_countries(&["DE".to_owned(), "Germany".to_owned()]),
            Err("entry 1 must be an ISO 3166-1 alpha-2 country code, e.g. DE".to_owned())
        );
    }

    #[test]
    fn ttl_hours() {
        assert_eq!(validate_ttl_hours(1), Ok(1));
        assert_eq!(validate_ttl_hours(8760), Ok(MAX_TTL_HOURS));
        for bad in [0, -1, 8761, i64::MAX, i64::MIN, 1 << 32] {
            assert_eq!(
                validate_ttl_hours(bad),
                Err("must be between 1 and 8760 hours".to_owned()),
                "{bad}"
            );
        }
    }

    #[test]
    fn extra_storage() {
        let list = |items: &[(i64, &str)]| -> Vec<(i64, String)> {
            items.iter().map(|(g, s)| (*g, (*s).to_owned())).collect()
        };
        assert_eq!(validate_extra_storage(&[]), Ok(vec![]));
        assert_eq!(
            validate_extra_storage(&list(&[(100, "NVMe"), (1, "SSD"), (50, "HDD")])),
            Ok(vec![
                (100, "NVMe".to_owned()),
                (1, "SSD".to_owned()),
                (50, "HDD".to_owned()),
            ])
        );
        assert_eq!(
            validate_extra_storage(&list(&[(65536, "SSD")])),
            Ok(vec![(65536, "SSD".to_owned())])
        );
        let bad_size = Err("entry 0 size must be between 1 and 65536 GiB".to_owned());
        for gib in [0, -1, 65537, i64::MAX, i64::MIN] {
            assert_eq!(validate_extra_storage(&list(&[(gib, "SSD")])), bad_size);
        }
        for kind in ["ssd", "nvme", "NVME", "Hdd", "", "SSD ", "tape"] {
            assert_eq!(
                validate_extra_storage(&list(&[(10, "SSD"), (10, kind)])),
                Err("entry 1 type must be one of SSD, NVMe, HDD".to_owned()),
                "{kind:?}"
            );
        }
        assert_eq!(
            validate_extra_storage(&list(&[(1, "SSD"); 5])),
            Err("may contain at most 4 volumes".to_owned())
        );
        assert!(validate_extra_storage(&list(&[(16384, "SSD"); 4])).is_ok());
        assert_eq!(
            validate_extra_storage(&list(&[(16384, "SSD"), (16384, "SSD"), (16385, "HDD")]))
                .map(|v| v.len()),
            Ok(3)
        );
        assert_eq!(
            validate_extra_storage(&list(&[(65536, "SSD"), (1, "HDD")])),
            Err("must add up to at most 65536 GiB in total".to_owned())
        );
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in any::<String>(), number in any::<i64>()) {
            let _ = validate_deployment_name(&text);
            let _ = validate_ssh_key(&text);
            let _ = validate_ssh_keys(std::slice::from_ref(&text));
            let _ = validate_port(number, &text);
            let _ = validate_ports(&[(number, text.clone())]);
            let _ = validate_country(&text);
            let _ = validate_countries(std::slice::from_ref(&text));
            let _ = validate_ttl_hours(number);
            let _ = validate_extra_storage(&[(number, text.clone())]);
        }

        #[test]
        fn near_miss_ssh_keys_never_panic(
            kind in prop::sample::select(SSH_KEY_TYPES.iter().map(|(k, _)| *k).collect::<Vec<_>>()),
            blob in prop::collection::vec(any::<u8>(), 0..64),
            comment in "\\PC{0,20}",
        ) {
            let line = format!("{kind} {} {comment}", STANDARD.encode(&blob));
            if let Ok(normalised) = validate_ssh_key(&line) {
                prop_assert!(!normalised.contains('\n'));
                prop_assert!(normalised.starts_with(kind));
                prop_assert_eq!(validate_ssh_key(&normalised), Ok(normalised.clone()));
            }
        }

        #[test]
        fn accepted_names_fit_a_dns_label(name in "[A-Za-z0-9-]{0,70}") {
            if let Ok(name) = validate_deployment_name(&name) {
                prop_assert!(name.len() + 9 <= 63);
            }
        }
    }
}

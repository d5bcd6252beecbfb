//! Team identifiers and budget alert thresholds.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

/// The most thresholds a team may set; each fires an event once per period.
pub const MAX_ALERT_THRESHOLDS: usize = 10;

/// A team slug: `[a-z][a-z0-9-]{1,31}`, no trailing or doubled hyphen. It appears in URLs, in
/// upstream VM names and in logs, so it is kept to characters that need no escaping anywhere.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct TeamId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TeamIdError {
    #[error("must be 2 to 32 characters")]
    Length,
    #[error("must start with a lowercase letter")]
    Start,
    #[error("may contain only lowercase letters, digits and hyphens")]
    Character,
    #[error("must not end with a hyphen or contain two in a row")]
    Hyphen,
}

impl TeamId {
    pub fn parse(text: &str) -> Result<Self, TeamIdError> {
        let bytes = text.as_bytes();
        if !(2..=32).contains(&bytes.len()) {
            return Err(TeamIdError::Length);
        }
        if !bytes[0].is_ascii_lowercase() {
            return Err(TeamIdError::Start);
        }
        if !bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        {
            return Err(TeamIdError::Character);
        }
        if text.ends_with('-') || text.contains("--") {
            return Err(TeamIdError::Hyphen);
        }
        Ok(TeamId(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TeamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for TeamId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for TeamId {
    type Err = TeamIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TeamId::parse(s)
    }
}

impl<'de> Deserialize<'de> for TeamId {
    /// A plain string on the wire, like `#[serde(transparent)]`, but validated: a stored or sent
    /// id never bypasses [`TeamId::parse`].
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        TeamId::parse(&text)
            .map_err(|e| serde::de::Error::custom(format_args!("team id {text:?} {e}")))
    }
}

/// Percent-of-cap thresholds, returned sorted without duplicates: each is 1..=100 and there are
/// at most ten distinct ones.
pub fn validate_alert_thresholds(thresholds: &[u32]) -> Result<Vec<u8>, String> {
    let mut percents = Vec::with_capacity(thresholds.len().min(MAX_ALERT_THRESHOLDS + 1));
    for &threshold in thresholds {
        match u8::try_from(threshold) {
            Ok(percent) if (1..=100).contains(&percent) => percents.push(percent),
            _ => {
                return Err(format!(
                    "alert threshold {threshold} is not a percentage between 1 and 100"
                ));
            }
        }
    }
    percents.sort_unstable();
    percents.dedup();
    if percents.len() > MAX_ALERT_THRESHOLDS {
        return Err(format!(
            "{} alert thresholds given, at most {MAX_ALERT_THRESHOLDS} allowed",
            percents.len()
        ));
    }
    Ok(percents)
}

#[cfg(test)]
// A failed expectation in a test is the test failing, which is what it should do.
#[allow(clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_lowercase_slugs() {
        for id in [
            "ml",
            "ml-platform",
            "team-42",
            "a1",
            "abcdefghijklmnopqrstuvwxyz012345",
        ] {
            assert_eq!(TeamId::parse(id).map(|t| t.to_string()), Ok(id.to_owned()));
        }
    }

    #[test]
    fn refuses_everything_else() {
        let cases = [
            ("", TeamIdError::Length),
            ("m", TeamIdError::Length),
            ("abcdefghijklmnopqrstuvwxyz0123456", TeamIdError::Length),
            ("1ml", TeamIdError::Start),
            ("-ml", TeamIdError::Start),
            ("Ml", TeamIdError::Start),
            ("mL", TeamIdError::Character),
            ("m_l", TeamIdError::Character),
            ("m.l", TeamIdError::Character),
            ("m l", TeamIdError::Character),
            ("mé", TeamIdError::Character),
            ("ml-", TeamIdError::Hyphen),
            ("ml--x", TeamIdError::Hyphen),
        ];
        for (id, error) in cases {
            assert_eq!(TeamId::parse(id), Err(error), "{id:?}");
        }
    }

    #[test]
    fn serde_is_a_validated_string() {
        let id: TeamId = serde_json::from_str("\"ml\"").expect("valid id");
        assert_eq!(serde_json::to_string(&id).ok(), Some("\"ml\"".to_owned()));
        assert!(serde_json::from_str::<TeamId>("\"ML\"").is_err());
        assert!(serde_json::from_str::<TeamId>("3").is_err());
    }

    #[test]
    fn thresholds_are_percentages_sorted_and_deduplicated() {
        assert_eq!(
            validate_alert_thresholds(&[50, 80, 100]),
            Ok(vec![50, 80, 100])
        );
        assert_eq!(validate_alert_thresholds(&[80, 50, 80]), Ok(vec![50, 80]));
        assert_eq!(validate_alert_thresholds(&[]), Ok(vec![]));
        assert!(validate_alert_thresholds(&[0]).is_err());
        assert!(validate_alert_thresholds(&[101]).is_err());
        assert!(validate_alert_thresholds(&[356]).is_err());
        assert!(validate_alert_thresholds(&(1..=10).collect::<Vec<_>>()).is_ok());
        assert_eq!(
            validate_alert_thresholds(&(1..=11).collect::<Vec<_>>()),
            Err("11 alert thresholds given, at most 10 allowed".to_owned())
        );
        assert!(validate_alert_thresholds(&[5; 1000]).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(100_000))]

        #[test]
        fn parse_agrees_with_the_pattern(text in "[a-z0-9A-Z_-]{0,34}") {
            let b = text.as_bytes();
            let pattern = (2..=32).contains(&b.len())
                && b[0].is_ascii_lowercase()
                && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && !text.ends_with('-')
                && !text.contains("--");
            prop_assert_eq!(TeamId::parse(&text).is_ok(), pattern);
        }

        #[test]
        fn thresholds_come_back_strictly_increasing(values in proptest::collection::vec(0..=120_u32, 0..15)) {
            if let Ok(percents) = validate_alert_thresholds(&values) {
                prop_assert!(percents.windows(2).all(|w| w[0] < w[1]));
                prop_assert!(percents.len() <= MAX_ALERT_THRESHOLDS);
                prop_assert!(percents.iter().all(|p| (1..=100).contains(p)));
                prop_assert!(values.iter().all(|v| percents.iter().any(|p| u32::from(*p) == *v)));
            } else {
                let mut distinct = values.clone();
                distinct.sort_unstable();
                distinct.dedup();
                prop_assert!(
                    values.iter().any(|v| !(1..=100).contains(v)) || distinct.len() > MAX_ALERT_THRESHOLDS
                );
            }
        }
    }
}

/// The longest name a team or key may have, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// A display name (of a team or a key), trimmed: 1 to 100 characters, no control characters and
/// none of the invisible format characters (bidirectional overrides, zero-width marks) that
/// make one name look like another in a listing or the audit trail.
pub fn validate_name(name: &str) -> Result<String, String> {
    let trimmed = name.trim();
    let invisible = |c: char| {
        c.is_control()
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
    };
    let length = trimmed.chars().count();
    if length == 0 || length > MAX_NAME_CHARS || trimmed.chars().any(invisible) {
        return Err(format!(
            "must be 1-{MAX_NAME_CHARS} characters, without control or invisible formatting characters"
        ));
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod name_tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_spoofing_characters_refused() {
        assert_eq!(
            validate_name("  ML Platform ").as_deref(),
            Ok("ML Platform")
        );
        assert_eq!(validate_name("Équipe ☃").as_deref(), Ok("Équipe ☃"));
        for bad in [
            "",
            "   ",
            "a\u{0}b",
            "admin\u{202E}nimda",
            "zero\u{200B}width",
            &"n".repeat(101),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}

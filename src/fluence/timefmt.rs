//! The three timestamp styles of the Fluence v3 API.
//!
//! Every style is accepted on input whatever the endpoint; on output each endpoint keeps its own,
//! so the simulator writes exactly what Fluence writes:
//! - VM objects: `2025-11-03T09:14:27Z` ([`vm`]);
//! - default images: `2025-09-01T12:00:00.482913Z` ([`micros`]);
//! - SSH keys: `+002025-11-02T18:40:11.203114000Z`, an expanded-year ISO 8601 form ([`expanded`]).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer};

/// Parses any of the three styles (and any other RFC 3339 form) into UTC.
pub fn parse(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    // Expanded years carry a sign and at least six digits: "+002025-…". Years this API will
    // ever see fit in four digits, so the extra leading zeros are dropped before RFC 3339.
    let normalised;
    let text = match text.strip_prefix('+') {
        Some(rest) => {
            let year_len = rest.find('-')?;
            let year = rest.get(..year_len)?;
            let trimmed = year.trim_start_matches('0');
            if trimmed.len() > 4 || year.len() < 4 {
                return None;
            }
            normalised = format!("{trimmed:0>4}{}", rest.get(year_len..)?);
            normalised.as_str()
        }
        None => text,
    };
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn deserialize_any<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse(&text).ok_or_else(|| serde::de::Error::custom(format_args!("bad timestamp {text:?}")))
}

fn deserialize_any_opt<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<DateTime<Utc>>, D::Error> {
    match Option::<String>::deserialize(deserializer)? {
        None => Ok(None),
        Some(text) => parse(&text)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format_args!("bad timestamp {text:?}"))),
    }
}

/// `2025-11-03T09:14:27Z`, as in VM objects.
pub fn format_vm(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `2025-09-01T12:00:00.482913Z`, as in default images.
pub fn format_micros(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// `+002025-11-02T18:40:11.203114000Z`, as in SSH keys.
pub fn format_expanded(time: &DateTime<Utc>) -> String {
    format!("+00{}", time.to_rfc3339_opts(SecondsFormat::Nanos, true))
}

macro_rules! style {
    ($module:ident, $format:ident) => {
        pub mod $module {
            use chrono::{DateTime, Utc};
            use serde::{Deserializer, Serializer};

            pub fn serialize<S: Serializer>(
                time: &DateTime<Utc>,
                serializer: S,
            ) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&crate::fluence::timefmt::$format(time))
            }

            pub fn deserialize<'de, D: Deserializer<'de>>(
                deserializer: D,
            ) -> Result<DateTime<Utc>, D::Error> {
                super::deserialize_any(deserializer)
            }

            /// The same style for an optional field.
            pub mod option {
                use chrono::{DateTime, Utc};
                use serde::{Deserializer, Serializer};

                pub fn serialize<S: Serializer>(
                    time: &Option<DateTime<Utc>>,
                    serializer: S,
                ) -> Result<S::Ok, S::Error> {
                    match time {
                        Some(time) => {
                            serializer.serialize_str(&crate::fluence::timefmt::$format(time))
                        }
                        None => serializer.serialize_none(),
                    }
                }

                pub fn deserialize<'de, D: Deserializer<'de>>(
                    deserializer: D,
                ) -> Result<Option<DateTime<Utc>>, D::Error> {
                    super::super::deserialize_any_opt(deserializer)
                }
            }
        }
    };
}

style!(vm, format_vm);
style!(micros, format_micros);
style!(expanded, format_expanded);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_three_styles_parse_to_the_same_instant_form() {
        let vm = parse("2025-11-03T09:14:27Z");
        let image = parse("2025-09-01T12:00:00.482913Z");
        let ssh = parse("+002025-11-02T18:40:11.203114000Z");
        assert_eq!(
            vm.map(|t| format_vm(&t)).as_deref(),
            Some("2025-11-03T09:14:27Z")
        );
        assert_eq!(
            image.map(|t| format_micros(&t)).as_deref(),
            Some("2025-09-01T12:00:00.482913Z")
        );
        assert_eq!(
            ssh.map(|t| format_expanded(&t)).as_deref(),
            Some("+002025-11-02T18:40:11.203114000Z")
        );
    }

    #[test]
    fn garbage_is_not_a_time() {
        for bad in [
            "",
            "yesterday",
            "+12025-01-01T00:00:00Z",
            "-002025-01-01T00:00:00Z",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}

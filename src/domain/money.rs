//! USDC amounts as integer micro-USDC.
//!
//! Fluence writes money as decimal strings with up to six fractional digits (USDC has six), and
//! once without a leading zero (`".30697"`). Every amount is parsed exactly into an `i64` count of
//! micro-USDC; no float ever touches money.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Micro-USDC in one USDC.
pub const MICROS_PER_USDC: i64 = 1_000_000;

/// The number of fractional digits USDC carries.
pub const DECIMALS: usize = 6;

/// An amount of USDC, held as an integer number of micro-USDC.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Usdc(i64);

/// Why a decimal string is not an exact USDC amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("is empty")]
    Empty,
    #[error("is not a decimal number")]
    NotADecimal,
    #[error("has more than {DECIMALS} decimal places")]
    TooPrecise,
    #[error("is negative")]
    Negative,
    #[error("is too large")]
    Overflow,
}

impl Usdc {
    pub const ZERO: Usdc = Usdc(0);

    pub const fn from_micros(micros: i64) -> Self {
        Usdc(micros)
    }

    pub const fn micros(self) -> i64 {
        self.0
    }

    /// Parses a non-negative decimal string (`"12.5"`, `"0.3125"`, `".30697"`, `"7"`) exactly.
    /// More than six fractional digits is an error rather than a rounding.
    pub fn parse(text: &str) -> Result<Self, MoneyError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(MoneyError::Empty);
        }
        if text.starts_with('-') {
            return Err(MoneyError::Negative);
        }
        let text = text.strip_prefix('+').unwrap_or(text);
        let (whole, fraction) = match text.split_once('.') {
            Some((whole, fraction)) => (whole, fraction),
            None => (text, ""),
        };
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (whole.is_empty() && fraction.is_empty()) || !all_digits(whole) || !all_digits(fraction)
        {
            return Err(MoneyError::NotADecimal);
        }
        if fraction.len() > DECIMALS {
            return Err(MoneyError::TooPrecise);
        }
        let mut micros: i64 = 0;
        for digit in whole.bytes() {
            micros = micros
                .checked_mul(10)
                .and_then(|m| m.checked_add(i64::from(digit - b'0')))
                .ok_or(MoneyError::Overflow)?;
        }
        micros = micros
            .checked_mul(MICROS_PER_USDC)
            .ok_or(MoneyError::Overflow)?;
        let mut scale = MICROS_PER_USDC / 10;
        for digit in fraction.bytes() {
            micros = micros
                .checked_add(i64::from(digit - b'0') * scale)
                .ok_or(MoneyError::Overflow)?;
            scale /= 10;
        }
        Ok(Usdc(micros))
    }

    pub fn checked_add(self, other: Usdc) -> Option<Usdc> {
        self.0.checked_add(other.0).map(Usdc)
    }

    pub fn checked_sub(self, other: Usdc) -> Option<Usdc> {
        self.0.checked_sub(other.0).map(Usdc)
    }

    pub fn checked_mul(self, factor: i64) -> Option<Usdc> {
        self.0.checked_mul(factor).map(Usdc)
    }

    /// `self * numerator / denominator`, rounded down, without intermediate overflow.
    pub fn checked_mul_ratio(self, numerator: i64, denominator: i64) -> Option<Usdc> {
        if denominator == 0 {
            return None;
        }
        let wide = i128::from(self.0) * i128::from(numerator) / i128::from(denominator);
        i64::try_from(wide).ok().map(Usdc)
    }

    pub fn saturating_sub(self, other: Usdc) -> Usdc {
        Usdc(self.0.saturating_sub(other.0))
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Usdc {
    /// The shortest exact decimal: `"0.3125"`, `"12.5"`, `"7"`, `"0"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let magnitude = self.0.unsigned_abs();
        let micros_per_usdc = MICROS_PER_USDC.unsigned_abs();
        let whole = magnitude / micros_per_usdc;
        let fraction = magnitude % micros_per_usdc;
        if fraction == 0 {
            return write!(f, "{sign}{whole}");
        }
        let digits = format!("{fraction:06}");
        write!(f, "{sign}{whole}.{}", digits.trim_end_matches('0'))
    }
}

impl fmt::Debug for Usdc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Usdc({self})")
    }
}

impl FromStr for Usdc {
    type Err = MoneyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Usdc::parse(s)
    }
}

impl Serialize for Usdc {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Usdc {
    /// Accepts the decimal strings Fluence sends, and whole JSON numbers; a JSON number with a
    /// fraction is refused because it may already have been rounded through a float.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Usdc;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a decimal string of USDC with at most 6 decimals")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Usdc, E> {
                Usdc::parse(v).map_err(|e| E::custom(format_args!("amount {v:?} {e}")))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Usdc, E> {
                i64::try_from(v)
                    .ok()
                    .and_then(|v| v.checked_mul(MICROS_PER_USDC))
                    .map(Usdc)
                    .ok_or_else(|| E::custom("amount is too large"))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Usdc, E> {
                if v < 0 {
                    return Err(E::custom("amount is negative"));
                }
                self.visit_u64(v.unsigned_abs())
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_fluence_writes() {
        assert_eq!(Usdc::parse("0.3125"), Ok(Usdc::from_micros(312_500)));
        assert_eq!(Usdc::parse("12.5"), Ok(Usdc::from_micros(12_500_000)));
        assert_eq!(Usdc::parse(".30697"), Ok(Usdc::from_micros(306_970)));
        assert_eq!(Usdc::parse("7"), Ok(Usdc::from_micros(7_000_000)));
        assert_eq!(Usdc::parse("7."), Ok(Usdc::from_micros(7_000_000)));
        assert_eq!(Usdc::parse("0.000001"), Ok(Usdc::from_micros(1)));
    }

    #[test]
    fn refuses_what_is_not_exact() {
        assert_eq!(Usdc::parse("0.0000001"), Err(MoneyError::TooPrecise));
        assert_eq!(Usdc::parse("-1"), Err(MoneyError::Negative));
        assert_eq!(Usdc::parse(""), Err(MoneyError::Empty));
        assert_eq!(Usdc::parse("."), Err(MoneyError::NotADecimal));
        assert_eq!(Usdc::parse("1e3"), Err(MoneyError::NotADecimal));
        assert_eq!(Usdc::parse("1.2.3"), Err(MoneyError::NotADecimal));
        assert_eq!(Usdc::parse("NaN"), Err(MoneyError::NotADecimal));
        assert_eq!(
            Usdc::parse("99999999999999999999"),
            Err(MoneyError::Overflow)
        );
    }

    #[test]
    fn formats_the_shortest_exact_decimal() {
        for text in ["0", "0.3125", "12.5", "7", "0.000001", "2.45576"] {
            assert_eq!(
                Usdc::parse(text).map(|u| u.to_string()),
                Ok(text.to_owned())
            );
        }
        assert_eq!(Usdc::from_micros(-1_500_000).to_string(), "-1.5");
    }

    #[test]
    fn json_numbers_with_a_fraction_are_refused() {
        assert!(serde_json::from_str::<Usdc>("0.5").is_err());
        assert_eq!(
            serde_json::from_str::<Usdc>("3").ok(),
            Some(Usdc::from_micros(3_000_000))
        );
        assert_eq!(
            serde_json::from_str::<Usdc>("\".30697\"").ok(),
            Some(Usdc::from_micros(306_970))
        );
    }
}

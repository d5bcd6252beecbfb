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
    ///
    /// Only ASCII digits count: exponents, `NaN`, `inf`, digit separators and non-ASCII digits are
    /// refused, because each is a way for an amount to mean something other than what it shows.
    pub fn parse(text: &str) -> Result<Self, MoneyError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(MoneyError::Empty);
        }
        if text.starts_with('-') {
            return Err(MoneyError::Negative);
        }
        let magnitude = parse_magnitude(text.strip_prefix('+').unwrap_or(text))?;
        i64::try_from(magnitude)
            .map(Usdc)
            .map_err(|_| MoneyError::Overflow)
    }

    /// Like [`Usdc::parse`], but a leading `-` is allowed, for adjustments and differences.
    pub fn parse_signed(text: &str) -> Result<Self, MoneyError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(MoneyError::Empty);
        }
        let (negative, rest) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.strip_prefix('+').unwrap_or(text)),
        };
        let magnitude = parse_magnitude(rest)?;
        let value = if negative { -magnitude } else { magnitude };
        i64::try_from(value)
            .map(Usdc)
            .map_err(|_| MoneyError::Overflow)
    }

    /// The exact total, or `None` when it does not fit. The running sum is kept wider than `i64`,
    /// so a mix of signs whose total fits never fails on an intermediate value.
    pub fn checked_sum<I: IntoIterator<Item = Usdc>>(amounts: I) -> Option<Usdc> {
        let total = amounts
            .into_iter()
            .try_fold(0_i128, |sum, amount| sum.checked_add(i128::from(amount.0)))?;
        i64::try_from(total).ok().map(Usdc)
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

/// The micro-USDC of an unsigned decimal (no sign), wider than `i64` so that the caller decides
/// the range and `i64::MIN` stays reachable for signed amounts.
fn parse_magnitude(text: &str) -> Result<i128, MoneyError> {
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (text, ""),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !all_digits(whole) || !all_digits(fraction) {
        return Err(MoneyError::NotADecimal);
    }
    if fraction.len() > DECIMALS {
        return Err(MoneyError::TooPrecise);
    }
    // The bound keeps the accumulator far from i128's limit whatever the number of digits.
    let limit = i128::from(i64::MAX) + 1;
    let mut micros: i128 = 0;
    for digit in whole.bytes() {
        micros = micros * 10 + i128::from(digit - b'0');
        if micros > limit {
            return Err(MoneyError::Overflow);
        }
    }
    micros *= i128::from(MICROS_PER_USDC);
    let mut scale = i128::from(MICROS_PER_USDC / 10);
    for digit in fraction.bytes() {
        micros += i128::from(digit - b'0') * scale;
        scale /= 10;
    }
    Ok(micros)
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

    #[test]
    fn refuses_signs_separators_and_foreign_digits() {
        for text in [
            "+", " ", "-", "1_000", "1,000", "1 000", "1e3", "1E3", "NaN", "nan", "inf",
            "Infinity", "0x10", "١٢", "１２", "½", "1..2", "--1", "+-1", "-+1", "+ 1",
        ] {
            assert!(Usdc::parse(text).is_err(), "{text:?} parsed");
            assert!(Usdc::parse_signed(text).is_err(), "{text:?} parsed signed");
        }
    }

    #[test]
    fn the_largest_amount_parses_and_one_micro_more_does_not() {
        assert_eq!(
            Usdc::parse("9223372036854.775807"),
            Ok(Usdc::from_micros(i64::MAX))
        );
        assert_eq!(
            Usdc::parse("9223372036854.775808"),
            Err(MoneyError::Overflow)
        );
        assert_eq!(
            Usdc::parse_signed("-9223372036854.775808"),
            Ok(Usdc::from_micros(i64::MIN))
        );
        assert_eq!(
            Usdc::parse_signed("-9223372036854.775809"),
            Err(MoneyError::Overflow)
        );
        assert_eq!(Usdc::parse("1.1234567"), Err(MoneyError::TooPrecise));
        assert_eq!(Usdc::parse("1.0000000"), Err(MoneyError::TooPrecise));
    }

    #[test]
    fn signed_parse_reads_negative_amounts() {
        assert_eq!(
            Usdc::parse_signed("-1.5"),
            Ok(Usdc::from_micros(-1_500_000))
        );
        assert_eq!(Usdc::parse_signed("-.5"), Ok(Usdc::from_micros(-500_000)));
        assert_eq!(Usdc::parse_signed("-0"), Ok(Usdc::ZERO));
        assert_eq!(Usdc::parse_signed("2"), Ok(Usdc::from_micros(2_000_000)));
        assert_eq!(Usdc::parse("-0"), Err(MoneyError::Negative));
    }

    #[test]
    fn checked_sum_tolerates_intermediate_overflow_when_the_total_fits() {
        let max = Usdc::from_micros(i64::MAX);
        let minus_one = Usdc::from_micros(-1_000_000);
        assert_eq!(
            Usdc::checked_sum([max, Usdc::from_micros(1), Usdc::from_micros(-1)]),
            Some(max)
        );
        assert_eq!(Usdc::checked_sum([max, Usdc::from_micros(1)]), None);
        assert_eq!(Usdc::checked_sum([]), Some(Usdc::ZERO));
        assert_eq!(
            Usdc::checked_sum([minus_one, minus_one]),
            Some(Usdc::from_micros(-2_000_000))
        );
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        const MAX_WHOLE: i64 = i64::MAX / MICROS_PER_USDC;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(100_000))]

            #[test]
            fn formatting_then_parsing_gives_the_amount_back(micros in 0..=i64::MAX) {
                let amount = Usdc::from_micros(micros);
                prop_assert_eq!(Usdc::parse(&amount.to_string()), Ok(amount));
            }

            #[test]
            fn signed_formatting_then_parsing_gives_the_amount_back(micros in any::<i64>()) {
                let amount = Usdc::from_micros(micros);
                prop_assert_eq!(Usdc::parse_signed(&amount.to_string()), Ok(amount));
            }

            #[test]
            fn formatting_has_no_trailing_zeros_and_at_most_six_decimals(micros in any::<i64>()) {
                let text = Usdc::from_micros(micros).to_string();
                if let Some((_, fraction)) = text.split_once('.') {
                    prop_assert!(!fraction.is_empty() && fraction.len() <= DECIMALS);
                    prop_assert!(!fraction.ends_with('0'));
                }
            }

            #[test]
            fn any_decimal_that_fits_parses_exactly(
                whole in 0..=MAX_WHOLE,
                fraction in 0..MICROS_PER_USDC,
                places in 0..=DECIMALS,
                leading_zeros in 0..3_usize,
                omit_zero_whole in any::<bool>(),
            ) {
                // Write `fraction` with `places` digits, keeping only what those places can hold.
                let unit = 10_i64.pow(u32::try_from(DECIMALS - places).unwrap_or(0));
                let fraction = fraction / unit * unit;
                let digits = format!("{:06}", fraction);
                let mut text = if whole == 0 && omit_zero_whole && places > 0 {
                    String::new()
                } else {
                    format!("{}{whole}", "0".repeat(leading_zeros))
                };
                if places > 0 {
                    text.push('.');
                    text.push_str(&digits[..places]);
                }
                let expected = i128::from(whole) * i128::from(MICROS_PER_USDC) + i128::from(fraction);
                match i64::try_from(expected) {
                    Ok(micros) => prop_assert_eq!(Usdc::parse(&text), Ok(Usdc::from_micros(micros))),
                    Err(_) => prop_assert_eq!(Usdc::parse(&text), Err(MoneyError::Overflow)),
                }
            }

            #[test]
            fn seven_or_more_significant_decimals_are_refused(
                whole in 0..=MAX_WHOLE,
                fraction in 0..MICROS_PER_USDC,
                tail in "[0-9]{0,5}[1-9]",
            ) {
                let text = format!("{whole}.{fraction:06}{tail}");
                prop_assert_eq!(Usdc::parse(&text), Err(MoneyError::TooPrecise));
                prop_assert_eq!(Usdc::parse_signed(&format!("-{text}")), Err(MoneyError::TooPrecise));
            }

            #[test]
            fn checked_ops_agree_with_wide_arithmetic(a in any::<i64>(), b in any::<i64>()) {
                let (x, y) = (Usdc::from_micros(a), Usdc::from_micros(b));
                let (wa, wb) = (i128::from(a), i128::from(b));
                let fits = |v: i128| i64::try_from(v).ok().map(Usdc::from_micros);
                prop_assert_eq!(x.checked_add(y), fits(wa + wb));
                prop_assert_eq!(x.checked_sub(y), fits(wa - wb));
                prop_assert_eq!(x.checked_mul(b), fits(wa * wb));
                prop_assert_eq!(Usdc::checked_sum([x, y]), fits(wa + wb));
                let ratio = if b == 0 { None } else { fits(wa * wa.signum() / wb) };
                prop_assert_eq!(x.checked_mul_ratio(a.signum(), b), ratio);
            }

            #[test]
            fn parsing_arbitrary_text_never_panics(text in "\\PC{0,40}") {
                let _ = Usdc::parse(&text);
                let _ = Usdc::parse_signed(&text);
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(10_000))]

            #[test]
            fn small_checked_ops_agree_with_wide_arithmetic(
                a in -1_000_000_000_i64..1_000_000_000,
                b in -1_000_000_000_i64..1_000_000_000,
                n in -1_000_i64..1_000,
                d in -1_000_i64..1_000,
            ) {
                let x = Usdc::from_micros(a);
                prop_assert_eq!(x.checked_mul(n), Some(Usdc::from_micros(a * n)));
                prop_assert_eq!(x.checked_add(Usdc::from_micros(b)), Some(Usdc::from_micros(a + b)));
                let expected = if d == 0 { None } else { Some(Usdc::from_micros(a * n / d)) };
                prop_assert_eq!(x.checked_mul_ratio(n, d), expected);
            }
        }
    }
}

/// Serde for optional amounts in the gateway's own API, where money is a decimal string and
/// nothing else (Fluence's tolerant decoding also takes whole JSON numbers; clients of the
/// gateway get one unambiguous form).
pub mod decimal_string_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Usdc;

    pub fn serialize<S: Serializer>(
        amount: &Option<Usdc>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        amount.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Usdc>, D::Error> {
        match Option::<String>::deserialize(deserializer)? {
            None => Ok(None),
            Some(text) => Usdc::parse(&text)
                .map(Some)
                .map_err(|e| serde::de::Error::custom(format_args!("amount {text:?} {e}"))),
        }
    }
}

//! Durations as people write them in configuration and roles: `12h`, `8h30m`, `2160h`, `90s`.
//!
//! Go-style strings written by other tools (`8h0m0s`, `1.5h`, `500ms`) are accepted too, and
//! values are written back in the compact form (`8h30m`, never `8h30m0s`).

use std::time::Duration;

use crate::ModelError;

/// Parses `12h`, `8h30m`, `90s`, `1.5h`, `500ms`, `3d` into a duration.
///
/// A bare `0` is zero; any other number needs a unit.
pub fn parse_duration(input: &str) -> Result<Duration, ModelError> {
    let err = |reason: &str| ModelError::InvalidDuration {
        input: input.to_string(),
        reason: reason.to_string(),
    };
    let text = input.trim();
    if text.is_empty() {
        return Err(err("empty"));
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return Err(err("expected a number, e.g. 12h, 30m, 90s"));
        }
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after_unit) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "d" => 86_400 * 1_000_000_000,
            "" => return Err(err("missing unit (use h, m, s or ms)")),
            _ => return Err(err("unknown unit (use h, m, s or ms)")),
        };
        total_nanos = total_nanos
            .checked_add(scale(number, unit_nanos).ok_or_else(|| err("not a number"))?)
            .ok_or_else(|| err("too large"))?;
        rest = after_unit;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| err("too large"))?;
    // The remainder is below 10^9, so it fits.
    let nanos = (total_nanos % 1_000_000_000) as u32;
    Ok(Duration::new(secs, nanos))
}

/// `number` (digits with at most one decimal point) times `unit_nanos`, without floats.
fn scale(number: &str, unit_nanos: u128) -> Option<u128> {
    let (whole, frac) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() && frac.is_empty() || frac.contains('.') {
        return None;
    }
    let whole_value: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut value = whole_value.checked_mul(unit_nanos)?;
    // Digits beyond nanosecond precision cannot change the result.
    let mut divisor: u128 = 1;
    for digit in frac.chars().take(18) {
        divisor *= 10;
        let d = u128::from(digit.to_digit(10)?);
        value = value.checked_add(d * unit_nanos / divisor)?;
    }
    Some(value)
}

/// Writes a duration in the compact form `parse_duration` reads: `12h`, `8h30m`, `1m30s`,
/// `500ms`, `0s`.
pub fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    let nanos = duration.subsec_nanos();
    if secs == 0 && nanos == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    let hours = secs / 3_600;
    let minutes = (secs % 3_600) / 60;
    let seconds = secs % 60;
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    if seconds > 0 {
        out.push_str(&format!("{seconds}s"));
    }
    if nanos > 0 {
        if nanos % 1_000_000 == 0 {
            out.push_str(&format!("{}ms", nanos / 1_000_000));
        } else if nanos % 1_000 == 0 {
            out.push_str(&format!("{}us", nanos / 1_000));
        } else {
            out.push_str(&format!("{nanos}ns"));
        }
    }
    out
}

/// Serde adapter for `Duration` fields written as duration strings.
pub mod serde_duration {
    use super::{format_duration, parse_duration};
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Writes the compact form.
    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_duration(*value))
    }

    /// Reads `12h`-style strings.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text).map_err(D::Error::custom)
    }
}

/// Serde adapter for `Option<Duration>` fields written as duration strings.
pub mod serde_opt_duration {
    use super::{format_duration, parse_duration};
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Writes the compact form; `None` fields are expected to be skipped by the caller.
    pub fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => serializer.serialize_str(&format_duration(*d)),
            None => serializer.serialize_none(),
        }
    }

    /// Reads `12h`-style strings; null is `None`.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(deserializer)? {
            Some(text) => parse_duration(&text).map(Some).map_err(D::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hours_minutes_seconds_and_mixed_forms() {
        let cases = [
            ("12h", 12 * 3600),
            ("30m", 30 * 60),
            ("2160h", 2160 * 3600),
            ("90s", 90),
            ("8h30m", 8 * 3600 + 30 * 60),
            ("8h0m0s", 8 * 3600),
            ("1.5h", 5400),
            ("1d", 86_400),
            ("0", 0),
        ];
        for (text, secs) in cases {
            assert_eq!(
                parse_duration(text).unwrap(),
                Duration::from_secs(secs),
                "{text}"
            );
        }
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    }

    #[test]
    fn rejects_numbers_without_units_and_unknown_units() {
        for text in ["", "12", "h", "12x", "1..5h", "-1h", "12h ago"] {
            assert!(parse_duration(text).is_err(), "{text} should be refused");
        }
    }

    #[test]
    fn formats_in_the_compact_style() {
        assert_eq!(format_duration(Duration::from_secs(12 * 3600)), "12h");
        assert_eq!(
            format_duration(Duration::from_secs(8 * 3600 + 1800)),
            "8h30m"
        );
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_secs(2160 * 3600)), "2160h");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s500ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn formatted_durations_parse_back_to_the_same_value() {
        for d in [
            Duration::from_secs(1),
            Duration::from_secs(3661),
            Duration::new(5, 7),
            Duration::from_micros(42),
        ] {
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
    }
}

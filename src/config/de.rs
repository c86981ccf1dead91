//! Field deserializers. Values may arrive as native TOML types or, after placeholder expansion
//! from the environment, as strings; both are accepted.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// A byte size: an integer, or a string with a unit ("100MB", "1KiB").
pub(super) fn size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    deserializer.deserialize_any(Parsed::<u64>(
        parse_size,
        "a byte size like \"100MB\"",
        PhantomData,
    ))
}

/// A duration string with a unit ("50ms", "60s", "5m").
pub(super) fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    deserializer.deserialize_any(Parsed::<Duration>(
        parse_duration,
        "a duration like \"50ms\"",
        PhantomData,
    ))
}

/// An optional duration (see [`duration`]).
pub(super) fn optional_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    duration(deserializer).map(Some)
}

/// A boolean, or one of the strings true/false, yes/no, on/off, 1/0.
pub(super) fn flag<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    deserializer.deserialize_any(Parsed::<bool>(parse_flag, "true or false", PhantomData))
}

/// A non-negative integer, or a string holding one.
pub(super) fn count<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    let value = deserializer.deserialize_any(Parsed::<u64>(
        parse_count,
        "a non-negative integer",
        PhantomData,
    ))?;
    T::try_from(value).map_err(|_| de::Error::custom(format!("number {value} is too large")))
}

/// A non-negative number: an integer, a float, or a string holding one.
pub(super) fn number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    deserializer.deserialize_any(Parsed::<f64>(
        parse_number,
        "a non-negative number like 0.8",
        PhantomData,
    ))
}

/// A string; empty means not set.
pub(super) fn optional_string<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    let value = <String as serde::Deserialize>::deserialize(deserializer)?;
    Ok(Some(value).filter(|value| !value.trim().is_empty()))
}

fn parse_size(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|_| format!("invalid size {text:?} (use e.g. \"100MB\", \"64MiB\", \"512\")"))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|_| format!("invalid duration {text:?} (use e.g. \"50ms\", \"60s\", \"5m\")"))
}

fn parse_flag(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(format!("invalid boolean {text:?} (use true or false)")),
    }
}

fn parse_number(text: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|number| number.is_finite() && *number >= 0.0)
        .ok_or_else(|| format!("invalid number {text:?} (use a non-negative number like 0.8)"))
}

fn parse_count(text: &str) -> Result<u64, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("invalid number {text:?} (use a non-negative integer)"))
}

/// Accepts a string (run through the parser) and whatever native TOML type `T` converts from.
struct Parsed<T>(fn(&str) -> Result<T, String>, &'static str, PhantomData<T>);

trait FromNative: Sized {
    fn from_bool(_: bool) -> Option<Self> {
        None
    }
    fn from_u64(_: u64) -> Option<Self> {
        None
    }
    fn from_f64(_: f64) -> Option<Self> {
        None
    }
}

impl FromNative for f64 {
    fn from_u64(value: u64) -> Option<Self> {
        Some(value as f64)
    }
    fn from_f64(value: f64) -> Option<Self> {
        (value.is_finite() && value >= 0.0).then_some(value)
    }
}

impl FromNative for u64 {
    fn from_u64(value: u64) -> Option<Self> {
        Some(value)
    }
}

impl FromNative for bool {
    fn from_bool(value: bool) -> Option<Self> {
        Some(value)
    }
}

impl FromNative for Duration {}

impl<'de, T: FromNative> Visitor<'de> for Parsed<T> {
    type Value = T;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.1)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        (self.0)(text).map_err(E::custom)
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<T, E> {
        T::from_bool(value).ok_or_else(|| E::invalid_type(de::Unexpected::Bool(value), &self))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<T, E> {
        T::from_f64(value).ok_or_else(|| E::invalid_type(de::Unexpected::Float(value), &self))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<T, E> {
        T::from_u64(value).ok_or_else(|| E::invalid_type(de::Unexpected::Unsigned(value), &self))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<T, E> {
        match u64::try_from(value) {
            Ok(value) => self.visit_u64(value),
            Err(_) => Err(E::invalid_value(de::Unexpected::Signed(value), &self)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_si_and_binary_units() {
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("512"), Ok(512));
        assert!(parse_size("10XB")
            .unwrap_err()
            .starts_with("invalid size \"10XB\""));
    }

    #[test]
    fn flags_accept_common_spellings() {
        assert_eq!(parse_flag("TRUE"), Ok(true));
        assert_eq!(parse_flag("0"), Ok(false));
        assert!(parse_flag("maybe").is_err());
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert!(parse_duration("50").is_err());
    }
}

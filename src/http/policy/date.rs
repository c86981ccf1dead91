//! HTTP-date (RFC 9110 §5.6.7) as recipients must read it: IMF-fixdate, and the obsolete
//! rfc850-date and asctime-date; day names, month names and `GMT` in any case ("recipients
//! SHOULD accept ... case-insensitively" is how caches interoperate: origins send `THU` and
//! `gmt`). The day name is not checked against the date: it carries nothing the date does not.
//! Anything else (other zones, missing comma, extra spaces, one-digit hours) is not a date.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const LONG_DAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];
const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// A calendar date and time of day, in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    seconds_of_day: i64,
}

/// Parses `text` (surrounding whitespace allowed); `current_year` resolves the two-digit years
/// of rfc850-date (RFC 9110 §5.6.7: a year more than 50 years ahead is the latest past one with
/// the same last two digits).
pub(super) fn parse(text: &str, current_year: i64) -> Option<SystemTime> {
    let text = text.trim_matches([' ', '\t']);
    let civil = imf_fixdate(text)
        .or_else(|| rfc850_date(text, current_year))
        .or_else(|| asctime_date(text))?;
    civil.to_system_time()
}

/// The UTC year of `time`.
pub(super) fn year_of(time: SystemTime) -> i64 {
    let seconds = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    };
    civil_from_days(seconds.div_euclid(86_400)).0
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`
fn imf_fixdate(text: &str) -> Option<Civil> {
    let (day_name, rest) = text.split_once(", ")?;
    name_index(&DAYS, day_name)?;
    let mut parts = rest.split(' ');
    let day = digits(parts.next()?, 2)?;
    let month = month(parts.next()?)?;
    let year = digits(parts.next()?, 4)?;
    let seconds_of_day = time_of_day(parts.next()?)?;
    gmt(parts.next()?)?;
    if parts.next().is_some() {
        return None;
    }
    Civil::new(i64::from(year), month, day, seconds_of_day)
}

/// `Sunday, 06-Nov-94 08:49:37 GMT`
fn rfc850_date(text: &str, current_year: i64) -> Option<Civil> {
    let (day_name, rest) = text.split_once(", ")?;
    name_index(&LONG_DAYS, day_name)?;
    let mut parts = rest.split(' ');
    let mut date = parts.next()?.split('-');
    let day = digits(date.next()?, 2)?;
    let month = month(date.next()?)?;
    let short_year = i64::from(digits(date.next()?, 2)?);
    if date.next().is_some() {
        return None;
    }
    let seconds_of_day = time_of_day(parts.next()?)?;
    gmt(parts.next()?)?;
    if parts.next().is_some() {
        return None;
    }
    let century = current_year - current_year.rem_euclid(100);
    let mut year = century + short_year;
    if year > current_year + 50 {
        year -= 100;
    }
    Civil::new(year, month, day, seconds_of_day)
}

/// `Sun Nov  6 08:49:37 1994` (a one-digit day is padded with a space)
fn asctime_date(text: &str) -> Option<Civil> {
    let (day_name, rest) = text.split_once(' ')?;
    name_index(&DAYS, day_name)?;
    let (month_name, rest) = rest.split_once(' ')?;
    let month = month(month_name)?;
    let (day, rest) = match rest.strip_prefix(' ') {
        Some(padded) => (digits(padded.get(..1)?, 1)?, padded.get(1..)?),
        None => (digits(rest.get(..2)?, 2)?, rest.get(2..)?),
    };
    let mut parts = rest.strip_prefix(' ')?.split(' ');
    let seconds_of_day = time_of_day(parts.next()?)?;
    let year = digits(parts.next()?, 4)?;
    if parts.next().is_some() {
        return None;
    }
    Civil::new(i64::from(year), month, day, seconds_of_day)
}

fn name_index(names: &[&str], text: &str) -> Option<usize> {
    names
        .iter()
        .position(|name| name.eq_ignore_ascii_case(text))
}

fn month(text: &str) -> Option<u32> {
    let index = name_index(&MONTHS, text)?;
    u32::try_from(index + 1).ok()
}

fn gmt(text: &str) -> Option<()> {
    text.eq_ignore_ascii_case("gmt").then_some(())
}

/// Exactly `count` ASCII digits.
fn digits(text: &str, count: usize) -> Option<u32> {
    if text.len() != count || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `HH:MM:SS`, a second of 60 (a leap second) allowed.
fn time_of_day(text: &str) -> Option<i64> {
    let mut parts = text.split(':');
    let hour = digits(parts.next()?, 2)?;
    let minute = digits(parts.next()?, 2)?;
    let second = digits(parts.next()?, 2)?;
    if parts.next().is_some() || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    Some(i64::from(hour * 3600 + minute * 60 + second))
}

impl Civil {
    fn new(year: i64, month: u32, day: u32, seconds_of_day: i64) -> Option<Self> {
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        let days_in_month = match month {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        (1..=days_in_month).contains(&day).then_some(Self {
            year,
            month,
            day,
            seconds_of_day,
        })
    }

    fn to_system_time(self) -> Option<SystemTime> {
        let days = days_from_civil(self.year, self.month, self.day);
        let seconds = days.checked_mul(86_400)?.checked_add(self.seconds_of_day)?;
        let magnitude = Duration::from_secs(seconds.unsigned_abs());
        if seconds >= 0 {
            UNIX_EPOCH.checked_add(magnitude)
        } else {
            UNIX_EPOCH.checked_sub(magnitude)
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of [`days_from_civil`]: (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "[ -~\t\u{80}-\u{ff}]{0,40}", year in -3000i64..3000) {
            let _ = parse(&text, year);
        }

        #[test]
        fn imf_fixdates_round_trip(seconds in 0u64..100_000_000_000) {
            let time = UNIX_EPOCH + Duration::from_secs(seconds);
            prop_assert_eq!(parse(&httpdate::fmt_http_date(time), 2026), Some(time));
        }
    }

    fn at(text: &str) -> Option<u64> {
        parse(text, 2026).map(|time| time.duration_since(UNIX_EPOCH).unwrap().as_secs())
    }

    /// 1994-11-06 08:49:37 UTC, RFC 9110's example.
    const EXAMPLE: u64 = 784_111_777;

    #[test]
    fn the_three_formats_read_the_same_instant() {
        assert_eq!(at("Sun, 06 Nov 1994 08:49:37 GMT"), Some(EXAMPLE));
        assert_eq!(at("Sunday, 06-Nov-94 08:49:37 GMT"), Some(EXAMPLE));
        assert_eq!(at("Sun Nov  6 08:49:37 1994"), Some(EXAMPLE));
        assert_eq!(at("  Sun, 06 Nov 1994 08:49:37 GMT\t"), Some(EXAMPLE));
    }

    #[test]
    fn names_are_case_insensitive_and_the_day_name_is_not_checked() {
        assert_eq!(at("SUN, 06 NOV 1994 08:49:37 gmt"), Some(EXAMPLE));
        assert_eq!(at("sunday, 06-nov-94 08:49:37 Gmt"), Some(EXAMPLE));
        // 1994-11-06 was a Sunday; the date wins.
        assert_eq!(at("Thu, 06 Nov 1994 08:49:37 GMT"), Some(EXAMPLE));
        assert_eq!(at("Thu Nov  6 08:49:37 1994"), Some(EXAMPLE));
    }

    #[test]
    fn rfc850_years_more_than_50_years_ahead_are_in_the_past() {
        let year = |text: &str| parse(text, 2026).map(year_of);
        assert_eq!(year("Thursday, 18-Aug-50 02:01:18 GMT"), Some(2050));
        assert_eq!(year("Thursday, 18-Aug-76 02:01:18 GMT"), Some(2076));
        assert_eq!(year("Thursday, 18-Aug-77 02:01:18 GMT"), Some(1977));
    }

    #[test]
    fn far_dates_and_leap_days_are_exact() {
        assert_eq!(at("Tue, 19 Jan 2038 03:14:08 GMT"), Some(2_147_483_648));
        assert_eq!(at("Sun, 21 Nov 2286 04:46:39 GMT"), Some(10_000_039_599));
        assert_eq!(at("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert!(at("Tue, 29 Feb 2000 00:00:00 GMT").is_some());
        assert!(at("Tue, 29 Feb 2100 00:00:00 GMT").is_none());
        assert!(parse("Wed, 31 Dec 1969 23:59:59 GMT", 2026).is_some_and(|time| time < UNIX_EPOCH));
    }

    #[test]
    fn malformed_dates_are_not_dates() {
        for text in [
            "Thu, 18 Aug 2050 02:01:18 UTC",
            "Thu, 18 Aug 2050 02:01:18 AEST",
            "Thu, 18 Aug 50 02:01:18 GMT",
            "Thu 18 Aug 2050 02:01:18 GMT",
            "Thu, 18  Aug  2050 02:01:18 GMT",
            "Thu, 18-Aug-2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 02.01.18 GMT",
            "Thu, 18 Aug 2050 2:01:18 GMT",
            "Thu, 18 Aug 2050 24:00:00 GMT",
            "Thu, 32 Aug 2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 02:01:18 GMT x",
            "Thu Aug 18 02:01:18 2050 GMT",
            "Thu Aug 8 02:01:18 2050",
            "Thursday, 18 Aug 2050 02:01:18 GMT",
            "0",
            "",
        ] {
            assert_eq!(at(text), None, "{text:?}");
        }
    }

    #[test]
    fn years_round_trip() {
        for year in [1601, 1969, 1970, 2000, 2026, 2100, 2286] {
            let days = days_from_civil(year, 3, 1);
            assert_eq!(civil_from_days(days), (year, 3, 1));
        }
    }
}

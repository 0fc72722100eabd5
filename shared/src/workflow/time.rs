//! Time as workflows read it: spans written in a definition, zones, and field values as
//! instants. Calendar units (days, months) move through a zone, so "1 day before" keeps the
//! local time of day across a daylight-saving change.

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp, Zoned};
use serde_json::Value as Json;

/// A span from a definition: `"2 hours"`, `"-1 day"`, `"1 week 2 days"`, or ISO 8601
/// (`"PT2H"`). Fractions and sub-second units are refused: nothing in a workflow needs them.
pub(crate) fn parse_span(text: &str) -> Result<Span, String> {
    let span: Span = text
        .trim()
        .parse()
        .map_err(|e| format!("`{text}` is not a duration such as \"2 hours\" or \"-1 day\": {e}"))?;
    if span.get_milliseconds() != 0 || span.get_microseconds() != 0 || span.get_nanoseconds() != 0 {
        return Err(format!("`{text}` has a unit below a second; the smallest is seconds"));
    }
    Ok(span)
}

/// A zone by its IANA name, from the tz database compiled into Herald (so every machine and
/// Lambda agree on the rules).
pub(crate) fn zone(name: &str) -> Result<TimeZone, String> {
    if name == "UTC" {
        return Ok(TimeZone::UTC);
    }
    TimeZone::get(name).map_err(|_| format!("`{name}` is not a time zone name such as \"Europe/London\""))
}

/// `at` moved by `span`, with days and longer counted on the calendar of `at`'s zone.
pub(crate) fn shift(at: &Zoned, span: Span) -> Result<Zoned, String> {
    at.checked_add(span).map_err(|e| format!("moving {at} by {span}: {e}"))
}

/// A field's value as an instant: an RFC 3339 time with an offset (how Postgres writes
/// `timestamptz` to JSON), a local date and time (`timestamp`), read in `tz`, or a date (its
/// first moment in `tz`). `None` when the value is not a time.
pub(crate) fn instant_of(value: &Json, tz: &TimeZone) -> Option<Zoned> {
    let text = value.as_str()?;
    if let Ok(ts) = text.parse::<Timestamp>() {
        return Some(ts.to_zoned(tz.clone()));
    }
    if let Ok(dt) = text.parse::<DateTime>() {
        return dt.to_zoned(tz.clone()).ok();
    }
    if let Ok(date) = text.parse::<Date>() {
        return date.to_zoned(tz.clone()).ok();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn london() -> TimeZone {
        zone("Europe/London").unwrap()
    }

    #[test]
    fn spans_parse_in_both_formats_and_refuse_the_rest() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("2 hours", Ok("PT2H")),
            ("-1 day", Ok("-P1D")),
            ("1 week 2 days", Ok("P1W2D")),
            ("30m", Ok("PT30M")),
            ("PT2H", Ok("PT2H")),
            ("soon", Err("is not a duration")),
            ("", Err("is not a duration")),
            ("2 hours 5ms", Err("below a second")),
        ];
        for (text, want) in cases {
            match (parse_span(text), want) {
                (Ok(span), Ok(iso)) => assert_eq!(span.to_string(), *iso, "{text}"),
                (Err(e), Err(part)) => assert!(e.contains(part), "{text}: {e}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn field_values_become_instants_in_the_zone_when_they_carry_none() {
        let tz = london();
        let cases: &[(Json, Option<&str>)] = &[
            (
                Json::from("2026-07-01T12:00:00+00:00"),
                Some("2026-07-01T13:00:00+01:00[Europe/London]"),
            ),
            (
                Json::from("2026-07-01T12:00:00"),
                Some("2026-07-01T12:00:00+01:00[Europe/London]"),
            ),
            (
                Json::from("2026-07-01"),
                Some("2026-07-01T00:00:00+01:00[Europe/London]"),
            ),
            (Json::from("next tuesday"), None),
            (Json::from(17), None),
            (Json::Null, None),
        ];
        for (value, want) in cases {
            let got = instant_of(value, &tz).map(|z| z.to_string());
            assert_eq!(got.as_deref(), *want, "{value}");
        }
    }

    #[test]
    fn a_day_keeps_the_local_time_across_a_clock_change() {
        // 29 March 2026: London moves from GMT to BST.
        let before = instant_of(&Json::from("2026-03-28T09:00:00"), &london()).unwrap();
        let day = shift(&before, parse_span("1 day").unwrap()).unwrap();
        assert_eq!(day.to_string(), "2026-03-29T09:00:00+01:00[Europe/London]");
        let hours = shift(&before, parse_span("24 hours").unwrap()).unwrap();
        assert_eq!(hours.to_string(), "2026-03-29T10:00:00+01:00[Europe/London]");
    }

    #[test]
    fn unknown_zones_are_named_in_the_error() {
        assert!(zone("Mars/Olympus").unwrap_err().contains("Mars/Olympus"));
        assert_eq!(zone("UTC").unwrap(), TimeZone::UTC);
    }
}

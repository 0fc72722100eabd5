//! When a wait ends.
//!
//! ```json
//! {"for": "2 hours"}
//! {"until": {"field": "starts_at", "offset": "-1 day", "at": "18:00", "timezone": {"field": "tz"}}}
//! ```
//!
//! `until` reads a time from the data, moves it by `offset` on the calendar of the zone, then,
//! with `at`, sets the local time of day. The zone is the one named, the one a field of the
//! data names, or else the automation's. A local time that a clock change skips becomes the
//! same time after the gap (02:30 on a spring-forward night is 03:30); one that happens twice
//! is the first. A wake-up time already past continues at once; one further away than
//! [`MAX_WAIT_DAYS`] is an error, because it is almost always a wrong field or offset.

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{Span, SpanFieldwise, Timestamp, ToSpan, Zoned};
use serde_json::Value as Json;

use super::time::{instant_of, parse_span, shift, zone};
use super::{Field, Problem};

/// The longest a wait may last, from the moment it starts.
pub(crate) const MAX_WAIT_DAYS: i64 = 400;

#[derive(Debug, Clone, PartialEq)]
pub enum Wait {
    For(SpanFieldwise),
    Until {
        field: Field,
        offset: Option<SpanFieldwise>,
        at: Option<Time>,
        zone: Option<ZoneOf>,
    },
}

/// The zone a wait's calendar runs in, when it is not the automation's.
#[derive(Debug, Clone, PartialEq)]
pub enum ZoneOf {
    Named(TimeZone),
    Field(Field),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct WaitError(pub String);

/// Reads a wait step's timing (`for` or `until`) from the step object at `path`.
pub(crate) fn parse(step: &serde_json::Map<String, Json>, path: &str) -> Result<Wait, Vec<Problem>> {
    let one = |p: &str, m: String| vec![Problem::new(p, m)];
    match (step.get("for"), step.get("until")) {
        (Some(span), None) => {
            let p = format!("{path}.for");
            let text = span.as_str().unwrap_or_default();
            let span = span
                .as_str()
                .ok_or_else(|| "a wait's `for` is a span such as \"2 hours\"".to_owned())
                .and_then(parse_span)
                .map_err(|m| one(&p, m))?;
            if span.is_negative() {
                return Err(one(&p, format!("a wait cannot last a negative span ({span})")));
            }
            let start = Timestamp::UNIX_EPOCH.to_zoned(TimeZone::UTC);
            let longest = shift(&start, MAX_WAIT_DAYS.days()).map_err(|m| one(&p, m))?;
            if shift(&start, span).map_err(|m| one(&p, m))? > longest {
                return Err(one(
                    &p,
                    format!("`{text}` is longer than the longest wait, {MAX_WAIT_DAYS} days"),
                ));
            }
            Ok(Wait::For(span.fieldwise()))
        }
        (None, Some(Json::Object(until))) => until_of(until, &format!("{path}.until")),
        (None, Some(_)) => Err(one(
            &format!("{path}.until"),
            "`until` is an object with at least a field".into(),
        )),
        (Some(_), Some(_)) => Err(one(path, "a wait has `for` or `until`, not both".into())),
        (None, None) => Err(one(
            path,
            "a wait has `for` (a span) or `until` (a time from the data)".into(),
        )),
    }
}

fn until_of(until: &serde_json::Map<String, Json>, path: &str) -> Result<Wait, Vec<Problem>> {
    let mut problems = Vec::new();
    for key in until.keys() {
        if !matches!(key.as_str(), "field" | "offset" | "at" | "timezone") {
            problems.push(Problem::new(
                format!("{path}.{key}"),
                "unknown key; `until` takes field, offset, at and timezone",
            ));
        }
    }
    let field = part(until, "field", path, Field::parse, &mut problems);
    let offset = part(until, "offset", path, offset_of, &mut problems).map(Span::fieldwise);
    let at = part(until, "at", path, time_of_day, &mut problems);
    let zone = part(until, "timezone", path, zone_of, &mut problems);
    if !until.contains_key("field") {
        problems.push(Problem::new(
            format!("{path}.field"),
            "`until` names the field that holds the time",
        ));
    }
    match field {
        Some(field) if problems.is_empty() => Ok(Wait::Until {
            field,
            offset,
            at,
            zone,
        }),
        _ => Err(problems),
    }
}

/// `object[key]` read by `read`; `None` when it is absent or wrong (then with a problem).
fn part<T>(
    object: &serde_json::Map<String, Json>,
    key: &str,
    path: &str,
    read: impl Fn(&Json) -> Result<T, String>,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    match read(object.get(key)?) {
        Ok(v) => Some(v),
        Err(m) => {
            problems.push(Problem::new(format!("{path}.{key}"), m));
            None
        }
    }
}

pub(super) fn offset_of(value: &Json) -> Result<Span, String> {
    value
        .as_str()
        .ok_or_else(|| "an offset is a span such as \"-1 day\"".to_owned())
        .and_then(parse_span)
}

pub(super) fn time_of_day(value: &Json) -> Result<Time, String> {
    value
        .as_str()
        .and_then(|s| s.parse::<Time>().ok())
        .ok_or_else(|| "`at` is a local time of day such as \"18:00\"".to_owned())
}

pub(super) fn zone_of(value: &Json) -> Result<ZoneOf, String> {
    match value {
        Json::String(name) => zone(name).map(ZoneOf::Named),
        Json::Object(o) if o.len() == 1 && o.contains_key("field") => Field::parse(&o["field"]).map(ZoneOf::Field),
        _ => Err("a timezone is a name (\"Europe/London\") or {\"field\": ...} naming one".into()),
    }
}

/// The instant a wait that starts at `now` ends, reading `data`; `tz` is the automation's.
pub(crate) fn wake_at(wait: &Wait, data: &Json, now: Timestamp, tz: &TimeZone) -> Result<Timestamp, WaitError> {
    let start = now.to_zoned(tz.clone());
    let err = |m: String| WaitError(m);
    let end: Zoned = match wait {
        Wait::For(span) => shift(&start, span.0).map_err(err)?,
        Wait::Until {
            field,
            offset,
            at,
            zone: zone_spec,
        } => {
            let tz = match zone_spec {
                None => tz.clone(),
                Some(ZoneOf::Named(z)) => z.clone(),
                Some(ZoneOf::Field(f)) => {
                    let name = f
                        .read(data)
                        .and_then(Json::as_str)
                        .ok_or_else(|| WaitError(format!("the data has no time zone name in `{f}`")))?;
                    zone(name).map_err(err)?
                }
            };
            let value = field
                .read(data)
                .ok_or_else(|| WaitError(format!("the data has no field `{field}`")))?;
            if value.is_null() {
                return Err(WaitError(format!("`{field}` is null, so the wait has no end")));
            }
            let base = instant_of(value, &tz).ok_or_else(|| WaitError(format!("`{field}` is {value}, not a time")))?;
            let moved = match offset {
                Some(span) => shift(&base, span.0).map_err(err)?,
                None => base,
            };
            match at {
                Some(time) => moved
                    .date()
                    .to_datetime(*time)
                    .to_zoned(tz)
                    .map_err(|e| WaitError(format!("{time} on {}: {e}", moved.date())))?,
                None => moved,
            }
        }
    };
    let longest = shift(&start, MAX_WAIT_DAYS.days()).map_err(err)?;
    if end > longest {
        return Err(WaitError(format!(
            "the wait would end at {end}, later than the longest wait ({MAX_WAIT_DAYS} days from {start})"
        )));
    }
    Ok(end.timestamp().max(now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> Timestamp {
        "2026-11-23T12:00:00Z".parse().unwrap()
    }

    fn read(step: Json) -> Result<Wait, Vec<Problem>> {
        parse(step.as_object().unwrap(), "steps[1]")
    }

    fn ends(step: Json, data: Json, tz: &str) -> Result<String, String> {
        let wait = read(step).map_err(|p| format!("{p:?}"))?;
        wake_at(&wait, &data, now(), &zone(tz).unwrap())
            .map(|t| t.to_string())
            .map_err(|e| e.0)
    }

    #[test]
    fn waits_end_when_the_data_says() {
        let data = json!({
            "starts_at": "2026-11-25T09:30:00+00:00",
            "local_start": "2026-11-25T09:30:00",
            "past": "2026-11-01T00:00:00+00:00",
            "tz": "America/New_York",
            "spring": "2027-03-29T10:00:00+01:00",
        });
        let cases: Vec<(Json, &str, &str)> = vec![
            (json!({"for": "2 hours"}), "UTC", "2026-11-23T14:00:00Z"),
            (json!({"for": "0 seconds"}), "UTC", "2026-11-23T12:00:00Z"),
            (json!({"until": {"field": "starts_at"}}), "UTC", "2026-11-25T09:30:00Z"),
            (
                json!({"until": {"field": "starts_at", "offset": "-1 day"}}),
                "UTC",
                "2026-11-24T09:30:00Z",
            ),
            // "at 18:00 local the day before starts_at"
            (
                json!({"until": {"field": "starts_at", "offset": "-1 day", "at": "18:00"}}),
                "Europe/London",
                "2026-11-24T18:00:00Z",
            ),
            (
                json!({"until": {"field": "starts_at", "offset": "-1 day", "at": "18:00", "timezone": "Asia/Tokyo"}}),
                "UTC",
                "2026-11-24T09:00:00Z",
            ),
            (
                json!({"until": {"field": "starts_at", "offset": "-1 day", "at": "18:00", "timezone": {"field": "tz"}}}),
                "UTC",
                "2026-11-24T23:00:00Z",
            ),
            // A time without an offset is read in the wait's zone.
            (
                json!({"until": {"field": "local_start", "timezone": "America/New_York"}}),
                "UTC",
                "2026-11-25T14:30:00Z",
            ),
            // Past: continue at once.
            (json!({"until": {"field": "past"}}), "UTC", "2026-11-23T12:00:00Z"),
            // "1 day before" across London's spring change keeps 10:00 local.
            (
                json!({"until": {"field": "spring", "offset": "-1 day"}}),
                "Europe/London",
                "2027-03-28T09:00:00Z",
            ),
            // 01:30 on 28 March 2027 in London does not exist: it becomes 02:30 BST.
            (
                json!({"until": {"field": "spring", "offset": "-1 day", "at": "01:30"}}),
                "Europe/London",
                "2027-03-28T01:30:00Z",
            ),
        ];
        for (step, tz, want) in cases {
            assert_eq!(
                ends(step.clone(), data.clone(), tz),
                Ok(want.to_owned()),
                "{step} in {tz}"
            );
        }
    }

    #[test]
    fn waits_that_cannot_end_are_errors() {
        let data = json!({"starts_at": null, "total": 3, "far": "2028-06-01T00:00:00Z", "tz": "Nowhere/Land"});
        let cases: Vec<(Json, &str)> = vec![
            (json!({"until": {"field": "starts_at"}}), "`starts_at` is null"),
            (json!({"until": {"field": "missing"}}), "no field `missing`"),
            (json!({"until": {"field": "total"}}), "`total` is 3, not a time"),
            (
                json!({"until": {"field": "far"}}),
                "later than the longest wait (400 days",
            ),
            (
                json!({"until": {"field": "far", "timezone": {"field": "tz"}}}),
                "`Nowhere/Land` is not a time zone",
            ),
        ];
        for (step, want) in cases {
            let got = ends(step.clone(), data.clone(), "UTC").unwrap_err();
            assert!(got.contains(want), "{step}: {got}");
        }
    }

    #[test]
    fn mistakes_are_refused_when_read_with_their_paths() {
        let cases: Vec<(Json, Vec<(&str, &str)>)> = vec![
            (json!({}), vec![("steps[1]", "has `for` (a span) or `until`")]),
            (json!({"for": "1 h", "until": {}}), vec![("steps[1]", "not both")]),
            (json!({"for": "a while"}), vec![("steps[1].for", "not a duration")]),
            (json!({"for": 7200}), vec![("steps[1].for", "is a span")]),
            (json!({"for": "-2 hours"}), vec![("steps[1].for", "negative")]),
            (
                json!({"for": "401 days"}),
                vec![("steps[1].for", "longer than the longest wait")],
            ),
            (
                json!({"for": "2 years"}),
                vec![("steps[1].for", "longer than the longest wait")],
            ),
            (json!({"until": "starts_at"}), vec![("steps[1].until", "is an object")]),
            (
                json!({"until": {"offset": "-1 day"}}),
                vec![("steps[1].until.field", "names the field")],
            ),
            (
                json!({"until": {"field": "s", "offset": "a day", "at": "6pm", "timezone": "Mars/Base", "when": 1}}),
                vec![
                    ("steps[1].until.when", "unknown key"),
                    ("steps[1].until.offset", "not a duration"),
                    ("steps[1].until.at", "local time of day"),
                    ("steps[1].until.timezone", "`Mars/Base` is not a time zone"),
                ],
            ),
        ];
        for (step, want) in cases {
            let problems = read(step.clone()).unwrap_err();
            assert_eq!(problems.len(), want.len(), "{step}: {problems:?}");
            for (problem, (path, part)) in problems.iter().zip(want) {
                assert_eq!(problem.path, path, "{step}");
                assert!(problem.message.contains(part), "{step}: {}", problem.message);
            }
        }
        assert!(read(json!({"for": "400 days"})).is_ok());
    }
}

//! When a cron schedule fires.
//!
//! A schedule is a 5-field cron expression (minute hour day-of-month month day-of-week) read
//! against the local wall clock of a zone. Each local time it names becomes an instant by the
//! rule waits follow: a local time that a clock change skips fires the same time after the gap,
//! moved on by the gap's length (02:30 on a spring-forward night in New York is 03:30); one that
//! happens twice fires once, at the first. Two local times that become the same instant fire
//! once. So `*/30 * * * *` fires at 01:00 and 01:30 once each on a fall-back night, not again
//! in the repeated hour.
//!
//! croner reads the expression and walks the civil (zone-less) calendar; this module turns its
//! civil times into instants. croner's own clock-change rules (the first instant after a gap,
//! both passes of a repeated hour for interval patterns) are not used.

use croner::parser::{CronParser, Seconds, Year};
use croner::Direction;
use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, TimeZone};
use std::time::SystemTime;

use jiff::{SignedDuration, Timestamp, ToSpan};

use super::time::zone;
use crate::model::{ScheduleDue, ScheduleFiring};

/// A cron expression as a schedule reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cron {
    pattern: croner::Cron,
}

/// The fields of an expression, in order, with the values each one takes.
const FIELDS: [(&str, u32, u32); 5] = [
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
];

/// Reads a 5-field cron expression (minute hour day-of-month month day-of-week), with the usual
/// lists, ranges, steps, names (MON, JAN) and croner's L/W/#; refuses 6/7-field (seconds/years)
/// forms, nicknames (`@daily`), expressions that never fire (`0 0 30 2 *`) and anything else,
/// with a message that names the part that is wrong.
pub(crate) fn parse_cron(text: &str) -> Result<Cron, String> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    if fields.is_empty() {
        return Err(
            "a cron expression is empty; it has five fields: minute hour day-of-month \
                    month day-of-week, such as `0 9 * * MON`"
                .into(),
        );
    }
    if fields.first().is_some_and(|f| f.starts_with('@')) {
        return Err(format!(
            "`{text}`: nicknames such as @daily are not read; write the five fields \
             (minute hour day-of-month month day-of-week), such as `0 0 * * *`"
        ));
    }
    if fields.len() != 5 {
        let count = match fields.len() {
            1 => "1 field".to_owned(),
            n => format!("{n} fields"),
        };
        let without = if fields.len() > 5 {
            ", without seconds or years"
        } else {
            ""
        };
        return Err(format!(
            "`{text}` has {count}; a schedule has five{without}: minute hour day-of-month \
             month day-of-week, such as `0 9 * * MON`"
        ));
    }
    for (i, (field, (name, low, high))) in fields.iter().zip(FIELDS).enumerate() {
        if let Some(n) = out_of_range(field, low, high) {
            return Err(format!("`{text}`: {name} {n} is outside {low}-{high}"));
        }
        // The field on its own, among wildcards, so croner's complaint is about this field.
        let mut alone = ["*"; 5];
        alone[i] = field;
        parser()
            .parse(&alone.join(" "))
            .map_err(|e| format!("`{text}`: {name} `{field}`: {e}"))?;
    }
    let pattern = parser().parse(text).map_err(|e| format!("`{text}`: {e}"))?;
    // A pattern that names no real date (30 February) would send every search on to croner's
    // last year (5000) before giving up, so it is refused here, once.
    let start = DateTime::constant(2000, 1, 1, 0, 0, 0, 0);
    if pattern.find_next_occurrence(&start, true).is_err() {
        return Err(format!(
            "`{text}` never fires: no date has that day of month, month and day of week"
        ));
    }
    Ok(Cron { pattern })
}

/// croner set to read five fields and nothing else.
fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
}

/// The first number in `field` outside `low..=high`, leaving out steps (`*/90`) and the `#` of
/// a weekday (`MON#6`), which croner checks with their own messages.
fn out_of_range(field: &str, low: u32, high: u32) -> Option<String> {
    let mut previous = None;
    let mut chars = field.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if !c.is_ascii_digit() {
            previous = Some(c);
            continue;
        }
        let mut end = start + c.len_utf8();
        while let Some(&(i, d)) = chars.peek() {
            if !d.is_ascii_digit() {
                break;
            }
            end = i + d.len_utf8();
            chars.next();
        }
        let digits = &field[start..end];
        let in_range = digits.parse::<u32>().is_ok_and(|n| (low..=high).contains(&n));
        if !in_range && !matches!(previous, Some('/' | '#')) {
            return Some(digits.to_owned());
        }
        previous = field[..end].chars().next_back();
    }
    None
}

/// The instants `cron` fires at in zone `tz` after `after` (exclusive), up to `until`
/// (inclusive), earliest first, at most `limit`.
pub(crate) fn occurrences(
    cron: &Cron,
    tz: &TimeZone,
    after: Timestamp,
    until: Timestamp,
    limit: usize,
) -> Vec<Timestamp> {
    let mut fired: Vec<Timestamp> = Vec::new();
    if limit == 0 || until <= after {
        return fired;
    }
    // Offsets are less than 26 hours from UTC, so a local time more than that past `until`'s
    // UTC wall clock is an instant past `until`.
    let Ok(stop) = until.to_zoned(TimeZone::UTC).datetime().checked_add(26.hours()) else {
        return fired;
    };
    // Local times in a gap become instants later than ones after the gap (02:30 is 03:30,
    // after 03:00). They wait here until a later local time that no gap moves shows that
    // nothing earlier can come.
    let mut moved: Vec<Timestamp> = Vec::new();
    let keep = |at: Timestamp, fired: &mut Vec<Timestamp>| {
        if at > after && at <= until && fired.last().is_none_or(|last| at > *last) {
            fired.push(at);
        }
    };
    for local in cron.pattern.iter_from(first_local(tz, after), Direction::Forward) {
        if local > stop {
            break;
        }
        let ambiguous = tz.to_ambiguous_timestamp(local);
        let in_gap = matches!(ambiguous.offset(), AmbiguousOffset::Gap { .. });
        let Ok(at) = ambiguous.compatible() else {
            break;
        };
        if in_gap {
            moved.push(at);
            continue;
        }
        // Any later local time becomes `at` or later, so the moved times before it are settled.
        moved.sort_unstable();
        let settled = moved.partition_point(|m| *m <= at);
        for m in moved.drain(..settled) {
            keep(m, &mut fired);
        }
        if at > until {
            break;
        }
        keep(at, &mut fired);
        if fired.len() >= limit {
            break;
        }
    }
    moved.sort_unstable();
    for m in moved {
        keep(m, &mut fired);
    }
    fired.truncate(limit);
    fired
}

/// The local time to read the schedule from so that nothing firing after `after` is missed:
/// `after`'s own, or, just after a gap, the start of the gap, whose local times become instants
/// after it.
fn first_local(tz: &TimeZone, after: Timestamp) -> DateTime {
    let mut first = tz.to_datetime(after);
    // A transition at `after` itself counts: its gap's times become instants from `after` on.
    let from = after.checked_add(SignedDuration::from_nanos(1)).unwrap_or(after);
    for change in tz.preceding(from) {
        let since = after.duration_since(change.timestamp());
        if since > SignedDuration::from_hours(26) {
            break;
        }
        let Ok(just_before) = change.timestamp().checked_sub(SignedDuration::from_nanos(1)) else {
            break;
        };
        let before = tz.to_offset(just_before);
        if since < change.offset().duration_since(before) {
            first = first.min(before.to_datetime(change.timestamp()));
        }
    }
    first
}

/// Most occurrences of one schedule handled in one tick: a schedule far behind (the
/// scheduler did not run for days) moves on this many at a time.
pub(crate) const MAX_CATCH_UP: usize = 1_000;
/// How many next occurrences the scheduler keeps for `herald_next_fires`.
const NEXT_KEPT: usize = 10;

/// What a schedule does at `now`: its occurrences after where it was left (`scanned_to`) up to
/// `now`, at most [`MAX_CATCH_UP`] (a schedule further behind moves on to the last of them,
/// and the next tick goes on from there); those within its lateness of `now` fire, older
/// ones are missed; and its next few after that, for `herald_next_fires`.
pub(crate) fn plan(due: &ScheduleDue, now: SystemTime) -> Result<ScheduleFiring, String> {
    let cron = parse_cron(&due.cron)?;
    let tz = zone(&due.zone)?;
    let instant = |t: SystemTime| Timestamp::try_from(t).map_err(|e| format!("{e}"));
    let (after, until) = (instant(due.scanned_to)?, instant(now)?);
    let found = occurrences(&cron, &tz, after, until, MAX_CATCH_UP);
    let to = match found.last() {
        Some(last) if found.len() == MAX_CATCH_UP => *last,
        _ => until.max(after),
    };
    let late = SignedDuration::try_from(due.lateness).map_err(|e| format!("{e}"))?;
    let oldest = until.checked_sub(late).unwrap_or(Timestamp::MIN);
    let (fire, missed): (Vec<Timestamp>, Vec<Timestamp>) = found.into_iter().partition(|t| *t >= oldest);
    let horizon = to
        .checked_add(SignedDuration::from_hours(24 * 400))
        .unwrap_or(Timestamp::MAX);
    let next = occurrences(&cron, &tz, to, horizon, NEXT_KEPT);
    let times = |ts: Vec<Timestamp>| ts.into_iter().map(SystemTime::from).collect();
    Ok(ScheduleFiring {
        automation_id: due.automation_id,
        from: due.scanned_to,
        to: SystemTime::from(to),
        fire: times(fire),
        missed: times(missed),
        next: times(next),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::time::zone;

    #[test]
    fn expressions_parse_or_say_what_is_wrong() {
        let cases: &[(&str, Option<&str>)] = &[
            ("0 9 * * MON", None),
            ("*/15 * * * *", None),
            ("30 2 * * *", None),
            ("0 0 L * *", None),
            ("0 9 * * 1-5", None),
            ("0 9 * JAN-MAR MON-FRI", None),
            ("0 9 15W * *", None),
            ("0 9 * * FRI#2", None),
            ("0 9 * * 5L", None),
            ("0 0 29 2 *", None),
            ("61 * * * *", Some("`61 * * * *`: minute 61 is outside 0-59")),
            ("0 24 * * *", Some("`0 24 * * *`: hour 24 is outside 0-23")),
            ("0 0 0 * *", Some("`0 0 0 * *`: day of month 0 is outside 1-31")),
            ("0 0 1-32 * *", Some("`0 0 1-32 * *`: day of month 32 is outside 1-31")),
            ("0 0 * 13 *", Some("`0 0 * 13 *`: month 13 is outside 1-12")),
            ("0 0 * * 8", Some("`0 0 * * 8`: day of week 8 is outside 0-7")),
            ("* * *", Some("`* * *` has 3 fields; a schedule has five")),
            ("0 0 0 * * *", Some("has 6 fields; a schedule has five")),
            (
                "0 0 0 * * * 2030",
                Some("has 7 fields; a schedule has five, without seconds or years:"),
            ),
            ("bogus", Some("`bogus` has 1 field;")),
            ("", Some("a cron expression is empty")),
            ("  ", Some("a cron expression is empty")),
            ("@daily", Some("nicknames such as @daily are not read")),
            ("x * * * *", Some("`x * * * *`: minute `x`:")),
            ("0 0 * * MON#6", Some("day of week `MON#6`:")),
            ("*/0 * * * *", Some("minute `*/0`:")),
            ("0 0 30 2 *", Some("never fires")),
        ];
        for (text, want) in cases {
            match (parse_cron(text), want) {
                (Ok(_), None) => {}
                (Err(e), Some(part)) => assert!(e.contains(part), "{text}: {e}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }

    /// What a case shows, the expression, the zone, `after` and `until`, and the instants (UTC)
    /// it fires at.
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static [&'static str],
    );

    /// The instants `expression` fires at in `zone` between the two UTC times, in RFC 3339.
    fn fires(expression: &str, zone_name: &str, after: &str, until: &str, limit: usize) -> Vec<String> {
        let cron = parse_cron(expression).unwrap();
        let tz = zone(zone_name).unwrap();
        occurrences(&cron, &tz, after.parse().unwrap(), until.parse().unwrap(), limit)
            .into_iter()
            .map(|at| at.to_string())
            .collect()
    }

    #[test]
    fn clock_changes_follow_the_written_rule() {
        #[rustfmt::skip]
        let cases: &[Case] = &[
            (
                "a daily time in the spring-forward gap runs the gap's length later",
                "30 2 * * *", "America/New_York", "2030-03-09T12:00:00Z", "2030-03-11T12:00:00Z",
                &["2030-03-10T07:30:00Z", "2030-03-11T06:30:00Z"],
            ),
            (
                "a daily time in the repeated hour runs once, at the first",
                "30 1 * * *", "America/New_York", "2030-11-02T12:00:00Z", "2030-11-04T12:00:00Z",
                // 01:30 EDT, then 01:30 EST the next day.
                &["2030-11-03T05:30:00Z", "2030-11-04T06:30:00Z"],
            ),
            (
                "every half hour runs once in the repeated hour",
                "*/30 * * * *", "America/New_York", "2030-11-03T04:00:00Z", "2030-11-03T08:00:00Z",
                // 00:30 EDT, 01:00 EDT, 01:30 EDT, then 02:00 EST, 02:30 EST.
                &["2030-11-03T04:30:00Z", "2030-11-03T05:00:00Z", "2030-11-03T05:30:00Z",
                  "2030-11-03T07:00:00Z", "2030-11-03T07:30:00Z", "2030-11-03T08:00:00Z"],
            ),
            (
                "every half hour across the gap: 02:00 is 03:00, 02:30 and 03:30 are one",
                "*/30 * * * *", "America/New_York", "2030-03-10T06:00:00Z", "2030-03-10T08:00:00Z",
                // 01:30 EST, 03:00 EDT (from 02:00 and 03:00), 03:30 EDT (from 02:30 and
                // 03:30), 04:00 EDT.
                &["2030-03-10T06:30:00Z", "2030-03-10T07:00:00Z", "2030-03-10T07:30:00Z",
                  "2030-03-10T08:00:00Z"],
            ),
            (
                "London's gap: 01:30 is 02:30 BST",
                "30 1 * * *", "Europe/London", "2030-03-30T12:00:00Z", "2030-03-31T12:00:00Z",
                &["2030-03-31T01:30:00Z"],
            ),
            (
                "London's repeated hour: 01:30 BST, once",
                "30 1 * * *", "Europe/London", "2030-10-26T12:00:00Z", "2030-10-27T12:00:00Z",
                &["2030-10-27T00:30:00Z"],
            ),
            (
                "London, hourly across the repeated hour",
                "0 * * * *", "Europe/London", "2030-10-26T23:00:00Z", "2030-10-27T03:00:00Z",
                // 01:00 BST, 02:00 GMT, 03:00 GMT.
                &["2030-10-27T00:00:00Z", "2030-10-27T02:00:00Z", "2030-10-27T03:00:00Z"],
            ),
            (
                "Lord Howe's half-hour gap: 02:15 is 02:45",
                "15 2 * * *", "Australia/Lord_Howe", "2030-10-04T00:00:00Z", "2030-10-06T00:00:00Z",
                // 02:15 +10:30 on 5 October, then 02:45 +11 on 6 October.
                &["2030-10-04T15:45:00Z", "2030-10-05T15:45:00Z"],
            ),
            (
                "a time moved past the gap comes after a real time it passes",
                "15,30 2 * * *", "Australia/Lord_Howe", "2030-10-05T12:00:00Z", "2030-10-05T16:00:00Z",
                // 02:30 (+11) is real; 02:15 is skipped and becomes 02:45 (+11).
                &["2030-10-05T15:30:00Z", "2030-10-05T15:45:00Z"],
            ),
            (
                "Lord Howe's repeated half hour: 01:45 once, at +11",
                "45 1 * * *", "Australia/Lord_Howe", "2030-04-06T00:00:00Z", "2030-04-07T00:00:00Z",
                &["2030-04-06T14:45:00Z"],
            ),
            (
                "Lord Howe, every quarter hour across the repeated half hour",
                "*/15 * * * *", "Australia/Lord_Howe", "2030-04-06T14:15:00Z", "2030-04-06T15:45:00Z",
                // 01:30, 01:45 (+11); 01:30 and 01:45 again (+10:30) do not fire; 02:00, 02:15
                // (+10:30).
                &["2030-04-06T14:30:00Z", "2030-04-06T14:45:00Z", "2030-04-06T15:30:00Z",
                  "2030-04-06T15:45:00Z"],
            ),
        ];
        for (what, expression, zone_name, after, until, want) in cases {
            assert_eq!(fires(expression, zone_name, after, until, 100), *want, "{what}");
        }
    }

    #[test]
    fn a_window_that_starts_inside_a_clock_change() {
        #[rustfmt::skip]
        let cases: &[Case] = &[
            (
                "from just after the gap, 02:30 (now 03:30) is still to come",
                "30 2 * * *", "America/New_York", "2030-03-10T07:10:00Z", "2030-03-10T08:00:00Z",
                &["2030-03-10T07:30:00Z"],
            ),
            (
                "from the second pass of the repeated hour, its times do not fire again",
                "*/30 * * * *", "America/New_York", "2030-11-03T06:10:00Z", "2030-11-03T07:40:00Z",
                &["2030-11-03T07:00:00Z", "2030-11-03T07:30:00Z"],
            ),
            (
                "from inside the first pass, the rest of it fires",
                "*/15 * * * *", "America/New_York", "2030-11-03T05:40:00Z", "2030-11-03T07:00:00Z",
                &["2030-11-03T05:45:00Z", "2030-11-03T07:00:00Z"],
            ),
            (
                "a window wholly inside the second pass fires nothing",
                "* * * * *", "America/New_York", "2030-11-03T06:00:00Z", "2030-11-03T06:59:00Z",
                &[],
            ),
        ];
        for (what, expression, zone_name, after, until, want) in cases {
            assert_eq!(fires(expression, zone_name, after, until, 100), *want, "{what}");
        }
    }

    #[test]
    fn a_catch_up_window_is_bounded_on_both_sides_and_by_the_limit() {
        let hourly = |after, until, limit| fires("0 * * * *", "UTC", after, until, limit);
        let (ten, half_past_one) = ("2030-06-01T10:00:00Z", "2030-06-01T13:30:00Z");
        assert_eq!(
            hourly(ten, half_past_one, 10),
            ["2030-06-01T11:00:00Z", "2030-06-01T12:00:00Z", "2030-06-01T13:00:00Z"]
        );
        assert_eq!(
            hourly(ten, half_past_one, 2),
            ["2030-06-01T11:00:00Z", "2030-06-01T12:00:00Z"]
        );
        assert!(hourly(ten, half_past_one, 0).is_empty());
        // `after` is left out and `until` kept.
        assert_eq!(
            hourly("2030-06-01T10:00:00Z", "2030-06-01T11:00:00Z", 10),
            ["2030-06-01T11:00:00Z"]
        );
        assert!(hourly("2030-06-01T10:00:00.000000001Z", "2030-06-01T10:59:59Z", 10).is_empty());
        assert!(hourly(half_past_one, ten, 10).is_empty());
        // The limit counts instants in order, also when a moved time was read first.
        let lord_howe = fires(
            "15,30 2 * * *",
            "Australia/Lord_Howe",
            "2030-10-05T12:00:00Z",
            "2030-10-05T16:00:00Z",
            1,
        );
        assert_eq!(lord_howe, ["2030-10-05T15:30:00Z"]);
        // In a zone, local times are matched: 09:00 in London in summer is 08:00Z.
        assert_eq!(
            fires("0 9 * * *", "Europe/London", ten, "2030-06-02T10:00:00Z", 10),
            ["2030-06-02T08:00:00Z"]
        );
    }

    #[test]
    fn a_schedule_that_does_not_fire_in_the_window_returns_nothing() {
        // No 29 February between these.
        let none = fires("0 0 29 2 *", "UTC", "2029-01-01T00:00:00Z", "2031-12-31T00:00:00Z", 10);
        assert!(none.is_empty());
        let leap = fires("0 0 29 2 *", "UTC", "2029-01-01T00:00:00Z", "2032-12-31T00:00:00Z", 10);
        assert_eq!(leap, ["2032-02-29T00:00:00Z"]);
        // 02:30 on the second Sunday of March is always in New York's gap.
        let gap_only = fires(
            "30 2 * 3 SUN#2",
            "America/New_York",
            "2030-01-01T00:00:00Z",
            "2033-01-01T00:00:00Z",
            10,
        );
        assert_eq!(
            gap_only,
            ["2030-03-10T07:30:00Z", "2031-03-09T07:30:00Z", "2032-03-14T07:30:00Z"]
        );
    }

    #[test]
    fn a_schedule_fires_what_is_within_its_lateness_and_misses_the_rest() {
        let t = |s: &str| SystemTime::from(s.parse::<Timestamp>().unwrap());
        let due = |cron: &str, lateness_mins: u64, scanned_to: &str| ScheduleDue {
            automation_id: 7,
            cron: cron.into(),
            zone: "UTC".into(),
            lateness: std::time::Duration::from_secs(60 * lateness_mins),
            scanned_to: t(scanned_to),
        };
        // Hourly, left at 10:00, ticking at 13:30 with an hour's lateness: 13:00 fires, 11:00
        // and 12:00 are missed, and it moves on to 13:30.
        let f = plan(&due("0 * * * *", 60, "2030-01-07T10:00:00Z"), t("2030-01-07T13:30:00Z")).unwrap();
        assert_eq!(f.fire, [t("2030-01-07T13:00:00Z")]);
        assert_eq!(f.missed, [t("2030-01-07T11:00:00Z"), t("2030-01-07T12:00:00Z")]);
        assert_eq!(
            (f.automation_id, f.from, f.to),
            (7, t("2030-01-07T10:00:00Z"), t("2030-01-07T13:30:00Z"))
        );
        assert_eq!(f.next.len(), NEXT_KEPT);
        assert_eq!(f.next[0], t("2030-01-07T14:00:00Z"));
        // A lateness of nothing still fires an occurrence at the tick itself.
        let f = plan(
            &due("30 13 * * *", 0, "2030-01-07T10:00:00Z"),
            t("2030-01-07T13:30:00Z"),
        )
        .unwrap();
        assert_eq!((f.fire.len(), f.missed.len()), (1, 0));
        // Nothing due: nothing fired or missed, and it still moves on.
        let f = plan(
            &due("0 9 * * MON", 60, "2030-01-07T10:00:00Z"),
            t("2030-01-08T10:00:00Z"),
        )
        .unwrap();
        assert!(f.fire.is_empty() && f.missed.is_empty());
        assert_eq!(
            (f.to, f.next[0]),
            (t("2030-01-08T10:00:00Z"), t("2030-01-14T09:00:00Z"))
        );
        // Two days behind on an every-minute schedule: a thousand at a time, all missed, and
        // the next tick goes on from the last of them.
        let f = plan(&due("* * * * *", 60, "2030-01-05T00:00:00Z"), t("2030-01-07T00:00:00Z")).unwrap();
        assert_eq!((f.fire.len(), f.missed.len()), (0, MAX_CATCH_UP));
        assert_eq!(f.to, t("2030-01-05T16:40:00Z"));
        // What cannot be read is an error, for the scheduler to log.
        assert!(plan(
            &due("61 * * * *", 60, "2030-01-07T10:00:00Z"),
            t("2030-01-07T13:30:00Z")
        )
        .is_err());
        let mut bad_zone = due("0 * * * *", 60, "2030-01-07T10:00:00Z");
        bad_zone.zone = "Mars/Base".into();
        assert!(plan(&bad_zone, t("2030-01-07T13:30:00Z")).is_err());
    }
}

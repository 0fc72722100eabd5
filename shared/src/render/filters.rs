//! Filters that make dates, times, numbers and money readable in a message:
//!
//! ```text
//! {{ starts_at | datetime }}                  Mon 14 Dec 2026, 18:00
//! {{ starts_at | date }}                      Mon 14 Dec 2026
//! {{ starts_at | time(tz=owner_tz) }}         13:00
//! {{ starts_at | datetime("%-d %B at %H:%M") }} 14 December at 18:00
//! {{ starts_at | relative }}                  tomorrow at 18:00
//! {{ total | number(2) }}                     1,234.50
//! {{ total | money("EUR") }}                  €1,234.50
//! ```
//!
//! Dates and times are read as Postgres's `to_jsonb` writes them: `timestamptz` with its
//! offset, `timestamp` without one (a local time in the zone the filter formats in), and
//! `date`. They are shown in the definition's zone, or the one `tz=` names, with English
//! names of days and months. Amounts are rounded half away from zero on their decimal
//! digits, never through floating-point arithmetic.
//!
//! The send's time and zone are set for the length of one render by [`at_moment`], in a
//! thread-local: a minijinja filter sees its arguments, not the caller's context, and one
//! render runs on one thread without awaiting. Pure functions below do the work and are
//! what the tests read. No locale crate: names are English, and the functions stay small.

use std::cell::RefCell;

use jiff::civil::{Date, DateTime};
use jiff::fmt::strtime;
use jiff::tz::TimeZone;
use jiff::{Timestamp, Unit, Zoned};
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};

/// `| date` without a format: "Mon 14 Dec 2026".
pub(crate) const DATE: &str = "%a %-d %b %Y";
/// `| time` without a format, and the time in `| relative`'s "tomorrow at 18:00".
pub(crate) const TIME: &str = "%H:%M";
/// `| datetime` without a format: "Mon 14 Dec 2026, 18:00".
pub(crate) const DATETIME: &str = "%a %-d %b %Y, %H:%M";
/// Most decimals `| number` shows.
pub(crate) const MAX_PLACES: i64 = 10;

/// The filters' names, as templates write them.
pub(crate) const NAMES: [&str; 6] = ["datetime", "date", "time", "relative", "number", "money"];

/// When the message is sent, and the zone its dates are shown in unless a filter names one.
#[derive(Debug, Clone)]
pub(crate) struct Moment {
    pub at: Timestamp,
    pub zone: TimeZone,
}

thread_local! {
    static MOMENT: RefCell<Option<Moment>> = const { RefCell::new(None) };
}

/// Runs `f` (one render) with `moment` as the filters' send time and zone.
pub(crate) fn at_moment<T>(moment: &Moment, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Moment>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            MOMENT.with(|m| *m.borrow_mut() = previous);
        }
    }
    let _restore = Restore(MOMENT.with(|m| m.replace(Some(moment.clone()))));
    f()
}

pub(crate) fn register(env: &mut Environment<'static>) {
    env.add_filter("datetime", |v: Value, f: Option<Value>, k: Kwargs| {
        formatted("datetime", DATETIME, v, f, k)
    });
    env.add_filter("date", |v: Value, f: Option<Value>, k: Kwargs| {
        formatted("date", DATE, v, f, k)
    });
    env.add_filter("time", |v: Value, f: Option<Value>, k: Kwargs| {
        formatted("time", TIME, v, f, k)
    });
    env.add_filter("relative", relative_filter);
    env.add_filter("number", number_filter);
    env.add_filter("money", money_filter);
}

/// Errors a filter raises start with this, so that they are never taken for a null variable.
pub(crate) const ERROR_PREFIX: &str = "`| ";

fn bad(filter: &str, message: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("{ERROR_PREFIX}{filter}`: {message}"),
    )
}

/// A null input: reported as the null variable it came from, like `{{ x }}` with x null.
fn null(filter: &str) -> Error {
    Error::new(ErrorKind::InvalidOperation, format!("null value given to `| {filter}`"))
}

fn kind_of(value: &Value) -> &'static str {
    match value.kind() {
        ValueKind::Number => "a number",
        ValueKind::String => "text",
        ValueKind::Bool => "true/false",
        ValueKind::Seq | ValueKind::Iterable => "a list",
        ValueKind::Map => "an object",
        ValueKind::None => "null",
        ValueKind::Undefined => "an undefined value",
        _ => "a value of another kind",
    }
}

/// Text quoted in an error, cut short.
fn quoted(text: &str) -> String {
    let mut s: String = text.chars().take(40).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    format!("`{s}`")
}

fn moment(filter: &str) -> Result<Moment, Error> {
    MOMENT
        .with(|m| m.borrow().clone())
        .ok_or_else(|| bad(filter, "no send time to read dates against"))
}

/// `tz=`: a zone by its IANA name, else `default`. Only `tz=` is taken.
fn zone_arg(filter: &str, kwargs: &Kwargs, default: &TimeZone) -> Result<TimeZone, Error> {
    if let Some(other) = kwargs.args().find(|k| *k != "tz") {
        return Err(bad(filter, format!("takes no keyword `{other}=`; only tz=")));
    }
    if !kwargs.has("tz") {
        return Ok(default.clone());
    }
    let value: Value = kwargs.get("tz")?;
    if value.is_none() {
        return Err(null(filter));
    }
    match value.as_str() {
        Some(name) => zone(name).map_err(|e| bad(filter, e)),
        None => Err(bad(
            filter,
            format!(
                "tz= is a time zone name such as \"Europe/London\", not {}",
                kind_of(&value)
            ),
        )),
    }
}

/// A zone by its IANA name, from the tz database compiled into Herald.
pub(crate) fn zone(name: &str) -> Result<TimeZone, String> {
    if name == "UTC" {
        return Ok(TimeZone::UTC);
    }
    TimeZone::get(name).map_err(|_| format!("`{name}` is not a time zone name such as \"Europe/London\""))
}

/// A format argument: text, or the default when there is none.
fn format_arg<'a>(filter: &str, format: &'a Option<Value>, default: &'a str) -> Result<&'a str, Error> {
    match format {
        None => Ok(default),
        Some(v) => v.as_str().ok_or_else(|| {
            bad(
                filter,
                format!("the format is text such as \"{DATE}\", not {}", kind_of(v)),
            )
        }),
    }
}

/// A date and time value, read in a zone.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum When {
    /// An instant: a `timestamptz`, or a `timestamp` placed in the zone.
    At(Zoned),
    /// A `date`: a day without a time.
    Day(Date),
}

/// Reads `text` as Postgres writes times to JSON: with an offset or `Z` (an instant), without
/// one (a local time in `zone`), or a date alone. `None` when it is none of these.
pub(crate) fn read_when(text: &str, zone: &TimeZone) -> Option<When> {
    let text = text.trim();
    if let Ok(ts) = text.parse::<Timestamp>() {
        return Some(When::At(ts.to_zoned(zone.clone())));
    }
    if text.contains(['T', 't', ' ']) {
        // A local time that a clock change skips or repeats is read as jiff's "compatible"
        // does: the later side of a gap, the earlier of a repeat.
        let local = text.parse::<DateTime>().ok()?;
        return local.to_zoned(zone.clone()).ok().map(When::At);
    }
    text.parse::<Date>().ok().map(When::Day)
}

fn when_arg(filter: &str, value: &Value, zone: &TimeZone) -> Result<When, Error> {
    match value.kind() {
        ValueKind::None => Err(null(filter)),
        ValueKind::String => {
            let text = value.as_str().unwrap_or_default();
            read_when(text, zone).ok_or_else(|| bad(filter, format!("{} is not a date or a time", quoted(text))))
        }
        _ => Err(bad(
            filter,
            format!(
                "expects a date or time such as \"2026-12-14T18:00:00+00:00\", not {}",
                kind_of(value)
            ),
        )),
    }
}

/// Formats `when` in `zone` with a strftime-style `format`; a day is its midnight there.
pub(crate) fn format_when(when: &When, zone: &TimeZone, format: &str) -> Result<String, String> {
    let at = match when {
        When::At(z) => z.with_time_zone(zone.clone()),
        When::Day(d) => d.to_zoned(zone.clone()).map_err(|e| e.to_string())?,
    };
    strtime::format(format, &at).map_err(|_| bad_format(format))
}

fn bad_format(format: &str) -> String {
    format!("{} is not a strftime format such as \"{DATE}\"", quoted(format))
}

/// Whether `format` formats: every `%` starts a directive jiff knows.
pub(crate) fn check_format(format: &str) -> Result<(), String> {
    let sample = Timestamp::UNIX_EPOCH.to_zoned(TimeZone::UTC);
    strtime::format(format, &sample)
        .map(drop)
        .map_err(|_| bad_format(format))
}

fn formatted(
    filter: &str,
    default: &str,
    value: Value,
    format: Option<Value>,
    kwargs: Kwargs,
) -> Result<String, Error> {
    let m = moment(filter)?;
    let zone = zone_arg(filter, &kwargs, &m.zone)?;
    let format = format_arg(filter, &format, default)?;
    let when = when_arg(filter, &value, &zone)?;
    if let (When::Day(d), "time") = (&when, filter) {
        return Err(bad(filter, format!("`{d}` is a date, without a time of day")));
    }
    format_when(&when, &zone, format).map_err(|e| bad(filter, e))
}

fn relative_filter(value: Value, format: Option<Value>, kwargs: Kwargs) -> Result<String, Error> {
    let filter = "relative";
    let m = moment(filter)?;
    let zone = zone_arg(filter, &kwargs, &m.zone)?;
    let format = format_arg(filter, &format, TIME)?;
    check_format(format).map_err(|e| bad(filter, e))?;
    let when = when_arg(filter, &value, &zone)?;
    relative(&when, m.at, &zone, format).map_err(|e| bad(filter, e))
}

/// `when` as said from `at` (the send), on the calendar of `zone`:
///
/// | distance | phrase |
/// | --- | --- |
/// | under a minute, either way | now |
/// | under an hour | in 5 minutes, 5 minutes ago |
/// | under 6 hours | in 2 hours, 2 hours ago |
/// | the same, next or previous day | today at 18:00, tomorrow at 18:00, yesterday at 09:15 |
/// | 2 to 13 days | in 3 days, 3 days ago |
/// | under 2 months | in 2 weeks, 3 weeks ago |
/// | under 2 years | in 5 months, 5 months ago |
/// | further | in 3 years, 3 years ago |
///
/// Counts are whole units, rounded down; days, months and years are counted between the
/// local dates. A date alone takes the day phrases only ("tomorrow", "in 3 days").
/// `clock` formats "at 18:00".
pub(crate) fn relative(when: &When, at: Timestamp, zone: &TimeZone, clock: &str) -> Result<String, String> {
    let today = at.to_zoned(zone.clone()).date();
    let (day, time) = match when {
        When::Day(d) => (*d, None),
        When::At(z) => {
            let z = z.with_time_zone(zone.clone());
            // Whole seconds of the difference (not of each time: the send's fraction counts).
            let secs = z.timestamp().duration_since(at).as_secs();
            let phrase = |n: i64, unit: &str| count(secs > 0, n, unit);
            match secs.abs() {
                s if s < 60 => return Ok("now".into()),
                s if s < 3600 => return Ok(phrase(s / 60, "minute")),
                s if s < 6 * 3600 => return Ok(phrase(s / 3600, "hour")),
                _ => {}
            }
            let time = strtime::format(clock, &z).map_err(|_| bad_format(clock))?;
            (z.date(), Some(time))
        }
    };
    let days = (day - today).get_days();
    let at_time = |word: &str| match &time {
        Some(t) => format!("{word} at {t}"),
        None => word.to_owned(),
    };
    Ok(match days {
        0 => at_time("today"),
        1 => at_time("tomorrow"),
        -1 => at_time("yesterday"),
        d if d.abs() < 14 => count(d > 0, d.abs().into(), "day"),
        d => {
            let months = today.until((Unit::Month, day)).map_err(|e| e.to_string())?.get_months();
            match months.abs() {
                m if m < 2 => count(d > 0, (d.abs() / 7).into(), "week"),
                m if m < 24 => count(d > 0, m.into(), "month"),
                m => count(d > 0, (m / 12).into(), "year"),
            }
        }
    })
}

fn count(future: bool, n: i64, unit: &str) -> String {
    let s = if n == 1 { "" } else { "s" };
    if future {
        format!("in {n} {unit}{s}")
    } else {
        format!("{n} {unit}{s} ago")
    }
}

/// A decimal number as its digits: exact, whatever its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decimal {
    negative: bool,
    /// The integer part's digits, without leading zeros ("0" for none).
    int: String,
    /// The fraction's digits.
    frac: String,
}

impl Decimal {
    /// Reads `-1234.505`, `+7`, `.5`, `1.2e3`; `None` for anything else (`1,234`, `NaN`).
    pub(crate) fn parse(text: &str) -> Option<Decimal> {
        let t = text.trim();
        let (negative, t) = match t.as_bytes().first() {
            Some(b'-') => (true, &t[1..]),
            Some(b'+') => (false, &t[1..]),
            _ => (false, t),
        };
        let (mantissa, exp) = match t.find(['e', 'E']) {
            Some(i) => (&t[..i], t[i + 1..].parse::<i64>().ok()?),
            None => (t, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) || !(-100..=100).contains(&exp) {
            return None;
        }
        let all = format!("{int}{frac}");
        let point = int.len() as i64 + exp;
        let (int, frac) = if point <= 0 {
            (
                String::new(),
                format!("{}{all}", "0".repeat(point.unsigned_abs() as usize)),
            )
        } else if point as usize >= all.len() {
            (
                format!("{all}{}", "0".repeat(point as usize - all.len())),
                String::new(),
            )
        } else {
            let (i, f) = all.split_at(point as usize);
            (i.to_owned(), f.to_owned())
        };
        let int = int.trim_start_matches('0');
        Some(Decimal {
            negative,
            int: if int.is_empty() { "0".into() } else { int.into() },
            frac,
        })
    }

    /// Rounded to `places` decimals, half away from zero.
    pub(crate) fn round(&self, places: usize) -> Decimal {
        if self.frac.len() <= places {
            return Decimal {
                frac: format!("{:0<places$}", self.frac),
                ..self.clone()
            };
        }
        let mut digits: Vec<u8> = format!("{}{}", self.int, &self.frac[..places]).into_bytes();
        if self.frac.as_bytes()[places] >= b'5' {
            let mut i = digits.len();
            loop {
                if i == 0 {
                    digits.insert(0, b'1');
                    break;
                }
                i -= 1;
                if digits[i] == b'9' {
                    digits[i] = b'0';
                } else {
                    digits[i] += 1;
                    break;
                }
            }
        }
        let split = digits.len() - places;
        let text = String::from_utf8(digits).unwrap_or_default();
        Decimal {
            negative: self.negative,
            int: text[..split].to_owned(),
            frac: text[split..].to_owned(),
        }
    }

    fn sign(&self) -> &'static str {
        let zero = self.int.bytes().chain(self.frac.bytes()).all(|b| b == b'0');
        if self.negative && !zero {
            "-"
        } else {
            ""
        }
    }

    /// The magnitude with a comma between thousands: "1,234.50".
    fn grouped(&self) -> String {
        let mut out = String::new();
        for (i, c) in self.int.chars().enumerate() {
            if i > 0 && (self.int.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if !self.frac.is_empty() {
            out.push('.');
            out.push_str(&self.frac);
        }
        out
    }
}

/// `number`'s text: thousands separated, rounded to `places` when given, else as written.
pub(crate) fn number(amount: &Decimal, places: Option<usize>) -> String {
    let a = places.map_or_else(|| amount.clone(), |p| amount.round(p));
    format!("{}{}", a.sign(), a.grouped())
}

/// A currency, by its ISO 4217 code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Currency {
    code: String,
    symbol: Option<&'static str>,
    /// Its minor unit: 2 for cents, 0 for yen.
    places: usize,
}

/// A currency by its code: three capital letters. A code without a symbol here is written
/// after the amount ("1,234.50 CHF").
pub(crate) fn currency(code: &str) -> Result<Currency, String> {
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "{} is not a currency code such as \"EUR\" (three capital letters)",
            quoted(code)
        ));
    }
    let symbol = match code {
        "EUR" => Some("€"),
        "USD" => Some("$"),
        "GBP" => Some("£"),
        "JPY" => Some("¥"),
        "INR" => Some("₹"),
        _ => None,
    };
    // ISO 4217's minor units where they are not 2.
    let places = match code {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX" | "UYI" | "VND"
        | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        "CLF" | "UYW" => 4,
        _ => 2,
    };
    Ok(Currency {
        code: code.to_owned(),
        symbol,
        places,
    })
}

/// `money`'s text: "€1,234.50", "-$5.00", "¥1,235", "1,234.50 CHF".
pub(crate) fn money(amount: &Decimal, currency: &Currency) -> String {
    let a = amount.round(currency.places);
    match currency.symbol {
        Some(symbol) => format!("{}{symbol}{}", a.sign(), a.grouped()),
        None => format!("{}{} {}", a.sign(), a.grouped(), currency.code),
    }
}

/// The decimals `number` takes: a whole number from 0 to [`MAX_PLACES`].
pub(crate) fn places(n: i64) -> Result<usize, String> {
    if (0..=MAX_PLACES).contains(&n) {
        Ok(n as usize)
    } else {
        Err(format!("{n} decimals; from 0 to {MAX_PLACES}"))
    }
}

/// A number value as its decimal digits: an integer exactly; a JSON number with a fraction by
/// the shortest text that reads back as the same double (the digits the JSON was written
/// with, up to 15 significant ones); numeric text as written.
fn decimal_arg(filter: &str, value: &Value) -> Result<Decimal, Error> {
    let text = match value.kind() {
        ValueKind::None => return Err(null(filter)),
        ValueKind::Number if value.is_integer() => value.to_string(),
        ValueKind::Number => match f64::try_from(value.clone()) {
            Ok(f) if f.is_finite() => format!("{f}"),
            _ => return Err(bad(filter, format!("{value} is not a finite number"))),
        },
        ValueKind::String => value.as_str().unwrap_or_default().to_owned(),
        _ => {
            return Err(bad(
                filter,
                format!("expects a number or numeric text, not {}", kind_of(value)),
            ))
        }
    };
    Decimal::parse(&text).ok_or_else(|| bad(filter, format!("{} is not a number", quoted(&text))))
}

fn number_filter(value: Value, places_arg: Option<Value>) -> Result<String, Error> {
    let filter = "number";
    let places = match places_arg {
        None => None,
        Some(p) => match p.as_i64() {
            Some(n) if p.is_integer() => Some(places(n).map_err(|e| bad(filter, e))?),
            _ => {
                return Err(bad(
                    filter,
                    format!("the decimals are a whole number such as 2, not {}", kind_of(&p)),
                ))
            }
        },
    };
    Ok(number(&decimal_arg(filter, &value)?, places))
}

fn money_filter(value: Value, code: Option<Value>) -> Result<String, Error> {
    let filter = "money";
    let code = match &code {
        None => return Err(bad(filter, "needs a currency code, as in money(\"EUR\")")),
        Some(c) => c.as_str().ok_or_else(|| {
            bad(
                filter,
                format!("the currency is a code such as \"EUR\", not {}", kind_of(c)),
            )
        })?,
    };
    let currency = currency(code).map_err(|e| bad(filter, e))?;
    Ok(money(&decimal_arg(filter, &value)?, &currency))
}

/// The mistakes a template's own text shows in its calls of these filters: arguments written
/// as literals (a format, a zone, a currency, a number of decimals) that would fail every
/// render. Arguments read from variables are checked when they render.
pub(crate) fn check_literals(source: &str) -> Result<(), String> {
    for call in calls(source) {
        let filter = call.name.as_str();
        let fail = |e: String| Err(format!("{ERROR_PREFIX}{filter}`: {e}"));
        for (key, _) in &call.named {
            if key != "tz" || matches!(filter, "number" | "money") {
                return fail(format!("takes no keyword `{key}=`"));
            }
        }
        let most = 1;
        if call.positional.len() > most {
            return fail(format!("takes at most {most} argument"));
        }
        let first = call.positional.first().cloned().flatten();
        match filter {
            "money" => match (call.positional.first(), first) {
                (None, _) => return fail("needs a currency code, as in money(\"EUR\")".into()),
                (_, Some(Literal::Text(code))) => {
                    if let Err(e) = currency(&code) {
                        return fail(e);
                    }
                }
                (_, Some(Literal::Int(_))) => {
                    return fail("the currency is a code such as \"EUR\", not a number".into())
                }
                _ => {}
            },
            "number" => match first {
                Some(Literal::Int(n)) => {
                    if let Err(e) = places(n) {
                        return fail(e);
                    }
                }
                Some(Literal::Text(_)) => return fail("the decimals are a whole number such as 2, not text".into()),
                None => {}
            },
            _ => {
                if let Some(Literal::Text(format)) = &first {
                    if let Err(e) = check_format(format) {
                        return fail(e);
                    }
                }
                if let Some(Literal::Int(_)) = &first {
                    return fail(format!("the format is text such as \"{DATE}\", not a number"));
                }
                for (_, value) in &call.named {
                    if let Some(Literal::Text(name)) = value {
                        if let Err(e) = zone(name) {
                            return fail(e);
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// An argument written as a literal.
#[derive(Debug, Clone, PartialEq)]
enum Literal {
    Text(String),
    Int(i64),
}

/// A call of one of these filters with arguments: `| money("EUR")`. An argument that is not
/// a lone literal is `None`.
#[derive(Debug, PartialEq)]
struct Call {
    name: String,
    positional: Vec<Option<Literal>>,
    named: Vec<(String, Option<Literal>)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Name(String),
    Text(String),
    Int(i64),
    Punct(char),
}

/// The tokens inside `{{ }}` and `{% %}`, enough to find filter calls; raw blocks are skipped.
fn tokens(source: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(i) = rest.find(['{']) {
        let after = &rest[i + 1..];
        let closer = match after.chars().next() {
            Some('{') => "}}",
            Some('%') => "%}",
            _ => {
                rest = after;
                continue;
            }
        };
        let body = &after[1..];
        if closer == "%}" && body.trim_start_matches(['-', '+', ' ']).starts_with("raw") {
            rest = body.find("endraw").map_or("", |j| &body[j..]);
            rest = rest.find("%}").map_or("", |j| &rest[j + 2..]);
            continue;
        }
        let mut chars = body.char_indices().peekable();
        let mut end = body.len();
        while let Some((j, c)) = chars.next() {
            if body[j..].starts_with(closer) {
                end = j + 2;
                break;
            }
            match c {
                '"' | '\'' => {
                    let mut text = String::new();
                    while let Some((_, d)) = chars.next() {
                        match d {
                            '\\' => {
                                if let Some((_, e)) = chars.next() {
                                    text.push(match e {
                                        'n' => '\n',
                                        't' => '\t',
                                        other => other,
                                    });
                                }
                            }
                            d if d == c => break,
                            d => text.push(d),
                        }
                    }
                    out.push(Token::Text(text));
                }
                c if c.is_ascii_digit() => {
                    let mut n = String::from(c);
                    while let Some((_, d)) = chars
                        .peek()
                        .copied()
                        .filter(|(_, d)| d.is_ascii_alphanumeric() || *d == '.')
                    {
                        n.push(d);
                        chars.next();
                    }
                    out.push(n.parse().map_or(Token::Punct('#'), Token::Int));
                }
                c if c.is_alphabetic() || c == '_' => {
                    let mut n = String::from(c);
                    while let Some((_, d)) = chars.peek().copied().filter(|(_, d)| d.is_alphanumeric() || *d == '_') {
                        n.push(d);
                        chars.next();
                    }
                    out.push(Token::Name(n));
                }
                c if c.is_whitespace() => {}
                c => out.push(Token::Punct(c)),
            }
        }
        out.push(Token::Punct('}'));
        rest = body.get(end..).unwrap_or("");
    }
    out
}

fn calls(source: &str) -> Vec<Call> {
    let t = tokens(source);
    let mut out = Vec::new();
    for i in 0..t.len() {
        let (Token::Punct('|'), Some(Token::Name(name)), Some(Token::Punct('('))) = (&t[i], t.get(i + 1), t.get(i + 2))
        else {
            continue;
        };
        if !NAMES.contains(&name.as_str()) {
            continue;
        }
        let mut call = Call {
            name: name.clone(),
            positional: Vec::new(),
            named: Vec::new(),
        };
        // The arguments: split at top-level commas up to the closing parenthesis.
        let mut depth = 0;
        let mut arg: Vec<&Token> = Vec::new();
        let mut args: Vec<Vec<&Token>> = Vec::new();
        for tok in &t[i + 3..] {
            match tok {
                Token::Punct('(' | '[' | '{') => depth += 1,
                Token::Punct(')') if depth == 0 => break,
                Token::Punct(')' | ']' | '}') => depth -= 1,
                Token::Punct(',') if depth == 0 => {
                    args.push(std::mem::take(&mut arg));
                    continue;
                }
                _ => {}
            }
            arg.push(tok);
        }
        if !arg.is_empty() {
            args.push(arg);
        }
        for a in args {
            let literal = |rest: &[&Token]| match rest {
                [Token::Text(s)] => Some(Literal::Text(s.clone())),
                [Token::Int(n)] => Some(Literal::Int(*n)),
                [Token::Punct('-'), Token::Int(n)] => Some(Literal::Int(-n)),
                _ => None,
            };
            match a.as_slice() {
                [Token::Name(key), Token::Punct('='), rest @ ..]
                    if !rest.first().is_some_and(|t| **t == Token::Punct('=')) =>
                {
                    call.named.push((key.clone(), literal(rest)));
                }
                rest => call.positional.push(literal(rest)),
            }
        }
        out.push(call);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tz(name: &str) -> TimeZone {
        zone(name).unwrap()
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn values_read_as_postgres_writes_them() {
        let ny = tz("America/New_York");
        let cases: &[(&str, Option<&str>)] = &[
            // timestamptz, as to_jsonb writes it, with and without fractional seconds
            (
                "2026-12-14T21:00:00+00:00",
                Some("2026-12-14T16:00:00-05:00[America/New_York]"),
            ),
            (
                "2026-12-14T21:00:00.123456+00:00",
                Some("2026-12-14T16:00:00.123456-05:00[America/New_York]"),
            ),
            (
                "2026-12-14T21:00:00+05:30",
                Some("2026-12-14T10:30:00-05:00[America/New_York]"),
            ),
            // RFC 3339 with Z; the text form with a space and an hours-only offset
            (
                "2026-12-14T21:00:00Z",
                Some("2026-12-14T16:00:00-05:00[America/New_York]"),
            ),
            (
                "2026-12-14 21:00:00+00",
                Some("2026-12-14T16:00:00-05:00[America/New_York]"),
            ),
            // timestamp without zone: a local time in the zone
            (
                "2026-12-14T21:00:00",
                Some("2026-12-14T21:00:00-05:00[America/New_York]"),
            ),
            (
                "2026-12-14T21:00:00.5",
                Some("2026-12-14T21:00:00.5-05:00[America/New_York]"),
            ),
            // a local time the spring change skips is read on its later side
            (
                "2026-03-08T02:30:00",
                Some("2026-03-08T03:30:00-04:00[America/New_York]"),
            ),
            ("next tuesday", None),
            ("2026-13-01", None),
            ("", None),
        ];
        for (text, want) in cases {
            let got = match read_when(text, &ny) {
                Some(When::At(z)) => Some(z.to_string()),
                Some(When::Day(d)) => panic!("{text}: read as the day {d}"),
                None => None,
            };
            assert_eq!(got.as_deref(), *want, "{text}");
        }
        assert_eq!(
            read_when("2026-12-14", &ny),
            Some(When::Day(jiff::civil::date(2026, 12, 14)))
        );
    }

    #[test]
    fn dates_and_times_format_in_the_zone_with_that_days_offset() {
        // (value, zone, format, output): 21:00 UTC on 14 December, and a summer value, so
        // each side of a clock change shows its own offset.
        let cases: &[(&str, &str, &str, &str)] = &[
            ("2026-12-14T21:00:00+00:00", "UTC", DATETIME, "Mon 14 Dec 2026, 21:00"),
            (
                "2026-12-14T21:00:00+00:00",
                "America/New_York",
                DATETIME,
                "Mon 14 Dec 2026, 16:00",
            ),
            (
                "2026-12-14T21:00:00+00:00",
                "Europe/London",
                DATETIME,
                "Mon 14 Dec 2026, 21:00",
            ),
            (
                "2026-12-14T21:00:00+00:00",
                "Asia/Kolkata",
                DATETIME,
                "Tue 15 Dec 2026, 02:30",
            ),
            (
                "2026-12-14T21:00:00+00:00",
                "Australia/Lord_Howe",
                DATETIME,
                "Tue 15 Dec 2026, 08:00",
            ),
            (
                "2026-06-14T21:00:00+00:00",
                "America/New_York",
                DATETIME,
                "Sun 14 Jun 2026, 17:00",
            ),
            (
                "2026-06-14T21:00:00+00:00",
                "Europe/London",
                DATETIME,
                "Sun 14 Jun 2026, 22:00",
            ),
            (
                "2026-06-14T21:00:00+00:00",
                "Asia/Kolkata",
                DATETIME,
                "Mon 15 Jun 2026, 02:30",
            ),
            (
                "2026-06-14T21:00:00+00:00",
                "Australia/Lord_Howe",
                DATETIME,
                "Mon 15 Jun 2026, 07:30",
            ),
            // the offset and abbreviation of each side of a change
            (
                "2026-03-07T12:00:00Z",
                "America/New_York",
                "%H:%M %Z (%:z)",
                "07:00 EST (-05:00)",
            ),
            (
                "2026-03-09T12:00:00Z",
                "America/New_York",
                "%H:%M %Z (%:z)",
                "08:00 EDT (-04:00)",
            ),
            ("2026-03-28T12:00:00Z", "Europe/London", "%H:%M %Z", "12:00 GMT"),
            ("2026-03-30T12:00:00Z", "Europe/London", "%H:%M %Z", "13:00 BST"),
            (
                "2026-04-04T12:00:00Z",
                "Australia/Lord_Howe",
                "%H:%M %:z",
                "23:00 +11:00",
            ),
            (
                "2026-04-06T12:00:00Z",
                "Australia/Lord_Howe",
                "%H:%M %:z",
                "22:30 +10:30",
            ),
            ("2026-12-14T21:00:00+00:00", "Asia/Kolkata", "%H:%M %Z", "02:30 IST"),
            // the issue's format; a local time stays that local time
            (
                "2026-12-14T21:00:00+00:00",
                "Europe/London",
                "%a %d %b, %H:%M",
                "Mon 14 Dec, 21:00",
            ),
            (
                "2026-12-14T09:05:00",
                "Asia/Kolkata",
                "%-d %B %Y at %-I:%M %p",
                "14 December 2026 at 9:05 AM",
            ),
            ("2026-07-04", "America/New_York", DATE, "Sat 4 Jul 2026"),
            ("2026-07-04", "Australia/Lord_Howe", "%A %-d %B", "Saturday 4 July"),
            ("2026-12-14T21:00:00+00:00", "America/New_York", TIME, "16:00"),
        ];
        for (value, zone_name, format, want) in cases {
            let z = tz(zone_name);
            let when = read_when(value, &z).unwrap();
            assert_eq!(
                format_when(&when, &z, format).as_deref(),
                Ok(*want),
                "{value} in {zone_name} as {format}"
            );
        }
        let e = format_when(
            &read_when("2026-12-14", &TimeZone::UTC).unwrap(),
            &TimeZone::UTC,
            "%a %K",
        );
        assert_eq!(
            e,
            Err("`%a %K` is not a strftime format such as \"%a %-d %b %Y\"".into())
        );
    }

    #[test]
    fn relative_phrases_follow_the_table() {
        // The send: Mon 14 Dec 2026, 12:00 in New York (17:00 UTC).
        let send = at("2026-12-14T17:00:00Z");
        let cases: &[(&str, &str)] = &[
            ("2026-12-14T17:00:00Z", "now"),
            ("2026-12-14T17:00:59Z", "now"),
            ("2026-12-14T16:59:01Z", "now"),
            ("2026-12-14T17:01:00Z", "in 1 minute"),
            ("2026-12-14T17:05:30Z", "in 5 minutes"),
            ("2026-12-14T16:55:00Z", "5 minutes ago"),
            ("2026-12-14T17:59:59Z", "in 59 minutes"),
            ("2026-12-14T18:00:00Z", "in 1 hour"),
            ("2026-12-14T19:59:00Z", "in 2 hours"),
            ("2026-12-14T15:00:00Z", "2 hours ago"),
            ("2026-12-14T22:59:59Z", "in 5 hours"),
            // 6 hours and more: the day, by the calendar of New York
            ("2026-12-14T23:00:00Z", "today at 18:00"),
            ("2026-12-14T06:00:00Z", "today at 01:00"),
            ("2026-12-15T23:00:00Z", "tomorrow at 18:00"),
            ("2026-12-15T04:59:00Z", "today at 23:59"),
            ("2026-12-15T05:00:00Z", "tomorrow at 00:00"),
            ("2026-12-13T14:15:00Z", "yesterday at 09:15"),
            ("2026-12-17T23:00:00Z", "in 3 days"),
            ("2026-12-11T14:00:00Z", "3 days ago"),
            ("2026-12-27T23:00:00Z", "in 13 days"),
            ("2026-12-28T23:00:00Z", "in 2 weeks"),
            ("2027-02-13T23:00:00Z", "in 8 weeks"),
            ("2027-02-14T23:00:00Z", "in 2 months"),
            ("2026-09-01T12:00:00Z", "3 months ago"),
            ("2028-12-13T23:00:00Z", "in 23 months"),
            ("2028-12-14T23:00:00Z", "in 2 years"),
            ("2020-01-01T00:00:00Z", "6 years ago"),
            // a local time is read in the zone; a date alone takes the day phrases
            ("2026-12-15T18:00:00", "tomorrow at 18:00"),
            ("2026-12-14", "today"),
            ("2026-12-15", "tomorrow"),
            ("2026-12-13", "yesterday"),
            ("2026-12-20", "in 6 days"),
            ("2026-11-30", "2 weeks ago"),
        ];
        let ny = tz("America/New_York");
        for (value, want) in cases {
            let when = read_when(value, &ny).unwrap();
            assert_eq!(relative(&when, send, &ny, TIME).as_deref(), Ok(*want), "{value}");
        }
        // A send a fraction of a second past the second: counts are of the whole difference.
        // (send, value, phrase)
        let fractional = [
            ("2026-12-14T17:00:00.7Z", "2026-12-14T18:00:00Z", "in 59 minutes"),
            ("2026-12-14T12:00:00.5Z", "2026-12-14T18:00:00Z", "in 5 hours"),
            ("2026-12-14T17:59:00.5Z", "2026-12-14T18:00:00Z", "now"),
        ];
        for (send, value, want) in fractional {
            let when = read_when(value, &ny).unwrap();
            assert_eq!(
                relative(&when, at(send), &ny, TIME).as_deref(),
                Ok(want),
                "{send} {value}"
            );
        }
    }

    #[test]
    fn relative_days_are_the_zones_calendar_days_across_clock_changes() {
        // (send, value, zone, phrase)
        let cases: &[(&str, &str, &str, &str)] = &[
            // 17:00 UTC on 14 Dec is 22:30 in Kolkata: 03:00 UTC the next day is its tomorrow
            (
                "2026-12-14T17:00:00Z",
                "2026-12-15T03:00:00Z",
                "Asia/Kolkata",
                "tomorrow at 08:30",
            ),
            (
                "2026-12-14T17:00:00Z",
                "2026-12-15T03:00:00Z",
                "America/New_York",
                "today at 22:00",
            ),
            (
                "2026-12-14T17:00:00Z",
                "2026-12-15T03:00:00Z",
                "Europe/London",
                "tomorrow at 03:00",
            ),
            (
                "2026-12-14T17:00:00Z",
                "2026-12-14T22:59:00Z",
                "Asia/Kolkata",
                "in 5 hours",
            ),
            (
                "2026-12-14T17:00:00Z",
                "2026-12-14T23:30:00Z",
                "Asia/Kolkata",
                "tomorrow at 05:00",
            ),
            // London springs forward on 29 March: the day before at 18:00 GMT, the day at 18:00 BST
            (
                "2026-03-28T09:00:00Z",
                "2026-03-29T17:00:00Z",
                "Europe/London",
                "tomorrow at 18:00",
            ),
            (
                "2026-03-28T09:00:00Z",
                "2026-03-28T18:00:00Z",
                "Europe/London",
                "today at 18:00",
            ),
            // Lord Howe moves half an hour back on 5 April
            (
                "2026-04-04T09:00:00Z",
                "2026-04-05T07:30:00Z",
                "Australia/Lord_Howe",
                "tomorrow at 18:00",
            ),
            (
                "2026-04-04T09:00:00Z",
                "2026-04-08T07:30:00Z",
                "Australia/Lord_Howe",
                "in 4 days",
            ),
            (
                "2026-11-01T04:00:00Z",
                "2026-11-02T14:15:00Z",
                "America/New_York",
                "tomorrow at 09:15",
            ),
        ];
        for (send, value, zone_name, want) in cases {
            let z = tz(zone_name);
            let when = read_when(value, &z).unwrap();
            assert_eq!(
                relative(&when, at(send), &z, TIME).as_deref(),
                Ok(*want),
                "{value} from {send} in {zone_name}"
            );
        }
        let when = read_when("2026-12-15T18:00:00", &TimeZone::UTC).unwrap();
        assert_eq!(
            relative(&when, at("2026-12-14T12:00:00Z"), &TimeZone::UTC, "%-I:%M %p").as_deref(),
            Ok("tomorrow at 6:00 PM")
        );
    }

    #[test]
    fn decimals_round_half_away_from_zero_on_their_digits() {
        // (text, places, number, money in EUR)
        let cases: &[(&str, Option<usize>, &str)] = &[
            ("1234.5", Some(2), "1,234.50"),
            ("1234.505", Some(2), "1,234.51"),
            ("1234.504999", Some(2), "1,234.50"),
            ("-1234.505", Some(2), "-1,234.51"),
            ("1.005", Some(2), "1.01"),
            ("2.675", Some(2), "2.68"),
            ("0.125", Some(2), "0.13"),
            ("999.995", Some(2), "1,000.00"),
            ("9999999.5", Some(0), "10,000,000"),
            ("-0.004", Some(2), "0.00"),
            ("-0.005", Some(2), "-0.01"),
            ("1234567", None, "1,234,567"),
            ("1234.505", None, "1,234.505"),
            ("12", Some(3), "12.000"),
            ("123", None, "123"),
            ("1000", None, "1,000"),
            ("0", Some(2), "0.00"),
            (".5", Some(0), "1"),
            ("+7.25", Some(1), "7.3"),
            ("1.2e3", Some(0), "1,200"),
            ("1.5e-3", Some(3), "0.002"),
            (
                "123456789012345678901234567890.5",
                Some(0),
                "123,456,789,012,345,678,901,234,567,891",
            ),
            ("  42  ", None, "42"),
        ];
        for (text, places, want) in cases {
            let d = Decimal::parse(text).unwrap_or_else(|| panic!("{text} reads"));
            assert_eq!(number(&d, *places), *want, "{text} to {places:?}");
        }
        for text in [
            "1,234",
            "",
            "-",
            ".",
            "NaN",
            "inf",
            "1.2.3",
            "12abc",
            "1e",
            "0x10",
            "1e999",
            // An exponent at the ends of i64 is refused, not read as a number of zeros.
            "1e-9223372036854775808",
            ".1e-9223372036854775808",
            "1e9223372036854775807",
        ] {
            assert_eq!(Decimal::parse(text), None, "{text}");
        }
        // A double's shortest text is the digits the JSON had: 1234.505 is 1234.50499999… as
        // a double, and still rounds up.
        assert_eq!(format!("{}", 1234.505_f64), "1234.505");
        assert_eq!(format!("{}", 1e21_f64), "1000000000000000000000");
    }

    #[test]
    fn money_is_written_with_its_symbol_or_code_and_minor_unit() {
        let cases: &[(&str, &str, &str)] = &[
            ("1234.5", "EUR", "€1,234.50"),
            ("1234.5", "USD", "$1,234.50"),
            ("1234.5", "GBP", "£1,234.50"),
            ("1234.5", "JPY", "¥1,235"),
            ("1234.5", "INR", "₹1,234.50"),
            ("1234.5", "CHF", "1,234.50 CHF"),
            ("1234.5", "KWD", "1,234.500 KWD"),
            ("1234.5", "KRW", "1,235 KRW"),
            ("-1234.5", "EUR", "-€1,234.50"),
            ("-1234.5", "CHF", "-1,234.50 CHF"),
            ("1234.505", "EUR", "€1,234.51"),
            ("-0.001", "USD", "$0.00"),
            ("1000000", "USD", "$1,000,000.00"),
            ("0.5", "JPY", "¥1"),
        ];
        for (amount, code, want) in cases {
            let got = money(&Decimal::parse(amount).unwrap(), &currency(code).unwrap());
            assert_eq!(got, *want, "{amount} {code}");
        }
        for code in ["EURO", "eur", "EU", "", "E1R", "€"] {
            assert!(currency(code).unwrap_err().contains("is not a currency code"), "{code}");
        }
    }

    /// Renders `source` with `vars` at the send time and zone given.
    fn render(source: &str, vars: serde_json::Value, send: &str, zone_name: &str) -> Result<String, String> {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        register(&mut env);
        let m = Moment {
            at: at(send),
            zone: tz(zone_name),
        };
        at_moment(&m, || env.render_str(source, vars)).map_err(|e| e.to_string())
    }

    #[test]
    fn filters_render_in_templates() {
        let vars = serde_json::json!({
            "starts_at": "2026-12-14T21:00:00+00:00", "local": "2026-12-14T18:00:00", "day": "2026-12-14",
            "owner_tz": "America/New_York", "total": 1234.505, "big": 9007199254740993_i64,
            "text_total": "1234.5", "cents": 123450, "currency": "GBP", "zero": 0
        });
        let cases: &[(&str, &str)] = &[
            ("{{ starts_at | datetime }}", "Mon 14 Dec 2026, 21:00"),
            (
                "{{ starts_at | datetime('%a %d %b, %H:%M', tz=owner_tz) }}",
                "Mon 14 Dec, 16:00",
            ),
            (
                "{{ starts_at | datetime(tz='Asia/Kolkata') }}",
                "Tue 15 Dec 2026, 02:30",
            ),
            ("{{ starts_at | date }}", "Mon 14 Dec 2026"),
            ("{{ starts_at | date('%d/%m/%Y') }}", "14/12/2026"),
            ("{{ starts_at | time }}", "21:00"),
            ("{{ starts_at | time(tz=owner_tz) }}", "16:00"),
            ("{{ local | time(tz=owner_tz) }}", "18:00"),
            ("{{ day | date }}", "Mon 14 Dec 2026"),
            ("{{ starts_at | relative }}", "tomorrow at 21:00"),
            ("{{ starts_at | relative(tz=owner_tz) }}", "tomorrow at 16:00"),
            ("{{ starts_at | relative('%-I %p') }}", "tomorrow at 9 PM"),
            ("{{ day | relative }}", "tomorrow"),
            ("{{ total | number(2) }}", "1,234.51"),
            ("{{ total | number }}", "1,234.505"),
            ("{{ big | number }}", "9,007,199,254,740,993"),
            ("{{ text_total | number(2) }}", "1,234.50"),
            ("{{ (cents / 100) | money('EUR') }}", "€1,234.50"),
            ("{{ total | money('EUR') }}", "€1,234.51"),
            ("{{ total | money(currency) }}", "£1,234.51"),
            ("{{ -total | money('USD') }}", "-$1,234.51"),
            ("{{ zero | money('JPY') }}", "¥0"),
            ("{{ total | money('CHF') }}", "1,234.51 CHF"),
        ];
        for (source, want) in cases {
            assert_eq!(
                render(source, vars.clone(), "2026-12-13T20:00:00Z", "UTC").as_deref(),
                Ok(*want),
                "{source}"
            );
        }
    }

    #[test]
    fn the_documented_examples_render_as_documented() {
        // docs/definitions.md, "Filters": its table, with the values its text gives.
        let page = include_str!("../../../docs/definitions.md");
        let table = page
            .split("<!-- filters-table -->")
            .nth(1)
            .and_then(|t| t.split("<!-- /filters-table -->").next())
            .expect("the Filters table is marked");
        let vars = serde_json::json!({
            "starts_at": "2026-12-14T18:00:00+00:00", "local": "2026-12-14T18:00:00", "day": "2026-12-14",
            "owner_tz": "America/New_York", "total": 1234.505, "count": 1234567, "refund": -42.5
        });
        let mut rows = 0;
        for line in table.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<String> = line
                .replace("\\|", "\u{1}")
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().replace('\u{1}', "|"))
                .collect();
            let [template, output] = cells.as_slice() else {
                panic!("two cells: {line}");
            };
            let template = template.trim_matches('`');
            assert_eq!(
                render(template, vars.clone(), "2026-12-13T10:00:00Z", "Europe/London").as_deref(),
                Ok(output.as_str()),
                "{template}"
            );
            rows += 1;
        }
        assert!(rows >= 20, "{rows} rows");
    }

    #[test]
    fn filters_refuse_what_they_cannot_read_and_say_which_filter() {
        let vars = serde_json::json!({"starts_at": "2026-12-14T21:00:00Z", "day": "2026-12-14", "n": 17, "s": "soon",
                                       "obj": {"a": 1}, "flag": true, "tz": "Mars/Base", "list": [1]});
        let cases: &[(&str, &str)] = &[
            (
                "{{ n | date }}",
                "`| date`: expects a date or time such as \"2026-12-14T18:00:00+00:00\", not a number",
            ),
            ("{{ s | datetime }}", "`| datetime`: `soon` is not a date or a time"),
            (
                "{{ obj | relative }}",
                "`| relative`: expects a date or time such as \"2026-12-14T18:00:00+00:00\", not an object",
            ),
            (
                "{{ day | time }}",
                "`| time`: `2026-12-14` is a date, without a time of day",
            ),
            (
                "{{ starts_at | date(tz=tz) }}",
                "`| date`: `Mars/Base` is not a time zone name such as \"Europe/London\"",
            ),
            (
                "{{ starts_at | date(tz=n) }}",
                "`| date`: tz= is a time zone name such as \"Europe/London\", not a number",
            ),
            (
                "{{ starts_at | date(zone='UTC') }}",
                "`| date`: takes no keyword `zone=`; only tz=",
            ),
            (
                "{{ starts_at | date('%Y %K') }}",
                "`| date`: `%Y %K` is not a strftime format",
            ),
            (
                "{{ starts_at | date(5) }}",
                "`| date`: the format is text such as \"%a %-d %b %Y\", not a number",
            ),
            (
                "{{ starts_at | relative('%K') }}",
                "`| relative`: `%K` is not a strftime format",
            ),
            ("{{ s | number }}", "`| number`: `soon` is not a number"),
            (
                "{{ flag | number }}",
                "`| number`: expects a number or numeric text, not true/false",
            ),
            (
                "{{ list | money('EUR') }}",
                "`| money`: expects a number or numeric text, not a list",
            ),
            ("{{ n | number(11) }}", "`| number`: 11 decimals; from 0 to 10"),
            (
                "{{ n | number('2') }}",
                "`| number`: the decimals are a whole number such as 2, not text",
            ),
            (
                "{{ n | money('EURO') }}",
                "`| money`: `EURO` is not a currency code such as \"EUR\" (three capital letters)",
            ),
            (
                "{{ n | money }}",
                "`| money`: needs a currency code, as in money(\"EUR\")",
            ),
            (
                "{{ n | money(3) }}",
                "`| money`: the currency is a code such as \"EUR\", not a number",
            ),
        ];
        for (source, want) in cases {
            let e = render(source, vars.clone(), "2026-12-13T20:00:00Z", "UTC").unwrap_err();
            assert!(e.contains(want), "{source}: {e}");
        }
    }

    #[test]
    fn literal_arguments_are_checked_without_rendering() {
        let cases: &[(&str, Result<(), &str>)] = &[
            (
                "{{ a | date }} {{ a | money(code) }} {{ a | datetime(fmt, tz=zone) }}",
                Ok(()),
            ),
            ("{{ a | datetime('%a %d %b, %H:%M', tz=owner_tz) }}", Ok(())),
            (
                "{{ a | date(\"%-d %B\", tz=\"Asia/Kolkata\") }}{{ b | number(2) }}{{ c | money('JPY') }}",
                Ok(()),
            ),
            ("{% if a %}{{ a | relative('%-I:%M %p') }}{% endif %}", Ok(())),
            ("{{ 'x | money(\"EURO\")' }}", Ok(())),
            ("{% raw %}{{ a | money('EURO') }}{% endraw %}", Ok(())),
            ("{{ a | replace('|', ' ') | upper }}", Ok(())),
            (
                "{{ a | money('EURO') }}",
                Err("`| money`: `EURO` is not a currency code"),
            ),
            ("{{ a | money }}", Ok(())), // no parentheses: the render says what is missing
            ("{{ a | money() }}", Err("`| money`: needs a currency code")),
            ("{{ a | number(12) }}", Err("`| number`: 12 decimals; from 0 to 10")),
            ("{{ a | number(-1) }}", Err("`| number`: -1 decimals")),
            ("{{ a | date('%K') }}", Err("`| date`: `%K` is not a strftime format")),
            (
                "{{ a | time(tz='Mars/Base') }}",
                Err("`| time`: `Mars/Base` is not a time zone name"),
            ),
            (
                "{{ a | relative(tz = 'Nowhere') }}",
                Err("`| relative`: `Nowhere` is not a time zone name"),
            ),
            ("{{ a | date('%d', '%m') }}", Err("`| date`: takes at most 1 argument")),
            (
                "{{ a | money('EUR', places=2) }}",
                Err("`| money`: takes no keyword `places=`"),
            ),
            (
                "Total: {{ a|money('EU') }}",
                Err("`| money`: `EU` is not a currency code"),
            ),
        ];
        for (source, want) in cases {
            match (check_literals(source), want) {
                (Ok(()), Ok(())) => {}
                (Err(e), Err(part)) => assert!(e.contains(part), "{source}: {e}"),
                (got, want) => panic!("{source}: got {got:?}, want {want:?}"),
            }
        }
    }
}

//! Recipient checks done before anything is sent, and masking for logs.

/// Checks that `addr` is a plain `local@domain` address SES will accept, and returns it as SES
/// takes it: a domain written in Unicode (`bücher.example`) in its ASCII form
/// (`xn--bcher-kva.example`). SES has no SMTPUTF8, so the part before @ must be ASCII.
pub(crate) fn check_email(addr: &str) -> Result<String, String> {
    let bad = |why: &str| Err(format!("invalid email address {:?}: {why}", mask_email(addr)));
    if addr.is_empty() {
        return bad("it is empty");
    }
    if addr.chars().any(|c| {
        c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';' | '"' | '(' | ')' | '[' | ']' | '\\')
    }) {
        return bad("it contains a space, a control character or a character not allowed in an address");
    }
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return bad("it has no @");
    };
    if local.is_empty() || local.len() > 64 || local.contains('@') {
        return bad("the part before @ is empty, too long or has another @");
    }
    if !local.is_ascii() {
        return bad("the part before @ has a character other than ASCII, which SES cannot send to");
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return bad("the part before @ has a misplaced dot");
    }
    let domain = if domain.is_ascii() {
        domain.to_owned()
    } else {
        match idna::domain_to_ascii_strict(domain) {
            Ok(ascii) => ascii,
            Err(_) => return bad("the domain is not a valid international domain name"),
        }
    };
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return bad("the domain has no dot");
    }
    for label in &labels {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ok {
            return bad("the domain is not a valid host name");
        }
    }
    let sent = format!("{local}@{domain}");
    if sent.len() > 254 {
        return bad("it is longer than 254 characters");
    }
    Ok(sent)
}

/// A region whose phone numbers Herald reads in their national form: an ISO 3166 alpha-2
/// code (`US`, `GB`, `DE`) that libphonenumber's metadata knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region(phonenumber::country::Id);

impl Region {
    /// The region of a code as a definition writes it, upper case.
    pub(crate) fn of_code(code: &str) -> Option<Self> {
        if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
            return None;
        }
        phonenumber::metadata::DATABASE.by_id(code)?;
        code.parse().ok().map(Self)
    }

    /// The region a value of the data names: a code in either case, spaces around it
    /// ignored.
    pub(crate) fn of_data(value: &str) -> Option<Self> {
        Self::of_code(&value.trim().to_ascii_uppercase())
    }

    pub fn code(&self) -> &str {
        self.0.as_ref()
    }
}

/// Longest text read as a phone number; libphonenumber reads at most 250 characters.
const MAX_PHONE_INPUT: usize = 64;

/// Reads `number` as a phone number that can receive an SMS, and returns it in E.164 form
/// (`+4915123456789`), the form SNS takes and the ledger records. A number written with `+`
/// and its country code is read as it is; a national one (`(415) 555-0101`, `0151 23456789`)
/// in `region`, and without one it is refused. The number must be valid by libphonenumber's
/// metadata, and not of a kind that cannot receive an SMS: a fixed line, a premium-rate or
/// shared-cost number, a voicemail access number. Mobiles, numbers a region does not tell
/// apart from fixed lines (the US and Canada), VoIP, personal, pager, toll-free and company
/// (UAN) numbers are sent to; the provider decides for those.
pub(crate) fn check_phone(number: &str, region: Option<Region>) -> Result<String, String> {
    use phonenumber::{Mode, Type};
    let bad = |why: String| Err(format!("invalid phone number {:?}: {why}", mask_phone(number)));
    let text = number.trim();
    if text.is_empty() {
        return bad("it is empty".into());
    }
    if text.chars().count() > MAX_PHONE_INPUT {
        return bad(format!("it is longer than {MAX_PHONE_INPUT} characters"));
    }
    // libphonenumber reads letters as the digits of a keypad (1-800-FLOWERS); in a column of
    // numbers they are far more often a mistake, or an extension, than a vanity number.
    if text.chars().any(char::is_alphabetic) {
        return bad("it has letters in it".into());
    }
    let international = text.starts_with('+');
    if !international && region.is_none() {
        return bad("it has no + and country code, and no region is known to read it in: \
                    give the definition a `region`, or the step one"
            .into());
    }
    let region = region.filter(|_| !international);
    let parsed = match phonenumber::parse(region.map(|r| r.0), text) {
        Ok(n) => n,
        Err(e) => {
            use phonenumber::ParseError as P;
            return bad(match e {
                P::NoNumber | P::MalformedInteger(_) => "it is not a phone number".into(),
                P::InvalidCountryCode => "it starts with a country code that is not in use".into(),
                P::TooShortAfterIdd | P::TooShortNsn => "it is too short".into(),
                P::TooLong => "it is too long".into(),
            });
        }
    };
    if parsed.extension().is_some() {
        return bad("it has an extension, which cannot receive an SMS".into());
    }
    let e164 = parsed.format().mode(Mode::E164).to_string();
    let database = &*phonenumber::metadata::DATABASE;
    // The region of the number, or, for one that matches none of its country code's, the
    // main region of that code.
    let code = parsed.code().value();
    let meta = parsed.metadata(database).or_else(|| {
        database
            .by_code(&code)?
            .into_iter()
            .find(|m| m.is_main_country_for_code())
    });
    let Some(meta) = meta else {
        return bad(format!("+{code} is not a country code"));
    };
    let place = match region {
        Some(r) if r.code() == meta.id() => format!("in {}", r.code()),
        Some(r) => format!(
            "in {} (read in {}, it is a number of {})",
            meta.id(),
            r.code(),
            meta.id()
        ),
        None => format!("in {}", meta.id()),
    };
    let kind = parsed.number_type(database);
    if kind == Type::Unknown {
        let digits = parsed.national().to_string().len();
        // The lengths of the region's numbers of any kind (the metadata keeps them by kind).
        let mut lengths: Vec<u16> = [
            Type::FixedLine,
            Type::Mobile,
            Type::TollFree,
            Type::PremiumRate,
            Type::SharedCost,
            Type::PersonalNumber,
            Type::Voip,
            Type::Pager,
            Type::Uan,
            Type::Voicemail,
        ]
        .into_iter()
        .filter_map(|t| meta.descriptors().get(t))
        .flat_map(|d| d.possible_length().iter().copied())
        .collect();
        lengths.sort_unstable();
        lengths.dedup();
        let why = match (lengths.first(), lengths.last()) {
            (Some(&min), _) if digits < usize::from(min) => "it is too short",
            (_, Some(&max)) if digits > usize::from(max) => "it is too long",
            _ if !lengths.is_empty() && !lengths.contains(&(digits as u16)) => "it has a length numbers do not have",
            _ => "it is not a number in use",
        };
        return bad(format!("{why} {place}"));
    }
    let refused = match kind {
        Type::FixedLine => Some("is a fixed line: it cannot receive SMS"),
        Type::PremiumRate => Some("is a premium-rate number: it cannot receive SMS"),
        Type::SharedCost => Some("is a shared-cost number: it cannot receive SMS"),
        Type::Voicemail => Some("is a voicemail access number: it cannot receive SMS"),
        _ => None,
    };
    match refused {
        Some(why) => Err(format!("phone number {:?} {why}", mask_phone(&e164))),
        None => Ok(e164),
    }
}

/// `jane.doe@example.com` → `j***@example.com`.
pub(crate) fn mask_email(addr: &str) -> String {
    match addr.rsplit_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => mask_tail(addr, 0),
    }
}

/// `+14155550123` → `+*******0123`.
pub(crate) fn mask_phone(number: &str) -> String {
    mask_tail(number, 4)
}

/// Masks every email address and phone number in free text (provider error messages,
/// reasons) before it goes to a log, numbers written with spaces or brackets included.
pub fn redact(text: &str) -> String {
    redact_words(&redact_spaced_numbers(text))
}

/// Masks the addresses and numbers that are one word each.
fn redact_words(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    for c in text.chars() {
        if c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | ',' | ';' | '(' | ')' | '[' | ']' | '`') {
            out.push_str(&redact_word(&word));
            word.clear();
            out.push(c);
        } else {
            word.push(c);
        }
    }
    out.push_str(&redact_word(&word));
    out
}

/// Masks numbers written with spaces or brackets (`+44 7911 123456`, `(415) 555-0101`,
/// `0151 23456789`), which the word-by-word pass sees in pieces: a run of digits, `+`,
/// brackets, `-`, `.` and spaces holding 7 digits or more and a space or bracket keeps only
/// its last 4 digits. (One that starts with a date, `2030-03-10 12:00`, is left alone.)
fn redact_spaced_numbers(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if !(c.is_ascii_digit() || c == '+' || c == '(') {
            out.push(c);
            i += 1;
            continue;
        }
        let mut end = i;
        while end < chars.len()
            && (chars[end].is_ascii_digit() || matches!(chars[end], '+' | '(' | ')' | '-' | '.' | ' '))
        {
            end += 1;
        }
        // The run ends at its last digit.
        while end > i && !chars[end - 1].is_ascii_digit() {
            end -= 1;
        }
        if end == i {
            out.push(c);
            i += 1;
            continue;
        }
        let run = &chars[i..end];
        let digits = run.iter().filter(|c| c.is_ascii_digit()).count();
        let text: String = run.iter().collect();
        if digits >= 7 && !is_date(&text) && run.iter().any(|c| matches!(c, ' ' | '(' | ')')) {
            let mut left = digits;
            for &d in run {
                if d.is_ascii_digit() {
                    out.push(if left > 4 { '*' } else { d });
                    left -= 1;
                } else {
                    out.push(d);
                }
            }
        } else {
            out.extend(run);
        }
        i = end;
    }
    out
}

/// Whether `text` starts with a date as logs write it (`2030-03-10`).
fn is_date(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() >= 10
        && b[..10].iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
}

fn redact_word(w: &str) -> String {
    let trimmed = w.trim_end_matches(['.', ':', '!', '?']);
    let tail = &w[trimmed.len()..];
    if let Some(at) = trimmed.find('@') {
        if at > 0 && at + 1 < trimmed.len() {
            return format!("{}{tail}", mask_email(trimmed));
        }
    }
    let digits = trimmed.chars().filter(|c| c.is_ascii_digit()).count();
    if digits >= 7
        && !is_date(trimmed)
        && trimmed
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | '.'))
    {
        return format!("{}{tail}", mask_phone(trimmed));
    }
    w.to_owned()
}

fn mask_tail(s: &str, keep: usize) -> String {
    let n = s.chars().count();
    s.chars()
        .enumerate()
        .map(|(i, c)| if i == 0 && c == '+' || i + keep >= n { c } else { '*' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        for (given, sent) in [
            ("a@b.co", "a@b.co"),
            ("jane.doe+tag@mail.example.com", "jane.doe+tag@mail.example.com"),
            ("x_y-z@sub-domain.example.org", "x_y-z@sub-domain.example.org"),
            // A domain in Unicode is sent in its ASCII form; an ASCII one as it is written.
            ("anna@bücher.example", "anna@xn--bcher-kva.example"),
            ("anna@BÜCHER.example", "anna@xn--bcher-kva.example"),
            ("info@münchen.de", "info@xn--mnchen-3ya.de"),
            ("kontakt@例え.jp", "kontakt@xn--r8jz45g.jp"),
            ("Jane@Example.COM", "Jane@Example.COM"),
        ] {
            assert_eq!(check_email(given), Ok(sent.to_owned()), "{given}");
        }
        for bad in [
            "",
            "plain",
            "@example.com",
            "jane@",
            "jane@localhost",
            "jane@@example.com",
            "jane doe@example.com",
            "jane@exa mple.com",
            "jane@-example.com",
            "jane@example..com",
            ".jane@example.com",
            "ja..ne@example.com",
            "Jane <jane@example.com>",
            "a@b.com,c@d.com",
            "jane@example.com\n",
            "jane@ex_ample.com",
            // SES cannot send to a local part in Unicode.
            "ü@bücher.de",
            "zoë@example.com",
            "anna@bü_cher.example",
            "anna@bücher",
        ] {
            assert!(check_email(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(check_email(&format!("{}@example.com", "a".repeat(65))).is_err());
        // The length of the address as sent counts.
        let long = format!("a@{}.example", ["ü"; 40].join("."));
        assert!(long.len() <= 254 && check_email(&long).is_err(), "{long}");
        let err = check_email("zoë@example.com").unwrap_err();
        assert!(err.contains("other than ASCII"), "{err}");
    }

    fn region(code: &str) -> Option<Region> {
        Some(Region::of_code(code).unwrap())
    }

    #[test]
    fn phone_numbers_are_read_in_a_region_and_sent_in_e164() {
        let cases: Vec<(&str, Option<&str>, &str)> = vec![
            // Already E.164, with or without a region (another one changes nothing).
            ("+14155550123", None, "+14155550123"),
            ("+14155550123", Some("DE"), "+14155550123"),
            ("+447400123456", Some("US"), "+447400123456"),
            ("+4915123456789", None, "+4915123456789"),
            ("+1 415-555-0123", None, "+14155550123"),
            ("+44 (0) 7400 123456", None, "+447400123456"),
            ("  +49 151 23456789 ", None, "+4915123456789"),
            // National forms, read in their region.
            ("(415) 555-0101", Some("US"), "+14155550101"),
            ("415.555.0101", Some("US"), "+14155550101"),
            ("1 415 555 0101", Some("US"), "+14155550101"),
            ("(416) 555-0101", Some("CA"), "+14165550101"),
            ("07400 123456", Some("GB"), "+447400123456"),
            ("7400 123456", Some("GB"), "+447400123456"),
            ("0151 23456789", Some("DE"), "+4915123456789"),
            ("0151/234 567 89", Some("DE"), "+4915123456789"),
            // An international prefix, dialled from the region.
            ("0049 151 23456789", Some("DE"), "+4915123456789"),
            ("011 44 7400 123456", Some("US"), "+447400123456"),
            ("06 12 34 56 78", Some("FR"), "+33612345678"),
        ];
        for (given, r, want) in cases {
            assert_eq!(
                check_phone(given, r.and_then(region)),
                Ok(want.to_owned()),
                "{given} in {r:?}"
            );
        }
    }

    #[test]
    fn phone_numbers_that_cannot_receive_an_sms_are_refused_with_the_reason() {
        let cases: Vec<(&str, Option<&str>, &str)> = vec![
            ("", Some("US"), "it is empty"),
            ("   ", Some("US"), "it is empty"),
            ("(415) 555-0101", None, "no region is known to read it in"),
            ("0151 23456789", None, "no region is known to read it in"),
            ("14155550123", None, "no region is known to read it in"),
            ("call me", Some("US"), "it has letters in it"),
            ("--", Some("US"), "it is not a phone number"),
            ("+", None, "it is not a phone number"),
            ("+0123456789", None, "country code"),
            ("+999 1234 5678", None, "country code"),
            ("+1415555", None, "too short"),
            ("555-0101", Some("US"), "too short"),
            ("0151 234", Some("DE"), "it is not a number in use in DE"),
            ("+1 415 555 0101 0101", None, "too long"),
            ("07400 1234564567", Some("GB"), "too long"),
            ("(415) 123-4567", Some("US"), "not a number in use"),
            ("+1 555 555 0101", None, "not a number in use"),
            ("07400 12345", Some("GB"), "in GB"),
            ("(415) 555-0101 #12", Some("US"), "it has an extension"),
            ("(415) 555-0101 ext. 12", Some("US"), "it has letters in it"),
            ("+1415CALLNOW", None, "it has letters in it"),
            // Known to be fixed lines.
            ("030 1234567", Some("DE"), "is a fixed line: it cannot receive SMS"),
            ("+49 30 1234567", None, "is a fixed line: it cannot receive SMS"),
            ("020 7946 0018", Some("GB"), "is a fixed line: it cannot receive SMS"),
            ("+44 20 7946 0018", Some("US"), "is a fixed line: it cannot receive SMS"),
            ("01 23 45 67 89", Some("FR"), "is a fixed line: it cannot receive SMS"),
            ("0900 123 4567", Some("DE"), "premium-rate"),
        ];
        for (given, r, want) in cases {
            let err = check_phone(given, r.and_then(region)).unwrap_err();
            assert!(err.contains(want), "{given} in {r:?}: {err}");
        }
        let err = check_phone(&"1".repeat(65), region("US")).unwrap_err();
        assert!(err.contains("longer than 64 characters"), "{err}");
    }

    #[test]
    fn numbers_a_region_cannot_tell_from_mobiles_and_other_kinds_are_sent_to() {
        for (given, r, want) in [
            // US and Canadian numbers are fixed lines or mobiles alike.
            ("(201) 555-0123", "US", "+12015550123"),
            // Toll-free: some take texts; the provider decides.
            ("(800) 253-0000", "US", "+18002530000"),
            ("0800 123 4567", "DE", "+498001234567"),
        ] {
            assert_eq!(check_phone(given, region(r)), Ok(want.to_owned()), "{given} in {r}");
        }
    }

    #[test]
    fn regions_are_codes_libphonenumber_knows() {
        assert_eq!(Region::of_code("DE").map(|r| r.code().to_owned()), Some("DE".into()));
        for bad in ["de", "D", "DEU", "ZZ", "XX", "001", "", "Germany"] {
            assert_eq!(Region::of_code(bad), None, "{bad}");
        }
        for (value, code) in [
            ("de", Some("DE")),
            (" gb ", Some("GB")),
            ("US", Some("US")),
            ("zz", None),
            ("", None),
        ] {
            assert_eq!(
                Region::of_data(value).map(|r| r.code().to_owned()),
                code.map(str::to_owned),
                "{value:?}"
            );
        }
    }

    #[test]
    fn redact_masks_addresses_and_numbers_in_free_text() {
        let text = "Email address not verified jane.doe@example.com. SMS to +14155550123 failed (\"bo@x.org\"), log 42";
        let r = redact(text);
        assert_eq!(
            r,
            "Email address not verified j***@example.com. SMS to +*******0123 failed (\"b***@x.org\"), log 42"
        );
    }

    #[test]
    fn redact_masks_numbers_written_with_spaces_or_brackets_and_leaves_dates_and_counts() {
        // (text, redacted)
        let cases = [
            ("SNS: +44 7911 123456", "SNS: +** **** **3456"),
            ("not a date: `(415) 555-0101`", "not a date: `(***) ***-0101`"),
            ("to 0151 23456789.", "to **** ****6789."),
            (
                "the wait would end at 2030-03-10 12:00:00+00",
                "the wait would end at 2030-03-10 12:00:00+00",
            ),
            ("step 3 of 12, attempt 2", "step 3 of 12, attempt 2"),
            ("log 42 (lease 7)", "log 42 (lease 7)"),
        ];
        for (text, want) in cases {
            assert_eq!(redact(text), want, "{text}");
        }
    }

    #[test]
    fn errors_and_masks_hide_the_full_recipient() {
        let err = check_email("jane.doe@example").unwrap_err();
        assert!(!err.contains("jane.doe"), "{err}");
        assert_eq!(mask_email("jane.doe@example.com"), "j***@example.com");
        assert_eq!(mask_phone("+14155550123"), "+*******0123");
        for (number, region) in [
            ("+1415555", None),
            ("030 1234567", Some("DE")),
            ("(415) 123-4567", Some("US")),
        ] {
            let err = check_phone(number, region.and_then(self::region)).unwrap_err();
            assert!(
                !err.contains("1415555") && !err.contains("123456") && !err.contains("123-4"),
                "{err}"
            );
        }
    }
}

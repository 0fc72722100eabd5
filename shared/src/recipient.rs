//! Recipient checks done before anything is sent, and masking for logs.

/// Checks that `addr` is a plain `local@domain` address SES will accept.
pub(crate) fn check_email(addr: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("invalid email address {:?}: {why}", mask_email(addr)));
    if addr.is_empty() {
        return bad("it is empty");
    }
    if addr.len() > 254 {
        return bad("it is longer than 254 characters");
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
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return bad("the part before @ has a misplaced dot");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return bad("the domain has no dot");
    }
    for label in &labels {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_alphanumeric() || c == '-');
        if !ok {
            return bad("the domain is not a valid host name");
        }
    }
    Ok(())
}

/// Checks that `number` is an E.164 phone number: `+`, a country code that does not start
/// with 0, and 8 to 15 digits in all.
pub(crate) fn check_phone(number: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("invalid phone number {:?}: {why}", mask_phone(number)));
    let Some(digits) = number.strip_prefix('+') else {
        return bad("E.164 numbers start with +");
    };
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return bad("only digits may follow the +");
    }
    if digits.starts_with('0') {
        return bad("country codes do not start with 0");
    }
    if !(8..=15).contains(&digits.len()) {
        return bad("E.164 numbers have 8 to 15 digits");
    }
    Ok(())
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
/// reasons) before it goes to a log.
pub fn redact(text: &str) -> String {
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
        for ok in [
            "a@b.co",
            "jane.doe+tag@mail.example.com",
            "x_y-z@sub-domain.example.org",
            "ü@bücher.de",
        ] {
            assert_eq!(check_email(ok), Ok(()), "{ok}");
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
        ] {
            assert!(check_email(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(check_email(&format!("{}@example.com", "a".repeat(65))).is_err());
    }

    #[test]
    fn phones() {
        for ok in ["+14155550123", "+447700900123", "+4930123456"] {
            assert_eq!(check_phone(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "14155550123",
            "+1 415 555 0123",
            "+1-415-555-0123",
            "+0123456789",
            "+12345",
            "+1234567890123456",
            "+abc",
            "++14155550123",
        ] {
            assert!(check_phone(bad).is_err(), "{bad:?} should be rejected");
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
    fn errors_and_masks_hide_the_full_recipient() {
        let err = check_email("jane.doe@example").unwrap_err();
        assert!(!err.contains("jane.doe"), "{err}");
        assert_eq!(mask_email("jane.doe@example.com"), "j***@example.com");
        assert_eq!(mask_phone("+14155550123"), "+*******0123");
        let err = check_phone("+1415555").unwrap_err();
        assert!(!err.contains("1415555"), "{err}");
    }
}

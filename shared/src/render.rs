//! Renders a step's templates against an instance's variables, all or nothing.
//!
//! Strict: a variable the data lacks, or one whose value is null, fails the whole render
//! with an error that names it. Nothing half-rendered ever leaves this module. The HTML
//! body escapes every value; the other templates are plain text. Every template has the
//! filters of [`filters`] (dates, times, numbers, money), read against the send's
//! [`Moment`].

mod filters;

use std::sync::LazyLock;

use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};
use serde_json::Value as Json;

pub(crate) use self::filters::Moment;
use crate::model::{Email, EmailTemplates, Sms, SmsTemplates};

/// SNS refuses SMS bodies longer than this.
pub(crate) const SMS_MAX_CHARS: usize = 1600;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RenderError {
    #[error("missing template variable {} in {template}", list(.names))]
    Missing { template: &'static str, names: Vec<String> },
    #[error("template variable {} in {template} is null", list(.names))]
    Null { template: &'static str, names: Vec<String> },
    #[error("{template} could not be rendered: {message}")]
    Invalid { template: &'static str, message: String },
    #[error("{template} rendered to an empty string")]
    Empty { template: &'static str },
    #[error("sms_body rendered to {0} characters; SMS allows {SMS_MAX_CHARS}")]
    SmsTooLong(usize),
    #[error("{template} contains the control character U+{code:04X}")]
    ControlCharacter { template: &'static str, code: u32 },
}

fn list(names: &[String]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

/// Renders an email's templates. `default_from` is used when they set no sender.
pub(crate) fn render_email(
    t: &EmailTemplates,
    vars: &Json,
    default_from: &str,
    moment: &Moment,
) -> Result<Email, RenderError> {
    let scope = Scope::new(vars, moment);
    Ok(Email {
        from: match &t.from {
            Some(from) => scope.one_line("email_from", from)?,
            None => default_from.to_owned(),
        },
        to: scope.one_line("email_to", &t.to)?,
        subject: scope.one_line("email_subject", &t.subject)?,
        text: t
            .text
            .as_deref()
            .map(|s| scope.non_empty("email_text", s))
            .transpose()?,
        html: t
            .html
            .as_deref()
            .map(|s| scope.non_empty("email_html", s))
            .transpose()?,
    })
}

/// Renders a text message's templates.
pub(crate) fn render_sms(t: &SmsTemplates, vars: &Json, moment: &Moment) -> Result<Sms, RenderError> {
    let scope = Scope::new(vars, moment);
    let body = scope.non_empty("sms_body", &t.body)?;
    let chars = body.chars().count();
    if chars > SMS_MAX_CHARS {
        return Err(RenderError::SmsTooLong(chars));
    }
    Ok(Sms {
        to: scope.one_line("sms_to", &t.to)?,
        body,
    })
}

/// Renders one plain-text template named `name` (for errors); `line` makes it one line.
pub(crate) fn render_text(
    name: &'static str,
    source: &str,
    vars: &Json,
    line: bool,
    moment: &Moment,
) -> Result<String, RenderError> {
    let scope = Scope::new(vars, moment);
    if line {
        scope.one_line(name, source)
    } else {
        scope.non_empty(name, source)
    }
}

/// Whether `source` compiles as a template, and the literal arguments of its calls of
/// Herald's filters (a format, a zone, a currency) are ones they take. Its variables, and
/// arguments read from them, are only known when it renders.
/// The error is the problem as a definition reports it.
pub(crate) fn check_template(source: &str) -> Result<(), String> {
    ENVIRONMENT
        .template_from_str(source)
        .map_err(|e| format!("the template does not compile: {e}"))?;
    filters::check_literals(source)
}

/// The syntax tree of `source` as the environment reads it; `None` when it does not compile
/// there (which [`check_template`] reports).
pub(crate) fn syntax_tree(source: &str) -> Option<minijinja::machinery::ast::Stmt<'_>> {
    ENVIRONMENT.template_from_str(source).ok()?;
    minijinja::machinery::parse(source, "template", Default::default(), Default::default()).ok()
}

/// The names every template sees besides its data: minijinja's functions (`range`, `dict`, …).
pub(crate) fn global_names() -> Vec<String> {
    ENVIRONMENT.globals().map(|(name, _)| name.to_owned()).collect()
}

/// The one environment every template renders in: strict about undefined and null values,
/// escaping HTML only in the HTML body.
static ENVIRONMENT: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    filters::register(&mut env);
    env.set_auto_escape_callback(|name| {
        if name == "email_html" {
            AutoEscape::Html
        } else {
            AutoEscape::None
        }
    });
    env.set_formatter(|out, state, value| {
        if value.is_none() {
            return Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                "null value",
            ));
        }
        minijinja::escape_formatter(out, state, value)
    });
    env
});

/// One set of variables, converted once for all the templates rendered with it.
struct Scope<'a> {
    vars: &'a Json,
    value: Value,
    moment: &'a Moment,
}

impl<'a> Scope<'a> {
    fn new(vars: &'a Json, moment: &'a Moment) -> Self {
        Self {
            vars,
            value: Value::from_serialize(vars),
            moment,
        }
    }

    /// Renders a template whose result is one line (an address, a subject): runs of spaces,
    /// tabs and newlines become one space; any other control character is an error.
    fn one_line(&self, name: &'static str, source: &str) -> Result<String, RenderError> {
        let s = self.non_empty(name, source)?;
        let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
        match s.chars().find(|c| c.is_control()) {
            Some(c) => Err(RenderError::ControlCharacter {
                template: name,
                code: c as u32,
            }),
            None => Ok(s),
        }
    }

    /// Renders a body: newlines and tabs are fine, other control characters are an error.
    fn non_empty(&self, name: &'static str, source: &str) -> Result<String, RenderError> {
        let s = self.render_one(name, source)?;
        if s.trim().is_empty() {
            return Err(RenderError::Empty { template: name });
        }
        if let Some(c) = s.chars().find(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) {
            return Err(RenderError::ControlCharacter {
                template: name,
                code: c as u32,
            });
        }
        Ok(s)
    }

    fn render_one(&self, name: &'static str, source: &str) -> Result<String, RenderError> {
        let vars = self.vars;
        let invalid = |e: minijinja::Error| RenderError::Invalid {
            template: name,
            message: e.to_string(),
        };
        let tmpl = ENVIRONMENT.template_from_named_str(name, source).map_err(invalid)?;
        filters::at_moment(self.moment, || tmpl.render(&self.value)).map_err(|e| {
            // Name the culprits: the variables the template uses that the data lacks, or
            // that are null. Loop variables and the like are not known here; then the
            // engine's own message has to do.
            let used = tmpl.undeclared_variables(true);
            let mut missing: Vec<String> = Vec::new();
            let mut null: Vec<String> = Vec::new();
            for path in used {
                match lookup(vars, &path) {
                    None => missing.push(path),
                    Some(Json::Null) => null.push(path),
                    Some(_) => {}
                }
            }
            missing.sort();
            null.sort();
            match e.kind() {
                minijinja::ErrorKind::UndefinedError if !missing.is_empty() => RenderError::Missing {
                    template: name,
                    names: missing,
                },
                // A filter's own complaint (`| money`: …) is about the value, not a null.
                minijinja::ErrorKind::InvalidOperation
                    if !null.is_empty() && !e.detail().is_some_and(|d| d.starts_with(filters::ERROR_PREFIX)) =>
                {
                    RenderError::Null {
                        template: name,
                        names: null,
                    }
                }
                _ => invalid(e),
            }
        })
    }
}

/// Follows a dotted path (`client.email`) through JSON objects.
fn lookup<'a>(vars: &'a Json, path: &str) -> Option<&'a Json> {
    path.split('.').try_fold(vars, |v, key| v.as_object()?.get(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An email's and an SMS's templates, rendered together.
    struct Templates {
        email: EmailTemplates,
        sms: SmsTemplates,
    }

    #[derive(Debug, PartialEq)]
    struct Rendered {
        email: Option<Email>,
        sms: Option<Sms>,
    }

    fn def(subject: &str, html: &str, sms: &str) -> Templates {
        Templates {
            email: EmailTemplates {
                from: None,
                to: "{{ client_email }}".into(),
                subject: subject.into(),
                text: Some("Hi {{ client_name }}".into()),
                html: Some(html.into()),
            },
            sms: SmsTemplates {
                to: "{{ client_phone }}".into(),
                body: sms.into(),
            },
        }
    }

    /// Sent at noon UTC on 13 December 2026, read in New York.
    fn moment() -> Moment {
        Moment {
            at: "2026-12-13T12:00:00Z".parse().unwrap(),
            zone: jiff::tz::TimeZone::get("America/New_York").unwrap(),
        }
    }

    fn render(t: &Templates, vars: &Json, default_from: &str) -> Result<Rendered, RenderError> {
        Ok(Rendered {
            email: Some(render_email(&t.email, vars, default_from, &moment())?),
            sms: Some(render_sms(&t.sms, vars, &moment())?),
        })
    }

    fn vars() -> Json {
        json!({"client_name": "Ann <b>&</b>", "client_email": " ann@example.com ", "client_phone": "+14155550123",
               "job": {"title": "Fix sink", "notes": null}})
    }

    #[test]
    fn renders_every_channel_and_escapes_only_html() {
        // GIVEN templates using top-level and nested variables
        let d = def(
            "Job {{ job.title }} done",
            "<p>Hi {{ client_name }}</p>",
            "{{ job.title }} done, {{ client_name }}",
        );
        // WHEN rendered
        let r = render(&d, &vars(), "noreply@example.com").unwrap();
        // THEN values are in place, the HTML body is escaped and the text ones are not
        let email = r.email.unwrap();
        assert_eq!(email.from, "noreply@example.com");
        assert_eq!(email.to, "ann@example.com");
        assert_eq!(email.subject, "Job Fix sink done");
        assert_eq!(email.text.as_deref(), Some("Hi Ann <b>&</b>"));
        assert_eq!(
            email.html.as_deref(),
            Some("<p>Hi Ann &lt;b&gt;&amp;&lt;&#x2f;b&gt;</p>")
        );
        assert_eq!(r.sms.unwrap().body, "Fix sink done, Ann <b>&</b>");
    }

    #[test]
    fn a_missing_variable_is_named_and_nothing_renders() {
        let d = def("Job {{ job.title }} for {{ client_surname }}", "<p>x</p>", "x");
        let err = render(&d, &vars(), "n@example.com").unwrap_err();
        assert_eq!(
            err,
            RenderError::Missing {
                template: "email_subject",
                names: vec!["client_surname".into()]
            }
        );
        assert_eq!(
            err.to_string(),
            "missing template variable `client_surname` in email_subject"
        );

        let d = def("ok", "<p>{{ job.rate }}</p>", "x");
        let err = render(&d, &vars(), "n@example.com").unwrap_err();
        assert_eq!(
            err,
            RenderError::Missing {
                template: "email_html",
                names: vec!["job.rate".into()]
            }
        );
    }

    #[test]
    fn a_null_value_is_an_error_not_the_word_none() {
        let d = def("ok", "<p>x</p>", "Notes: {{ job.notes }}");
        let err = render(&d, &vars(), "n@example.com").unwrap_err();
        assert_eq!(
            err,
            RenderError::Null {
                template: "sms_body",
                names: vec!["job.notes".into()]
            }
        );
        // a default makes it fine
        let d = def("ok", "<p>x</p>", "Notes: {{ job.notes or 'none yet' }}");
        assert_eq!(
            render(&d, &vars(), "n@example.com").unwrap().sms.unwrap().body,
            "Notes: none yet"
        );
    }

    #[test]
    fn syntax_errors_empty_results_and_long_sms_are_errors() {
        let d = def("{{ unclosed", "<p>x</p>", "x");
        assert!(matches!(
            render(&d, &vars(), "n@x.com"),
            Err(RenderError::Invalid {
                template: "email_subject",
                ..
            })
        ));
        let d = def("{{ '' }}", "<p>x</p>", "x");
        assert_eq!(
            render(&d, &vars(), "n@x.com"),
            Err(RenderError::Empty {
                template: "email_subject"
            })
        );
        let d = def("s", "<p>x</p>", "{{ 'x' * 1601 }}");
        assert_eq!(render(&d, &vars(), "n@x.com"), Err(RenderError::SmsTooLong(1601)));
    }

    #[test]
    fn control_characters_are_refused_but_body_newlines_are_kept() {
        let v = json!({"client_name": "Bell\u{7}", "client_email": "a@b.co", "client_phone": "+14155550123"});
        let d = def("Hi {{ client_name }}", "<p>x</p>", "x");
        assert_eq!(
            render(&d, &v, "n@x.com").unwrap_err().to_string(),
            "email_subject contains the control character U+0007"
        );
        let v = json!({"client_name": "x", "client_email": "a@b.co\nBcc: c@d.co", "client_phone": "+14155550123"});
        let d = def("s", "<p>x</p>", "line one\nline two\ttabbed");
        let r = render(&d, &v, "n@x.com").unwrap();
        assert_eq!(
            r.email.unwrap().to,
            "a@b.co Bcc: c@d.co",
            "folded to one line (and then refused as an address)"
        );
        assert_eq!(r.sms.unwrap().body, "line one\nline two\ttabbed");
    }

    #[test]
    fn filters_render_in_every_template_in_the_sends_zone() {
        let v = json!({"client_name": "Ann", "client_email": "a@b.co", "client_phone": "+14155550123",
                       "starts_at": "2026-12-14T23:00:00+00:00", "total": 1234.5, "tz": "Europe/London"});
        let d = def(
            "See you {{ starts_at | relative }}",
            "<p>{{ starts_at | date }} at {{ starts_at | time(tz=tz) }}: {{ total | money('EUR') }}</p>",
            "{{ starts_at | datetime('%a %-d %b, %-I:%M %p') }}, {{ total | number(2) }}",
        );
        let r = render(&d, &v, "n@x.com").unwrap();
        let email = r.email.unwrap();
        assert_eq!(email.subject, "See you tomorrow at 18:00");
        assert_eq!(
            email.html.as_deref(),
            Some("<p>Mon 14 Dec 2026 at 23:00: €1,234.50</p>")
        );
        assert_eq!(r.sms.unwrap().body, "Mon 14 Dec, 6:00 PM, 1,234.50");
    }

    #[test]
    fn a_filters_complaint_names_it_and_a_null_input_names_the_variable() {
        let v = json!({"client_name": "Ann", "client_email": "a@b.co", "client_phone": "+14155550123",
                       "starts_at": null, "total": "lots", "nothing": null});
        let d = def("s", "<p>x</p>", "{{ starts_at | date }}");
        assert_eq!(
            render(&d, &v, "n@x.com").unwrap_err(),
            RenderError::Null {
                template: "sms_body",
                names: vec!["starts_at".into()]
            }
        );
        // A null elsewhere does not take the blame for a value the filter cannot read.
        let d = def("s", "<p>x</p>", "{{ nothing or 'x' }} {{ total | money('EUR') }}");
        let err = render(&d, &v, "n@x.com").unwrap_err().to_string();
        assert!(
            err.starts_with("sms_body could not be rendered: invalid operation: `| money`: `lots` is not a number"),
            "{err}"
        );
        // As docs/definitions.md quotes it.
        let d = def("s", "<p>x</p>", "{{ 17 | date }}");
        assert_eq!(
            render(&d, &v, "n@x.com").unwrap_err().to_string(),
            "sms_body could not be rendered: invalid operation: `| date`: expects a date or time such as \
             \"2026-12-14T18:00:00+00:00\", not a number (in sms_body:1)"
        );
    }

    #[test]
    fn template_looking_data_is_rendered_as_text() {
        let d = def("{{ client_name }}", "<p>{{ client_name }}</p>", "{{ client_name }}");
        let v =
            json!({"client_name": "{{ 7 * 7 }}{% raw %}", "client_email": "a@b.co", "client_phone": "+14155550123"});
        let r = render(&d, &v, "n@x.com").unwrap();
        assert_eq!(r.email.unwrap().subject, "{{ 7 * 7 }}{% raw %}");
    }
}

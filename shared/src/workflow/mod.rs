//! The workflow engine's decisions, as pure functions of data: what a definition says, whether
//! a condition holds, when a wait ends, and what an instance does next. Nothing here reads a database or a clock; callers pass both in.

pub mod condition;
pub mod definition;
pub mod machine;
pub mod plan;
pub(crate) mod schedule;
pub(crate) mod shape;
pub(crate) mod time;
pub mod variables;
pub mod wait;

use std::fmt;

/// A mistake in a definition, at its path in the document (`steps[2].until.field`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A field of the data a workflow sees: the subject row's columns and `herald.*`, by the
/// names of the objects that lead to it. Written `"a.b"`, or `["a.b"]` for a name with a dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field(Vec<String>);

impl Field {
    /// Reads `"a.b"` or `["a", "b"]`.
    pub(crate) fn parse(value: &serde_json::Value) -> Result<Self, String> {
        let parts: Vec<String> = match value {
            serde_json::Value::String(s) => s.split('.').map(str::to_owned).collect(),
            serde_json::Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or("a field written as a list names each step as text")?,
            _ => return Err("a field is text (\"starts_at\", \"herald.new_status\") or a list of names".into()),
        };
        if parts.is_empty() || parts.iter().any(String::is_empty) {
            return Err("a field name has an empty part".into());
        }
        Ok(Self(parts))
    }

    /// The field's value in `data`, or `None` when the data has no such field.
    pub(crate) fn read<'a>(&self, data: &'a serde_json::Value) -> Option<&'a serde_json::Value> {
        self.0.iter().try_fold(data, |at, name| at.get(name))
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

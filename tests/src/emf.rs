//! CloudWatch's embedded metric format (EMF), read back the way CloudWatch Logs reads it:
//! a log event that is one JSON object with an `_aws` member becomes metrics only if its
//! metadata and the members it names are well formed.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// The units CloudWatch takes.
pub const UNITS: &[&str] = &[
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
];

/// Most dimensions in one dimension set, metrics in one directive, values of one metric.
pub const MAX_DIMENSIONS: usize = 30;
pub const MAX_METRICS: usize = 100;
pub const MAX_VALUES: usize = 100;

/// One EMF document, as CloudWatch would take it.
#[derive(Debug, Clone, PartialEq)]
pub struct Emf {
    pub timestamp_ms: i64,
    pub namespace: String,
    /// Each dimension set, as (name, value).
    pub dimensions: Vec<Vec<(String, String)>>,
    /// Each metric: its unit and values.
    pub metrics: BTreeMap<String, (String, Vec<f64>)>,
}

impl Emf {
    /// The value of dimension `name`, from the first set that has it.
    pub fn dimension(&self, name: &str) -> Option<&str> {
        self.dimensions
            .iter()
            .flatten()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The one value of metric `name` (panics if it has several).
    pub fn value(&self, name: &str) -> Option<f64> {
        self.metrics.get(name).map(|(_, values)| {
            assert_eq!(values.len(), 1, "{name} has {} values", values.len());
            values[0]
        })
    }

    pub fn values(&self, name: &str) -> &[f64] {
        self.metrics.get(name).map_or(&[], |(_, v)| v.as_slice())
    }

    pub fn unit(&self, name: &str) -> Option<&str> {
        self.metrics.get(name).map(|(u, _)| u.as_str())
    }
}

/// Reads one log event as EMF: `Ok(None)` when it is not EMF at all (not a JSON object with
/// an `_aws` member), the document when it is valid, and what is wrong when it is not.
pub fn read(event: &str) -> Result<Option<Emf>, String> {
    let Ok(Value::Object(root)) = serde_json::from_str::<Value>(event) else {
        return Ok(None);
    };
    let Some(aws) = root.get("_aws") else {
        return Ok(None);
    };
    let aws = aws.as_object().ok_or("_aws is not an object")?;
    let timestamp_ms = match aws.get("Timestamp") {
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.as_i64().ok_or("Timestamp is out of range")?,
        other => return Err(format!("_aws.Timestamp is not an integer: {other:?}")),
    };
    let directives = aws
        .get("CloudWatchMetrics")
        .and_then(Value::as_array)
        .ok_or("_aws.CloudWatchMetrics is not an array")?;
    if directives.is_empty() {
        return Err("_aws.CloudWatchMetrics is empty".into());
    }
    let mut doc = Emf {
        timestamp_ms,
        namespace: String::new(),
        dimensions: Vec::new(),
        metrics: BTreeMap::new(),
    };
    for directive in directives {
        let directive = directive.as_object().ok_or("a MetricDirective is not an object")?;
        let namespace = directive
            .get("Namespace")
            .and_then(Value::as_str)
            .ok_or("a directive has no Namespace string")?;
        if namespace.is_empty() || namespace.len() > 255 {
            return Err(format!("Namespace {namespace:?} is not 1 to 255 characters"));
        }
        doc.namespace = namespace.to_owned();
        doc.dimensions.extend(dimension_sets(&root, directive)?);
        let metrics = directive
            .get("Metrics")
            .and_then(Value::as_array)
            .ok_or("a directive has no Metrics array")?;
        if metrics.len() > MAX_METRICS {
            return Err(format!("{} metrics in one directive", metrics.len()));
        }
        for metric in metrics {
            let (name, unit, values) = metric_of(&root, metric)?;
            if doc.metrics.insert(name.clone(), (unit, values)).is_some() {
                return Err(format!("metric {name} is defined twice"));
            }
        }
    }
    Ok(Some(doc))
}

/// The dimension sets of a directive, each name a member of the root with a string value.
fn dimension_sets(
    root: &Map<String, Value>,
    directive: &Map<String, Value>,
) -> Result<Vec<Vec<(String, String)>>, String> {
    let sets = directive
        .get("Dimensions")
        .and_then(Value::as_array)
        .ok_or("a directive has no Dimensions array")?;
    if sets.is_empty() {
        return Err("Dimensions has no dimension set".into());
    }
    let mut out = Vec::new();
    for set in sets {
        let names = set.as_array().ok_or("a dimension set is not an array")?;
        if names.len() > MAX_DIMENSIONS {
            return Err(format!("a dimension set has {} dimensions", names.len()));
        }
        let mut dims = Vec::new();
        for name in names {
            let name = name.as_str().ok_or("a dimension name is not a string")?;
            if name.is_empty() || name.len() > 255 || name.starts_with(':') || !name.is_ascii() {
                return Err(format!("dimension name {name:?} is not 1 to 255 ASCII characters"));
            }
            let value = match root.get(name) {
                Some(Value::String(v)) => v,
                Some(other) => return Err(format!("dimension {name} is not a string: {other}")),
                None => return Err(format!("dimension {name} is not a member of the root")),
            };
            if value.trim().is_empty() || value.len() > 1024 || !value.is_ascii() || value.chars().any(char::is_control)
            {
                return Err(format!(
                    "dimension {name}'s value {value:?} is not 1 to 1024 ASCII characters"
                ));
            }
            dims.push((name.to_owned(), value.clone()));
        }
        out.push(dims);
    }
    Ok(out)
}

/// A metric definition: its name (a member of the root with a number or an array of 1 to 100
/// numbers), its unit (`None` when not given), and its values.
fn metric_of(root: &Map<String, Value>, metric: &Value) -> Result<(String, String, Vec<f64>), String> {
    let metric = metric.as_object().ok_or("a MetricDefinition is not an object")?;
    let name = metric
        .get("Name")
        .and_then(Value::as_str)
        .ok_or("a MetricDefinition has no Name string")?;
    if name.is_empty() || name.len() > 255 {
        return Err(format!("metric name {name:?} is not 1 to 255 characters"));
    }
    let unit = match metric.get("Unit") {
        None => "None".to_owned(),
        Some(Value::String(u)) if UNITS.contains(&u.as_str()) => u.clone(),
        Some(other) => return Err(format!("{name}: unit {other} is not a CloudWatch unit")),
    };
    match metric.get("StorageResolution") {
        None => {}
        Some(r) if r == 1 || r == 60 => {}
        Some(other) => return Err(format!("{name}: StorageResolution {other} is not 1 or 60")),
    }
    let number = |v: &Value| v.as_f64().ok_or_else(|| format!("{name}: {v} is not a number"));
    let values = match root.get(name) {
        None => return Err(format!("metric {name} is not a member of the root")),
        Some(Value::Array(values)) => {
            if values.is_empty() || values.len() > MAX_VALUES {
                return Err(format!("{name} has {} values", values.len()));
            }
            values.iter().map(number).collect::<Result<Vec<f64>, String>>()?
        }
        Some(v) => vec![number(v)?],
    };
    Ok((name.to_owned(), unit, values))
}

/// Every EMF document among `text`'s lines (one log event a line); panics on one that is not
/// valid, saying why.
pub fn documents(text: &str) -> Vec<Emf> {
    text.lines()
        .filter_map(|line| read(line.trim()).unwrap_or_else(|why| panic!("invalid EMF ({why}): {line}")))
        .collect()
}

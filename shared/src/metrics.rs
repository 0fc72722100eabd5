//! What one invocation did, as CloudWatch metrics in the embedded metric format (EMF): JSON
//! lines written with the logs, from which CloudWatch Logs makes the metrics (no call to
//! CloudWatch). Counting and rendering are pure: the caller passes the time and writes the
//! lines ([`print`]).
//!
//! Every line has the dimension `Function` (the function's name). The executor's counts
//! are also written per automation (dimensions `Function`, `Automation`), one line for
//! each automation that had a message in the batch, with only the counts that are not
//! zero; see docs/metrics.md for what that costs.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use serde_json::{json, Map, Value as Json};

/// The CloudWatch namespace of every Herald metric.
pub const NAMESPACE: &str = "Herald";

/// Most values one metric may carry in one document (EMF's limit).
pub const MAX_VALUES: usize = 100;

/// The units Herald's metrics use (of CloudWatch's set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Count,
    Milliseconds,
    Seconds,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
            Unit::Seconds => "Seconds",
        }
    }
}

/// What became of one executor message, as the metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The instance ran to its end.
    Completed,
    /// It failed: a step failed permanently, or could not be read or made ready.
    Failed,
    /// A step failed transiently on every try it had.
    Dead,
    /// An exit condition held.
    Exited,
    /// A step's effect started in an earlier invocation and its end was never recorded:
    /// held for an operator.
    Unknown,
    /// Paused or cancelled by an operator.
    Held,
    /// It waits: a `wait` step, or a failed step's next try.
    Waiting,
    /// Out of time in this invocation: the scheduler hands it out again.
    Later,
    /// Nothing to do: not claimable, or its lease was taken over.
    Skipped,
    /// The database could not take its steps' ends in time; they wait on the receipts queue.
    Deferred,
    /// The database could not be written: the message goes back to the queue.
    Returned,
    /// The message is unusable (malformed, or naming no log).
    Rejected,
}

impl Outcome {
    const COUNT: usize = Outcome::Rejected as usize + 1;

    pub const ALL: [Outcome; Outcome::COUNT] = [
        Outcome::Completed,
        Outcome::Failed,
        Outcome::Dead,
        Outcome::Exited,
        Outcome::Unknown,
        Outcome::Held,
        Outcome::Waiting,
        Outcome::Later,
        Outcome::Skipped,
        Outcome::Deferred,
        Outcome::Returned,
        Outcome::Rejected,
    ];

    /// The metric's name.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Completed => "Completed",
            Outcome::Failed => "Failed",
            Outcome::Dead => "Dead",
            Outcome::Exited => "Exited",
            Outcome::Unknown => "Unknown",
            Outcome::Held => "Held",
            Outcome::Waiting => "Waiting",
            Outcome::Later => "Later",
            Outcome::Skipped => "Skipped",
            Outcome::Deferred => "Deferred",
            Outcome::Returned => "Returned",
            Outcome::Rejected => "Rejected",
        }
    }
}

type Counts = [u32; Outcome::COUNT];

/// One executor invocation's counts. Counting an outcome is a few additions (and, per
/// automation, a lookup in a map sized for the batch when it was made).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecutorMetrics {
    claimed: u32,
    total: Counts,
    /// `None` when counts are not kept per automation.
    by_automation: Option<HashMap<i64, Counts>>,
    /// How long each effect sent to a provider took, in milliseconds.
    step_ms: Vec<u32>,
}

impl ExecutorMetrics {
    /// Counts for a batch of `messages`, also per automation when `per_automation`.
    pub fn new(per_automation: bool, messages: usize) -> Self {
        Self {
            by_automation: per_automation.then(|| HashMap::with_capacity(messages)),
            ..Default::default()
        }
    }

    /// Instances the invocation claimed.
    pub fn claimed(&mut self, n: u32) {
        self.claimed += n;
    }

    /// One message's outcome, and the automation of its instance when known.
    pub fn count(&mut self, outcome: Outcome, automation: Option<i64>) {
        self.total[outcome as usize] += 1;
        if let (Some(map), Some(id)) = (self.by_automation.as_mut(), automation) {
            map.entry(id).or_default()[outcome as usize] += 1;
        }
    }

    /// How long the invocation's effects took, in milliseconds (taken, not copied).
    pub fn steps(&mut self, ms: Vec<u32>) {
        if self.step_ms.is_empty() {
            self.step_ms = ms;
        } else {
            self.step_ms.extend(ms);
        }
    }

    /// How many messages had `outcome`.
    pub fn get(&self, outcome: Outcome) -> u32 {
        self.total[outcome as usize]
    }

    /// The EMF documents, one a line: the function's counts (every one, zeros too, so that
    /// an alarm sees a value each invocation) with the first [`MAX_VALUES`] step durations;
    /// the rest of the durations, 100 a line; then one line per automation, in id order,
    /// with its counts that are not zero.
    pub fn lines(&self, function: &str, timestamp_ms: u64) -> Vec<String> {
        let function_dims = [("Function", function)];
        let mut chunks = self.step_ms.chunks(MAX_VALUES);
        let mut metrics: Vec<(&str, Unit, Json)> = vec![("Claimed", Unit::Count, self.claimed.into())];
        metrics.extend(Outcome::ALL.map(|o| (o.name(), Unit::Count, self.total[o as usize].into())));
        if let Some(first) = chunks.next() {
            metrics.push(("StepDuration", Unit::Milliseconds, first.into()));
        }
        let mut lines = vec![render(timestamp_ms, &function_dims, &metrics)];
        for chunk in chunks {
            lines.push(render(
                timestamp_ms,
                &function_dims,
                &[("StepDuration", Unit::Milliseconds, chunk.into())],
            ));
        }
        if let Some(map) = &self.by_automation {
            let mut ids: Vec<&i64> = map.keys().collect();
            ids.sort();
            for id in ids {
                let id_text = id.to_string();
                let counts = &map[id];
                let metrics: Vec<(&str, Unit, Json)> = Outcome::ALL
                    .iter()
                    .filter(|o| counts[**o as usize] > 0)
                    .map(|o| (o.name(), Unit::Count, counts[*o as usize].into()))
                    .collect();
                let dims = [("Function", function), ("Automation", id_text.as_str())];
                lines.push(render(timestamp_ms, &dims, &metrics));
            }
        }
        lines
    }
}

/// One scheduler invocation's counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SchedulerMetrics {
    /// Logs claimed (pending to queued).
    pub claimed: u64,
    /// Messages the queue accepted.
    pub queued: u64,
    /// Messages the queue refused (their logs are pending again).
    pub queue_rejected: u64,
    /// Captured events moved into the ledger.
    pub ingested: u64,
    /// Of those, the ones recorded as suppressed (a second event inside its row's window).
    pub suppressed: u64,
    /// Expired leases rescued.
    pub rescued: u64,
    /// Occurrences of time triggers recorded as missed.
    pub missed: u64,
    /// How long the oldest log still due at the end of the run has been due (zero when
    /// none is); `None` when it could not be read.
    pub oldest_due_age: Option<Duration>,
}

impl SchedulerMetrics {
    /// The EMF document, one line.
    pub fn lines(&self, function: &str, timestamp_ms: u64) -> Vec<String> {
        let mut metrics: Vec<(&str, Unit, Json)> = [
            ("Claimed", self.claimed),
            ("Queued", self.queued),
            ("QueueRejected", self.queue_rejected),
            ("Ingested", self.ingested),
            ("Suppressed", self.suppressed),
            ("Rescued", self.rescued),
            ("Missed", self.missed),
        ]
        .into_iter()
        .map(|(name, n)| (name, Unit::Count, n.into()))
        .collect();
        if let Some(age) = self.oldest_due_age {
            metrics.push(("OldestDueAge", Unit::Seconds, age.as_secs().into()));
        }
        vec![render(timestamp_ms, &[("Function", function)], &metrics)]
    }
}

/// One EMF document with one metric directive: the dimensions (name and value) and the
/// metrics (name, unit and a number or an array of numbers) as members of the root.
fn render(timestamp_ms: u64, dimensions: &[(&str, &str)], metrics: &[(&str, Unit, Json)]) -> String {
    let mut root = Map::new();
    root.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [dimensions.iter().map(|(name, _)| *name).collect::<Vec<_>>()],
                "Metrics": metrics
                    .iter()
                    .map(|(name, unit, _)| json!({"Name": name, "Unit": unit.as_str()}))
                    .collect::<Vec<_>>(),
            }],
        }),
    );
    for (name, value) in dimensions {
        root.insert((*name).into(), Json::from(*value));
    }
    for (name, _, value) in metrics {
        root.insert((*name).into(), value.clone());
    }
    Json::Object(root).to_string()
}

/// Writes each line to standard output, where Lambda takes it as one log event. A write
/// that fails is dropped: metrics never fail an invocation.
pub fn print(lines: &[String]) {
    let mut out = std::io::stdout().lock();
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}

/// Milliseconds since the Unix epoch of `at` (zero before it).
pub fn epoch_ms(at: std::time::SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Json {
        serde_json::from_str(line).unwrap()
    }

    /// The metric names of a document's directive, in order.
    fn names(doc: &Json) -> Vec<&str> {
        doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn outcomes_are_counted_for_the_function_and_for_each_automation() {
        use Outcome::*;
        // (outcomes with their automation, per automation?, function totals that are not
        // zero, per-automation lines as (automation, counts that are not zero))
        type Case = (
            Vec<(Outcome, Option<i64>)>,
            bool,
            Vec<(Outcome, u32)>,
            Vec<(&'static str, Vec<(&'static str, u64)>)>,
        );
        let cases: Vec<Case> = vec![
            (vec![], true, vec![], vec![]),
            (
                vec![
                    (Completed, Some(7)),
                    (Completed, Some(7)),
                    (Completed, Some(3)),
                    (Failed, Some(7)),
                ],
                true,
                vec![(Completed, 3), (Failed, 1)],
                vec![
                    ("3", vec![("Completed", 1)]),
                    ("7", vec![("Completed", 2), ("Failed", 1)]),
                ],
            ),
            (
                vec![(Completed, Some(7)), (Failed, Some(7))],
                false,
                vec![(Completed, 1), (Failed, 1)],
                vec![],
            ),
            // A message whose instance is not known counts for the function only.
            (
                vec![(Rejected, None), (Skipped, None), (Unknown, Some(1))],
                true,
                vec![(Rejected, 1), (Skipped, 1), (Unknown, 1)],
                vec![("1", vec![("Unknown", 1)])],
            ),
        ];
        for (outcomes, per_automation, totals, by_automation) in cases {
            let mut m = ExecutorMetrics::new(per_automation, outcomes.len());
            for (o, a) in &outcomes {
                m.count(*o, *a);
            }
            for o in Outcome::ALL {
                let want = totals.iter().find(|(t, _)| *t == o).map_or(0, |(_, n)| *n);
                assert_eq!(m.get(o), want, "{o:?} of {outcomes:?}");
            }
            let lines = m.lines("herald-executor", 1_700_000_000_000);
            assert_eq!(lines.len(), 1 + by_automation.len(), "{outcomes:?}");
            for (line, (automation, counts)) in lines[1..].iter().zip(&by_automation) {
                let doc = parse(line);
                assert_eq!(doc["Automation"], *automation);
                assert_eq!(doc["Function"], "herald-executor");
                let want: Vec<&str> = counts.iter().map(|(n, _)| *n).collect();
                assert_eq!(names(&doc), want, "{line}");
                for (name, n) in counts {
                    assert_eq!(doc[*name], *n, "{line}");
                }
            }
        }
    }

    #[test]
    fn the_function_line_carries_every_count_and_the_step_durations() {
        // (durations, lines, durations on the first line)
        let cases = [
            (0, 1, None),
            (1, 1, Some(1)),
            (100, 1, Some(100)),
            (101, 2, Some(100)),
            (250, 3, Some(100)),
        ];
        for (n, want_lines, first) in cases {
            let mut m = ExecutorMetrics::new(false, 10);
            m.claimed(4);
            m.count(Outcome::Completed, Some(1));
            m.steps((0..n).collect());
            let lines = m.lines("f", 5);
            assert_eq!(lines.len(), want_lines, "{n} durations");
            let doc = parse(&lines[0]);
            assert_eq!(doc["_aws"]["Timestamp"], 5);
            assert_eq!(doc["Claimed"], 4);
            assert_eq!(doc["Completed"], 1);
            assert_eq!(doc["Failed"], 0, "zeros are written");
            let mut want = vec!["Claimed"];
            want.extend(Outcome::ALL.map(Outcome::name));
            if first.is_some() {
                want.push("StepDuration");
            }
            assert_eq!(names(&doc), want);
            assert_eq!(doc["StepDuration"].as_array().map(Vec::len), first);
            // Every duration is written once, in order, 100 at most a line.
            let all: Vec<u64> = lines
                .iter()
                .flat_map(|l| parse(l)["StepDuration"].as_array().cloned().unwrap_or_default())
                .map(|v| v.as_u64().unwrap())
                .collect();
            assert_eq!(all, (0..n as u64).collect::<Vec<_>>());
            for line in &lines[1..] {
                assert_eq!(names(&parse(line)), ["StepDuration"]);
            }
        }
    }

    #[test]
    fn a_document_names_its_namespace_dimensions_and_units() {
        let m = SchedulerMetrics {
            claimed: 3,
            queued: 2,
            queue_rejected: 1,
            ingested: 5,
            suppressed: 2,
            oldest_due_age: Some(Duration::from_millis(61_900)),
            ..Default::default()
        };
        let lines = m.lines("herald-scheduler", 1_700_000_000_123);
        assert_eq!(lines.len(), 1);
        assert!(!lines[0].contains('\n'));
        let want = json!({
            "_aws": {
                "Timestamp": 1_700_000_000_123u64,
                "CloudWatchMetrics": [{
                    "Namespace": "Herald",
                    "Dimensions": [["Function"]],
                    "Metrics": [
                        {"Name": "Claimed", "Unit": "Count"},
                        {"Name": "Queued", "Unit": "Count"},
                        {"Name": "QueueRejected", "Unit": "Count"},
                        {"Name": "Ingested", "Unit": "Count"},
                        {"Name": "Suppressed", "Unit": "Count"},
                        {"Name": "Rescued", "Unit": "Count"},
                        {"Name": "Missed", "Unit": "Count"},
                        {"Name": "OldestDueAge", "Unit": "Seconds"}
                    ]
                }]
            },
            "Function": "herald-scheduler",
            "Claimed": 3, "Queued": 2, "QueueRejected": 1, "Ingested": 5, "Suppressed": 2, "Rescued": 0, "Missed": 0,
            "OldestDueAge": 61
        });
        assert_eq!(parse(&lines[0]), want);
        // Unread, the age is left out rather than written as zero.
        let unread = SchedulerMetrics::default().lines("s", 1);
        assert!(!names(&parse(&unread[0])).contains(&"OldestDueAge"));
    }

    #[test]
    fn epoch_milliseconds() {
        let at = std::time::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_999);
        assert_eq!(epoch_ms(at), 1_700_000_000_123);
        assert_eq!(epoch_ms(std::time::UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}

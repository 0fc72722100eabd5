//! What an instance does next, given where it is and how its last step ended.

use jiff::tz::TimeZone;
use jiff::Timestamp;

use super::definition::{Action, OnError, Step};
use super::time::shift;

/// Most steps one instance may run, retries and loops through waits included.
pub const DEFAULT_STEP_LIMIT: u32 = 100;

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepResult {
    /// It did what it does.
    Done,
    /// A branch chose `then` (true) or `else` (false).
    Chose(bool),
    /// A wait that ends at this instant.
    Waits(Timestamp),
    /// It failed; `attempt` counts this step's attempts so far, this one included.
    Failed { attempt: u32, error: String },
}

/// What the instance does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Run this step now.
    Run(String),
    /// Sleep until `until`, then run `next` (or complete, when there is none).
    Sleep { next: Option<String>, until: Timestamp },
    /// Run this step again at `at`.
    Retry { step: String, at: Timestamp },
    /// Nothing is left: the instance is completed.
    Complete,
    /// The instance failed.
    Fail(String),
}

/// Finds a step by id, anywhere in the tree.
pub fn find<'a>(steps: &'a [Step], id: &str) -> Option<&'a Step> {
    trail(steps, id).and_then(|t| t.last().map(|(list, i)| &list[*i]))
}

/// Whether no step follows `at`, whatever its result: what comes after it (completing,
/// failing, or a retry of it) is decided without the instance's data.
pub fn is_last(steps: &[Step], at: &str) -> bool {
    trail(steps, at).is_some_and(|mut t| after(&mut t).is_none())
}

/// What follows `result` of step `at`, for an instance that has run `steps_run` steps.
pub fn plan_next_step(
    steps: &[Step],
    at: &str,
    result: &StepResult,
    steps_run: u32,
    step_limit: u32,
    now: Timestamp,
) -> Result<Decision, String> {
    let mut trail = trail(steps, at).ok_or_else(|| format!("the definition has no step `{at}`"))?;
    let &(list, index) = trail.last().ok_or("empty trail")?;
    let step = &list[index];
    let next = match result {
        StepResult::Done => after(&mut trail),
        StepResult::Chose(then) => match &step.action {
            Action::Branch {
                then: t, otherwise: e, ..
            } => {
                let arm = if *then { t } else { e };
                match arm.first() {
                    Some(first) => Some(first.id.clone()),
                    None => after(&mut trail),
                }
            }
            _ => return Err(format!("step `{at}` is not a branch, so it chooses nothing")),
        },
        StepResult::Waits(until) => {
            return Ok(Decision::Sleep {
                next: after(&mut trail),
                until: *until,
            })
        }
        StepResult::Failed { attempt, error } => match step.on_error {
            OnError::Stop => return Ok(Decision::Fail(format!("step `{at}` failed: {error}"))),
            OnError::Continue => after(&mut trail),
            OnError::Retry { times, backoff } => {
                if *attempt > times {
                    return Ok(Decision::Fail(format!(
                        "step `{at}` failed {attempt} times, the last with: {error}"
                    )));
                }
                if steps_run >= step_limit {
                    return Ok(Decision::Fail(limit_reached(step_limit)));
                }
                // The wait doubles with each attempt: backoff, 2×, 4×, …
                let factor = 1i64 << (*attempt - 1).min(20);
                let wait = backoff
                    .0
                    .checked_mul(factor)
                    .map_err(|e| format!("backoff of step `{at}`: {e}"))?;
                let at_time = shift(&now.to_zoned(TimeZone::UTC), wait)?.timestamp();
                return Ok(Decision::Retry {
                    step: at.to_owned(),
                    at: at_time,
                });
            }
        },
    };
    Ok(match next {
        None => Decision::Complete,
        Some(_) if steps_run >= step_limit => Decision::Fail(limit_reached(step_limit)),
        Some(id) => Decision::Run(id),
    })
}

fn limit_reached(limit: u32) -> String {
    format!("the instance reached its limit of {limit} steps")
}

/// The lists and positions that lead from the top to step `id`.
fn trail<'a>(steps: &'a [Step], id: &str) -> Option<Vec<(&'a [Step], usize)>> {
    for (i, step) in steps.iter().enumerate() {
        if step.id == id {
            return Some(vec![(steps, i)]);
        }
        if let Action::Branch { then, otherwise, .. } = &step.action {
            for arm in [then, otherwise] {
                if let Some(mut inner) = trail(arm, id) {
                    inner.insert(0, (steps, i));
                    return Some(inner);
                }
            }
        }
    }
    None
}

/// The step after the one at the end of `trail`: its next sibling, or, at the end of a
/// branch's arm, the step after that branch.
fn after(trail: &mut Vec<(&[Step], usize)>) -> Option<String> {
    while let Some((list, i)) = trail.pop() {
        if let Some(next) = list.get(i + 1) {
            return Some(next.id.clone());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::definition::parse;
    use serde_json::json;

    fn steps() -> Vec<Step> {
        let doc = json!({
            "trigger": {"type": "manual"},
            "steps": [
                {"id": "a", "type": "add_tag", "tag": "t"},
                {"id": "b", "type": "branch", "if": {"field": "x", "op": "is null"},
                 "then": [{"id": "b1", "type": "add_tag", "tag": "t"},
                          {"id": "c", "type": "branch", "if": {"field": "y", "op": "is null"},
                           "then": [{"id": "c1", "type": "add_tag", "tag": "t"}]}],
                 "else": []},
                {"id": "w", "type": "wait", "for": "1 hour"},
                {"id": "r", "type": "add_tag", "tag": "t", "on_error": {"retry": {"times": 2, "backoff": "1 minute"}}},
                {"id": "k", "type": "add_tag", "tag": "t", "on_error": "continue"},
                {"id": "z", "type": "add_tag", "tag": "t"}
            ]
        });
        parse(&doc).unwrap().steps
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn only_the_end_of_the_tree_is_last() {
        let table = [
            ("a", false),
            ("b1", false),
            ("c1", false),
            ("r", false),
            ("z", true),
            ("nope", false),
        ];
        for (at, want) in table {
            assert_eq!(is_last(&steps(), at), want, "{at}");
        }
        let branch_at_end = parse(&json!({
            "trigger": {"type": "manual"},
            "steps": [{"id": "b", "type": "branch", "if": {"field": "x", "op": "is null"},
                       "then": [{"id": "t1", "type": "add_tag", "tag": "t"}],
                       "else": [{"id": "e1", "type": "add_tag", "tag": "t"}, {"id": "e2", "type": "add_tag", "tag": "t"}]}]
        }))
        .unwrap()
        .steps;
        for (at, want) in [("t1", true), ("e1", false), ("e2", true)] {
            assert_eq!(is_last(&branch_at_end, at), want, "{at}");
        }
    }

    #[test]
    fn the_next_step_follows_the_tree() {
        let now = t("2026-11-23T12:00:00Z");
        let failed = |attempt| StepResult::Failed {
            attempt,
            error: "boom".into(),
        };
        let run = |s: &str| Ok(Decision::Run(s.into()));
        let cases: Vec<(&str, StepResult, Result<Decision, String>)> = vec![
            ("a", StepResult::Done, run("b")),
            ("b", StepResult::Chose(true), run("b1")),
            // An empty arm continues after the branch.
            ("b", StepResult::Chose(false), run("w")),
            ("b1", StepResult::Done, run("c")),
            ("c", StepResult::Chose(true), run("c1")),
            ("c", StepResult::Chose(false), run("w")),
            // The end of a nested arm climbs out of both branches.
            ("c1", StepResult::Done, run("w")),
            (
                "w",
                StepResult::Waits(t("2026-11-23T13:00:00Z")),
                Ok(Decision::Sleep {
                    next: Some("r".into()),
                    until: t("2026-11-23T13:00:00Z"),
                }),
            ),
            (
                "r",
                failed(1),
                Ok(Decision::Retry {
                    step: "r".into(),
                    at: t("2026-11-23T12:01:00Z"),
                }),
            ),
            (
                "r",
                failed(2),
                Ok(Decision::Retry {
                    step: "r".into(),
                    at: t("2026-11-23T12:02:00Z"),
                }),
            ),
            (
                "r",
                failed(3),
                Ok(Decision::Fail("step `r` failed 3 times, the last with: boom".into())),
            ),
            ("k", failed(1), run("z")),
            ("a", failed(1), Ok(Decision::Fail("step `a` failed: boom".into()))),
            ("z", StepResult::Done, Ok(Decision::Complete)),
            (
                "a",
                StepResult::Chose(true),
                Err("step `a` is not a branch, so it chooses nothing".into()),
            ),
            (
                "nope",
                StepResult::Done,
                Err("the definition has no step `nope`".into()),
            ),
        ];
        let steps = steps();
        for (at, result, want) in cases {
            assert_eq!(
                plan_next_step(&steps, at, &result, 1, DEFAULT_STEP_LIMIT, now),
                want,
                "{at} {result:?}"
            );
        }
    }

    #[test]
    fn the_step_limit_stops_an_instance_but_lets_it_complete() {
        let now = t("2026-11-23T12:00:00Z");
        let steps = steps();
        let limit = Ok(Decision::Fail("the instance reached its limit of 5 steps".into()));
        assert_eq!(plan_next_step(&steps, "a", &StepResult::Done, 5, 5, now), limit);
        let retry = StepResult::Failed {
            attempt: 1,
            error: "x".into(),
        };
        assert_eq!(plan_next_step(&steps, "r", &retry, 5, 5, now), limit);
        assert_eq!(
            plan_next_step(&steps, "a", &StepResult::Done, 4, 5, now),
            Ok(Decision::Run("b".into()))
        );
        assert_eq!(
            plan_next_step(&steps, "z", &StepResult::Done, 5, 5, now),
            Ok(Decision::Complete)
        );
        assert_eq!(find(&steps, "c1").map(|s| s.id.as_str()), Some("c1"));
    }
}

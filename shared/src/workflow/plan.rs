//! What an instance does next, given where it is and how its last step ended.

use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use super::definition::{Action, OnError, Step};
use super::time::shift;

/// Most steps one instance may run, retries and loops through waits included.
pub const DEFAULT_STEP_LIMIT: u32 = 100;

/// What bounds an instance's next move: the steps it may run, and how its automation tries
/// again a step whose effect failed transiently.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub step_limit: u32,
    pub transient: TransientRetry,
}

/// The automation's retries of transient failures (`max_attempts`, `retry_base`,
/// `retry_cap`): up to `max_attempts` tries, the wait before try
/// n+1 a random time between 0 and min(`cap`, `base` × 2^(n−1)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TransientRetry {
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
    /// Where in that window this wait falls, in [0, 1): chosen at random by the caller
    /// (full jitter), so that the decision itself stays a pure function.
    pub jitter: f64,
}

impl TransientRetry {
    /// The automations table's defaults: 5 tries, 30 seconds doubling up to an hour.
    #[cfg(test)]
    pub(crate) const DEFAULT: TransientRetry = TransientRetry {
        max_attempts: 5,
        base: Duration::from_secs(30),
        cap: Duration::from_secs(3_600),
        jitter: 0.5,
    };

    /// The wait after the `attempt`-th try failed.
    pub(crate) fn wait(&self, attempt: u32) -> Duration {
        let window = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(30))
            .min(self.cap);
        window.mul_f64(self.jitter.clamp(0.0, 1.0))
    }
}

impl Policy {
    #[cfg(test)]
    pub(crate) fn new(step_limit: u32) -> Self {
        Self {
            step_limit,
            transient: TransientRetry::DEFAULT,
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StepResult {
    /// It did what it does.
    Done,
    /// A branch chose `then` (true) or `else` (false).
    Chose(bool),
    /// A wait that ends at this instant.
    Waits(Timestamp),
    /// It failed; `attempt` counts this step's attempts so far, this one included, and
    /// `transient` says whether trying again may succeed (a throttle, a 5xx, a timeout).
    Failed {
        attempt: u32,
        error: String,
        transient: bool,
    },
}

/// What the instance does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
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
    /// The instance is dead: its step failed transiently on every try it had.
    Dead(String),
}

/// Finds a step by id, anywhere in the tree.
pub fn find<'a>(steps: &'a [Step], id: &str) -> Option<&'a Step> {
    trail(steps, id).and_then(|t| t.last().map(|(list, i)| &list[*i]))
}

/// Whether no step follows `at`, whatever its result: what comes after it (completing,
/// failing, or a retry of it) is decided without the instance's data.
pub(crate) fn is_last(steps: &[Step], at: &str) -> bool {
    trail(steps, at).is_some_and(|mut t| after(&mut t).is_none())
}

/// What follows `result` of step `at`, for an instance that has run `steps_run` steps.
pub(crate) fn plan_next_step(
    steps: &[Step],
    at: &str,
    result: &StepResult,
    steps_run: u32,
    policy: &Policy,
    now: Timestamp,
) -> Result<Decision, String> {
    let step_limit = policy.step_limit;
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
        // A transient failure is tried again with the automation's backoff, up to its
        // max_attempts tries plus the retries on_error adds; then on_error decides.
        StepResult::Failed {
            attempt,
            transient: true,
            ..
        } if *attempt
            < policy.transient.max_attempts.saturating_add(match step.on_error {
                OnError::Retry { times, .. } => times,
                _ => 0,
            }) =>
        {
            if steps_run >= step_limit {
                return Ok(Decision::Fail(limit_reached(step_limit)));
            }
            let wait = SignedDuration::try_from(policy.transient.wait(*attempt))
                .map_err(|e| format!("backoff of step `{at}`: {e}"))?;
            let at_time = now
                .checked_add(wait)
                .map_err(|e| format!("backoff of step `{at}`: {e}"))?;
            return Ok(Decision::Retry {
                step: at.to_owned(),
                at: at_time,
            });
        }
        StepResult::Failed {
            attempt,
            error,
            transient,
        } => match step.on_error {
            // Transient failures to the last try end the instance as `dead`; a permanent one
            // as `failed`.
            OnError::Stop if *transient => return Ok(Decision::Dead(format!("step `{at}` failed: {error}"))),
            OnError::Stop => return Ok(Decision::Fail(format!("step `{at}` failed: {error}"))),
            OnError::Continue => after(&mut trail),
            OnError::Retry { times, backoff } => {
                if *attempt > times {
                    let why = format!("step `{at}` failed {attempt} times, the last with: {error}");
                    return Ok(if *transient {
                        Decision::Dead(why)
                    } else {
                        Decision::Fail(why)
                    });
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
            transient: false,
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
                plan_next_step(&steps, at, &result, 1, &Policy::new(DEFAULT_STEP_LIMIT), now),
                want,
                "{at} {result:?}"
            );
        }
    }

    #[test]
    fn transient_failures_are_tried_again_with_the_automations_backoff_before_on_error() {
        let now = t("2026-11-23T12:00:00Z");
        let steps = steps();
        // At most 3 tries; waits of 10 s doubling, at most 25 s; the whole window (jitter 1).
        let policy = Policy {
            step_limit: 100,
            transient: TransientRetry {
                max_attempts: 3,
                base: Duration::from_secs(10),
                cap: Duration::from_secs(25),
                jitter: 1.0,
            },
        };
        let retry = |step: &str, at: &str| {
            Ok(Decision::Retry {
                step: step.into(),
                at: t(at),
            })
        };
        // (step and its on_error, attempt, transient) -> what follows
        let cases: Vec<(&str, u32, bool, Result<Decision, String>)> = vec![
            // stop
            ("a", 1, true, retry("a", "2026-11-23T12:00:10Z")),
            ("a", 2, true, retry("a", "2026-11-23T12:00:20Z")),
            ("a", 3, true, Ok(Decision::Dead("step `a` failed: boom".into()))),
            // a permanent failure goes to on_error at once
            ("a", 1, false, Ok(Decision::Fail("step `a` failed: boom".into()))),
            // continue, once the tries are used up
            ("k", 2, true, retry("k", "2026-11-23T12:00:20Z")),
            ("k", 3, true, Ok(Decision::Run("z".into()))),
            // retry 2 times, 1 minute apart: two more tries on top, at the capped backoff
            ("r", 3, true, retry("r", "2026-11-23T12:00:25Z")),
            ("r", 4, true, retry("r", "2026-11-23T12:00:25Z")),
            (
                "r",
                5,
                true,
                Ok(Decision::Dead("step `r` failed 5 times, the last with: boom".into())),
            ),
            (
                "r",
                3,
                false,
                Ok(Decision::Fail("step `r` failed 3 times, the last with: boom".into())),
            ),
            // a permanent failure is retried by on_error, with its own backoff
            ("r", 1, false, retry("r", "2026-11-23T12:01:00Z")),
        ];
        for (at, attempt, transient, want) in cases {
            let result = StepResult::Failed {
                attempt,
                error: "boom".into(),
                transient,
            };
            assert_eq!(
                plan_next_step(&steps, at, &result, 1, &policy, now),
                want,
                "{at} attempt {attempt} transient {transient}"
            );
        }
        // The step limit holds for these tries too.
        let failed = StepResult::Failed {
            attempt: 1,
            error: "boom".into(),
            transient: true,
        };
        assert_eq!(
            plan_next_step(
                &steps,
                "a",
                &failed,
                5,
                &Policy {
                    step_limit: 5,
                    ..policy
                },
                now
            ),
            Ok(Decision::Fail("the instance reached its limit of 5 steps".into()))
        );
        // The defaults, halfway through each window.
        let d = TransientRetry::DEFAULT;
        assert_eq!([1, 2, 8, 40].map(|n| d.wait(n).as_secs()), [15, 30, 1_800, 1_800]);
    }

    #[test]
    fn the_step_limit_stops_an_instance_but_lets_it_complete() {
        let now = t("2026-11-23T12:00:00Z");
        let steps = steps();
        let limit = Ok(Decision::Fail("the instance reached its limit of 5 steps".into()));
        assert_eq!(
            plan_next_step(&steps, "a", &StepResult::Done, 5, &Policy::new(5), now),
            limit
        );
        let retry = StepResult::Failed {
            attempt: 1,
            error: "x".into(),
            transient: false,
        };
        assert_eq!(plan_next_step(&steps, "r", &retry, 5, &Policy::new(5), now), limit);
        assert_eq!(
            plan_next_step(&steps, "a", &StepResult::Done, 4, &Policy::new(5), now),
            Ok(Decision::Run("b".into()))
        );
        assert_eq!(
            plan_next_step(&steps, "z", &StepResult::Done, 5, &Policy::new(5), now),
            Ok(Decision::Complete)
        );
        assert_eq!(find(&steps, "c1").map(|s| s.id.as_str()), Some("c1"));
    }
}

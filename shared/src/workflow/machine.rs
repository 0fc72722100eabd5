//! An instance's step machine: from where the instance is, the fresh data and how its last
//! step ended, either the next step whose effect the executor must perform, or how the
//! instance parks. Everything that needs no effect (exit conditions, branches, waits whose
//! time has come) is decided here, in memory, and returned as records for the ledger.
//!
//! The executor drives many instances at once in rounds: it asks each for its next effect,
//! records them all as started in one statement, performs them, and feeds the results back.

use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde_json::{json, Map, Value as Json};

use super::condition::evaluate;
use super::definition::{Action, Document, Step};
use super::plan::{find, plan_next_step, Decision, Policy, StepResult};
use super::wait::{wake_at, Wait};

/// Where an instance is in its flow, as the ledger keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// The step to run next; `None` once nothing is left.
    pub next: Option<String>,
    /// Steps run so far, retries included (the loop guard counts these).
    pub steps_run: u32,
    /// Attempts of `next` made so far.
    pub attempt: u32,
    /// Each finished step's output, by step id; later templates read them as `steps.<id>`.
    pub outputs: Map<String, Json>,
}

impl Instance {
    /// A new instance of `doc`, before its first step.
    #[cfg(test)]
    pub(crate) fn new(doc: &Document) -> Self {
        Self {
            next: doc.steps.first().map(|s| s.id.clone()),
            steps_run: 0,
            attempt: 0,
            outputs: Map::new(),
        }
    }
}

/// What the executor does with an instance now.
#[derive(Debug, Clone, PartialEq)]
pub enum Advance {
    /// Perform this step's effect (its attempt number given), then call [`advance`] with
    /// how it ended.
    Perform { step: String, attempt: u32 },
    /// Stop here; the ledger keeps the instance so.
    Park(Park),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Park {
    Completed,
    Failed(String),
    /// A step failed transiently on every try it had.
    Dead(String),
    /// An exit condition held: its reason.
    Exited(String),
    /// A wait: wake at `until` and run `next` (or complete).
    Sleeping {
        next: Option<String>,
        until: Timestamp,
    },
    /// A failed step runs again at `at`.
    Retrying {
        step: String,
        at: Timestamp,
    },
}

/// A decision made without an effect, for the instance's history: an exit condition, a
/// branch, or a wait, with what it saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    pub step: Option<String>,
    pub kind: &'static str,
    pub detail: Json,
}

/// The effect's result of the step the last [`Advance::Perform`] named.
#[derive(Debug, Clone, PartialEq)]
pub enum Performed {
    Done(Json),
    /// `transient`: trying again may succeed (see [`Policy`]).
    Failed {
        error: String,
        transient: bool,
    },
}

/// The templates' variables: the data, and `steps` holding earlier steps' outputs.
pub(crate) fn variables(data: &Json, instance: &Instance) -> Json {
    let mut vars = data.as_object().cloned().unwrap_or_default();
    vars.insert("steps".into(), Json::Object(instance.outputs.clone()));
    Json::Object(vars)
}

/// Moves `instance` on. `last` is how the step of the previous `Perform` ended (`None`
/// when the instance starts or wakes). `data` is fresh: exit conditions are checked against
/// it before every step. Calendar arithmetic uses the definition's zone.
pub(crate) fn advance(
    doc: &Document,
    instance: &mut Instance,
    data: &Json,
    last: Option<Performed>,
    policy: &Policy,
    now: Timestamp,
) -> (Advance, Vec<Decided>) {
    let step_limit = policy.step_limit;
    let mut decided = Vec::new();
    let vars = |i: &Instance| variables(data, i);
    // The trigger's conditions, before anything of the instance has run. (The variables are
    // made only where something reads them: a copy of the data and the outputs.)
    if instance.steps_run == 0 && last.is_none() && doc.conditions.is_some() {
        if let Some(park) = conditions_check(doc, &vars(instance), now, &mut decided) {
            return (Advance::Park(park), decided);
        }
    }
    let mut result = last.map(|p| match p {
        Performed::Done(output) => {
            if let Some(id) = &instance.next {
                instance.outputs.insert(id.clone(), output);
            }
            StepResult::Done
        }
        Performed::Failed { error, transient } => StepResult::Failed {
            attempt: instance.attempt,
            error,
            transient,
        },
    });
    loop {
        // How the step at `next` ended decides where the instance goes.
        if let (Some(at), Some(r)) = (instance.next.clone(), result.take()) {
            match plan_next_step(&doc.steps, &at, &r, instance.steps_run, policy, now) {
                Ok(Decision::Run(id)) => {
                    instance.next = Some(id);
                    instance.attempt = 0;
                }
                Ok(Decision::Complete) => instance.next = None,
                Ok(Decision::Sleep { next, until }) => {
                    if until > now && reads_its_time(doc, &at) {
                        // A wait until a time in the data parks at itself, as if it had not
                        // run: woken (at that time, or sooner when a column it reads
                        // changes), it reads the time again and sleeps on, or goes on. (Its
                        // steps run stay at least 1: an instance that has started is never
                        // taken for a new one, whose trigger conditions are checked.)
                        instance.steps_run = instance.steps_run.saturating_sub(1).max(1);
                        instance.attempt = instance.attempt.saturating_sub(1);
                        let here = Some(at);
                        return (Advance::Park(Park::Sleeping { next: here, until }), decided);
                    }
                    instance.attempt = 0;
                    if until > now {
                        instance.next = next.clone();
                        return (Advance::Park(Park::Sleeping { next, until }), decided);
                    }
                    // A wake-up time already past: go on at once.
                    instance.next = next;
                }
                Ok(Decision::Retry { step, at }) => return (Advance::Park(Park::Retrying { step, at }), decided),
                Ok(Decision::Fail(why)) => return (Advance::Park(Park::Failed(why)), decided),
                Ok(Decision::Dead(why)) => return (Advance::Park(Park::Dead(why)), decided),
                Err(why) => return (Advance::Park(Park::Failed(why)), decided),
            }
        }
        let Some(at) = instance.next.clone() else {
            return (Advance::Park(Park::Completed), decided);
        };
        if !doc.exit.is_empty() {
            if let Some(park) = exit_check(doc, &vars(instance), now, &at, &mut decided) {
                return (Advance::Park(park), decided);
            }
        }
        let Some(step) = find(&doc.steps, &at) else {
            return (
                Advance::Park(Park::Failed(format!("the definition has no step `{at}`"))),
                decided,
            );
        };
        if instance.steps_run >= step_limit {
            return (
                Advance::Park(Park::Failed(format!(
                    "the instance reached its limit of {step_limit} steps"
                ))),
                decided,
            );
        }
        instance.steps_run += 1;
        instance.attempt += 1;
        let attempt = instance.attempt;
        result = Some(
            match decide_in_memory(step, attempt, || vars(instance), now, &doc.timezone, &mut decided) {
                Some(r) => r,
                None => {
                    return (
                        Advance::Perform {
                            step: at,
                            attempt: instance.attempt,
                        },
                        decided,
                    )
                }
            },
        );
    }
}

/// Whether step `id` is a wait until a time read from the data (which the ledger follows:
/// see `herald_follow_waits` in db/schema/capture.sql).
fn reads_its_time(doc: &Document, id: &str) -> bool {
    matches!(
        find(&doc.steps, id).map(|s| &s.action),
        Some(Action::Wait(Wait::Until { .. }))
    )
}

/// Why an instance whose trigger's conditions do not hold ends: its `exit_reason`.
pub(crate) const CONDITIONS_NOT_MET: &str = "the trigger's conditions do not hold";

/// The trigger's conditions, checked (and recorded, with what they saw) against the data as
/// the instance starts: a park when they do not hold, or cannot be decided.
fn conditions_check(doc: &Document, vars: &Json, now: Timestamp, decided: &mut Vec<Decided>) -> Option<Park> {
    let when = doc.conditions.as_ref()?;
    match evaluate(when, vars, now, &doc.timezone) {
        Ok(e) => {
            decided.push(Decided {
                // Not a step: no step id has brackets.
                step: Some("(trigger)".to_owned()),
                kind: "conditions",
                detail: json!({"holds": e.holds, "seen": e.seen}),
            });
            (!e.holds).then(|| Park::Exited(CONDITIONS_NOT_MET.to_owned()))
        }
        Err(err) => Some(Park::Failed(format!("conditions: {err}"))),
    }
}

/// The first exit condition that holds, as a park; a condition that cannot be decided
/// fails the instance (it guards the flow, so going on blind is not safe). Each condition
/// checked is recorded, held or not.
fn exit_check(doc: &Document, vars: &Json, now: Timestamp, at: &str, decided: &mut Vec<Decided>) -> Option<Park> {
    for (i, exit) in doc.exit.iter().enumerate() {
        match evaluate(&exit.when, vars, now, &doc.timezone) {
            // Every evaluation is recorded, with what it saw.
            Ok(e) => {
                decided.push(Decided {
                    step: Some(at.to_owned()),
                    kind: "exit",
                    detail: json!({"exit": i, "holds": e.holds, "reason": exit.reason, "seen": e.seen}),
                });
                if e.holds {
                    return Some(Park::Exited(exit.reason.clone()));
                }
            }
            Err(err) => return Some(Park::Failed(format!("exit[{i}]: {err}"))),
        }
    }
    None
}

/// A branch's choice or a wait's end, or `None` for a step with an effect.
fn decide_in_memory(
    step: &Step,
    attempt: u32,
    vars: impl FnOnce() -> Json,
    now: Timestamp,
    tz: &TimeZone,
    decided: &mut Vec<Decided>,
) -> Option<StepResult> {
    let record = |kind, detail| Decided {
        step: Some(step.id.clone()),
        kind,
        detail,
    };
    let mut failed = |kind, error: String| {
        decided.push(record(kind, json!({"error": error})));
        StepResult::Failed {
            attempt,
            error,
            transient: false,
        }
    };
    match &step.action {
        Action::Branch { when, .. } => Some(match evaluate(when, &vars(), now, tz) {
            Ok(e) => {
                decided.push(record("branch", json!({"holds": e.holds, "seen": e.seen})));
                StepResult::Chose(e.holds)
            }
            Err(err) => failed("branch", err.to_string()),
        }),
        Action::Wait(wait) => Some(match wake_at(wait, &vars(), now, tz) {
            Ok(until) => {
                decided.push(record("wait", json!({"until": until.to_string()})));
                StepResult::Waits(until)
            }
            Err(err) => failed("wait", err.to_string()),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::definition::parse;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn limit(steps: u32) -> Policy {
        Policy::new(steps)
    }

    fn failed(error: &str) -> Performed {
        Performed::Failed {
            error: error.into(),
            transient: false,
        }
    }

    fn flow() -> Document {
        parse(&json!({
            "trigger": {"type": "manual"},
            "exit": [{"if": {"field": "status", "op": "=", "value": "cancelled"}, "reason": "booking cancelled"}],
            "steps": [
                {"id": "confirm", "type": "send_email", "to": "{{ email }}", "subject": "Booked", "text": "Hi"},
                {"id": "night-before", "type": "wait", "until": {"field": "starts_at", "offset": "-1 day"}},
                {"id": "vip", "type": "branch", "if": {"field": "vip", "op": "=", "value": true},
                 "then": [{"id": "owner", "type": "add_tag", "tag": "vip-visit"}]},
                {"id": "remind", "type": "send_sms", "to": "{{ phone }}", "body": "Tomorrow", "on_error": "continue"},
                {"id": "hook", "type": "webhook", "url": "https://example.com/h", "body": "{}", "secret": "s",
                 "on_error": {"retry": {"times": 1, "backoff": "5 minutes"}}}
            ]
        }))
        .unwrap()
    }

    fn data(status: &str, vip: bool) -> Json {
        json!({"status": status, "vip": vip, "starts_at": "2026-11-25T09:00:00Z", "email": "a@b.c", "phone": "+15550100"})
    }

    fn perform(step: &str, attempt: u32) -> Advance {
        Advance::Perform {
            step: step.into(),
            attempt,
        }
    }

    #[test]
    fn an_instance_runs_until_its_wait_then_through_its_branch_to_the_end() {
        let doc = flow();
        let mut i = Instance::new(&doc);
        let now = t("2026-11-23T12:00:00Z");
        let d = data("confirmed", true);

        // The exit condition is checked, and recorded with what it saw, before every step.
        let (a, decided) = advance(&doc, &mut i, &d, None, &limit(100), now);
        assert_eq!(a, perform("confirm", 1));
        assert_eq!(
            (decided[0].kind, &decided[0].detail),
            (
                "exit",
                &json!({"exit": 0, "holds": false, "reason": "booking cancelled", "seen": {"status": "confirmed"}})
            )
        );

        let (a, decided) = advance(
            &doc,
            &mut i,
            &d,
            Some(Performed::Done(json!({"id": "ses-1"}))),
            &limit(100),
            now,
        );
        let until = t("2026-11-24T09:00:00Z");
        // A wait until a time in the data sleeps at itself: it reads the time again when woken.
        assert_eq!(
            a,
            Advance::Park(Park::Sleeping {
                next: Some("night-before".into()),
                until
            })
        );
        assert_eq!(decided.iter().map(|d| d.kind).collect::<Vec<_>>(), ["exit", "wait"]);
        assert_eq!(i.outputs["confirm"], json!({"id": "ses-1"}));
        assert_eq!(i.next.as_deref(), Some("night-before"));

        // Woken: the wait's time has come, the branch is decided in memory, and `then` has a
        // step to perform.
        let (a, decided) = advance(&doc, &mut i, &d, None, &limit(100), until);
        assert_eq!(a, perform("owner", 1));
        let kinds: Vec<_> = decided.iter().map(|d| d.kind).collect();
        assert_eq!(kinds, ["exit", "wait", "exit", "branch", "exit"]);
        assert_eq!(decided[3].detail, json!({"holds": true, "seen": {"vip": true}}));
        let (a, _) = advance(&doc, &mut i, &d, Some(Performed::Done(Json::Null)), &limit(100), until);
        assert_eq!(a, perform("remind", 1));
        // `continue`: a failed SMS does not stop the flow.
        let (a, _) = advance(&doc, &mut i, &d, Some(failed("opted out")), &limit(100), until);
        assert_eq!(a, perform("hook", 1));
        let (a, _) = advance(&doc, &mut i, &d, Some(failed("503")), &limit(100), until);
        assert_eq!(
            a,
            Advance::Park(Park::Retrying {
                step: "hook".into(),
                at: t("2026-11-24T09:05:00Z")
            })
        );
        let (a, _) = advance(&doc, &mut i, &d, None, &limit(100), t("2026-11-24T09:05:00Z"));
        assert_eq!(a, perform("hook", 2));
        let (a, _) = advance(&doc, &mut i, &d, Some(failed("503")), &limit(100), until);
        assert_eq!(
            a,
            Advance::Park(Park::Failed("step `hook` failed 2 times, the last with: 503".into()))
        );
        assert_eq!(i.steps_run, 7, "confirm, wait, branch, owner, remind, hook twice");
    }

    #[test]
    fn a_wait_already_past_goes_on_at_once_and_an_empty_arm_is_skipped() {
        let doc = flow();
        let mut i = Instance::new(&doc);
        let late = t("2026-11-24T10:00:00Z");
        let d = data("confirmed", false);
        advance(&doc, &mut i, &d, None, &limit(100), late);
        let (a, decided) = advance(&doc, &mut i, &d, Some(Performed::Done(Json::Null)), &limit(100), late);
        assert_eq!(a, perform("remind", 1));
        let kinds: Vec<&str> = decided.iter().map(|d| d.kind).collect();
        assert_eq!(kinds, ["exit", "wait", "exit", "branch", "exit"]);
    }

    #[test]
    fn the_triggers_conditions_decide_whether_an_instance_starts() {
        let doc = parse(&json!({
            "trigger": {"type": "manual"},
            "conditions": {"field": "vip", "op": "=", "value": true},
            "steps": [{"id": "hi", "type": "send_sms", "to": "+15550100", "body": "Hi"}]
        }))
        .unwrap();
        let now = t("2026-11-23T12:00:00Z");
        let cases = [
            (
                json!({"vip": true}),
                Advance::Perform {
                    step: "hi".into(),
                    attempt: 1,
                },
                true,
            ),
            (
                json!({"vip": false}),
                Advance::Park(Park::Exited(CONDITIONS_NOT_MET.into())),
                false,
            ),
        ];
        for (data, want, holds) in cases {
            let mut i = Instance::new(&doc);
            let (a, decided) = advance(&doc, &mut i, &data, None, &limit(100), now);
            assert_eq!(a, want, "{data}");
            assert_eq!(decided[0].kind, "conditions");
            assert_eq!(decided[0].detail, json!({"holds": holds, "seen": {"vip": holds}}));
        }
        // Data the conditions cannot read fails the instance rather than choosing for it.
        let mut i = Instance::new(&doc);
        let (a, _) = advance(&doc, &mut i, &json!({}), None, &limit(100), now);
        assert!(matches!(a, Advance::Park(Park::Failed(why)) if why.starts_with("conditions:")));
        // Checked once: not again when the instance goes on after its first step.
        let mut i = Instance::new(&doc);
        advance(&doc, &mut i, &json!({"vip": true}), None, &limit(100), now);
        let (a, decided) = advance(
            &doc,
            &mut i,
            &json!({"vip": false}),
            Some(Performed::Done(Json::Null)),
            &limit(100),
            now,
        );
        assert_eq!((a, decided.len()), (Advance::Park(Park::Completed), 0));
    }

    #[test]
    fn an_exit_condition_ends_the_instance_before_its_next_step() {
        let doc = flow();
        let mut i = Instance::new(&doc);
        let now = t("2026-11-23T12:00:00Z");
        advance(&doc, &mut i, &data("confirmed", true), None, &limit(100), now);
        advance(
            &doc,
            &mut i,
            &data("confirmed", true),
            Some(Performed::Done(Json::Null)),
            &limit(100),
            now,
        );
        // Cancelled during the wait: the wake-up finds it.
        let (a, decided) = advance(
            &doc,
            &mut i,
            &data("cancelled", true),
            None,
            &limit(100),
            t("2026-11-24T09:00:00Z"),
        );
        assert_eq!(a, Advance::Park(Park::Exited("booking cancelled".into())));
        assert_eq!(decided[0].step.as_deref(), Some("night-before"));
        assert_eq!(decided[0].detail["seen"], json!({"status": "cancelled"}));
    }

    #[test]
    fn a_wait_until_a_time_in_the_data_reads_it_again_each_time_it_wakes() {
        let doc = flow();
        let now = t("2026-11-23T12:00:00Z");
        let at = |starts_at: &str| {
            let mut d = data("confirmed", false);
            d["starts_at"] = json!(starts_at);
            d
        };
        let mut i = Instance::new(&doc);
        advance(&doc, &mut i, &at("2026-11-25T09:00:00Z"), None, &limit(100), now);
        let sleeps = |next: &str, until: &str| {
            Advance::Park(Park::Sleeping {
                next: Some(next.into()),
                until: t(until),
            })
        };
        let (a, _) = advance(
            &doc,
            &mut i,
            &at("2026-11-25T09:00:00Z"),
            Some(Performed::Done(Json::Null)),
            &limit(100),
            now,
        );
        assert_eq!(a, sleeps("night-before", "2026-11-24T09:00:00Z"));
        let parked = i.clone();

        // (woken at, the booking's start then) -> what the instance does
        let cases = [
            // Moved a week later, woken by the change: it sleeps on to the new night before.
            (
                "2026-11-23T13:00:00Z",
                "2026-12-02T09:00:00Z",
                sleeps("night-before", "2026-12-01T09:00:00Z"),
            ),
            // Moved a week later, woken at the old time: the same.
            (
                "2026-11-24T09:00:00Z",
                "2026-12-02T09:00:00Z",
                sleeps("night-before", "2026-12-01T09:00:00Z"),
            ),
            // Moved earlier, still ahead: it sleeps to the earlier time.
            (
                "2026-11-23T13:00:00Z",
                "2026-11-24T15:00:00Z",
                sleeps("night-before", "2026-11-23T15:00:00Z"),
            ),
            // Moved so early its time has passed: it goes on at once (the branch, then the SMS).
            ("2026-11-23T13:00:00Z", "2026-11-24T10:00:00Z", perform("remind", 1)),
            // Unchanged, woken at its time: it goes on.
            ("2026-11-24T09:00:00Z", "2026-11-25T09:00:00Z", perform("remind", 1)),
        ];
        for (woken, starts_at, want) in cases {
            let mut i = parked.clone();
            let (a, decided) = advance(&doc, &mut i, &at(starts_at), None, &limit(100), t(woken));
            assert_eq!(a, want, "woken {woken}, starts_at {starts_at}");
            assert_eq!(decided[1].kind, "wait", "{decided:?}");
        }

        // Reading the time again is not counted as another step: a booking moved 200 times
        // does not reach the step limit.
        let mut i = parked.clone();
        for n in 0..200 {
            let starts_at = format!("2026-12-{:02}T09:00:00Z", 2 + n % 20);
            let (a, _) = advance(&doc, &mut i, &at(&starts_at), None, &limit(100), now);
            assert!(matches!(a, Advance::Park(Park::Sleeping { .. })), "{a:?}");
            assert_eq!((i.steps_run, i.attempt), (parked.steps_run, parked.attempt));
        }
    }

    #[test]
    fn a_wait_for_a_span_sleeps_at_the_step_after_it() {
        let doc = parse(&json!({
            "trigger": {"type": "status_change", "table": "bookings", "to": "confirmed"},
            "steps": [{"id": "pause", "type": "wait", "for": "2 hours"},
                      {"id": "ping", "type": "send_sms", "to": "{{ phone }}", "body": "Hi"}]
        }))
        .unwrap();
        let mut i = Instance::new(&doc);
        let (a, _) = advance(
            &doc,
            &mut i,
            &data("confirmed", false),
            None,
            &limit(100),
            t("2026-11-23T12:00:00Z"),
        );
        assert_eq!(
            a,
            Advance::Park(Park::Sleeping {
                next: Some("ping".into()),
                until: t("2026-11-23T14:00:00Z")
            })
        );
    }

    #[test]
    fn undecidable_steps_follow_their_on_error_and_the_step_limit_holds() {
        let doc = flow();
        let now = t("2026-11-23T12:00:00Z");
        // A wait whose field is null fails the instance (its on_error is stop).
        let mut i = Instance::new(&doc);
        let mut d = data("confirmed", true);
        d["starts_at"] = Json::Null;
        advance(&doc, &mut i, &d, None, &limit(100), now);
        let (a, _) = advance(&doc, &mut i, &d, Some(Performed::Done(Json::Null)), &limit(100), now);
        assert_eq!(
            a,
            Advance::Park(Park::Failed(
                "step `night-before` failed: `starts_at` is null, so the wait has no end".into()
            ))
        );
        // Two steps allowed: the third is refused.
        let mut i = Instance::new(&doc);
        let d = data("confirmed", true);
        advance(&doc, &mut i, &d, None, &limit(2), t("2026-11-24T10:00:00Z"));
        let (a, _) = advance(
            &doc,
            &mut i,
            &d,
            Some(Performed::Done(Json::Null)),
            &limit(2),
            t("2026-11-24T10:00:00Z"),
        );
        assert_eq!(
            a,
            Advance::Park(Park::Failed("the instance reached its limit of 2 steps".into()))
        );
    }

    #[test]
    fn templates_see_earlier_outputs_under_steps() {
        let doc = flow();
        let mut i = Instance::new(&doc);
        i.outputs.insert("hook".into(), json!({"ticket": 7}));
        let vars = variables(&json!({"name": "Zoë"}), &i);
        assert_eq!(vars, json!({"name": "Zoë", "steps": {"hook": {"ticket": 7}}}));
        let done = Instance {
            next: None,
            ..Instance::new(&doc)
        };
        let mut done2 = done.clone();
        assert_eq!(
            advance(
                &doc,
                &mut done2,
                &Json::Null,
                None,
                &limit(100),
                t("2026-11-23T12:00:00Z")
            )
            .0,
            Advance::Park(Park::Completed)
        );
    }
}

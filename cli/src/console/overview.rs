//! `/`: each automation and how many of its logs stand where (the `herald_status` view).

use std::sync::Arc;

use axum::extract::State;
use herald_shared::pg::Conn;
use maud::html;

use super::{encode, layout, status, Answer};
use crate::ledger::{age, STATUS};

/// The view's counts, in its order; those that are one status link to the list of it.
const COUNTS: [(&str, Option<&str>); 8] = [
    ("pending", Some("pending")),
    ("due", None),
    ("waiting", Some("waiting")),
    ("running", None),
    ("failed", Some("failed")),
    ("dead", Some("dead")),
    ("unknown", Some("unknown")),
    ("paused", Some("paused")),
];

/// One automation's row of the view.
struct Standing {
    name: String,
    version: Option<i32>,
    state: String,
    counts: Vec<i64>,
    oldest: Option<f64>,
}

pub(crate) async fn page(State(client): State<Arc<Conn>>) -> Answer {
    let mut rows = Vec::new();
    for r in client.query(STATUS, &[]).await? {
        rows.push(Standing {
            name: r.try_get("automation")?,
            version: r.try_get("version")?,
            state: r.try_get("state")?,
            counts: COUNTS.iter().map(|(c, _)| r.try_get(*c)).collect::<Result<_, _>>()?,
            oldest: r.try_get("oldest_due_secs")?,
        });
    }
    Ok(layout(
        "Automations",
        html! {
            h1 { "Automations" }
            @if rows.is_empty() {
                p.muted { "No automations yet." }
            } @else {
                table.automations {
                    thead { tr {
                        th { "automation" } th { "version" } th { "state" }
                        @for (c, _) in COUNTS { th { (c) } }
                        th { "oldest due" } th {}
                    } }
                    tbody {
                        @for r in &rows {
                            @let name = &r.name;
                            tr data-automation=(name) {
                                td { a href={ "/automations/" (encode(name)) } { (name) } }
                                td.n { (r.version.map_or("-".into(), |v| v.to_string())) }
                                td { (status(&r.state)) }
                                @for ((_, s), n) in COUNTS.iter().zip(&r.counts) {
                                    @let n = *n;
                                    td.n.zero[n == 0] {
                                        @match s {
                                            Some(s) if n > 0 => a href={ "/instances?automation=" (encode(name)) "&status=" (s) } { (n) },
                                            _ => (n),
                                        }
                                    }
                                }
                                td.n { (r.oldest.map_or("-".into(), age)) }
                                td { a href={ "/instances?automation=" (encode(name)) } { "instances" } }
                            }
                        }
                    }
                }
                p.muted {
                    "Counts are of open and failed logs: pending (captured or to be retried), due (pending or "
                    "waiting whose time has come), waiting, running (queued or running), failed, dead, unknown "
                    "and paused. Completed, exited and cancelled instances are in the instance list."
                }
            }
        },
    ))
}

//! Workflow instances through the real drain and the real flow runner, with null senders:
//! a three-step flow (email, a wait of zero, SMS) and a two-step one (email, SMS).

use crate::db::{Db, Server};
use crate::queue;
use crate::report::{median, Row};
use crate::Settings;

/// Executor batch sizes measured: SQS's default, and the largest the SAM template offers.
const BATCHES: [usize; 2] = [10, 100];
/// Executors working at once.
const WORKERS: usize = 4;

const THREE_STEPS: &str = r#"SELECT herald_save_automation('welcome', '{
  "trigger": {"type": "status_change", "table": "public.members", "to": "active"},
  "steps": [
    {"id": "hello", "type": "send_email", "to": "{{ email }}", "subject": "Welcome, {{ name }}",
     "text": "Hi {{ name }}, welcome to the club."},
    {"id": "pause", "type": "wait", "for": "0 seconds"},
    {"id": "text", "type": "send_sms", "to": "{{ phone }}", "body": "Hi {{ name }}, welcome!"}
  ]}')"#;

const TWO_STEPS: &str = r#"SELECT herald_save_automation('welcome', '{
  "trigger": {"type": "status_change", "table": "public.members", "to": "active"},
  "steps": [
    {"id": "hello", "type": "send_email", "to": "{{ email }}", "subject": "Welcome, {{ name }}",
     "text": "Hi {{ name }}, welcome to the club."},
    {"id": "text", "type": "send_sms", "to": "{{ phone }}", "body": "Hi {{ name }}, welcome!"}
  ]}')"#;

struct Shape {
    name: &'static str,
    db: Db,
    /// Per batch size: each run's rate and rows written per log.
    runs: Vec<(Vec<f64>, Vec<f64>)>,
}

pub async fn run(server: &Server, settings: &Settings) -> Result<Vec<Row>, String> {
    let n = settings.size(20_000, 500);
    let mut shapes = Vec::new();
    for (name, db_name, definition) in [
        ("email, wait 0, SMS", "bench_flows", THREE_STEPS),
        ("email, SMS", "bench_flows_two", TWO_STEPS),
    ] {
        let db = queue::prepare(server, db_name, n).await?;
        // The automation the pending logs belong to runs this definition.
        db.exec(definition).await?;
        shapes.push(Shape {
            name,
            db,
            runs: BATCHES.iter().map(|_| (Vec::new(), Vec::new())).collect(),
        });
    }
    for run in 0..settings.runs {
        for (b, batch) in BATCHES.iter().enumerate() {
            for shape in shapes.iter_mut() {
                queue::refill(&shape.db, n).await?;
                let (rate, per) = queue::full_cycle(&shape.db, n, *batch, WORKERS).await?;
                crate::progress(&format!(
                    "workflow instances, run {}: {}, batches of {batch}: {rate:.0} instances/s, {per:.1} rows written each",
                    run + 1,
                    shape.name
                ));
                shape.runs[b].0.push(rate);
                shape.runs[b].1.push(per);
            }
        }
    }
    let mut rows = Vec::new();
    for (b, batch) in BATCHES.iter().enumerate() {
        for shape in &shapes {
            let (rates, writes) = &shape.runs[b];
            let note = format!(
                "{n} each, {WORKERS} executors × 4 at once, null senders; {:.1} rows written each",
                median(writes)
            );
            rows.push(
                Row::new(
                    "workflow instances",
                    format!("{}; executor batches of {batch}", shape.name),
                    rates.clone(),
                    "instances/s",
                )
                .note(note)
                .bar("≥ 2,000 instances/s"),
            );
        }
    }
    Ok(rows)
}

//! Workflow instances: a three-step flow (email, a wait of zero, SMS) through the real drain
//! and the real flow runner, with null senders.

use crate::db::Server;
use crate::queue::{self, Work};
use crate::report::{median, Row};
use crate::Settings;

/// Executor batch sizes measured: SQS's default, and the largest the SAM template offers.
const BATCHES: [usize; 2] = [10, 100];
/// Executors working at once.
const WORKERS: usize = 4;

pub async fn run(server: &Server, settings: &Settings) -> Result<Vec<Row>, String> {
    let n = settings.size(20_000, 500);
    let db = queue::prepare(server, "bench_flows", n).await?;
    // The automation the pending logs belong to becomes a workflow: its logs are instances.
    db.exec(
        r#"SELECT herald_save_automation('welcome', '{
             "trigger": {"type": "status_change", "table": "public.members", "to": "active"},
             "steps": [
               {"id": "hello", "type": "send_email", "to": "{{ email }}", "subject": "Welcome, {{ name }}",
                "text": "Hi {{ name }}, welcome to the club."},
               {"id": "pause", "type": "wait", "for": "0 seconds"},
               {"id": "text", "type": "send_sms", "to": "{{ phone }}", "body": "Hi {{ name }}, welcome!"}
             ]}')"#,
    )
    .await?;
    let mut series: Vec<(usize, Vec<f64>, Vec<f64>)> = BATCHES.iter().map(|b| (*b, Vec::new(), Vec::new())).collect();
    for run in 0..settings.runs {
        for (batch, rates, writes) in series.iter_mut() {
            queue::refill(&db, n).await?;
            let (rate, per) = queue::full_cycle(&db, n, *batch, WORKERS, Work::Flows).await?;
            crate::progress(&format!(
                "workflow instances, run {}: batches of {batch}: {rate:.0} instances/s, {per:.1} rows written per instance",
                run + 1
            ));
            rates.push(rate);
            writes.push(per);
        }
    }
    Ok(series
        .into_iter()
        .map(|(batch, rates, writes)| {
            Row::new(
                "workflow instances",
                format!("email, wait 0, SMS; executor batches of {batch}"),
                rates,
                "instances/s",
            )
            .bar("≥ 2,000 instances/s")
            .note(format!(
                "{n} instances, {WORKERS} executors × 4 at once, null senders; {:.1} rows written per instance",
                median(&writes)
            ))
        })
        .collect())
}

//! Whether a long history slows Herald down: capture and drain with millions of finished
//! logs in the ledger, against the same cases on an empty ledger, interleaved.

use crate::capture::{self, Variant};
use crate::db::{Db, Server};
use crate::queue;
use crate::report::Row;
use crate::Settings;

/// Finished logs, as months of sending leave them (snapshots of about 100 bytes).
async fn fill_history(db: &Db, n: i64) -> Result<(), String> {
    db.exec(&format!(
        "INSERT INTO automation_execution_logs
           (automation_id, subject_schema, subject_table, subject_key_column, subject_id, event, old_status, new_status,
            snapshot, status, attempts, run_at, created_at, queued_at, started_at, completed_at, updated_at)
         SELECT (SELECT min(id) FROM automations) + g % 5, 'public', 'jobs', 'id', (g % 100000)::text, 'status_change',
                'pending', 'done',
                jsonb_build_object('id', g % 100000, 'status', 'done', 'phone', '+1' || (4152000000 + g % 100000)),
                'completed', 1, t, t, t, t, t, t
         FROM generate_series(1, {n}) g, LATERAL (SELECT now() - interval '1 second' * ({n} - g) AS t) ts"
    ))
    .await?;
    db.settle().await
}

pub async fn run(server: &Server, settings: &Settings) -> Result<Vec<Row>, String> {
    let history = settings.size(5_000_000, 20_000);
    let rows = settings.size(100_000, 10_000);
    let seconds = if settings.quick { 2 } else { 15 };
    let drain_n = settings.size(200_000, 5_000);
    let mut dbs = Vec::new();
    for (name, past) in [("bench_history_empty", 0), ("bench_history_full", history)] {
        let db = capture::prepare(server, name, Variant::Herald, rows).await?;
        queue::add_members(&db, drain_n).await?;
        if past > 0 {
            crate::progress(&format!("history: writing {past} finished logs"));
            fill_history(&db, past).await?;
        }
        dbs.push(db);
    }
    let (mut capture_tps, mut drain_rates) = (vec![Vec::new(), Vec::new()], vec![Vec::new(), Vec::new()]);
    for run in 0..settings.runs {
        for (i, db) in dbs.iter().enumerate() {
            capture::reset(db, Variant::Herald).await?;
            db.settle().await?;
            let tps = capture::pgbench(settings, db, seconds, rows).await?;
            capture::reset(db, Variant::Herald).await?;
            queue::add_pending(db, drain_n).await?;
            db.settle().await?;
            let rate = queue::herald_drain(db, drain_n).await?;
            db.exec("DELETE FROM ONLY automation_execution_logs WHERE status = 'queued'")
                .await?;
            crate::progress(&format!(
                "history, run {}, {} finished logs: capture {tps:.0} tps, drain {rate:.0} logs/s",
                run + 1,
                if i == 0 { 0 } else { history }
            ));
            capture_tps[i].push(tps);
            drain_rates[i].push(rate);
        }
    }
    let empty_c = Row::new("history", "capture, empty ledger", capture_tps[0].clone(), "tps");
    let full_c = Row::new(
        "history",
        format!("capture, {history} finished logs"),
        capture_tps[1].clone(),
        "tps",
    )
    .against(&empty_c)
    .bar("within 15% of empty");
    let empty_d = Row::new("history", "drain, empty ledger", drain_rates[0].clone(), "logs/s");
    let full_d = Row::new(
        "history",
        format!("drain, {history} finished logs"),
        drain_rates[1].clone(),
        "logs/s",
    )
    .against(&empty_d)
    .bar("within 15% of empty")
    .note(format!(
        "{drain_n} due logs per drain, claims of {}",
        queue::CLAIM_BATCH
    ));
    Ok(vec![empty_c, full_c, empty_d, full_d])
}

//! What attaching Herald costs the table it watches: a pgbench load of single-row status
//! updates, one bulk UPDATE of statuses and one of another column, each on a bare table,
//! with the simplest jsonb log trigger, and with Herald attached (10 automations: 5 listen
//! to one status each, 5 never match), capturing by row and by statement.

use std::time::Instant;

use crate::db::{Db, Server};
use crate::report::Row;
use crate::Settings;

pub const STATUSES: [&str; 5] = ["pending", "queued", "running", "done", "failed"];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Variant {
    Bare,
    Simple,
    Herald,
    /// Herald capturing by statement (`herald_attach(..., capture => 'statement')`).
    HeraldStatement,
    /// Herald in low-latency mode: every capture also sends NOTIFY.
    HeraldNotify,
}

impl Variant {
    pub const ALL: [Variant; 5] = [
        Variant::Bare,
        Variant::Simple,
        Variant::Herald,
        Variant::HeraldStatement,
        Variant::HeraldNotify,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Bare => "bare UPDATE",
            Variant::Simple => "simplest jsonb log trigger",
            Variant::Herald => "Herald, 10 automations",
            Variant::HeraldStatement => "Herald, 10 automations, capture by statement",
            Variant::HeraldNotify => "Herald, 10 automations, low-latency mode (NOTIFY)",
        }
    }

    fn herald(self) -> bool {
        matches!(self, Variant::Herald | Variant::HeraldStatement | Variant::HeraldNotify)
    }
}

/// The `jobs` table of `rows` rows, and the variant's trigger.
pub async fn prepare(server: &Server, name: &str, v: Variant, rows: i64) -> Result<Db, String> {
    let db = server.database(name, v.herald()).await?;
    db.exec(&format!(
        "CREATE TABLE jobs (id bigint PRIMARY KEY, status text NOT NULL, updated_at timestamptz NOT NULL, phone text);
         INSERT INTO jobs SELECT g, 'pending', now(), '+1' || (4152000000 + g) FROM generate_series(1, {rows}) g;"
    ))
    .await?;
    match v {
        Variant::Bare => {}
        Variant::Simple => {
            db.exec(
                "CREATE TABLE job_log (id bigint, row jsonb, at timestamptz);
                 CREATE FUNCTION log_job() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN INSERT INTO job_log VALUES (NEW.id, to_jsonb(NEW), now()); RETURN NULL; END $$;
                 CREATE TRIGGER log_job AFTER UPDATE ON jobs FOR EACH ROW
                   WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION log_job();",
            )
            .await?
        }
        Variant::Herald | Variant::HeraldStatement | Variant::HeraldNotify => {
            let capture = if v == Variant::HeraldStatement {
                "statement"
            } else {
                "row"
            };
            db.exec(&format!(
                "SELECT herald_attach('public.jobs', 'status', 'id', capture => '{capture}')"
            ))
            .await?;
            if v == Variant::HeraldNotify {
                db.exec("SELECT herald_low_latency(true)").await?;
            }
            for (i, s) in STATUSES.iter().enumerate() {
                db.exec(&format!(
                    "INSERT INTO automations (name, source_table, to_status, sms_to, sms_body)
                     VALUES ('to-{s}', 'jobs', '{s}', '{{{{ phone }}}}', 'now {s}'),
                            ('never-{i}', 'jobs', 'never-{i}', '{{{{ phone }}}}', 'never')"
                ))
                .await?;
            }
        }
    }
    db.settle().await?;
    Ok(db)
}

/// Empties what the previous run captured.
pub async fn reset(db: &Db, v: Variant) -> Result<(), String> {
    match v {
        Variant::Bare => Ok(()),
        Variant::Simple => db.exec("TRUNCATE job_log").await,
        Variant::Herald | Variant::HeraldStatement | Variant::HeraldNotify => db.exec("TRUNCATE herald_inbox").await,
    }
}

/// Single-row status updates under pgbench: transactions per second.
pub async fn pgbench(settings: &Settings, db: &Db, seconds: u32, rows: i64) -> Result<f64, String> {
    let script = format!(
        "\\set id random(1, {rows})\n\\set s random(1, 5)\n\
         UPDATE jobs SET status = (ARRAY['pending','queued','running','done','failed'])[:s], \
         updated_at = now() WHERE id = :id;\n"
    );
    pgbench_script(settings, db, seconds, "update_status.sql", &script).await
}

/// `script` (pgbench's language) run by 4 clients for `seconds`: transactions per second.
pub async fn pgbench_script(
    settings: &Settings,
    db: &Db,
    seconds: u32,
    name: &str,
    script: &str,
) -> Result<f64, String> {
    let path = settings.work_dir.join(name);
    std::fs::write(&path, script).map_err(|e| e.to_string())?;
    let out = tokio::process::Command::new(settings.pg_bin("pgbench"))
        .args(["-n", "-c", "4", "-j", "2", "-T", &seconds.to_string(), "-f"])
        .arg(&path)
        .arg(&db.url)
        .output()
        .await
        .map_err(|e| format!("running pgbench: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "pgbench failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no tps in pgbench's output: {text}"))
}

/// One UPDATE changing `n` rows' status: rows per second.
pub async fn bulk(db: &Db, v: Variant, n: i64) -> Result<f64, String> {
    db.exec(&format!("UPDATE jobs SET status = 'reset' WHERE id <= {n}"))
        .await?;
    reset(db, v).await?;
    db.settle().await?;
    let start = Instant::now();
    db.exec(&format!("UPDATE jobs SET status = 'done' WHERE id BETWEEN 1 AND {n}"))
        .await?;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    if v.herald() {
        // Logs correct: one event per row for the one automation that listens to 'done',
        // and one pending log each once moved to the ledger.
        let inbox = db.count("SELECT count(*) FROM herald_inbox").await?;
        let done: i64 = db.count("SELECT count(*) FROM herald_inbox i JOIN automations a ON a.id = i.automation_id WHERE a.name = 'to-done'").await?;
        if inbox != n || done != n {
            return Err(format!(
                "bulk capture recorded {inbox} events ({done} for to-done), not {n}"
            ));
        }
        db.exec("TRUNCATE ONLY automation_execution_logs, automation_receipts, automation_step_runs, automation_suppression_windows CASCADE")
            .await?;
        db.exec("SELECT herald_ingest()").await?;
        let pending = db
            .count("SELECT count(*) FROM ONLY automation_execution_logs WHERE status = 'pending'")
            .await?;
        if pending != n {
            return Err(format!("bulk capture left {pending} pending logs, not {n}"));
        }
    }
    Ok(rate)
}

/// One UPDATE of `n` rows that changes no status (what every statement on the table pays
/// for capture by statement): rows per second. Nothing may be captured.
pub async fn bulk_other(db: &Db, v: Variant, n: i64) -> Result<f64, String> {
    reset(db, v).await?;
    db.settle().await?;
    let start = Instant::now();
    db.exec(&format!(
        "UPDATE jobs SET updated_at = now() WHERE id BETWEEN 1 AND {n}"
    ))
    .await?;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    if v.herald() {
        let inbox = db.count("SELECT count(*) FROM herald_inbox").await?;
        if inbox != 0 {
            return Err(format!("an update of no status recorded {inbox} events"));
        }
    }
    Ok(rate)
}

pub async fn run(server: &Server, settings: &Settings) -> Result<Vec<Row>, String> {
    let rows = settings.size(100_000, 10_000);
    let seconds = if settings.quick { 2 } else { 15 };
    let bulk_n = settings.size(10_000, 1_000);
    let mut dbs = Vec::new();
    for v in Variant::ALL {
        dbs.push((
            v,
            prepare(server, &format!("bench_capture_{v:?}").to_lowercase(), v, rows).await?,
        ));
    }
    let mut single = vec![Vec::new(); Variant::ALL.len()];
    let mut bulk_rates = vec![Vec::new(); Variant::ALL.len()];
    let mut other_rates = vec![Vec::new(); Variant::ALL.len()];
    for run in 0..settings.runs {
        for (i, (v, db)) in dbs.iter().enumerate() {
            reset(db, *v).await?;
            db.settle().await?;
            let tps = pgbench(settings, db, seconds, rows).await?;
            crate::progress(&format!(
                "capture single-row, run {}: {} {tps:.0} tps",
                run + 1,
                v.name()
            ));
            single[i].push(tps);
        }
        for (i, (v, db)) in dbs.iter().enumerate() {
            let rate = bulk(db, *v, bulk_n).await?;
            crate::progress(&format!("capture bulk, run {}: {} {rate:.0} rows/s", run + 1, v.name()));
            bulk_rates[i].push(rate);
        }
        for (i, (v, db)) in dbs.iter().enumerate() {
            let rate = bulk_other(db, *v, bulk_n).await?;
            crate::progress(&format!(
                "capture bulk, no status change, run {}: {} {rate:.0} rows/s",
                run + 1,
                v.name()
            ));
            other_rates[i].push(rate);
        }
    }
    // Rows of one case, in variant order, each against the case's bare figure.
    let case_rows = |case: &'static str, figures: &[Vec<f64>], unit: &'static str| -> Vec<Row> {
        let bare = Row::new(case, Variant::Bare.name(), figures[0].clone(), unit);
        let mut rows = vec![bare.clone()];
        for (i, v) in Variant::ALL.iter().enumerate().skip(1) {
            rows.push(Row::new(case, v.name(), figures[i].clone(), unit).against(&bare));
        }
        rows
    };
    // Where a variant's row is in its case's rows.
    let at = |v: Variant| Variant::ALL.iter().position(|x| *x == v).unwrap();
    let mut single_rows = case_rows("capture, single-row", &single, "tps");
    single_rows[at(Variant::Herald)] = single_rows[at(Variant::Herald)]
        .clone()
        .bar("≥ 0.70× bare")
        .note(format!(
        "pgbench -c 4 -j 2 -T {seconds}, {rows} rows, random row and status; events wait in the inbox for the scheduler"
    ));
    single_rows[at(Variant::HeraldNotify)] = single_rows[at(Variant::HeraldNotify)].clone().bar("≥ 0.70× bare");
    let mut bulk_rows = case_rows("capture, bulk", &bulk_rates, "rows/s");
    bulk_rows[at(Variant::HeraldStatement)] = bulk_rows[at(Variant::HeraldStatement)]
        .clone()
        .bar("≥ 0.5× bare; logs correct")
        .note(format!(
            "one UPDATE of {bulk_n} rows' status; events and ledger rows checked"
        ));
    let mut other_rows = case_rows("capture, bulk, no status change", &other_rates, "rows/s");
    other_rows[at(Variant::HeraldStatement)] = other_rows[at(Variant::HeraldStatement)].clone().note(format!(
        "one UPDATE of {bulk_n} rows' updated_at: the statement's rows are kept for the capture function, which finds nothing"
    ));
    Ok(single_rows.into_iter().chain(bulk_rows).chain(other_rows).collect())
}

//! The full cycle: Herald's pending → queued → running → completed through the real scheduler
//! and executor code, for an automation of the column form (which runs as its two-step
//! workflow: email, then SMS), interleaved run by run with graphile-worker and pg-boss
//! draining as many no-op jobs on the same server.

use crate::db::Server;
use crate::peers::{self, Peer};
use crate::queue;
use crate::report::{median, Row};
use crate::Settings;

/// Executor batch sizes measured: SQS's default, and the largest the SAM template offers.
const BATCHES: [usize; 2] = [10, 100];
/// Executors working at once.
const WORKERS: usize = 4;

struct Series {
    rates: Vec<f64>,
    writes: Vec<f64>,
}

impl Series {
    fn new() -> Self {
        Self {
            rates: Vec::new(),
            writes: Vec::new(),
        }
    }
}

pub async fn run(server: &Server, settings: &Settings) -> Result<Vec<Row>, String> {
    peers::install(&settings.repo.join("bench/peers")).await?;
    let n = settings.size(100_000, 2_000);
    let herald = queue::prepare(server, "bench_cycle", n).await?;
    let mut ours: Vec<(usize, Series)> = BATCHES.iter().map(|b| (*b, Series::new())).collect();
    let mut theirs: Vec<(Peer, Series)> = Peer::ALL.iter().map(|p| (*p, Series::new())).collect();
    for run in 0..settings.runs {
        for (batch, s) in ours.iter_mut() {
            queue::refill(&herald, n).await?;
            let (rate, per_log) = queue::full_cycle(&herald, n, *batch, WORKERS).await?;
            crate::progress(&format!(
                "full cycle, run {}: Herald, batches of {batch}: {rate:.0} logs/s, {per_log:.1} rows written per log",
                run + 1
            ));
            s.rates.push(rate);
            s.writes.push(per_log);
        }
        for (peer, s) in theirs.iter_mut() {
            let (rate, per_job) = peers::drain(server, settings, *peer, n).await?;
            crate::progress(&format!(
                "full cycle, run {}: {} {rate:.0} jobs/s, {per_job:.1} rows written per job",
                run + 1,
                peer.describe()
            ));
            s.rates.push(rate);
            s.writes.push(per_job);
        }
    }

    let peer_rows: Vec<Row> = theirs
        .into_iter()
        .map(|(peer, s)| {
            Row::new("full cycle", peer.describe(), s.rates, "jobs/s").note(format!(
                "{n} no-op jobs; {:.1} rows written per job (enqueue included)",
                median(&s.writes)
            ))
        })
        .collect();
    let (graphile_default, graphile_best, pgboss_best) = (&peer_rows[0], &peer_rows[1], &peer_rows[2]);
    let mut rows = Vec::new();
    for (batch, s) in ours {
        let variant = format!("Herald, executor batches of {batch}");
        let herald = Row::new("full cycle", variant.clone(), s.rates, "logs/s").note(format!(
            "{n} logs, email + SMS each (the column form's two steps), {WORKERS} executors × 4 messages at once; {:.1} rows written per log",
            median(&s.writes)
        ));
        let versus = |what: &str, peer: &Row| {
            Row {
                variant: format!("{variant} vs {what}"),
                note: None,
                ..herald.clone()
            }
            .against(peer)
        };
        rows.push(herald.clone());
        rows.push(versus("pg-boss best", pgboss_best).bar("≥ 0.5× pg-boss best"));
        rows.push(versus("graphile-worker default", graphile_default).bar("> 1× graphile-worker default"));
        rows.push(versus("graphile-worker best", graphile_best));
    }
    rows.extend(peer_rows);
    Ok(rows)
}

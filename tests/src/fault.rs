//! Fault runs' common parts: a tasks table with an email-and-SMS automation, the ledger
//! compared with what moto received, and the pipeline run until it settles.

use std::collections::HashMap;
use std::time::Duration;

use herald_shared::clock::ManualClock;
use tokio_postgres::Client;

use crate::Herald;

/// `n` tasks, each with its own phone, and an automation that emails `log<ID>@<tag>...` and
/// texts the task's phone when a task goes to `go`.
pub async fn tasks_sql(tag: u32, n: i64) -> String {
    format!(
        "CREATE TABLE tasks (id bigint PRIMARY KEY, status text NOT NULL DEFAULT 'new', phone text NOT NULL);
         INSERT INTO tasks (id, phone) SELECT g, '+1' || (4152000000 + ({tag} % 1000) * 1000 + g) FROM generate_series(1, {n}) g;
         SELECT herald_attach('public.tasks', 'status', 'id');
         INSERT INTO automations (name, source_table, to_status, email_to, email_subject, email_text, sms_to, sms_body)
         VALUES ('task-go', 'tasks', 'go', 'log{{{{ herald.log_id }}}}@t{tag}.example.com', 'Task {{{{ id }}}}',
                 'Task {{{{ id }}}} is go', '{{{{ phone }}}}', 'Task {{{{ id }}}} is go');"
    )
}

/// The ledger against moto's record.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Figures {
    pub logs: usize,
    pub sent: usize,
    /// Logs that should have gone out and did not (not sent nor unknown, or a channel the
    /// ledger calls sent that moto never got).
    pub lost: usize,
    /// Messages moto got beyond one per log and channel.
    pub duplicated: usize,
    /// Logs held in `unknown`.
    pub unknown: usize,
    /// Logs whose duplicate was a documented resend of an unknown-outcome email.
    pub duplicated_logs: Vec<i64>,
}

pub async fn figures(db: &Client, h: &Herald) -> Figures {
    let rows = db
        .query(
            "SELECT l.id, l.status, t.phone,
                    EXISTS (SELECT 1 FROM herald_sends d WHERE d.log_id = l.id AND d.channel = 'email' AND d.status = 'sent'),
                    EXISTS (SELECT 1 FROM herald_sends d WHERE d.log_id = l.id AND d.channel = 'sms' AND d.status = 'sent')
             FROM automation_execution_logs l JOIN tasks t ON t.id::text = l.subject_id
             WHERE l.status <> 'suppressed' ORDER BY l.id",
            &[],
        )
        .await
        .unwrap();
    let mut emails: HashMap<String, usize> = HashMap::new();
    for m in h.moto.emails_from(&h.from).await {
        *emails.entry(m.destinations.to[0].clone()).or_default() += 1;
    }
    let mut sms: HashMap<String, usize> = HashMap::new();
    for m in h.moto.all_sms().await {
        *sms.entry(m.phone_number).or_default() += 1;
    }
    let mut f = Figures {
        logs: rows.len(),
        ..Default::default()
    };
    for r in &rows {
        let (id, status, phone): (i64, String, String) = (r.get(0), r.get(1), r.get(2));
        let (email_sent, sms_sent): (bool, bool) = (r.get(3), r.get(4));
        let got_email = emails
            .get(&format!("log{id}@t{}.example.com", h.tag))
            .copied()
            .unwrap_or(0);
        let got_sms = sms.get(&phone).copied().unwrap_or(0);
        match status.as_str() {
            // The column form runs as a two-step workflow: an instance that ran to its end.
            "completed" => f.sent += 1,
            "unknown" => f.unknown += 1,
            _ => f.lost += 1,
        }
        if (email_sent && got_email == 0) || (sms_sent && got_sms == 0) {
            f.lost += 1;
        }
        let extra = got_email.saturating_sub(1) + got_sms.saturating_sub(1);
        if extra > 0 {
            f.duplicated += extra;
            f.duplicated_logs.push(id);
        }
    }
    f
}

pub fn report(scenario: &str, f: &Figures) {
    println!(
        "FAULT RUN {scenario}: logs={} sent={} lost={} duplicated={} unknown-outcome={} (duplicated logs: {:?})",
        f.logs, f.sent, f.lost, f.duplicated, f.unknown, f.duplicated_logs
    );
}

/// Scheduler and executor runs, moving the clock past backoffs, until nothing is left to do.
pub async fn settle(h: &Herald, clock: &ManualClock) {
    for _ in 0..12 {
        h.tick().await;
        h.deliver_all().await;
        let open: i64 = h
            .db
            .scalar("SELECT count(*) FROM automation_execution_logs WHERE status IN ('pending', 'queued', 'running', 'waiting')")
            .await;
        if open == 0 {
            return;
        }
        clock.advance(Duration::from_secs(3700));
    }
    panic!("the pipeline did not settle");
}

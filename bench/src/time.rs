//! Time-based triggers. Date triggers on a large table (`members`, one renewal date per row
//! over a year, in three zones): saving the automation (every row's time computed), the
//! scheduler's tick that starts what is due (a busy one, when a day's renewals in one zone
//! come due at 09:00, and one with nothing due), and single-row updates of the date under
//! pgbench, against the same table with nothing attached. And a schedule's fan-out: one
//! occurrence over an audience of 100,000 rows, instances started per second.

use std::time::Instant;

use crate::capture::pgbench_script;
use crate::db::{Db, Server};
use crate::report::Row;
use crate::Settings;

const SAVE: &str = r#"SELECT herald_save_automation('renewal', '{
  "trigger": {"type": "date", "table": "public.members", "column": "renews_at",
              "offset": "-7 days", "at": "09:00", "timezone": {"field": "tz"}},
  "steps": [{"id": "remind", "type": "send_sms", "to": "{{ phone }}", "body": "Renews soon"}]}')"#;

/// The table, `n` rows: a renewal every minute of the day, spread over 2030.
async fn members(server: &Server, name: &str, herald: bool, n: i64) -> Result<Db, String> {
    let db = server.database(name, herald).await?;
    db.exec(&format!(
        "CREATE TABLE members (id bigint PRIMARY KEY, status text NOT NULL, renews_at timestamptz NOT NULL,
                               tz text NOT NULL, phone text);
         INSERT INTO members
         SELECT g, 'active', timestamptz '2030-01-01' + (g % 365) * interval '1 day' + (g % 1440) * interval '1 minute',
                (ARRAY['Europe/London', 'America/New_York', 'Asia/Kolkata'])[1 + g % 3], '+1' || (4152000000 + g)
         FROM generate_series(1, {n}) g;"
    ))
    .await?;
    db.exec("VACUUM ANALYZE members").await?;
    Ok(db)
}

/// One scheduler tick's firing at `at`: milliseconds, and instances started.
async fn tick(db: &Db, at: &str) -> Result<(f64, i64), String> {
    let start = Instant::now();
    let fired = db
        .count(&format!("SELECT fired::bigint FROM herald_fire_dates('{at}')"))
        .await?;
    Ok((start.elapsed().as_secs_f64() * 1000.0, fired))
}

/// A weekly schedule over every member: one occurrence fanned out to each row, `runs` times
/// (each a week later). Instances started per second, each run.
async fn fan_out(server: &Server, settings: &Settings) -> Result<(i64, Vec<f64>), String> {
    let n = settings.size(100_000, 2_000);
    let db = members(server, "bench_schedule", true, n).await?;
    db.exec(
        "INSERT INTO automations (name, source_table) VALUES ('weekly', 'members');
         SELECT set_config('herald.now', '2030-01-07T08:00:00Z', false);
         SELECT herald_save_automation('weekly', '{
           \"trigger\": {\"type\": \"schedule\", \"cron\": \"0 9 * * MON\", \"audience\": {\"relation\": \"members\"}},
           \"steps\": [{\"id\": \"tip\", \"type\": \"send_sms\", \"to\": \"{{ phone }}\", \"body\": \"Tip\"}]}');",
    )
    .await?;
    let mut rates = Vec::new();
    for run in 0..settings.runs {
        let from = format!("2030-01-{:02}T08:00:00Z", 7 + 7 * run);
        let occurrence = format!("2030-01-{:02}T09:00:00Z", 7 + 7 * run);
        let to = format!("2030-01-{:02}T08:00:00Z", 14 + 7 * run);
        db.exec("TRUNCATE herald_inbox").await?;
        db.settle().await?;
        let start = Instant::now();
        let fired = db
            .count(&format!(
                "SELECT fired::bigint FROM herald_fire_schedule((SELECT id FROM automations WHERE name = 'weekly'),
                   '{from}', '{to}', ARRAY['{occurrence}']::timestamptz[], '{{}}', '{{}}', '{occurrence}')"
            ))
            .await?;
        let secs = start.elapsed().as_secs_f64();
        if fired != n {
            return Err(format!("the schedule started {fired} instances for {n} members"));
        }
        rates.push(n as f64 / secs);
        crate::progress(&format!(
            "schedule fan-out, run {}: {n} instances in {:.2} s",
            run + 1,
            secs
        ));
    }
    Ok((n, rates))
}

pub async fn run(server: &Server, settings: &Settings) -> Result<Vec<Row>, String> {
    let (audience, fan_out_rates) = fan_out(server, settings).await?;
    let n = settings.size(1_000_000, 10_000);
    let seconds = if settings.quick { 2 } else { 10 };
    let herald = members(server, "bench_dates", true, n).await?;
    let bare = members(server, "bench_dates_bare", false, n).await?;
    herald
        .exec(
            "SELECT herald_attach('public.members', 'status');
             INSERT INTO automations (name, source_table) VALUES ('renewal', 'members');
             SELECT set_config('herald.now', '2029-12-01T00:00:00Z', false);",
        )
        .await?;
    let start = Instant::now();
    herald.exec(SAVE).await?;
    let save_secs = start.elapsed().as_secs_f64();
    let due = herald
        .count("SELECT count(*) FROM herald_occurrences WHERE state = 'due'")
        .await?;
    if due != n {
        return Err(format!("saving computed {due} occurrences for {n} rows"));
    }
    crate::progress(&format!("date trigger: saved over {n} rows in {save_secs:.1} s"));
    herald.exec("VACUUM ANALYZE herald_occurrences").await?;

    let move_date = format!(
        "\\set id random(1, {n})\nUPDATE members SET renews_at = renews_at + interval '1 day' WHERE id = :id;\n"
    );
    let other = format!("\\set id random(1, {n})\nUPDATE members SET phone = phone WHERE id = :id;\n");
    let (mut busy, mut busy_fired, mut quiet) = (vec![], vec![], vec![]);
    let (mut with, mut without, mut other_with, mut other_without) = (vec![], vec![], vec![], vec![]);
    for run in 0..settings.runs {
        // Each run a new day in February: 09:00 in London is 09:00 UTC. What came due before
        // it is fired (or missed) first, untimed, so the tick measured is a steady one.
        let day = format!("2030-02-{:02}", 2 + run * 2);
        tick(&herald, &format!("{day}T08:59:00Z")).await?;
        herald.exec("TRUNCATE herald_inbox").await?;
        // What a scheduler running every minute leaves: the catch-up's rows vacuumed away.
        herald.settle().await?;
        let (ms, fired) = tick(&herald, &format!("{day}T09:00:30Z")).await?;
        if fired == 0 {
            return Err(format!("nothing fired at 09:00 on {day}"));
        }
        busy.push(ms);
        busy_fired.push(fired as f64);
        let (ms, fired) = tick(&herald, &format!("{day}T09:01:30Z")).await?;
        if fired != 0 {
            return Err(format!("{fired} fired a minute after 09:00 on {day}, with nothing due"));
        }
        quiet.push(ms);
        herald.exec("TRUNCATE herald_inbox").await?;
        herald.settle().await?;
        bare.settle().await?;
        with.push(pgbench_script(settings, &herald, seconds, "move_renewal.sql", &move_date).await?);
        without.push(pgbench_script(settings, &bare, seconds, "move_renewal.sql", &move_date).await?);
        other_with.push(pgbench_script(settings, &herald, seconds, "update_phone.sql", &other).await?);
        other_without.push(pgbench_script(settings, &bare, seconds, "update_phone.sql", &other).await?);
        crate::progress(&format!(
            "date trigger, run {}: tick {:.1} ms for {} due, {:.1} ms with none; date updates {:.0} tps (bare {:.0}), \
             other updates {:.0} tps (bare {:.0})",
            run + 1,
            busy[run],
            busy_fired[run],
            quiet[run],
            with[run],
            without[run],
            other_with[run],
            other_without[run]
        ));
    }
    let case = "date trigger";
    let size = format!("{n} rows, renewals over a year in three zones, fired 7 days before at 09:00 local");
    let bare_row = Row::new(case, "bare table: single-row updates of the date", without, "tps");
    let bare_other = Row::new(
        case,
        "bare table: single-row updates of another column",
        other_without,
        "tps",
    );
    Ok(vec![
        Row::new(
            case,
            "saving the automation: every row's time computed",
            vec![save_secs],
            "s",
        )
        .note(format!("{size}; {:.0} rows/s", n as f64 / save_secs)),
        Row::new(case, "scheduler tick, a day's 09:00 London renewals due", busy, "ms")
            .bar("well inside a 60 s tick: ≤ 1,000 ms")
            .note(format!(
                "{} instances started per tick (median), into the inbox",
                crate::report::median(&busy_fired)
            )),
        Row::new(case, "scheduler tick, nothing due", quiet, "ms").bar("≤ 50 ms"),
        Row::new(case, "Herald attached: single-row updates of the date", with, "tps")
            .against(&bare_row)
            .note("each moves the row's due occurrence: its time computed again, a delete and an insert"),
        bare_row,
        Row::new(
            case,
            "Herald attached: single-row updates of another column",
            other_with,
            "tps",
        )
        .against(&bare_other)
        .bar("≥ 0.9× bare: only the date, zone and key columns fire the trigger"),
        bare_other,
        Row::new(
            "schedule",
            "one occurrence over an audience",
            fan_out_rates,
            "instances/s",
        )
        .bar("≥ 20,000 instances/s")
        .note(format!(
            "{audience} rows of a table: each an occurrence recorded and an event in the inbox, in one statement"
        )),
    ])
}

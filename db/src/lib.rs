//! Herald's schema, compiled in, and a runner that is safe when several processes start at
//! once: the whole run holds a transaction-scoped advisory lock.
//!
//! Two kinds of file make the schema. Numbered migrations (`db/migrations/`) hold what
//! cannot be replaced: tables, indexes, data moves. They apply once, in order, and one that
//! was edited after it was applied is refused. Schema files (`db/schema/`) hold every
//! function, view and trigger function, each in exactly one file, written with `CREATE OR
//! REPLACE`: they apply after the migrations, and again whenever a file's text changes.

use tokio_postgres::Client;

/// One numbered SQL file under `db/migrations/`.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in the order they apply.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_baseline.sql",
        sql: include_str!("../migrations/0001_baseline.sql"),
    },
    Migration {
        version: 2,
        name: "0002_occurrences.sql",
        sql: include_str!("../migrations/0002_occurrences.sql"),
    },
    Migration {
        version: 3,
        name: "0003_automations_without_a_table.sql",
        sql: include_str!("../migrations/0003_automations_without_a_table.sql"),
    },
];

/// One file under `db/schema/`: the current text of the functions, views and trigger
/// functions of one concern.
#[derive(Debug, Clone, Copy)]
pub struct SchemaFile {
    pub name: &'static str,
    pub sql: &'static str,
}

macro_rules! schema_files {
    ($($name:literal),* $(,)?) => {
        &[$(SchemaFile { name: $name, sql: include_str!(concat!("../schema/", $name)) }),*]
    };
}

/// Every schema file, in the order they apply (a later file may use an earlier one's objects
/// in its SQL-language functions and views).
pub const SCHEMA: &[SchemaFile] = schema_files![
    "time.sql",
    "capture.sql",
    "claim.sql",
    "flow.sql",
    "control.sql",
    "definitions.sql",
    "receipts.sql",
    "operations.sql",
];

/// What a run applied: the migrations the database lacked, and the schema files that were
/// new or changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub migrations: Vec<i32>,
    pub schema_files: Vec<&'static str>,
}

impl Applied {
    pub fn is_empty(&self) -> bool {
        self.migrations.is_empty() && self.schema_files.is_empty()
    }
}

/// Key of the advisory lock that serializes migration runs ("herald" in ASCII).
const LOCK_KEY: i64 = 0x6865_7261_6c64;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("migration {version} ({name}) was applied with different contents; refusing to continue")]
    Changed { version: i32, name: &'static str },
    #[error("the database has migration {0}, which this build does not know; it is older than the schema")]
    Unknown(i32),
    #[error("{name} failed: {source}")]
    Apply {
        name: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
}

/// Applies, in one transaction, every migration the database lacks and then every schema
/// file that is new or whose text changed since it was applied.
pub async fn migrate(client: &Client) -> Result<Applied, MigrateError> {
    client.batch_execute("BEGIN").await?;
    match apply(client).await {
        Ok(report) => {
            client.batch_execute("COMMIT").await?;
            Ok(report)
        }
        Err(e) => {
            // The session may be gone; then the server rolls back on its own.
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

async fn apply(tx: &Client) -> Result<Applied, MigrateError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS herald_migrations (
           version    integer PRIMARY KEY,
           name       text NOT NULL,
           checksum   text NOT NULL,
           applied_at timestamptz NOT NULL DEFAULT now());
         CREATE TABLE IF NOT EXISTS herald_schema_files (
           name       text PRIMARY KEY,
           checksum   text NOT NULL,
           applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let applied = tx
        .query(
            "SELECT version, checksum = md5(($1::text[])[version]) \
             FROM herald_migrations ORDER BY version",
            &[&MIGRATIONS.iter().map(|m| m.sql).collect::<Vec<_>>()],
        )
        .await?;
    let mut done = Vec::new();
    for row in &applied {
        let version: i32 = row.get(0);
        let same: Option<bool> = row.get(1);
        let Some(m) = MIGRATIONS.iter().find(|m| m.version == version) else {
            return Err(MigrateError::Unknown(version));
        };
        if same != Some(true) {
            return Err(MigrateError::Changed { version, name: m.name });
        }
        done.push(version);
    }
    let mut report = Applied::default();
    for m in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        tx.batch_execute(m.sql)
            .await
            .map_err(|source| MigrateError::Apply { name: m.name, source })?;
        tx.execute(
            "INSERT INTO herald_migrations (version, name, checksum) VALUES ($1, $2, md5($3::text))",
            &[&m.version, &m.name, &m.sql],
        )
        .await?;
        report.migrations.push(m.version);
    }
    let current = tx
        .query(
            "SELECT f.name FROM unnest($1::text[], $2::text[]) AS f(name, sql) \
             LEFT JOIN herald_schema_files s ON s.name = f.name \
             WHERE s.checksum IS DISTINCT FROM md5(f.sql)",
            &[
                &SCHEMA.iter().map(|f| f.name).collect::<Vec<_>>(),
                &SCHEMA.iter().map(|f| f.sql).collect::<Vec<_>>(),
            ],
        )
        .await?;
    let stale: Vec<String> = current.iter().map(|r| r.get(0)).collect();
    for f in SCHEMA.iter().filter(|f| stale.iter().any(|s| s == f.name)) {
        tx.batch_execute(f.sql)
            .await
            .map_err(|source| MigrateError::Apply { name: f.name, source })?;
        tx.execute(
            "INSERT INTO herald_schema_files (name, checksum) VALUES ($1, md5($2::text)) \
             ON CONFLICT (name) DO UPDATE SET checksum = excluded.checksum, applied_at = now()",
            &[&f.name, &f.sql],
        )
        .await?;
        report.schema_files.push(f.name);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_dense_and_match_file_names() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "{}", m.name);
            assert!(m.name.starts_with(&format!("{:04}_", m.version)), "{}", m.name);
        }
    }

    /// The `.sql` files of a folder of this crate, sorted.
    fn sql_files(folder: &str) -> Vec<String> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(folder);
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        files
    }

    #[test]
    fn every_file_of_both_folders_is_compiled_in() {
        let migrations: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
        assert_eq!(sql_files("migrations"), migrations);
        let mut schema: Vec<&str> = SCHEMA.iter().map(|f| f.name).collect();
        schema.sort();
        assert_eq!(sql_files("schema"), schema);
    }
}

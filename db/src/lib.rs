//! Herald's SQL migrations, compiled in, and a runner that is safe when several
//! processes start at once: the whole run holds a transaction-scoped advisory lock.

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
        name: "0001_ledger.sql",
        sql: include_str!("../migrations/0001_ledger.sql"),
    },
    Migration {
        version: 2,
        name: "0002_guarantees.sql",
        sql: include_str!("../migrations/0002_guarantees.sql"),
    },
    Migration {
        version: 3,
        name: "0003_inbox.sql",
        sql: include_str!("../migrations/0003_inbox.sql"),
    },
    Migration {
        version: 4,
        name: "0004_batches.sql",
        sql: include_str!("../migrations/0004_batches.sql"),
    },
    Migration {
        version: 5,
        name: "0005_batch_reads.sql",
        sql: include_str!("../migrations/0005_batch_reads.sql"),
    },
    Migration {
        version: 6,
        name: "0006_receipts.sql",
        sql: include_str!("../migrations/0006_receipts.sql"),
    },
    Migration {
        version: 7,
        name: "0007_lean_ledger.sql",
        sql: include_str!("../migrations/0007_lean_ledger.sql"),
    },
    Migration {
        version: 8,
        name: "0008_definitions.sql",
        sql: include_str!("../migrations/0008_definitions.sql"),
    },
    Migration {
        version: 9,
        name: "0009_control_and_steps.sql",
        sql: include_str!("../migrations/0009_control_and_steps.sql"),
    },
    Migration {
        version: 10,
        name: "0010_set_based_flow_write.sql",
        sql: include_str!("../migrations/0010_set_based_flow_write.sql"),
    },
    Migration {
        version: 11,
        name: "0011_flow_receipts.sql",
        sql: include_str!("../migrations/0011_flow_receipts.sql"),
    },
    Migration {
        version: 12,
        name: "0012_statement_capture.sql",
        sql: include_str!("../migrations/0012_statement_capture.sql"),
    },
    Migration {
        version: 13,
        name: "0013_capture_conditions.sql",
        sql: include_str!("../migrations/0013_capture_conditions.sql"),
    },
    Migration {
        version: 14,
        name: "0014_step_failures.sql",
        sql: include_str!("../migrations/0014_step_failures.sql"),
    },
    Migration {
        version: 15,
        name: "0015_fewer_row_versions.sql",
        sql: include_str!("../migrations/0015_fewer_row_versions.sql"),
    },
    Migration {
        version: 16,
        name: "0016_column_form_as_definitions.sql",
        sql: include_str!("../migrations/0016_column_form_as_definitions.sql"),
    },
    Migration {
        version: 17,
        name: "0017_saved_runs.sql",
        sql: include_str!("../migrations/0017_saved_runs.sql"),
    },
];

/// Key of the advisory lock that serializes migration runs ("herald" in ASCII).
const LOCK_KEY: i64 = 0x6865_7261_6c64;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("migration {version} ({name}) was applied with different contents; refusing to continue")]
    Changed { version: i32, name: &'static str },
    #[error("the database has migration {0}, which this build does not know; it is older than the schema")]
    Unknown(i32),
    #[error("migration {name} failed: {source}")]
    Apply {
        name: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
}

/// Applies every migration the database lacks, in one transaction, and returns the
/// versions it applied (empty when the schema was already current).
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, MigrateError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS herald_migrations (
           version    integer PRIMARY KEY,
           name       text NOT NULL,
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
    let mut now_applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        tx.batch_execute(m.sql)
            .await
            .map_err(|source| MigrateError::Apply { name: m.name, source })?;
        tx.execute(
            "INSERT INTO herald_migrations (version, name, checksum) VALUES ($1, $2, md5($3::text))",
            &[&m.version, &m.name, &m.sql],
        )
        .await?;
        now_applied.push(m.version);
    }
    tx.commit().await?;
    Ok(now_applied)
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

    #[test]
    fn every_file_in_the_folder_is_compiled_in() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let names: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
        assert_eq!(files, names);
    }
}

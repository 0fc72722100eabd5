//! The database: one connection per command, TLS as the functions take it.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use herald_shared::pg::{Conn, Database};

use crate::{Failure, Out};

/// A connection to the database the command names, with statements allowed up to five
/// minutes (saving a date trigger computes every row's time).
pub async fn connect(url: Option<&str>) -> Result<Arc<Conn>, Failure> {
    let url = url.ok_or_else(|| Failure::Usage("no database: set DATABASE_URL or pass --database-url".into()))?;
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| Failure::Usage(format!("DATABASE_URL is not valid: {e}")))?;
    let tls = herald_shared::config::tls().map_err(|e| Failure::Usage(e.to_string()))?;
    let db = Database::with_tls(config, &tls)
        .map_err(Failure::Usage)?
        .timeout(Duration::from_secs(300));
    db.client()
        .await
        .map_err(|e| Failure::Error(format!("connecting to the database: {e}")))
}

/// A database error as one readable message: Postgres's message, its detail and hint.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = db.message().to_string();
            if let Some(d) = db.detail() {
                s.push('\n');
                s.push_str(d);
            }
            if let Some(h) = db.hint() {
                s.push_str("\nhint: ");
                s.push_str(h);
            }
            s
        }
        None => e.to_string(),
    }
}

/// The SQLSTATE of a failed statement, if the database sent one.
pub fn state(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|d| d.code().code())
}

/// `herald migrate`: the migrations and schema files the database lacks.
pub async fn migrate(client: &Conn, out: &mut Out<impl Write>) -> Result<(), Failure> {
    let applied = herald_db::migrate(client)
        .await
        .map_err(|e| Failure::Error(e.to_string()))?;
    out.document(&serde_json::json!({
        "migrations": applied.migrations,
        "schema_files": applied.schema_files,
    }))?;
    if applied.is_empty() {
        out.line("schema is current")
    } else {
        if !applied.migrations.is_empty() {
            out.line(format!("applied migrations {:?}", applied.migrations))?;
        }
        if !applied.schema_files.is_empty() {
            out.line(format!("applied schema files {}", applied.schema_files.join(", ")))?;
        }
        Ok(())
    }
}

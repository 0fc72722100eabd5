//! TLS to Postgres with libpq's sslmode meanings, against a server with a certificate from
//! a CA of the test's own.

use std::path::PathBuf;

use herald_shared::pg::{Database, SslMode, Tls};
use herald_tests::{services, PgCluster};

/// The server of `url`, reached through the host name `host`.
fn config(url: &str, host: &str) -> tokio_postgres::Config {
    let parsed: tokio_postgres::Config = url.parse().unwrap();
    let mut c = tokio_postgres::Config::new();
    c.host(host)
        .port(parsed.get_ports()[0])
        .user("postgres")
        .dbname("postgres");
    c
}

/// Connects and answers whether the session is encrypted.
async fn encrypted(c: tokio_postgres::Config, mode: SslMode, root_cert: Option<PathBuf>) -> Result<bool, String> {
    let db = Database::with_tls(c, &Tls { mode, root_cert })?;
    let client = db.client().await.map_err(|e| format!("{e:?}"))?;
    let row = client
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[tokio::test]
async fn sslmode_semantics_against_a_tls_server() {
    let (cluster, ca) = tokio::task::spawn_blocking(|| PgCluster::start_tls("tls"))
        .await
        .unwrap()
        .unwrap();
    let url = cluster.admin_url();

    // require and prefer encrypt; disable does not
    assert_eq!(
        encrypted(config(&url, "127.0.0.1"), SslMode::Require, None).await,
        Ok(true)
    );
    assert_eq!(
        encrypted(config(&url, "127.0.0.1"), SslMode::Prefer, None).await,
        Ok(true)
    );
    assert_eq!(
        encrypted(config(&url, "127.0.0.1"), SslMode::Disable, None).await,
        Ok(false)
    );

    // verify-full accepts the certificate given its CA, by IP address or by name
    assert_eq!(
        encrypted(config(&url, "127.0.0.1"), SslMode::VerifyFull, Some(ca.clone())).await,
        Ok(true)
    );
    assert_eq!(
        encrypted(config(&url, "localhost"), SslMode::VerifyFull, Some(ca.clone())).await,
        Ok(true)
    );

    // ... and refuses it without that CA (the system's roots do not know it)
    let err = encrypted(config(&url, "127.0.0.1"), SslMode::VerifyFull, None)
        .await
        .unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");

    // ... and refuses a certificate that does not name the host it reached
    let mut other_name = config(&url, "db.internal.example");
    other_name.hostaddr("127.0.0.1".parse().unwrap());
    let err = encrypted(other_name, SslMode::VerifyFull, Some(ca.clone()))
        .await
        .unwrap_err();
    assert!(err.contains("NotValidForName"), "{err}");
    drop(cluster);
}

#[tokio::test]
async fn against_a_server_without_tls_prefer_falls_back_and_require_refuses() {
    let url = services().admin_url();
    assert_eq!(
        encrypted(config(&url, "127.0.0.1"), SslMode::Prefer, None).await,
        Ok(false)
    );
    let err = encrypted(config(&url, "127.0.0.1"), SslMode::Require, None)
        .await
        .unwrap_err();
    assert!(
        err.contains("TLS") || err.contains("tls") || err.contains("SSL"),
        "{err}"
    );
}

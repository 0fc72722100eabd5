//! The functions' settings, from their environment.

use std::str::FromStr;
use std::time::Duration;

use aws_config::SdkConfig;
use serde::Deserialize;

use crate::aws::read_secret;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not set")]
    Missing(&'static str),
    #[error("{name} is not valid: {why}")]
    Invalid { name: &'static str, why: String },
    #[error("reading the database secret: {0}")]
    Secret(String),
}

/// A variable's value; unset and empty are the same.
pub fn var(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

pub fn required(name: &'static str) -> Result<String, ConfigError> {
    var(name).ok_or(ConfigError::Missing(name))
}

/// A yes/no setting: `true`/`false` (or `1`/`0`); unset is false.
pub fn flag(name: &'static str) -> Result<bool, ConfigError> {
    flag_or(name, false)
}

/// A yes/no setting: `true`/`false` (or `1`/`0`); unset is `default`.
pub fn flag_or(name: &'static str, default: bool) -> Result<bool, ConfigError> {
    match var(name).as_deref().map(str::trim) {
        None => Ok(default),
        Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(other) => Err(ConfigError::Invalid {
            name,
            why: format!("{other:?} is not true or false"),
        }),
    }
}

/// A number with a default, and bounds.
pub fn number<T>(name: &'static str, default: T, min: T, max: T) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + Copy + std::fmt::Display,
{
    let Some(raw) = var(name) else {
        return Ok(default);
    };
    let n: T = raw.trim().parse().map_err(|_| ConfigError::Invalid {
        name,
        why: format!("{raw:?} is not a number"),
    })?;
    if n < min || n > max {
        return Err(ConfigError::Invalid {
            name,
            why: format!("{n} is not between {min} and {max}"),
        });
    }
    Ok(n)
}

/// How long a connect, or a round trip to Postgres, may go unanswered before the connection
/// is taken for lost and the statement fails (`HERALD_DB_TIMEOUT_MS`): `default_ms`, from
/// 100 to `max_ms`.
pub fn db_timeout(default_ms: u64, max_ms: u64) -> Result<Duration, ConfigError> {
    number("HERALD_DB_TIMEOUT_MS", default_ms, 100, max_ms).map(Duration::from_millis)
}

/// Where the database is: `DATABASE_URL` (local runs), or the Secrets Manager secret named
/// by `DATABASE_SECRET_ARN`, read once per container.
pub(crate) async fn database(aws: &SdkConfig) -> Result<tokio_postgres::Config, ConfigError> {
    database_from(var("DATABASE_URL"), var("DATABASE_SECRET_ARN"), aws).await
}

/// [`database`] with the two settings given.
pub async fn database_from(
    url: Option<String>,
    secret_arn: Option<String>,
    aws: &SdkConfig,
) -> Result<tokio_postgres::Config, ConfigError> {
    if let Some(url) = url {
        return url.parse().map_err(|e: tokio_postgres::Error| ConfigError::Invalid {
            name: "DATABASE_URL",
            why: e.to_string(),
        });
    }
    let arn = secret_arn.ok_or(ConfigError::Missing("DATABASE_URL or DATABASE_SECRET_ARN"))?;
    let secret = read_secret(aws, &arn)
        .await
        .map_err(|e| ConfigError::Secret(e.to_string()))?;
    database_from_secret(&secret)
}

/// TLS to the database: `DATABASE_SSLMODE` (`disable`, `prefer` (default), `require` or
/// `verify-full`) and `DATABASE_SSLROOTCERT` (a PEM file of trusted roots for `verify-full`,
/// such as the RDS bundle; without it, the system's roots).
pub fn tls() -> Result<crate::pg::Tls, ConfigError> {
    let mode = match var("DATABASE_SSLMODE") {
        None => crate::pg::SslMode::Prefer,
        Some(m) => m.trim().parse().map_err(|why| ConfigError::Invalid {
            name: "DATABASE_SSLMODE",
            why,
        })?,
    };
    Ok(crate::pg::Tls {
        mode,
        root_cert: var("DATABASE_SSLROOTCERT").map(Into::into),
    })
}

/// The database of a function: where it is, and how to reach it.
pub async fn database_handle(aws: &SdkConfig) -> Result<crate::pg::Database, ConfigError> {
    crate::pg::Database::with_tls(database(aws).await?, &tls()?).map_err(|why| ConfigError::Invalid {
        name: "DATABASE_SSLROOTCERT",
        why,
    })
}

/// The shape of an RDS-managed secret.
#[derive(Deserialize)]
struct RdsSecret {
    username: String,
    password: String,
    host: String,
    port: Option<u16>,
    dbname: Option<String>,
}

/// Accepts a `postgres://` URL or the JSON of an RDS-managed secret.
pub(crate) fn database_from_secret(secret: &str) -> Result<tokio_postgres::Config, ConfigError> {
    let secret = secret.trim();
    if secret.starts_with("postgres://") || secret.starts_with("postgresql://") {
        return secret
            .parse()
            .map_err(|e: tokio_postgres::Error| ConfigError::Secret(e.to_string()));
    }
    let s: RdsSecret = serde_json::from_str(secret)
        .map_err(|e| ConfigError::Secret(format!("neither a postgres:// URL nor RDS secret JSON ({e})")))?;
    let mut config = tokio_postgres::Config::new();
    config
        .host(&s.host)
        .port(s.port.unwrap_or(5432))
        .user(&s.username)
        .password(s.password)
        .dbname(s.dbname.as_deref().unwrap_or("postgres"));
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_as_url_or_rds_json() {
        let c = database_from_secret("postgres://u:p@db.example.com:6543/app").unwrap();
        assert_eq!(c.get_dbname(), Some("app"));
        assert_eq!(c.get_ports(), &[6543]);
        let c = database_from_secret(r#"{"username":"herald","password":"p@ss:/word","host":"db","port":5433,"dbname":"app","engine":"postgres"}"#).unwrap();
        assert_eq!(c.get_user(), Some("herald"));
        assert_eq!(c.get_password(), Some(&b"p@ss:/word"[..]));
        assert_eq!(c.get_ports(), &[5433]);
        let err = database_from_secret("hunter2").unwrap_err().to_string();
        assert!(err.contains("neither a postgres:// URL nor RDS secret JSON"), "{err}");
        assert!(
            !err.contains("hunter2"),
            "the secret must not leak into the error: {err}"
        );
    }
}

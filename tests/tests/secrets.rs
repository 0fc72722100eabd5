//! The database connection from a Secrets Manager secret (moto's), in both accepted forms.

use herald_shared::config::{database_from, ConfigError};
use herald_shared::pg::Database;
use herald_tests::{Moto, TestDb};

async fn put_secret(moto: &Moto, name: &str, value: &str) -> String {
    let out = aws_sdk_secretsmanager::Client::new(&moto.sdk)
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
        .expect("CreateSecret");
    out.arn().expect("secret arn").to_owned()
}

#[tokio::test]
async fn the_connection_comes_from_an_rds_secret_or_a_url_secret() {
    // GIVEN a database and two secrets describing it
    let db = TestDb::new().await;
    let moto = Moto::new().await;
    let cfg = db.config();
    let host = match &cfg.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        other => panic!("{other:?}"),
    };
    let rds = serde_json::json!({
        "engine": "postgres", "host": host, "port": cfg.get_ports()[0],
        "username": cfg.get_user().unwrap(), "password": "unused-with-trust-auth", "dbname": db.name,
    });
    let rds_arn = put_secret(&moto, &format!("{}-rds", db.name), &rds.to_string()).await;
    let url_arn = put_secret(&moto, &format!("{}-url", db.name), &db.url).await;

    for arn in [rds_arn, url_arn] {
        // WHEN a function resolves its connection from the secret
        let config = database_from(None, Some(arn.clone()), &moto.sdk).await.unwrap();
        // THEN it reaches that database
        let client = Database::new(config).client().await.unwrap();
        let name: String = client.query_one("SELECT current_database()", &[]).await.unwrap().get(0);
        assert_eq!(name, db.name, "{arn}");
    }
}

#[tokio::test]
async fn a_missing_secret_or_setting_is_a_clear_error() {
    let moto = Moto::new().await;
    let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:herald-absent-AbCdEf";
    let err = database_from(None, Some(arn.into()), &moto.sdk).await.unwrap_err();
    assert!(
        matches!(&err, ConfigError::Secret(m) if m.contains("ResourceNotFoundException")),
        "{err}"
    );
    let err = database_from(None, None, &moto.sdk).await.unwrap_err();
    assert_eq!(err.to_string(), "DATABASE_URL or DATABASE_SECRET_ARN is not set");
}

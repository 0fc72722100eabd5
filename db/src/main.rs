//! `herald-migrate [DATABASE_URL]`: brings a database's Herald schema up to date.
//! The URL defaults to the DATABASE_URL environment variable.

use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let Some(url) = std::env::args().nth(1).or_else(|| std::env::var("DATABASE_URL").ok()) else {
        eprintln!("usage: herald-migrate DATABASE_URL (or set DATABASE_URL)");
        return ExitCode::from(2);
    };
    match run(&url).await {
        Ok(applied) if applied.is_empty() => {
            println!("schema is current");
            ExitCode::SUCCESS
        }
        Ok(applied) => {
            if !applied.migrations.is_empty() {
                println!("applied migrations {:?}", applied.migrations);
            }
            if !applied.schema_files.is_empty() {
                println!("applied schema files {}", applied.schema_files.join(", "));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("herald-migrate: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(url: &str) -> Result<herald_db::Applied, Box<dyn std::error::Error>> {
    let (mut client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let conn = tokio::spawn(connection);
    let applied = herald_db::migrate(&mut client).await?;
    drop(client);
    conn.await??;
    Ok(applied)
}

//! The `herald` command: definitions kept as files (`validate`, `diff`, `apply`, `get`), the
//! ledger from a terminal (`status`, `logs`, `show`), the operator's controls (`retry`,
//! `cancel`, `pause`, `resume`, `start`, `migrate-instances`), `migrate`, and `console`, a
//! read-only web console. Every verb goes through Herald's SQL functions and views; the queries it
//! runs itself are the named files in `cli/sql/`.

mod console;
mod db;
mod definitions;
mod files;
mod ledger;
mod output;

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use output::Out;

/// How the command ends: the process's exit code and what it says on stderr.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// 1: the database could not be reached, or a statement failed.
    #[error("{0}")]
    Error(String),
    /// 2: the command line or a file named on it cannot be used.
    #[error("{0}")]
    Usage(String),
    /// 3: a definition has mistakes; nothing was saved.
    #[error("{0}")]
    Refused(String),
    /// 4: a save was based on a version that no longer runs; nothing was saved.
    #[error("{0}")]
    Stale(String),
    /// 5: what the command names does not exist, or is in no state to do it.
    #[error("{0}")]
    NotFound(String),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Error(_) => 1,
            Failure::Usage(_) => 2,
            Failure::Refused(_) => 3,
            Failure::Stale(_) => 4,
            Failure::NotFound(_) => 5,
        }
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Failure::Error(db::describe(&e))
    }
}

/// Herald's command line.
#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about = "Operate Herald: definitions as files, the ledger, a console"
)]
pub struct Cli {
    /// The database (postgres://…). TLS follows DATABASE_SSLMODE and DATABASE_SSLROOTCERT.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,
    /// Print JSON for scripts instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Bring the database's Herald schema up to date.
    Migrate,
    /// Check definition files (or folders of them) against the database; save nothing.
    Validate {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Show what saving the files would change, and the instances standing at each step.
    Diff {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Save the files, all or none, each only if the version it was read against still runs.
    Apply {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// NAME=CHECKSUM: the version a reviewed change was based on (from `herald diff`).
        #[arg(long = "base", value_name = "NAME=CHECKSUM")]
        bases: Vec<String>,
    },
    /// Print an automation's saved document, as a file holds it.
    Get { name: String },
    /// Move the instances on other versions of an automation to version N.
    MigrateInstances {
        name: String,
        #[arg(long)]
        to: i32,
    },
    /// Per automation: how many logs stand where, and the age of the oldest due one.
    Status,
    /// Logs, newest last.
    Logs(LogsArgs),
    /// An instance and its whole step history.
    Show { id: i64 },
    /// Run a failed, dead or unknown instance again from the step it stopped at.
    Retry { id: i64 },
    /// Cancel an instance that has not finished.
    Cancel { id: i64 },
    /// Pause an automation (its events are kept, held), or one instance.
    Pause(Target),
    /// Resume a paused automation or instance.
    Resume(Target),
    /// Start an instance of a `manual` automation for one row.
    Start {
        name: String,
        table: String,
        key: String,
        /// A JSON object the templates see as `payload`.
        #[arg(long, default_value = "{}")]
        payload: String,
    },
    /// A read-only web console on 127.0.0.1.
    Console {
        #[arg(long, default_value_t = 8025)]
        port: u16,
    },
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    #[arg(long)]
    pub automation: Option<String>,
    #[arg(long)]
    pub status: Option<String>,
    /// The subject row's key.
    #[arg(long)]
    pub subject: Option<String>,
    /// Only logs changed at or after this time (RFC 3339, or a span back: "1h", "2 days").
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    /// Keep printing logs as they change.
    #[arg(long)]
    pub follow: bool,
    /// How often --follow looks, in milliseconds.
    #[arg(long, default_value_t = 1000, hide = true)]
    pub interval_ms: u64,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// The automation's name.
    pub name: Option<String>,
    /// One instance, by its log id.
    #[arg(long)]
    pub instance: Option<i64>,
}

/// Runs one command, writing what it prints to `out`.
pub async fn run(cli: Cli, out: &mut Out<impl Write>) -> Result<(), Failure> {
    let client = db::connect(cli.database_url.as_deref()).await?;
    match cli.command {
        Command::Migrate => db::migrate(&client, out).await,
        Command::Validate { paths } => definitions::validate(&client, &files::load_all(&paths)?, out).await,
        Command::Diff { paths } => definitions::diff(&client, &files::load_all(&paths)?, out).await,
        Command::Apply { paths, bases } => definitions::apply(&client, &files::load_all(&paths)?, &bases, out).await,
        Command::Get { name } => definitions::get(&client, &name, out).await,
        Command::MigrateInstances { name, to } => definitions::migrate_instances(&client, &name, to, out).await,
        Command::Status => ledger::status(&client, out).await,
        Command::Logs(args) => ledger::logs(&client, &args, out).await,
        Command::Show { id } => ledger::show(&client, id, out).await,
        Command::Retry { id } => ledger::retry(&client, id, out).await,
        Command::Cancel { id } => ledger::cancel(&client, id, out).await,
        Command::Pause(t) => ledger::hold(&client, &t, true, out).await,
        Command::Resume(t) => ledger::hold(&client, &t, false, out).await,
        Command::Start {
            name,
            table,
            key,
            payload,
        } => ledger::start(&client, &name, &table, &key, &payload, out).await,
        Command::Console { port } => console::serve(client, port, out).await,
    }
}

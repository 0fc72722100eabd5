//! `herald`: see `herald --help` and docs/command.md. Exit codes: 0 done, 1 error,
//! 2 usage, 3 a definition refused, 4 a stale save, 5 nothing to act on.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use herald_cli::{run, Cli, Out};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let stdout = std::io::stdout();
    let terminal = stdout.is_terminal();
    let mut out = Out::new(stdout.lock(), cli.json, terminal);
    match run(cli, &mut out).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = out.flush();
            eprintln!("herald: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

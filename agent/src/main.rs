//! `portwatch-agent`: parse the command line, set up logging, call the library.

use clap::Parser;
use portwatch_agent::cli::{Cli, Command, EXIT_UNKNOWN};

/// `check` prints its result: only warnings on stderr. The daemon logs its life.
fn default_log(command: &Command) -> &'static str {
    match command {
        Command::Run(_) => "info",
        _ => "warn",
    }
}

fn main() {
    // Exactly one crypto provider, installed before anything touches rustls.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version are not errors; everything else is a usage error,
            // which the Nagios convention reports as UNKNOWN (3).
            let code = if e.use_stderr() { EXIT_UNKNOWN } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PORTWATCH_LOG")
                .unwrap_or_else(|_| default_log(&cli.command).into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portwatch-agent: cannot start the async runtime: {e}");
            std::process::exit(EXIT_UNKNOWN);
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Check(args) => portwatch_agent::cli::run_check(&args).await,
            Command::Enroll(args) => portwatch_agent::cli::run_enroll(&args).await,
            Command::Run(args) => portwatch_agent::cli::run_daemon(&args).await,
        }
    });
    std::process::exit(code);
}

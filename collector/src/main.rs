//! `portwatch-collector`: parse the command line, set up logging, call the library.

use clap::Parser;
use portwatch_collector::cli::{Cli, EXIT_USAGE, run_admin};

fn main() {
    // Exactly one crypto provider, installed before anything touches rustls.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PORTWATCH_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    std::process::exit(run_admin(&cli.command));
}

//! `portwatch-collector`: parse the command line, set up logging, call the library.

use clap::Parser;
use portwatch_collector::cli::{
    Cli, Command, EXIT_FAILURE, EXIT_USAGE, run_admin, run_demo, run_serve,
};

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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let code = match &cli.command {
        Command::Serve(_) | Command::Demo(_) => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("portwatch-collector: cannot start the async runtime: {e}");
                    std::process::exit(EXIT_FAILURE);
                }
            };
            runtime.block_on(async {
                match &cli.command {
                    Command::Serve(args) => run_serve(args).await,
                    Command::Demo(args) => run_demo(args).await,
                    other => run_admin(other),
                }
            })
        }
        other => run_admin(other),
    };
    std::process::exit(code);
}

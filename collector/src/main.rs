//! `portwatch-collector`: parse the command line and call the library.

use clap::Parser;

/// portwatch collector: enrollment, agent streams, public probes, incidents, dashboard
#[derive(Debug, Parser)]
#[command(name = "portwatch-collector", version)]
struct Cli {}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _cli = Cli::parse();
    eprintln!(
        "portwatch-collector: no subcommand yet (serve, token, agents and demo arrive with the collector issues)"
    );
    std::process::exit(64);
}

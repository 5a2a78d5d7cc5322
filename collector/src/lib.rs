//! The portwatch collector: issues enrollment tokens and agent certificates,
//! holds the agents' streams, runs public probes with the agent's own engine
//! (`portwatch_agent::probe::Engine` under a public-address policy), merges
//! results per monitor and location, decides incidents and serves the
//! dashboard, API and metrics.
//!
//! Built issue by issue; today: the certificate authority (`ca`) and the
//! configuration file (`config`).

pub mod admin;
pub mod ca;
pub mod cli;
pub mod client;
pub mod config;
pub mod http;

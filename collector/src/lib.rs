//! The portwatch collector: issues enrollment tokens and agent certificates,
//! holds the agents' streams, runs public probes with the agent's own engine
//! (`portwatch_agent::probe::Engine` under a public-address policy), merges
//! results per monitor and location, decides incidents and serves the
//! dashboard, API and metrics.
//!
//! Built issue by issue; today: the certificate authority (`ca`).

pub mod ca;
pub mod ingest;
pub mod results;

//! The portwatch collector: issues enrollment tokens and agent certificates,
//! holds the agents' streams, runs public probes with the agent's own engine
//! (`portwatch_agent::probe::Engine` under a public-address policy), merges
//! results per monitor and location, decides incidents and serves the
//! dashboard, API and metrics.
//!
//! - `ca`: the agent CA; `token`, `agents`, `state`: enrollment tokens and the
//!   agent registry in the collector's sled state; `enroll`: the Enroll RPC;
//!   `ingest`: the agents' mTLS result streams; `store`: the durable result
//!   store (raw results, rollups, gaps, events).
//! - `config`: the configuration file; `admin`, `http`, `client`, `cli`: the
//!   admin API and the command line that talks to it.
//! - `web`: the dashboard and the public status page.

pub mod admin;
pub mod agents;
pub mod ca;
pub mod cli;
pub mod client;
pub mod config;
pub mod demo;
pub mod enroll;
pub mod http;
pub mod incident;
pub mod ingest;
pub mod maintenance;
pub mod metrics;
pub mod monitors;
pub mod notify;
pub mod public;
mod ratelimit;
pub mod server;
pub mod state;
pub mod store;
pub mod token;
pub mod web;

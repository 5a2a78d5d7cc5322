//! The portwatch agent library: the probe engine (probers, scheduler, result
//! model) that both the agent daemon and the collector's public prober run.
//!
//! - `buffer`: the durable on-disk queue of results awaiting the collector's ack.
//! - `check`: what to check (target and options), validated into a `CheckSpec`.
//! - `probe`: one prober per check type behind one trait, and the `Engine`.
//! - `resolve`: DNS with a real failure taxonomy.
//! - `result`: what a check returns (status, reason, phases, details).
//! - `scheduler`: runs thousands of monitors on their intervals.
//! - `join`, `enroll`, `identity`: one-time enrollment and the agent's files.
//! - `link`: the mTLS stream to the collector (buffer in, acks out);
//!   `assignment`: the last assignment, kept on disk for a restart offline.
//! - `cli`: the `portwatch-agent` command line; `config`: `run`'s config file;
//!   `process`: its own memory and CPU.

pub mod assignment;
pub mod buffer;
pub mod check;
pub mod cli;
pub mod config;
pub mod enroll;
pub mod identity;
pub mod join;
pub mod link;
pub mod probe;
pub mod process;
pub mod resolve;
pub mod result;
pub mod scheduler;

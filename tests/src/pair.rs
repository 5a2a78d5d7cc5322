//! The smallest real deployment, on loopback: `portwatch-collector serve`
//! and one `portwatch-agent` enrolled with a one-time token, each its own
//! process (the binaries cargo built for this profile), as the measurements
//! (replay, footprint) run them. Only 127.0.0.1 is contacted.

use portwatch_harness::{self as h, Service};
use serde_json::Value;
use std::path::{Path, PathBuf};

use crate::local::{Collector, run_agent};

pub struct Pair {
    /// Holds both data dirs; removed with the pair.
    pub dir: tempfile::TempDir,
    pub collector: Collector,
    pub agent_dir: PathBuf,
    pub agent: Option<Service>,
}

impl Pair {
    /// Starts the collector with `config` (a collector.toml) and enrolls an
    /// agent named `agent` (monitors whose `locations` name it are its own).
    /// The agent is not started: see [`Pair::start_agent`].
    pub fn enrolled(config: &str, agent: &str) -> Pair {
        let dir = h::temp_dir();
        let agent_dir = dir.path().join("agent");
        let collector = Collector::serve(dir.path(), config);
        collector.enroll(agent, "", &agent_dir);
        Pair {
            dir,
            collector,
            agent_dir,
            agent: None,
        }
    }

    /// `portwatch-agent run` on the enrolled data dir, with `args`.
    pub fn start_agent(&mut self, args: &[&str]) -> u32 {
        let agent = run_agent(self.dir.path(), &self.agent_dir, args);
        let pid = agent.pid();
        self.agent = Some(agent);
        pid
    }

    /// The one agent, as `agents --json` shows it.
    pub fn agent_info(&self) -> Option<Value> {
        let o = self.collector.cli(&["agents", "--json"]);
        let v: Value = serde_json::from_slice(&o.stdout).ok()?;
        v.as_array()?.first().cloned()
    }
}

/// A process's memory and CPU, from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub rss_kib: u64,
    /// Of `rss_kib`: anonymous memory (heap, stacks), and pages of files
    /// (the program's own code, shared libraries).
    pub anon_kib: u64,
    pub file_kib: u64,
    /// Peak resident memory (VmHWM).
    pub peak_kib: u64,
    /// User + system CPU seconds since it started.
    pub cpu_s: f64,
}

/// `pid`'s usage now (zeros for a process that is gone).
pub fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name's last ')': field 3 on; utime, stime are 14, 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Usage {
        rss_kib: kib("VmRSS:"),
        anon_kib: kib("RssAnon:"),
        file_kib: kib("RssFile:") + kib("RssShmem:"),
        peak_kib: kib("VmHWM:"),
        // USER_HZ is 100 on Linux.
        cpu_s: (ticks(11) + ticks(12)) as f64 / 100.0,
    }
}

/// The agent's buffer dir under its data dir.
pub fn buffer_dir(agent_dir: &Path) -> PathBuf {
    agent_dir.join("buffer")
}

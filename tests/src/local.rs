//! The real binaries on the test's own loopback, without namespaces:
//! `portwatch-collector serve` on free 127.0.0.1 ports with its own data dir,
//! and agents enrolled into it with one-time tokens. For measurements that
//! need a quiet, simple setup ([`crate::lab`] builds a private site instead).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use portwatch_harness::{self as h, Service};

use crate::lab::text;

/// A collector serving on 127.0.0.1.
pub struct Collector {
    pub service: Service,
    /// Its data dir (store, CA, `collector.json`, `admin.token`).
    pub data: PathBuf,
    pub agent_port: u16,
    pub http_port: u16,
}

impl Collector {
    /// Writes `config_body` (TOML) to `<dir>/collector.toml` and starts
    /// `portwatch-collector serve` with it on free ports, data in
    /// `<dir>/collector`; returns once its API answers.
    pub fn serve(dir: &Path, config_body: &str) -> Collector {
        let data = dir.join("collector");
        let config = dir.join("collector.toml");
        std::fs::write(&config, config_body).expect("write collector.toml");
        let (agent_port, http_port) = (h::free_tcp_port(), h::free_tcp_port());
        let mut cmd = Command::new(h::cargo_bin("portwatch-collector"));
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&data)
            .arg("--config")
            .arg(&config)
            .args([
                "--agent-addr",
                &format!("127.0.0.1:{agent_port}"),
                "--http-addr",
                &format!("127.0.0.1:{http_port}"),
            ]);
        let mut service = Service::spawn("collector", cmd, dir);
        service.wait_tcp(([127, 0, 0, 1], http_port).into(), Duration::from_secs(30));
        assert!(
            h::poll_until(Duration::from_secs(10), || data
                .join("collector.json")
                .exists()),
            "the collector wrote no collector.json:\n{}",
            service.log()
        );
        Collector {
            service,
            data,
            agent_port,
            http_port,
        }
    }

    /// `portwatch-collector ARGS --data-dir <data>`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(h::cargo_bin("portwatch-collector"))
            .args(args)
            .arg("--data-dir")
            .arg(&self.data)
            .output()
            .expect("run portwatch-collector")
    }

    /// A one-time token for agent `name` (labels `k=v,...`, or none when
    /// empty): its join string.
    pub fn token(&self, name: &str, labels: &str) -> String {
        let mut args = vec!["token", "create", "--name", name];
        if !labels.is_empty() {
            args.extend(["--labels", labels]);
        }
        let o = self.cli(&args);
        assert!(o.status.success(), "token create: {}", text(&o));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .expect("a join string")
            .to_owned()
    }

    /// A token, then `portwatch-agent enroll` into `agent_dir`.
    pub fn enroll(&self, name: &str, labels: &str, agent_dir: &Path) {
        let join = self.token(name, labels);
        let o = Command::new(h::cargo_bin("portwatch-agent"))
            .arg("enroll")
            .arg(&join)
            .arg("--data-dir")
            .arg(agent_dir)
            .output()
            .expect("run portwatch-agent enroll");
        assert!(
            o.status.success(),
            "enroll: {}\n{}",
            text(&o),
            self.service.log()
        );
    }

    /// `portwatch-collector status --json`.
    pub fn status(&self) -> Vec<serde_json::Value> {
        let o = self.cli(&["status", "--json"]);
        assert!(o.status.success(), "status: {}", text(&o));
        serde_json::from_slice(&o.stdout).expect("status prints JSON")
    }

    /// SIGTERM (the collector's clean shutdown), then waits for it to exit.
    pub fn stop(&mut self, within: Duration) {
        let pid = self.service.pid().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(
            h::poll_until(within, || self.service.exited()),
            "the collector did not stop on SIGTERM within {within:?}:\n{}",
            self.service.log()
        );
    }
}

/// `portwatch-agent run ARGS` with the identity in `agent_dir`, logging into `dir`.
pub fn run_agent(dir: &Path, agent_dir: &Path, args: &[&str]) -> Service {
    let mut cmd = Command::new(h::cargo_bin("portwatch-agent"));
    cmd.arg("run").arg("--data-dir").arg(agent_dir).args(args);
    Service::spawn("agent", cmd, dir)
}

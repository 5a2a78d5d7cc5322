//! What the collector's integration tests share: a collector through the
//! real `serve` wiring on loopback ports, agents enrolled with real tokens,
//! and agent links running the real engine.

#![allow(dead_code)] // each test file uses its own part of this

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use portwatch_agent::buffer::SledBuffer;
use portwatch_agent::enroll::{EnrollOptions, enroll};
use portwatch_agent::identity::AgentIdentity;
use portwatch_agent::join::JoinString;
use portwatch_agent::link::{Link, LinkConfig, LinkError, LinkIdentity, LinkStatus};
use portwatch_agent::probe::Engine;
use portwatch_collector::admin::Discovery;
use portwatch_collector::config::Config;
use portwatch_collector::server::{self, Collector};
use portwatch_collector::token::TokenSpec;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A collector serving on loopback until dropped.
pub struct Running {
    pub collector: Collector,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Serves `config` (data dir and listeners of its own).
pub async fn start_with(config: Config) -> Running {
    start_in(tempfile::tempdir().unwrap(), config).await
}

/// Serves the config file `text`, written to `collector.toml` (watched for
/// changes like a real deployment's).
pub async fn start_from_file(text: &str) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("collector.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    start_in(dir, config).await
}

async fn start_in(dir: tempfile::TempDir, config: Config) -> Running {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let data = dir.path().join("collector");
    let agent_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = agent_listener.local_addr().unwrap();
    let (collector, admin) = server::open(&data, config, addr).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let c = collector.clone();
    tokio::spawn(async move {
        server::serve(&data, c, admin, agent_listener, http_listener, async {
            let _ = stopped.await;
        })
        .await
    });
    Running {
        collector,
        addr,
        dir,
        stop: Some(stop),
    }
}

impl Running {
    /// What the collector wrote to `collector.json` (its addresses), once it
    /// has (serving starts in the background).
    pub async fn discovery(&self) -> Discovery {
        let data = self.dir.path().join("collector");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(d) = Discovery::read(&data) {
                return d;
            }
            assert!(Instant::now() < deadline, "no collector.json");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("collector.toml")
    }

    /// Where the agent `name` keeps its identity and buffer.
    pub fn agent_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Enrolls the agent `name` with a fresh one-time token.
    pub async fn enroll(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        public_region: Option<&str>,
    ) -> AgentIdentity {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let new = self
            .collector
            .tokens
            .create(
                TokenSpec {
                    name: name.into(),
                    labels,
                    ttl: None,
                    public_region: public_region.map(str::to_owned),
                },
                SystemTime::now(),
            )
            .unwrap();
        let join = JoinString::new(
            self.collector.public_agent_addr.clone(),
            new.record.id.clone(),
            new.secret(),
            self.collector.ca.pin(),
        )
        .unwrap();
        enroll(&join, &self.agent_dir(name), &EnrollOptions::default())
            .await
            .unwrap()
    }

    /// A channel to the agent port: server-auth TLS against the collector's
    /// CA, with `id`'s client certificate when given (mTLS).
    pub async fn channel(&self, id: Option<&AgentIdentity>) -> Channel {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.collector.ca.cert_pem()))
            .domain_name("127.0.0.1");
        if let Some(id) = id {
            tls = tls.identity(Identity::from_pem(id.cert_pem(), id.key_pem()));
        }
        Endpoint::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// A link for the enrolled agent `name`, renewing into its directory.
    pub fn link(&self, name: &str, id: &AgentIdentity, config: LinkConfig) -> Link {
        let dir = self.agent_dir(name);
        let buffer = Arc::new(SledBuffer::open(&dir.join("buffer"), 16 << 20).unwrap());
        Link::new(
            LinkIdentity {
                collector: id.collector_addr().to_owned(),
                server_name: "127.0.0.1".into(),
                cert_pem: id.cert_pem().to_owned(),
                key_pem: id.key_pem().to_owned(),
                ca_pem: id.ca_pem().to_owned(),
            },
            buffer,
            config,
        )
        .with_rotation(portwatch_agent::cli::persist_into(dir))
    }
}

/// A link running with `engine` until `stop`.
pub struct RunningLink {
    pub status: watch::Receiver<LinkStatus>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), LinkError>>,
}

impl RunningLink {
    pub fn spawn(link: Link, engine: Arc<Engine>) -> RunningLink {
        let status = link.status();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(link.run(engine, async {
            let _ = stopped.await;
        }));
        RunningLink { status, stop, task }
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the link; it must end cleanly.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

//! The agent link started with a saved assignment while no collector can be
//! reached (its port on 127.0.0.1 refuses): the saved monitors run at once
//! and their results go into the buffer; a saved public-only flag holds
//! before the first check (a private target is refused, never contacted);
//! a damaged file is ignored and the agent starts empty, still running.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use portwatch_agent::assignment::SavedAssignment;
use portwatch_agent::buffer::{DEFAULT_MAX_BYTES, ResultBuffer, SledBuffer};
use portwatch_agent::link::{Link, LinkConfig, LinkIdentity, LinkStatus};
use portwatch_agent::probe::policy::Tightenable;
use portwatch_agent::probe::{AllowAll, Engine, Registry};
use portwatch_agent::resolve::Resolver;
use portwatch_harness::{self as h, ClosedPort};
use portwatch_proto::v1 as pb;
use prost::Message;
use tokio::sync::{oneshot, watch};

/// A self-signed certificate and key (PEM): enough for the link to build its
/// TLS settings; no handshake ever happens (the collector port refuses).
fn identity(collector: &ClosedPort) -> LinkIdentity {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["agent.test".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    LinkIdentity {
        collector: collector.addr.to_string(),
        server_name: "collector.test".into(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        ca_pem: cert.pem(),
    }
}

fn assignment(version: u64, target: &str, public_only: bool) -> pb::Assignment {
    pb::Assignment {
        version,
        monitors: vec![pb::MonitorSpec {
            id: "local".into(),
            target: target.to_owned(),
            interval_ms: 1000,
            options: Some(pb::CheckOptions {
                timeout_ms: 500,
                ..Default::default()
            }),
        }],
        public_only,
    }
}

/// A listener on 127.0.0.1 that counts the connections it accepts.
async fn listener() -> (u16, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    (port, accepted, task)
}

/// A running link over `dir`'s buffer and saved assignment, with an engine
/// whose policy a public-only assignment tightens (as `run` builds it).
struct Running {
    buffer: Arc<SledBuffer>,
    status: watch::Receiver<LinkStatus>,
    switch: Arc<AtomicBool>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    started: SystemTime,
}

impl Running {
    fn start(dir: &std::path::Path, collector: &ClosedPort) -> Running {
        let buffer = Arc::new(SledBuffer::open(&dir.join("buffer"), DEFAULT_MAX_BYTES).unwrap());
        let switch = Arc::new(AtomicBool::new(false));
        let policy = Arc::new(Tightenable::new(Arc::new(AllowAll), Arc::clone(&switch)));
        let engine = Arc::new(Engine::new(
            Resolver::literal_only(),
            Registry::standard(),
            policy,
        ));
        let link = Link::new(
            identity(collector),
            Arc::clone(&buffer) as Arc<dyn ResultBuffer>,
            LinkConfig {
                append_linger: Duration::from_millis(1),
                ..LinkConfig::default()
            },
        )
        .with_public_only_switch(Arc::clone(&switch))
        .with_saved_assignment(SavedAssignment::in_dir(dir));
        let status = link.status();
        let (stop, stopped) = oneshot::channel::<()>();
        let started = SystemTime::now();
        let task = tokio::spawn(async move {
            link.run(engine, async {
                let _ = stopped.await;
            })
            .await
            .expect("the link stops cleanly");
        });
        Running {
            buffer,
            status,
            switch,
            stop: Some(stop),
            task,
            started,
        }
    }

    /// The buffered results, oldest first.
    fn results(&self) -> Vec<pb::CheckResult> {
        self.buffer
            .read_after(0, usize::MAX)
            .unwrap()
            .iter()
            .map(|r| pb::CheckResult::decode(&*r.payload).unwrap())
            .collect()
    }

    /// Waits (bounded) until `n` results are buffered.
    async fn wait_results(&self, n: usize, within: Duration) -> Vec<pb::CheckResult> {
        let deadline = Instant::now() + within;
        loop {
            let rs = self.results();
            if rs.len() >= n || Instant::now() >= deadline {
                return rs;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("the link stops within its grace")
            .unwrap();
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test]
async fn a_saved_assignment_runs_at_once_without_the_collector() {
    let dir = h::temp_dir();
    let collector = ClosedPort::on("127.0.0.1");
    let (port, accepted, server) = listener().await;
    SavedAssignment::in_dir(dir.path())
        .save(&assignment(5, &format!("tcp://127.0.0.1:{port}"), false))
        .unwrap();

    let agent = Running::start(dir.path(), &collector);
    let rs = agent.wait_results(2, Duration::from_secs(10)).await;
    let status = agent.status.borrow().clone();
    assert!(rs.len() >= 2, "{rs:?} {status:?}");
    assert_eq!(rs[0].monitor_id, "local");
    assert!(
        rs.iter().all(|r| r.status == pb::Status::Up as i32),
        "{rs:?}"
    );
    // Its first check at once (one monitor: phase 0), not after a connect.
    let first = rs[0].scheduled_at_unix_ms - unix_ms(agent.started);
    assert!(
        (0..500).contains(&first),
        "first check {first} ms after start: {:?}",
        rs.iter()
            .map(|r| (
                r.scheduled_at_unix_ms - unix_ms(agent.started),
                r.status,
                &r.message
            ))
            .collect::<Vec<_>>()
    );
    assert!(accepted.load(Ordering::SeqCst) >= 2);
    assert!(
        !status.connected && status.last_error.is_some(),
        "the collector was never reached: {status:?}"
    );
    assert_eq!(
        (status.assignment_version, status.monitors, status.restored),
        (5, 1, true),
        "the version Hello reports: {status:?}"
    );
    assert!(!agent.switch.load(Ordering::SeqCst));
    agent.stop().await;
    server.abort();
}

#[tokio::test]
async fn a_saved_public_only_flag_holds_before_the_first_check() {
    let dir = h::temp_dir();
    let collector = ClosedPort::on("127.0.0.1");
    let (port, accepted, server) = listener().await;
    SavedAssignment::in_dir(dir.path())
        .save(&assignment(6, &format!("tcp://127.0.0.1:{port}"), true))
        .unwrap();

    let agent = Running::start(dir.path(), &collector);
    let rs = agent.wait_results(2, Duration::from_secs(10)).await;
    assert!(rs.len() >= 2, "{rs:?}");
    for r in &rs {
        assert_eq!(
            (r.status, r.reason),
            (pb::Status::Down as i32, pb::Reason::BlockedAddress as i32),
            "{r:?}"
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "a public location restarted offline never reaches a private address"
    );
    assert!(agent.switch.load(Ordering::SeqCst));
    agent.stop().await;
    server.abort();
}

#[tokio::test]
async fn a_damaged_saved_assignment_is_ignored_and_the_agent_starts_empty() {
    let dir = h::temp_dir();
    let collector = ClosedPort::on("127.0.0.1");
    let saved = SavedAssignment::in_dir(dir.path());
    saved
        .save(&assignment(7, "tcp://127.0.0.1:9", false))
        .unwrap();
    let mut bytes = std::fs::read(saved.path()).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(saved.path(), &bytes).unwrap();

    let mut agent = Running::start(dir.path(), &collector);
    // Past the restore: the first connect attempt has failed.
    tokio::time::timeout(
        Duration::from_secs(10),
        agent.status.wait_for(|s| s.last_error.is_some()),
    )
    .await
    .expect("the link tried the collector")
    .unwrap();
    let status = agent.status.borrow_and_update().clone();
    assert_eq!(
        (status.assignment_version, status.monitors, status.restored),
        (0, 0, false),
        "{status:?}"
    );
    assert!(!agent.task.is_finished(), "the agent runs on");
    assert!(agent.results().is_empty());
    // The damaged file is left for the collector's next assignment to replace.
    assert_eq!(std::fs::read(saved.path()).unwrap(), bytes);
    agent.stop().await;
}

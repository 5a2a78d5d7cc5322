//! Incidents through the real `serve` wiring: a real agent link running the
//! real probe engine against a real Redis on loopback; Redis killed and
//! restarted, the agent's stream stopped, the agent revoked.
//!
//! Only 127.0.0.1 is ever contacted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use portwatch_agent::link::LinkConfig;
use portwatch_agent::probe::{AddressPolicy, AllowAll, Engine, Registry};
use portwatch_agent::resolve::Resolver;
use portwatch_collector::incident::{Incident, Kind};
use portwatch_harness::{free_tcp_port, redis};

mod support;

use support::{Running, RunningLink, start_from_file as start};

fn engine() -> Arc<Engine> {
    let policy: Arc<dyn AddressPolicy> = Arc::new(AllowAll);
    Arc::new(Engine::new(
        Resolver::literal_only(),
        Registry::standard(),
        policy,
    ))
}

/// Polls the engine until `f` finds something, at most `within`.
async fn wait_for<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn open_for(r: &Running, monitor: &str) -> Option<Incident> {
    r.collector
        .incidents
        .open_incidents()
        .into_iter()
        .find(|i| i.monitor == monitor)
}

fn state_of(r: &Running, monitor: &str) -> String {
    r.collector
        .incidents
        .status()
        .into_iter()
        .find(|s| s.monitor == monitor)
        .map(|s| s.state)
        .unwrap_or_default()
}

/// Redis killed: "refused" within interval x consecutive_down + 1 s of the
/// kill; restarted: resolved, and the stored incident tells the story.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_opens_an_incident_with_reason_refused_and_its_restart_resolves_it() {
    let dir = portwatch_harness::temp_dir();
    let port = free_tcp_port();
    let mut service = redis(dir.path(), port);
    let r = start(&format!(
        r#"public_probes = false
[[monitors]]
name = "redis"
target = "tcp://127.0.0.1:{port}"
preset = "redis"
interval = "1s"
timeout = "500ms"
locations = ["site-a"]
"#
    ))
    .await;
    let id = r.enroll("site-a", &[], None).await;
    let running = RunningLink::spawn(r.link("site-a", &id, LinkConfig::default()), engine());
    assert!(
        wait_for(Duration::from_secs(15), || (state_of(&r, "redis") == "up")
            .then_some(()))
        .await
        .is_some(),
        "redis never showed up: {:?}",
        r.collector.incidents.status()
    );

    service.kill();
    let killed = Instant::now();
    let inc = wait_for(Duration::from_secs(10), || open_for(&r, "redis"))
        .await
        .expect("no incident after redis was killed");
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_millis(1000 * 2 + 1000),
        "detected after {took:?}"
    );
    assert_eq!(inc.kind, Kind::Down);
    assert_eq!(inc.reason.as_deref(), Some("refused"));
    assert!(
        inc.diagnosis
            .starts_with("service down, seen from agent:site-a"),
        "{}",
        inc.diagnosis
    );
    assert_eq!(inc.locations.len(), 1);
    assert_eq!(state_of(&r, "redis"), "down");

    let mut service = redis(dir.path(), port);
    let resolved = wait_for(Duration::from_secs(10), || {
        let i = r
            .collector
            .results
            .incident(inc.id)
            .unwrap()
            .map(|row| portwatch_collector::incident::engine::parse(&row).unwrap())?;
        i.resolved_ms.map(|_| i)
    })
    .await
    .expect("the incident never resolved after redis came back");
    assert!(resolved.resolved_ms.unwrap() > resolved.opened_ms);
    assert!(resolved.since_ms <= resolved.opened_ms);
    assert_eq!(state_of(&r, "redis"), "up");
    service.assert_running();
    running.stop().await;
}

/// The agent's stream stops: one agent offline incident after the grace,
/// its monitors unknown (never down); revoked: an incident that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_is_one_offline_incident_and_its_monitors_go_unknown() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let r = start(&format!(
        r#"public_probes = false
agent_offline_after = "5s"
[[monitors]]
name = "svc"
target = "tcp://127.0.0.1:{port}"
interval = "1s"
timeout = "500ms"
locations = ["site-a"]
"#
    ))
    .await;
    let id = r.enroll("site-a", &[], None).await;
    let running = RunningLink::spawn(r.link("site-a", &id, LinkConfig::default()), engine());
    assert!(
        wait_for(Duration::from_secs(15), || (state_of(&r, "svc") == "up")
            .then_some(()))
        .await
        .is_some()
    );
    running.stop().await;
    let stopped = Instant::now();
    let offline = wait_for(Duration::from_secs(15), || open_for(&r, "agent:site-a"))
        .await
        .expect("no agent offline incident");
    assert!(
        stopped.elapsed() >= Duration::from_secs(4),
        "{:?}",
        stopped.elapsed()
    );
    assert_eq!(offline.kind, Kind::AgentOffline);
    assert_eq!(offline.reason.as_deref(), Some("disconnected"));
    // The monitor goes unknown once its results are stale (2 x 1 s + 15 s),
    // and never down.
    let unknown = wait_for(Duration::from_secs(25), || {
        let s = state_of(&r, "svc");
        assert_ne!(
            s, "down",
            "an agent that is away must not make its monitors down"
        );
        (s == "unknown").then_some(())
    })
    .await;
    assert!(unknown.is_some(), "{:?}", r.collector.incidents.status());
    let all = r
        .collector
        .results
        .incidents(&portwatch_collector::store::IncidentQuery::default())
        .unwrap();
    assert_eq!(
        all.len(),
        1,
        "one incident for the agent, none for its monitor"
    );

    // Revoked while away: the same incident now says why it will not come back.
    r.collector
        .agents
        .revoke("site-a", std::time::SystemTime::now())
        .unwrap();
    let revoked = wait_for(Duration::from_secs(5), || {
        open_for(&r, "agent:site-a").filter(|i| i.reason.as_deref() == Some("revoked"))
    })
    .await
    .expect("the offline incident never said revoked");
    assert_eq!(revoked.id, offline.id);
    assert!(
        revoked.diagnosis.contains("revoked"),
        "{}",
        revoked.diagnosis
    );
    assert_eq!(r.collector.incidents.open_incidents().len(), 1);
    drop(listener);
}

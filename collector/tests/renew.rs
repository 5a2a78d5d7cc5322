//! `Renew` through the real `serve` wiring: an enrolled agent trades a CSR for
//! a fresh key for a new certificate with the same identity, over its mTLS
//! connection; no certificate, a bad CSR or a revoked agent are refused.

use std::time::{Duration, SystemTime};

use portwatch_agent::identity::AgentIdentity;
use portwatch_collector::ca::agent_id_of;
use portwatch_collector::config::Config;
use portwatch_proto::v1 as pb;
use portwatch_proto::v1::agent_link_client::AgentLinkClient;
use tonic::Code;

mod support;

use support::{Running, RunningLink, start_with};

async fn start() -> Running {
    start_with(Config {
        agent_cert_lifetime: Duration::from_secs(3600),
        ..Config::default()
    })
    .await
}

async fn enrolled(r: &Running, name: &str) -> AgentIdentity {
    r.enroll(name, &[], None).await
}

fn csr() -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    rcgen::CertificateParams::new(vec!["someone-else".to_owned()])
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolled_agent_renews_with_a_fresh_key_and_keeps_its_identity() {
    let r = start().await;
    let id = enrolled(&r, "bastion-1").await;
    let before = r.collector.agents.get(id.agent_id()).unwrap().unwrap();
    let mut client = AgentLinkClient::new(r.channel(Some(&id)).await);
    let resp = client
        .renew(pb::RenewRequest { csr_der: csr() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        agent_id_of(&resp.cert_der).as_deref(),
        Some(id.agent_id()),
        "same identity, whatever the CSR asked"
    );
    assert!(resp.not_after_unix_ms >= before.cert_not_after_unix_ms);
    let after = r.collector.agents.get(id.agent_id()).unwrap().unwrap();
    assert_ne!(
        after.cert_serial, before.cert_serial,
        "the registry records the new certificate"
    );
    assert_eq!(after.cert_not_after_unix_ms, resp.not_after_unix_ms);

    // A CSR that is not one: a clear InvalidArgument, the old certificate still recorded.
    let err = client
        .renew(pb::RenewRequest {
            csr_der: b"garbage".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(
        r.collector
            .agents
            .get(id.agent_id())
            .unwrap()
            .unwrap()
            .cert_serial,
        after.cert_serial
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_needs_a_client_certificate_and_an_unrevoked_agent() {
    let r = start().await;
    let id = enrolled(&r, "bastion-2").await;
    let err = AgentLinkClient::new(r.channel(None).await)
        .renew(pb::RenewRequest { csr_der: csr() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    r.collector
        .agents
        .revoke("bastion-2", SystemTime::now())
        .unwrap();
    let err = AgentLinkClient::new(r.channel(Some(&id)).await)
        .renew(pb::RenewRequest { csr_der: csr() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("revoked"), "{err:?}");
}

/// A certificate that lives 4 s, renewed over the link while it streams:
/// after the first one has expired, a forced reconnect (which the old
/// certificate could no longer make) succeeds with the renewed one, and
/// results keep arriving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_renews_a_short_lived_certificate_mid_stream() {
    use portwatch_agent::link::LinkConfig;
    use portwatch_agent::probe::Engine;
    use portwatch_agent::resolve::Resolver;
    use std::sync::Arc;

    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = target.local_addr().unwrap().port();
    let mut config = Config::parse(
        &format!("[[monitors]]\nname = \"svc\"\ntarget = \"tcp://127.0.0.1:{port}\"\ninterval = \"1s\"\nlocations = [\"rot-1\"]\n"),
        "test",
    )
    .unwrap();
    config.agent_cert_lifetime = Duration::from_secs(4);
    let r = start_with(config).await;
    let id = enrolled(&r, "rot-1").await;
    let agent_dir = r.agent_dir("rot-1");
    let first_serial = r
        .collector
        .agents
        .get(id.agent_id())
        .unwrap()
        .unwrap()
        .cert_serial;

    let link = r.link(
        "rot-1",
        &id,
        LinkConfig {
            backoff_base: Duration::from_millis(50),
            ..LinkConfig::default()
        },
    );
    let running = RunningLink::spawn(
        link,
        Arc::new(Engine::with_resolver(Resolver::literal_only())),
    );
    let status = running.status.clone();

    let renewed = || {
        let now = r
            .collector
            .agents
            .get(id.agent_id())
            .unwrap()
            .unwrap()
            .cert_serial;
        now != first_serial
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !renewed() {
        assert!(
            std::time::Instant::now() < deadline,
            "no renewal within 10 s: {:?}",
            status.borrow().last_error
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Saved by the agent too (the collector records before it answers).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    // Load only once the agent finished its save (no `.next` file left and the
    // key replaced): `load` completes interrupted rotations, and running it
    // beside the writer would race it (the agent itself loads only at start).
    let settled = || {
        !agent_dir.join("agent.key.next").exists()
            && !agent_dir.join("agent.pem.next").exists()
            && std::fs::read_to_string(agent_dir.join("agent.key")).unwrap_or_default()
                != id.key_pem()
    };
    let reloaded = loop {
        if settled() {
            break AgentIdentity::load(&agent_dir).unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the renewed pair never reached the disk"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        reloaded.agent_id(),
        id.agent_id(),
        "same identity after rotation"
    );
    assert!(
        !agent_dir.join("agent.key.next").exists() && !agent_dir.join("agent.pem.next").exists()
    );

    // Let the first certificate expire, then force a reconnect: only the
    // renewed certificate can make it.
    let expired = id.cert_not_after() + Duration::from_secs(1);
    tokio::time::sleep(
        expired
            .duration_since(SystemTime::now())
            .unwrap_or_default(),
    )
    .await;
    let before = r.collector.results.count_results().unwrap();
    r.collector.ingest.close_all();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while r.collector.results.count_results().unwrap() < before + 3 {
        assert!(
            std::time::Instant::now() < deadline && !running.is_finished(),
            "no results after the reconnect: {:?}",
            status.borrow().last_error
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.stop().await;
}

/// `agent rotate`: the collector's RotateHint makes a live agent renew at once,
/// long before its own timer (70-90 % of a 1 h certificate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_hint_renews_a_live_agent_at_once() {
    use portwatch_agent::link::LinkConfig;
    use portwatch_agent::probe::Engine;
    use portwatch_agent::resolve::Resolver;
    use std::sync::Arc;

    let r = start().await;
    let id = enrolled(&r, "hinted").await;
    let serial = |r: &Running| {
        r.collector
            .agents
            .get(id.agent_id())
            .unwrap()
            .unwrap()
            .cert_serial
    };
    let first = serial(&r);
    assert!(
        !r.collector.ingest.hint_rotation(id.agent_id(), "test"),
        "no stream yet: nothing to hint"
    );
    let link = r.link("hinted", &id, LinkConfig::default());
    let running = RunningLink::spawn(
        link,
        Arc::new(Engine::with_resolver(Resolver::literal_only())),
    );
    let status = running.status.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !status.borrow().connected {
        assert!(std::time::Instant::now() < deadline, "never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(r.collector.ingest.hint_rotation(id.agent_id(), "test"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while serial(&r) == first {
        assert!(
            std::time::Instant::now() < deadline,
            "the hint did not renew the certificate"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop().await;
}

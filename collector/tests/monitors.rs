//! Monitors as code through the real `serve` wiring: the config file is
//! watched and reloaded, API changes are live, and each change reaches only
//! the agents whose locations select it. The public location runs the same
//! engine in-process and refuses private targets unless told otherwise.
//!
//! Only 127.0.0.1 is ever contacted.

use std::path::Path;
use std::time::{Duration, Instant};

use portwatch_agent::identity::AgentIdentity;
use portwatch_collector::monitors::RawMonitor;
use portwatch_collector::store::{EventQuery, ResultQuery, StoredResult};
use portwatch_proto::v1 as pb;
use portwatch_proto::v1::agent_link_client::AgentLinkClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

mod support;

use support::{Running, RunningLink, start_from_file as start};

/// An agent stream that only says hello and records every assignment it is sent.
struct Listener {
    assignments: mpsc::UnboundedReceiver<pb::Assignment>,
    _tx: mpsc::Sender<pb::AgentMessage>,
}

impl Listener {
    async fn open(r: &Running, id: &AgentIdentity) -> Listener {
        let channel = r.channel(Some(id)).await;
        let (tx, rx) = mpsc::channel(8);
        tx.send(pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
                agent_version: "test".into(),
                assignment_version: 0,
                backlog: 0,
                buffer_epoch: 1,
            })),
        })
        .await
        .unwrap();
        let mut inbound = AgentLinkClient::new(channel)
            .session(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let (atx, arx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                if let Some(pb::collector_message::Msg::Assignment(a)) = m.msg {
                    let _ = atx.send(a);
                }
            }
        });
        Listener {
            assignments: arx,
            _tx: tx,
        }
    }

    async fn next(&mut self, within: Duration) -> pb::Assignment {
        tokio::time::timeout(within, self.assignments.recv())
            .await
            .expect("an assignment in time")
            .expect("the stream is open")
    }

    fn none_pending(&mut self) -> Option<pb::Assignment> {
        self.assignments.try_recv().ok()
    }
}

fn ids(a: &pb::Assignment) -> Vec<&str> {
    a.monitors.iter().map(|m| m.id.as_str()).collect()
}

fn redis_monitor(interval: &str) -> String {
    format!(
        "[[monitors]]\nname = \"fra-redis\"\ntarget = \"tcp://127.0.0.1:6379\"\ninterval = \"{interval}\"\nlocations = [\"site=fra\"]\n\n[[monitors]]\nname = \"ams-pg\"\ntarget = \"tcp://127.0.0.1:5432\"\ninterval = \"1h\"\npreset = \"postgres\"\nlocations = [\"site=ams\"]\n"
    )
}

fn rewrite(path: &Path, text: &str) {
    // Write then rename, as editors and config management do.
    let tmp = path.with_extension("toml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_only_the_agents_they_select() {
    let r = start(&format!("public_probes = false\n{}", redis_monitor("1h"))).await;
    let fra_id = r.enroll("bastion-fra", &[("site", "fra")], None).await;
    let ams_id = r.enroll("bastion-ams", &[("site", "ams")], None).await;
    let mut fra = Listener::open(&r, &fra_id).await;
    let mut ams = Listener::open(&r, &ams_id).await;
    let fra_v1 = fra.next(Duration::from_secs(5)).await;
    let ams_v1 = ams.next(Duration::from_secs(5)).await;
    assert_eq!(ids(&fra_v1), ["fra-redis"]);
    assert_eq!(ids(&ams_v1), ["ams-pg"]);

    // The file changes fra's monitor: fra gets it (the file is polled every 2 s).
    rewrite(
        &r.config_path(),
        &format!("public_probes = false\n{}", redis_monitor("10s")),
    );
    let fra_v2 = fra.next(Duration::from_secs(6)).await;
    assert_ne!(fra_v2.version, fra_v1.version);
    assert_eq!(fra_v2.monitors[0].interval_ms, 10_000);

    // A broken file changes nothing, and says where it is broken.
    rewrite(
        &r.config_path(),
        &format!(
            "public_probes = false\n{}\n[[monitors]]\nname = \"bad\"\ntarget = \"tcp://127.0.0.1:0\"\nlocations = [\"site=fra\"]\n",
            redis_monitor("5s")
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(6);
    let status = loop {
        let s = r.collector.monitors.reload_status();
        if !s.ok {
            break s;
        }
        assert!(Instant::now() < deadline, "the broken file was never read");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = status.error.unwrap();
    assert!(
        error.contains("collector.toml:15: monitors[2] (\"bad\").target"),
        "{error}"
    );
    assert_eq!(
        r.collector.monitors.get("fra-redis").unwrap().interval(),
        Duration::from_secs(10),
        "the last good set keeps running"
    );
    // Both reloads are in the audit log: what changed, what was refused and why.
    let audit = r
        .collector
        .results
        .events(&EventQuery {
            from_ms: i64::MIN,
            to_ms: i64::MAX,
            kind: Some("audit".into()),
            limit: 100,
        })
        .unwrap();
    let actions: Vec<serde_json::Value> = audit
        .iter()
        .map(|(_, e)| serde_json::from_str(&e.body).unwrap())
        .collect();
    assert_eq!(actions[0]["action"], "config.apply", "{actions:?}");
    assert_eq!(actions[0]["detail"]["changed"][0], "fra-redis");
    assert_eq!(actions[1]["action"], "config.reject", "{actions:?}");
    assert!(
        actions[1]["detail"]["problems"][0]
            .as_str()
            .unwrap()
            .contains("monitors[2] (\"bad\").target"),
        "{actions:?}"
    );

    // An API monitor for ams and the public location: ams only.
    let (_, created) = r
        .collector
        .monitors
        .upsert(RawMonitor {
            name: "ams-ssh".into(),
            target: "tcp://127.0.0.1:22".into(),
            locations: vec!["site=ams".into(), "public".into()],
            preset: Some("ssh".into()),
            ..Default::default()
        })
        .unwrap();
    assert!(created);
    let ams_v2 = ams.next(Duration::from_secs(5)).await;
    assert_eq!(ids(&ams_v2), ["ams-pg", "ams-ssh"]);

    // Give every pending push time to arrive, then check that nothing else came.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fra.none_pending(),
        None,
        "fra got a change that was not its own"
    );
    assert_eq!(ams.none_pending(), None, "ams got a push with nothing new");
}

fn stored(r: &Running, monitor: &str, location: &str) -> Vec<StoredResult> {
    r.collector
        .results
        .results(&ResultQuery::monitor(monitor).location(location))
        .unwrap()
}

async fn public_results(
    r: &Running,
    monitor: &str,
    source: &str,
    n: usize,
) -> Vec<pb::CheckResult> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = stored(r, monitor, source);
        if got.len() >= n {
            return got.into_iter().map(|s| s.result).collect();
        }
        assert!(Instant::now() < deadline, "no public results for {source}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_probes_refuse_private_targets_and_say_to_use_an_agent() {
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    target.set_nonblocking(true).unwrap();
    let port = target.local_addr().unwrap().port();
    let r = start(&format!(
        "public_region = \"eu-test\"\n[[monitors]]\nname = \"loop\"\ntarget = \"tcp://127.0.0.1:{port}\"\ninterval = \"1s\"\nlocations = [\"public\"]\n"
    ))
    .await;
    let results = public_results(&r, "loop", "public:eu-test", 2).await;
    for res in &results {
        assert_eq!(res.monitor_id, "loop");
        assert_eq!(res.status, pb::Status::Down as i32);
        assert_eq!(res.reason, pb::Reason::BlockedAddress as i32);
        assert!(
            res.message.contains("127.0.0.0/8") && res.message.contains("from an agent"),
            "{}",
            res.message
        );
    }
    assert!(
        target.accept().is_err(),
        "a blocked target must never see a connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_private_targets_lets_public_probes_reach_a_lab() {
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = target.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = target.accept().await {
            drop(s);
        }
    });
    let r = start(&format!(
        "allow_private_targets = true\n[[monitors]]\nname = \"lab\"\ntarget = \"tcp://127.0.0.1:{port}\"\ninterval = \"1s\"\nlocations = [\"public:collector\"]\n"
    ))
    .await;
    let results = public_results(&r, "lab", "public:collector", 2).await;
    assert!(
        results
            .iter()
            .all(|res| res.status == pb::Status::Up as i32 && res.monitor_id == "lab"),
        "{results:?}"
    );
    // Sequence numbers continue, never repeat.
    let seqs: Vec<u64> = stored(&r, "lab", "public:collector")
        .iter()
        .map(|s| s.seq)
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // Removing the monitor from the public location stops its checks.
    rewrite(&r.config_path(), "allow_private_targets = true\n");
    let deadline = Instant::now() + Duration::from_secs(6);
    while r.collector.monitors.get("lab").is_some() {
        assert!(Instant::now() < deadline, "the file change was not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let settled = stored(&r, "lab", "public:collector").len();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        stored(&r, "lab", "public:collector").len(),
        settled,
        "a removed monitor keeps running"
    );
}

/// An agent enrolled as a public location (another cloud) runs the monitors
/// selecting its region, stores under `public:<region>`, and is told to refuse
/// private addresses like the collector's own public probes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_enrolled_as_a_public_region_runs_public_monitors_under_the_public_policy() {
    use portwatch_agent::link::LinkConfig;
    use portwatch_agent::probe::policy::Tightenable;
    use portwatch_agent::probe::{AddressPolicy, AllowAll, Engine, Registry};
    use portwatch_agent::resolve::Resolver;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    target.set_nonblocking(true).unwrap();
    let port = target.local_addr().unwrap().port();
    let r = start(&format!(
        "public_probes = false\n[[monitors]]\nname = \"edge\"\ntarget = \"tcp://127.0.0.1:{port}\"\ninterval = \"1s\"\nlocations = [\"public:eu-cloud\"]\n"
    ))
    .await;
    let id = r.enroll("cloud-probe", &[], Some("eu-cloud")).await;
    let switch = Arc::new(AtomicBool::new(false));
    let policy: Arc<dyn AddressPolicy> =
        Arc::new(Tightenable::new(Arc::new(AllowAll), Arc::clone(&switch)));
    let engine = Arc::new(Engine::new(
        Resolver::literal_only(),
        Registry::standard(),
        policy,
    ));
    let link = r
        .link("cloud-probe", &id, LinkConfig::default())
        .with_public_only_switch(Arc::clone(&switch));
    let running = RunningLink::spawn(link, engine);
    let results = public_results(&r, "edge", "public:eu-cloud", 2).await;
    assert!(switch.load(std::sync::atomic::Ordering::Acquire));
    for res in &results {
        assert_eq!(res.reason, pb::Reason::BlockedAddress as i32, "{res:?}");
        assert!(res.message.contains("127.0.0.0/8"), "{}", res.message);
    }
    assert!(target.accept().is_err(), "the target was dialled");
    running.stop().await;
}

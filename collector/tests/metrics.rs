//! `/metrics`, `/healthz` and `/readyz` of a real collector with a really
//! enrolled agent checking real loopback ports: what Prometheus scrapes,
//! parsed by a Prometheus text-format parser.
//!
//! Only 127.0.0.1 is ever contacted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use portwatch_agent::link::LinkConfig;
use portwatch_agent::probe::{AddressPolicy, AllowAll, Engine, Registry};
use portwatch_agent::resolve::Resolver;
use portwatch_collector::admin::AdminToken;

mod support;

use support::{RunningLink, start_from_file as start};

fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_blackbox_compatible_series_and_the_collectors_health() {
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open_port = open.local_addr().unwrap().port();
    let closed_port = portwatch_harness::free_tcp_port();
    let r = start(&format!(
        r#"public_probes = false
[[monitors]]
name = "svc"
target = "tcp://127.0.0.1:{open_port}"
interval = "1s"
locations = ["site-a"]

[[monitors]]
name = "gone"
target = "tcp://127.0.0.1:{closed_port}"
interval = "1s"
timeout = "500ms"
locations = ["site-a"]
"#
    ))
    .await;
    let id = r.enroll("site-a", &[], None).await;
    let policy: Arc<dyn AddressPolicy> = Arc::new(AllowAll);
    let engine = Arc::new(Engine::new(
        Resolver::literal_only(),
        Registry::standard(),
        policy,
    ));
    let running = RunningLink::spawn(r.link("site-a", &id, LinkConfig::default()), engine);
    let data = r.dir.path().join("collector");
    let discovery = r.discovery().await;
    let token = AdminToken::read(&data.join("admin.token")).unwrap();
    let url = discovery.url.clone();
    let secret = token.secret().to_owned();
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let get = |path: &str, auth: bool| {
            let mut req = agent.get(&format!("{url}{path}"));
            if auth {
                req = req.header("Authorization", &format!("Bearer {secret}"));
            }
            let mut resp = req.call().unwrap();
            let status = resp.status().as_u16();
            let ctype = resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap_or("").to_owned())
                .unwrap_or_default();
            (
                status,
                ctype,
                resp.body_mut().read_to_string().unwrap_or_default(),
            )
        };
        assert_eq!(get("/healthz", false).0, 200);
        assert_eq!(get("/readyz", false).0, 200);
        assert_eq!(
            get("/metrics", false).0,
            401,
            "metrics need the token by default"
        );
        // Until both monitors have a result from the agent.
        let deadline = Instant::now() + Duration::from_secs(20);
        let (ctype, scrape, text) = loop {
            let (status, ctype, text) = get("/metrics", true);
            assert_eq!(status, 200, "{text}");
            let scrape =
                prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
            let have = |m: &str| value(&scrape, "probe_success", &[("monitor", m)]).is_some();
            if have("svc") && have("gone") {
                break (ctype, scrape, text);
            }
            assert!(Instant::now() < deadline, "{text}");
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
        fn at(m: &str) -> [(&str, &str); 2] {
            [("monitor", m), ("location", "agent:site-a")]
        }
        assert_eq!(
            value(&scrape, "probe_success", &at("svc")),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(&scrape, "probe_success", &at("gone")),
            Some(0.0),
            "{text}"
        );
        assert_eq!(value(&scrape, "probe_ip_protocol", &at("svc")), Some(4.0));
        let d = value(&scrape, "probe_duration_seconds", &at("svc")).unwrap();
        assert!(d > 0.0 && d < 1.0, "{d}");
        let target = format!("tcp://127.0.0.1:{open_port}");
        assert_eq!(
            value(
                &scrape,
                "probe_success",
                &[("monitor", "svc"), ("target", &target)]
            ),
            Some(1.0)
        );
        assert!(
            value(
                &scrape,
                "portwatch_probe_phase_seconds",
                &[("monitor", "svc"), ("phase", "connect")]
            )
            .is_some()
        );
        assert_eq!(
            value(
                &scrape,
                "portwatch_probe_status",
                &[
                    ("monitor", "gone"),
                    ("status", "down"),
                    ("reason", "refused")
                ]
            ),
            Some(1.0)
        );
        assert_eq!(value(&scrape, "portwatch_agents_connected", &[]), Some(1.0));
        assert_eq!(
            value(&scrape, "portwatch_agent_connected", &[("agent", "site-a")]),
            Some(1.0)
        );
        assert!(
            value(
                &scrape,
                "portwatch_agent_results_stored_total",
                &[("agent", "site-a")]
            )
            .unwrap()
                >= 2.0
        );
        assert!(
            value(
                &scrape,
                "portwatch_agent_cert_expiry_timestamp_seconds",
                &[("agent", "site-a")]
            )
            .unwrap()
                > 1.7e9
        );
    })
    .await
    .unwrap();
    running.stop().await;
    drop(open);
}

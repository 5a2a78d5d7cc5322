//! Maintenance on every face, with a real collector, a really enrolled
//! agent and two real Redis servers killed by PID: the one inside a
//! maintenance window is "under maintenance" on the public status page (not
//! a current incident) and its uptime is 100 % with the window left out and
//! said so (API, dashboard, status page); the one killed outside any window
//! is a current incident and its downtime counts. Once the window is over,
//! the first one is a current incident too and its downtime after the window
//! counts.
//!
//! Only 127.0.0.1 is ever contacted.

use std::sync::Arc;
use std::time::Duration;

use portwatch_agent::link::LinkConfig;
use portwatch_agent::probe::{AddressPolicy, AllowAll, Engine, Registry};
use portwatch_agent::resolve::Resolver;
use portwatch_collector::admin::AdminToken;
use portwatch_collector::http::uptime::UptimeReport;
use portwatch_collector::store::{MINUTE_MS, Sample};
use portwatch_harness::wait_for;
use portwatch_proto::v1 as pb;

mod support;

use support::{RunningLink, start_from_file as start};

fn now_ms() -> i64 {
    portwatch_collector::state::unix_ms(std::time::SystemTime::now())
}

/// `GET url+path` with the admin token: (status, body).
fn get(url: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = agent.get(&format!("{url}{path}"));
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut resp = req.call().unwrap();
    (
        resp.status().as_u16(),
        resp.body_mut().read_to_string().unwrap_or_default(),
    )
}

fn uptime(url: &str, token: &str, monitor: &str, from: i64, to: i64) -> UptimeReport {
    let (status, body) = get(
        url,
        &format!("/api/v1/uptime?monitor={monitor}&from={from}&to={to}"),
        Some(token),
    );
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The part of a page from `<h2>title</h2>` to the next heading.
fn section<'a>(body: &'a str, title: &str) -> Option<&'a str> {
    let start = body.find(&format!("<h2>{title}</h2>"))?;
    let rest = &body[start + title.len() + 9..];
    Some(&rest[..rest.find("<h2>").unwrap_or(rest.len())])
}

/// One monitor's row of the status page's group: from its name to the next.
fn service<'a>(body: &'a str, monitor: &str) -> &'a str {
    let group = section(body, "Services").expect("the Services group");
    let start = group
        .find(&format!("<b>{monitor}</b>"))
        .unwrap_or_else(|| panic!("{monitor} in the group:\n{group}"));
    let rest = &group[start..];
    &rest[..rest.find("class=\"svc\"").unwrap_or(rest.len())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_down_inside_a_window_is_maintenance_on_every_face_and_outside_it_is_not() {
    let dir = portwatch_harness::temp_dir();
    let (p1, p2) = (
        portwatch_harness::free_tcp_port(),
        portwatch_harness::free_tcp_port(),
    );
    let mut patched = portwatch_harness::redis(dir.path(), p1);
    let mut unplanned = portwatch_harness::redis(dir.path(), p2);
    for (svc, port) in [(&mut patched, p1), (&mut unplanned, p2)] {
        svc.wait_tcp(
            format!("127.0.0.1:{port}").parse().unwrap(),
            Duration::from_secs(10),
        );
    }
    let r = start(&format!(
        r#"public_probes = false
[[monitors]]
name = "patched"
target = "tcp://127.0.0.1:{p1}"
interval = "1s"
timeout = "500ms"
locations = ["site-a"]
tags = ["cache"]

[[monitors]]
name = "unplanned"
target = "tcp://127.0.0.1:{p2}"
interval = "1s"
timeout = "500ms"
locations = ["site-a"]
"#
    ))
    .await;
    // Two hours of up checks for both, ending minutes ago, as the agent
    // would have delivered them: the figures have time outside the window.
    let t0 = now_ms();
    let history_from = t0 - 125 * MINUTE_MS;
    let mut samples = Vec::new();
    for (i, ts) in (history_from..t0 - 5 * MINUTE_MS)
        .step_by(30_000)
        .enumerate()
    {
        for monitor in ["patched", "unplanned"] {
            samples.push(Sample {
                monitor_id: monitor.into(),
                location: "agent:site-a".into(),
                seq: samples.len() as u64 + 1,
                result: pb::CheckResult {
                    monitor_id: monitor.into(),
                    scheduled_at_unix_ms: ts,
                    started_at_unix_ms: ts,
                    status: pb::Status::Up as i32,
                    phases: Some(pb::Phases {
                        connect_us: Some(200 + i as u64 % 50),
                        total_us: 300,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            });
        }
    }
    let store = r.collector.results.clone();
    store.ingest("history", 0, t0, &samples, &[]).unwrap();

    let id = r.enroll("site-a", &[], None).await;
    let policy: Arc<dyn AddressPolicy> = Arc::new(AllowAll);
    let engine = Arc::new(Engine::new(
        Resolver::literal_only(),
        Registry::standard(),
        policy,
    ));
    let running = RunningLink::spawn(r.link("site-a", &id, LinkConfig::default()), engine);
    let url = r.discovery().await.url;
    let token = AdminToken::read(&r.dir.path().join("collector/admin.token"))
        .unwrap()
        .secret()
        .to_owned();

    tokio::task::spawn_blocking(move || {
        let statuses = || -> serde_json::Value {
            let (status, body) = get(&url, "/api/v1/status", Some(&token));
            assert_eq!(status, 200, "{body}");
            serde_json::from_str(&body).unwrap()
        };
        let state = |all: &serde_json::Value, m: &str| -> (String, bool) {
            let s = all
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["monitor"] == m)
                .unwrap_or_else(|| panic!("{m} in {all}"));
            (
                s["state"].as_str().unwrap().to_owned(),
                s["incident"].is_u64(),
            )
        };
        assert!(
            wait_for(Duration::from_secs(30), || {
                let all = statuses();
                (state(&all, "patched").0 == "up" && state(&all, "unplanned").0 == "up")
                    .then_some(())
            })
            .is_some(),
            "both up from the agent: {}",
            statuses()
        );

        // A window over `patched` that began 10 s ago and lasts a minute;
        // then both services die.
        let start_ms = (now_ms() - 10_000) / 1000 * 1000;
        let end_ms = start_ms + MINUTE_MS;
        let window = serde_json::json!({
            "name": "cache-patch",
            "reason": "kernel update",
            "tags": ["cache"],
            "start": jiff::Timestamp::from_millisecond(start_ms).unwrap().to_string(),
            "duration": "1m",
        });
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut resp = agent
            .post(&format!("{url}/api/v1/maintenance"))
            .header("Authorization", &format!("Bearer {token}"))
            .send_json(&window)
            .unwrap();
        assert_eq!(
            resp.status().as_u16(),
            201,
            "{}",
            resp.body_mut().read_to_string().unwrap_or_default()
        );
        patched.kill();
        unplanned.kill();

        // Both fail; the engine records an incident for each.
        assert!(
            wait_for(Duration::from_secs(30), || {
                let all = statuses();
                (state(&all, "patched") == ("maintenance".into(), true)
                    && state(&all, "unplanned") == ("down".into(), true))
                    .then_some(())
            })
            .is_some(),
            "an incident each, patched in maintenance: {}",
            statuses()
        );
        assert!(now_ms() < end_ms, "still inside the window");

        // The API: the window left out (uptime to the window's end is
        // 100 %), the unplanned outage counted.
        store.roll_up(now_ms()).unwrap();
        let p = uptime(&url, &token, "patched", history_from, end_ms);
        assert_eq!(p.uptime, Some(1.0), "{p:?}");
        assert_eq!(p.failures, 0);
        assert!(p.checks >= 200, "the history counts: {p:?}");
        assert_eq!(
            p.maintenance_excluded_ms, MINUTE_MS,
            "the whole window lies in the range"
        );
        assert_eq!(p.maintenance.len(), 1);
        assert_eq!(
            (p.maintenance[0].start_ms, p.maintenance[0].end_ms),
            (start_ms, end_ms)
        );
        let u = uptime(&url, &token, "unplanned", history_from, now_ms() + 1);
        assert!(u.failures > 0 && u.uptime < Some(1.0), "{u:?}");
        assert_eq!(u.maintenance_excluded_ms, 0);
        assert!(u.maintenance.is_empty());

        // The dashboard says the same, and that maintenance was excluded.
        let (_, page) = get(&url, "/monitors/patched", Some(&token));
        let excluded = &page[page
            .find("maintenance excluded")
            .unwrap_or_else(|| panic!("the excluded row:\n{page}"))..];
        assert!(
            !excluded[..excluded.find("</tr>").unwrap()].contains("none"),
            "maintenance was excluded in every period:\n{excluded}"
        );
        let all_locations = &page[page.find("all locations</b>").unwrap()..];
        assert!(
            all_locations[..all_locations.find("</tr>").unwrap()].contains("<b>100 %</b>"),
            "{all_locations}"
        );
        let (_, page) = get(&url, "/monitors/unplanned", Some(&token));
        let all_locations = &page[page.find("all locations</b>").unwrap()..];
        assert!(
            !all_locations[..all_locations.find("</tr>").unwrap()].contains("<b>100 %</b>"),
            "the unplanned outage counts:\n{all_locations}"
        );
        let (_, grid) = get(&url, "/", Some(&token));
        let row = &grid[grid.find("href=\"/monitors/patched\"").unwrap()..];
        let row = &row[..row.find("</tr>").unwrap()];
        assert!(row.contains("100 %") && row.contains("excl. "), "{row}");

        // The public page: patched is under maintenance, not an incident;
        // unplanned is the current incident. (The page is cached for 10 s.)
        let page = wait_for(Duration::from_secs(25), || {
            let (_, body) = get(&url, "/status", None);
            section(&body, "Current incidents")
                .is_some_and(|s| s.contains("<b>unplanned</b>"))
                .then_some(body)
        })
        .expect("unplanned as a current incident on /status");
        assert!(now_ms() < end_ms, "the page was made inside the window");
        let current = section(&page, "Current incidents").unwrap();
        assert!(
            !current.contains("patched"),
            "no incident of a monitor in maintenance is current:\n{current}"
        );
        let scheduled = section(&page, "Scheduled maintenance").expect("the window");
        assert!(
            scheduled.contains("<b>patched</b>")
                && scheduled.contains("under maintenance")
                && scheduled.contains("cache-patch"),
            "{scheduled}"
        );
        let row = service(&page, "patched");
        assert!(
            row.contains("st st-maintenance") && row.contains("under maintenance"),
            "{row}"
        );
        assert!(
            row.contains("100 % uptime (excluding"),
            "the 90-day figure says maintenance was left out:\n{row}"
        );
        let row = service(&page, "unplanned");
        assert!(row.contains("st st-down"), "{row}");
        assert!(!row.contains("excluding"), "{row}");
        assert!(
            page.contains("Partial outage") || page.contains("Major outage"),
            "unplanned is an outage"
        );

        // The window ends with patched still down: now it is an incident,
        // and its downtime after the window counts.
        let page = wait_for(Duration::from_secs(90), || {
            let (_, body) = get(&url, "/status", None);
            section(&body, "Current incidents")
                .is_some_and(|s| s.contains("<b>patched</b>"))
                .then_some(body)
        })
        .expect("patched as a current incident after the window");
        assert!(now_ms() >= end_ms);
        assert!(service(&page, "patched").contains("st st-down"));
        let after = wait_for(Duration::from_secs(90), || {
            store.roll_up(now_ms()).unwrap();
            let p = uptime(&url, &token, "patched", history_from, now_ms() + 1);
            (p.failures > 0).then_some(p)
        })
        .expect("failed checks after the window counted");
        assert!(after.uptime < Some(1.0), "{after:?}");
        assert_eq!(after.maintenance_excluded_ms, MINUTE_MS);
    })
    .await
    .unwrap();
    running.stop().await;
}

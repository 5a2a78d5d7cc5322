//! The dashboard and the public status page of a real collector, with a
//! really enrolled agent checking real loopback ports and a week of stored
//! history: sign-in, the grid, charts, incidents, agents, maintenance from
//! the UI (with its CSRF token), escaping of every user-supplied text, and
//! what the public page hides.
//!
//! Only 127.0.0.1 is ever contacted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use portwatch_agent::link::LinkConfig;
use portwatch_agent::probe::{AddressPolicy, AllowAll, Engine, Registry};
use portwatch_agent::resolve::Resolver;
use portwatch_collector::admin::AdminToken;
use portwatch_collector::store::{HOUR_MS, Sample};
use portwatch_proto::v1 as pb;

mod support;

use support::{RunningLink, start_from_file as start};

struct Page {
    status: u16,
    location: Option<String>,
    set_cookie: Option<String>,
    csp: Option<String>,
    body: String,
}

/// A plain HTTP client that shows redirects instead of following them.
struct Browser {
    agent: ureq::Agent,
    url: String,
    cookie: Option<String>,
}

impl Browser {
    fn new(url: &str) -> Browser {
        Browser {
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(0)
                .build()
                .into(),
            url: url.to_owned(),
            cookie: None,
        }
    }

    fn read(mut resp: ureq::http::Response<ureq::Body>) -> Page {
        let h = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (location, set_cookie, csp) =
            (h("location"), h("set-cookie"), h("content-security-policy"));
        Page {
            status: resp.status().as_u16(),
            location,
            set_cookie,
            csp,
            body: resp.body_mut().read_to_string().unwrap_or_default(),
        }
    }

    fn get(&self, path: &str) -> Page {
        let mut req = self.agent.get(&format!("{}{path}", self.url));
        if let Some(c) = &self.cookie {
            req = req.header("Cookie", c);
        }
        Self::read(req.call().unwrap())
    }

    fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        let mut req = self.agent.post(&format!("{}{path}", self.url));
        if let Some(c) = &self.cookie {
            req = req.header("Cookie", c);
        }
        Self::read(req.send_form(form.iter().copied()).unwrap())
    }
}

/// The CSRF token the page's forms carry.
fn csrf(body: &str) -> String {
    let at = body
        .find("name=\"csrf\" value=\"")
        .expect("a form with a csrf token")
        + 19;
    body[at..at + body[at..].find('"').unwrap()].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_real_results_behind_sign_in_and_the_status_page_hides_targets() {
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
tags = ["db", "<b>bold</b>"]
owner = "<script>alert('owner')</script>"

[[monitors]]
name = "gone"
target = "tcp://127.0.0.1:{closed_port}"
interval = "1s"
timeout = "500ms"
locations = ["site-a"]
"#
    ))
    .await;
    // A week of history for svc, as another source would have delivered
    // it: every 10 min, connect 2-4 ms, and a failed hour two days ago.
    let now = now_ms();
    let week_ago = now - 7 * 24 * HOUR_MS;
    let samples: Vec<Sample> = (0..(7 * 24 * 6))
        .map(|i| {
            let ts = week_ago + i * 600_000;
            let failed = (now - 2 * 24 * HOUR_MS..now - 47 * HOUR_MS).contains(&ts);
            Sample {
                monitor_id: "svc".into(),
                location: "agent:site-a".into(),
                seq: i as u64 + 1,
                result: pb::CheckResult {
                    monitor_id: "svc".into(),
                    scheduled_at_unix_ms: ts,
                    started_at_unix_ms: ts,
                    status: if failed {
                        pb::Status::Down
                    } else {
                        pb::Status::Up
                    } as i32,
                    reason: if failed {
                        pb::Reason::Refused as i32
                    } else {
                        0
                    },
                    phases: Some(pb::Phases {
                        connect_us: (!failed).then_some(2_000 + (i as u64 % 3) * 1_000),
                        total_us: 3_000,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            }
        })
        .collect();
    let store = r.collector.results.clone();
    store
        .ingest("history", 0, now, &samples, &[])
        .expect("history stored");

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
    let secret = token.secret().to_owned();
    let url = discovery.url.clone();

    tokio::task::spawn_blocking(move || {
        let mut b = Browser::new(&url);

        // Signed out: every page sends to the sign-in page and back.
        let p = b.get("/monitors/svc?range=7d");
        assert_eq!(p.status, 303);
        assert_eq!(
            p.location.as_deref(),
            Some("/login?next=%2Fmonitors%2Fsvc%3Frange%3D7d"),
            "comes back to the page after sign-in"
        );
        for path in ["/", "/agents", "/incidents", "/maintenance", "/incidents/1"] {
            assert_eq!(b.get(path).status, 303, "{path}");
        }
        let login = b.get("/login?next=/agents");
        assert_eq!(login.status, 200);
        assert!(login.body.contains("type=\"password\""));
        let wrong = b.post("/login", &[("token", "not-the-token"), ("next", "/")]);
        assert_eq!(wrong.status, 401);
        assert!(wrong.body.contains("not the admin token"));
        assert!(wrong.set_cookie.is_none());
        let evil = b.post(
            "/login",
            &[("token", &secret), ("next", "//evil.example/x")],
        );
        assert_eq!(evil.location.as_deref(), Some("/"), "no open redirect");
        let ok = b.post("/login", &[("token", &secret), ("next", "/agents")]);
        assert_eq!(ok.status, 303);
        assert_eq!(ok.location.as_deref(), Some("/agents"));
        let cookie = ok.set_cookie.expect("a session cookie");
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        assert!(
            !cookie.contains("Secure"),
            "plain http on localhost: a Secure cookie would never come back"
        );
        assert!(!cookie.contains(&secret), "the token is not the cookie");
        b.cookie = Some(cookie.split(';').next().unwrap().to_owned());

        // The grid, once the agent's results made svc up and gone down.
        let deadline = Instant::now() + Duration::from_secs(25);
        let grid = loop {
            let p = b.get("/");
            assert_eq!(p.status, 200);
            if p.body.contains("cell down")
                && p.body.contains("cell up")
                && p.body.contains("class=\"diag\"")
            {
                break p;
            }
            assert!(
                Instant::now() < deadline,
                "no up and down cells with a diagnosis:\n{}",
                p.body
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        let csp = grid.csp.expect("a content security policy");
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
        assert!(
            grid.body.contains("href=\"/monitors/svc\"")
                && grid.body.contains("href=\"/monitors/gone\"")
        );
        assert!(
            grid.body.contains("title=\"agent:site-a\""),
            "a column per location"
        );
        assert!(grid.body.contains("class=\"spark\""), "latency sparklines");
        assert!(
            grid.body.contains("service down, seen from agent:site-a"),
            "the diagnosis:\n{}",
            grid.body
        );
        // Worst first.
        assert!(
            grid.body.find("/monitors/gone").unwrap() < grid.body.find("/monitors/svc").unwrap()
        );
        assert!(!grid.body.contains("<b>bold</b>"), "tags are escaped");
        assert!(grid.body.contains("&lt;b&gt;bold&lt;/b&gt;"));
        let down = b.get("/?state=down");
        assert!(down.body.contains("/monitors/gone") && !down.body.contains("/monitors/svc"));
        let search = b.get("/?q=sv");
        assert!(search.body.contains("/monitors/svc") && !search.body.contains("/monitors/gone"));
        let tagged = b.get("/?tag=db");
        assert!(tagged.body.contains("/monitors/svc") && !tagged.body.contains("/monitors/gone"));
        assert_eq!(
            b.get("/?page=999&per=5").status,
            200,
            "out-of-range pages clamp"
        );
        assert_eq!(b.get("/?page=x").status, 400);

        // The monitor page: a week of charts from the hourly summaries.
        store.roll_up(now_ms()).unwrap();
        let m = b.get("/monitors/svc?range=7d");
        assert_eq!(m.status, 200);
        assert!(m.body.contains("TCP handshake (connect)"), "{}", m.body);
        let series = m.body.matches("class=\"series\"").count();
        assert!(series >= 1, "a latency line:\n{}", m.body);
        assert!(m.body.contains("class=\"area\""), "the phase breakdown");
        assert!(
            m.body.contains("class=\"span failure\""),
            "the failed hour is marked"
        );
        // 7 d: 1008 stored + the agent's; one hour of 6 down.
        assert!(
            m.body.contains("99.40 %") || m.body.contains("99.41 %") || m.body.contains("99.42 %"),
            "7-day uptime:\n{}",
            m.body
        );
        assert!(!m.body.contains("<script>alert"), "owner escaped");
        assert!(
            m.body
                .contains("&lt;script&gt;alert('owner')&lt;/script&gt;")
        );
        assert!(
            m.body.contains("Recent results")
                && m.body.contains(&format!("127.0.0.1:{open_port}</td>")),
            "the agent's raw results with their address"
        );
        // A down monitor's results say why.
        assert!(b.get("/monitors/gone").body.contains("refused"));
        let short = b.get("/monitors/svc?range=1h&location=agent:site-a");
        assert_eq!(short.status, 200);
        assert!(
            short.body.contains("class=\"series\""),
            "the live minute rollups"
        );
        assert_eq!(b.get("/monitors/nope").status, 404);

        // Incidents and agents.
        let inc = b.get("/incidents?open=1");
        assert!(inc.body.contains("/monitors/gone"), "{}", inc.body);
        let id_at = inc.body.find("href=\"/incidents/").unwrap() + 17;
        let incident_id = &inc.body[id_at..id_at + inc.body[id_at..].find('"').unwrap()];
        let one = b.get(&format!("/incidents/{incident_id}"));
        assert_eq!(one.status, 200);
        assert!(one.body.contains("service down") && one.body.contains("agent:site-a"));
        assert_eq!(b.get("/incidents/999999").status, 404);
        assert_eq!(b.get("/incidents/abc").status, 404);
        let agents = b.get("/agents");
        assert!(
            agents.body.contains("site-a") && agents.body.contains("connected"),
            "{}",
            agents.body
        );

        // Maintenance from the UI: the form's token is required.
        let page = b.get("/maintenance");
        let token = csrf(&page.body);
        let start = jiff::Timestamp::from_millisecond(now_ms() + 2 * HOUR_MS)
            .unwrap()
            .to_string();
        let form = |csrf: &'static str| -> Vec<(&'static str, String)> {
            vec![
                ("csrf", csrf.to_owned()),
                ("name", "pg-upgrade".into()),
                ("monitors", "svc".into()),
                ("start", start.clone()),
                ("duration", "1h".into()),
                ("reason", "<script>alert('reason')</script>".into()),
            ]
        };
        let as_refs =
            |v: &Vec<(&'static str, String)>| -> Vec<(&'static str, String)> { v.clone() };
        let forged = as_refs(&form("forged"));
        let forged: Vec<(&str, &str)> = forged.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(b.post("/maintenance", &forged).status, 403);
        let mut good = form("");
        good[0].1 = token.clone();
        let good: Vec<(&str, &str)> = good.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let added = b.post("/maintenance", &good);
        assert_eq!(added.status, 303, "{}", added.body);
        let bad = b.post(
            "/maintenance",
            &[("csrf", &token), ("name", "x"), ("duration", "forever")],
        );
        assert_eq!(bad.status, 422, "{}", bad.body);
        assert!(bad.body.contains("duration"), "says which field");
        let list = b.get("/maintenance");
        assert!(list.body.contains("pg-upgrade"));
        assert!(
            !list.body.contains("<script>alert('reason')"),
            "reason escaped"
        );

        // The public page: no sign-in, targets hidden, the window announced.
        let public = Browser::new(&url).get("/status");
        assert_eq!(public.status, 200);
        assert!(public.body.contains("Service status"));
        assert!(public.body.contains("svc") && public.body.contains("gone"));
        assert!(public.body.contains("class=\"bars\""), "uptime bars");
        assert_eq!(public.body.matches("class=\"bars\"").count(), 2);
        assert!(public.body.contains("Partial outage") || public.body.contains("Major outage"));
        assert!(
            public.body.contains("Scheduled maintenance") && public.body.contains("pg-upgrade")
        );
        assert!(
            !public.body.contains(&format!("{open_port}")),
            "targets hidden:\n{}",
            public.body
        );
        assert!(!public.body.contains("127.0.0.1"), "targets hidden");
        assert!(!public.body.contains("/logout"), "no admin navigation");

        // Cancel it, then sign out: the old cookie is dead.
        let cancel = b.post("/maintenance/pg-upgrade/cancel", &[("csrf", &token)]);
        assert_eq!(cancel.status, 303);
        assert!(!b.get("/maintenance").body.contains("pg-upgrade"));
        let out = b.post("/logout", &[("csrf", &token)]);
        assert_eq!(out.status, 303);
        assert!(out.set_cookie.unwrap().contains("Max-Age=0"));
        assert_eq!(b.get("/").status, 303, "signed out");

        // Scripts use the bearer token.
        let mut req = b.agent.get(&format!("{url}/agents"));
        req = req.header("Authorization", &format!("Bearer {secret}"));
        assert_eq!(Browser::read(req.call().unwrap()).status, 200);
        assert_eq!(b.get("/assets/portwatch.css").status, 200);
    })
    .await
    .unwrap();
    running.stop().await;
}

/// What a hostile server answers.
const BANNER: &str = "<script>alert('banner')</script>\"><img src=x onerror=alert('banner')>";
/// What a hostile (or careless) admin names an agent.
const AGENT_NAME: &str = "<img src=x onerror=alert('agent')>";

/// Markup from everywhere a text can come from (a hostile server's banner, an
/// agent's name, a monitor's owner and tags) reaches every page escaped, and
/// a monitor named `<script>` is refused by the API with a JSON error (422). The
/// hostile text must show up escaped (so the test cannot pass by omission),
/// never as markup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markup_from_a_server_an_agent_or_a_monitor_is_escaped_on_every_page() {
    // A server that answers every connection with markup, then closes. It
    // serves at most 500 connections (the agent checks once a second).
    let hostile = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = hostile.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        for _ in 0..500 {
            let Ok((mut conn, _)) = hostile.accept().await else {
                return;
            };
            use tokio::io::AsyncWriteExt;
            let _ = conn.write_all(format!("{BANNER}\r\n").as_bytes()).await;
            let _ = conn.shutdown().await;
        }
    });
    let r = start(&format!(
        r#"public_probes = false
[[monitors]]
name = "ssh-ish"
target = "tcp://127.0.0.1:{port}"
expect_regex = "^SSH-2\\.0"
interval = "1s"
timeout = "1s"
locations = ["site=evil"]
owner = "<script>alert('owner')</script>"
tags = ["<svg/onload=alert('tag')>"]
"#
    ))
    .await;
    let id = r.enroll(AGENT_NAME, &[("site", "evil")], None).await;
    let policy: Arc<dyn AddressPolicy> = Arc::new(AllowAll);
    let engine = Arc::new(Engine::new(
        Resolver::literal_only(),
        Registry::standard(),
        policy,
    ));
    let running = RunningLink::spawn(r.link(AGENT_NAME, &id, LinkConfig::default()), engine);
    let data = r.dir.path().join("collector");
    let discovery = r.discovery().await;
    let secret = AdminToken::read(&data.join("admin.token"))
        .unwrap()
        .secret()
        .to_owned();
    let url = discovery.url.clone();

    tokio::task::spawn_blocking(move || {
        let mut b = Browser::new(&url);
        let ok = b.post("/login", &[("token", &secret), ("next", "/")]);
        b.cookie = Some(ok.set_cookie.unwrap().split(';').next().unwrap().to_owned());

        // The agent's check fails on the banner; the monitor page shows it.
        let deadline = Instant::now() + Duration::from_secs(25);
        let monitor = loop {
            let p = b.get("/monitors/ssh-ish");
            assert_eq!(p.status, 200);
            if p.body.contains("alert('banner')") || p.body.contains("alert(&#39;banner&#39;)") {
                break p;
            }
            assert!(
                Instant::now() < deadline,
                "the banner never showed on the monitor page:\n{}",
                p.body
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        let incidents = loop {
            let p = b.get("/incidents");
            if p.body.contains("href=\"/incidents/") {
                break p;
            }
            assert!(Instant::now() < deadline, "no incident:\n{}", p.body);
            std::thread::sleep(Duration::from_millis(200));
        };
        let at = incidents.body.find("href=\"/incidents/").unwrap() + 17;
        let incident = incidents.body[at..at + incidents.body[at..].find('"').unwrap()].to_owned();
        let mut pages = vec![
            ("/monitors/ssh-ish".to_owned(), monitor),
            ("/incidents".to_owned(), incidents),
        ];
        for path in [
            "/".to_owned(),
            format!("/incidents/{incident}"),
            "/agents".to_owned(),
            "/maintenance".to_owned(),
            "/monitors/ssh-ish?range=1h&location=agent:%3Cimg%20src%3Dx".to_owned(),
        ] {
            let p = b.get(&path);
            assert_eq!(p.status, 200, "{path}:\n{}", p.body);
            pages.push((path, p));
        }
        pages.push(("/status".to_owned(), Browser::new(&url).get("/status")));
        for (path, p) in &pages {
            for markup in ["<script>alert", "<img src=x", "<svg/onload"] {
                assert!(
                    !p.body.contains(markup),
                    "{path} carries {markup:?} unescaped:\n{}",
                    p.body
                );
            }
        }
        let page = |path: &str| &pages.iter().find(|(p, _)| p == path).unwrap().1.body;
        assert!(
            page("/agents").contains("&lt;img src=x onerror=alert("),
            "{}",
            page("/agents")
        );
        assert!(
            page("/").contains("&lt;svg/onload=alert("),
            "the tag, escaped"
        );
        assert!(
            page("/monitors/ssh-ish").contains("&lt;script&gt;alert(")
                && page("/monitors/ssh-ish").contains("&lt;img src=x"),
            "the owner and the agent's location, escaped"
        );

        // The API: a monitor named <script> is refused with a JSON error.
        let put = b
            .agent
            .put(&format!("{url}/api/v1/monitors/%3Cscript%3E"))
            .header("Authorization", &format!("Bearer {secret}"))
            .header("Content-Type", "application/json")
            .send(
                serde_json::json!({
                    "name": "<script>",
                    "target": "tcp://127.0.0.1:1",
                    "locations": ["site=evil"],
                })
                .to_string(),
            )
            .unwrap();
        let status = put.status().as_u16();
        let body = Browser::read(put).body;
        assert_eq!(status, 422, "{body}");
        let err: serde_json::Value = serde_json::from_str(&body).expect("a JSON error");
        assert_eq!(err["error"]["code"], "invalid_monitor", "{body}");
        assert!(
            err["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(".name: must be")),
            "{body}"
        );
        assert!(!b.get("/").body.contains("&lt;script&gt;</a>"));
    })
    .await
    .unwrap();
    running.stop().await;
    server.abort();
}

#[tokio::test]
async fn the_status_page_follows_its_config() {
    let port = portwatch_harness::free_tcp_port();
    let r = start(&format!(
        r#"public_probes = false
[status_page]
title = "Acme <status>"
hide_targets = false
[[status_page.groups]]
name = "Databases"
tags = ["db"]

[[monitors]]
name = "pg"
target = "tcp://127.0.0.1:{port}"
tags = ["db"]
locations = ["site-a"]

[[monitors]]
name = "internal-only"
target = "tcp://127.0.0.1:{port}"
locations = ["site-a"]
"#
    ))
    .await;
    let url = r.discovery().await.url;
    let url1 = url.clone();
    tokio::task::spawn_blocking(move || {
        let p = Browser::new(&url1).get("/status");
        assert_eq!(p.status, 200);
        assert!(p.body.contains("Acme &lt;status&gt;"));
        assert!(p.body.contains("Databases"));
        assert!(
            p.body.contains(&format!("tcp://127.0.0.1:{port}")),
            "targets shown"
        );
        assert!(
            !p.body.contains("internal-only"),
            "only the groups' monitors"
        );
    })
    .await
    .unwrap();

    // A reload applies new settings (after the page's 10 s cache).
    let path = r.config_path();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("Acme <status>", "Acme renamed")
        .replace("hide_targets = false", "hide_targets = true");
    std::fs::write(&path, text).unwrap();
    let url2 = url.clone();
    let renamed = tokio::task::spawn_blocking(move || {
        portwatch_harness::wait_for(Duration::from_secs(30), || {
            let p = Browser::new(&url2).get("/status");
            p.body.contains("Acme renamed").then_some(p.body)
        })
    })
    .await
    .unwrap()
    .expect("the reloaded title within 30 s");
    assert!(
        !renamed.contains("tcp://127.0.0.1"),
        "targets hidden after the reload"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[status_page]\nenabled = true\n[[status_page.groups]]\nname = \"empty\"\n",
    )
    .unwrap();
    let e = portwatch_collector::config::Config::load(&path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("status_page.groups[0]: selects nothing"), "{e}");
    std::fs::write(&path, "[status_page]\nhide_target = true\n").unwrap();
    let e = portwatch_collector::config::Config::load(&path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("hide_target"), "{e}");
}

fn now_ms() -> i64 {
    portwatch_collector::state::unix_ms(std::time::SystemTime::now())
}

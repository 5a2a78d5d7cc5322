//! The dashboard in a real browser: Debian's headless Chromium, driven by
//! chromedriver over the W3C WebDriver protocol, against the README's main
//! job (`portwatch-collector demo`: a collector and a really enrolled agent
//! checking real local ports). It signs in with the admin token through the
//! form, waits for the grid to show up and down cells, opens a monitor page
//! and checks the latency chart was laid out (a series path with a real
//! size), then saves screenshots to `target/screenshots/`.
//!
//! Only 127.0.0.1 is ever contacted; Chromium runs with its background
//! networking off.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use portwatch_harness::{self as h, Service};
use serde_json::{Value, json};

/// A WebDriver session.
struct Driver {
    agent: ureq::Agent,
    base: String,
}

impl Driver {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let resp = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, body) => self
                .agent
                .post(&url)
                .send_json(body.unwrap_or_else(|| json!({}))),
        };
        let mut resp = resp.unwrap_or_else(|e| panic!("webdriver {method} {path}: {e}"));
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert!(
            resp.status().is_success(),
            "webdriver {method} {path}: {}: {text}",
            resp.status()
        );
        v["value"].clone()
    }

    fn session(port: u16, profile: &Path) -> Driver {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let mut d = Driver {
            agent,
            base: format!("http://127.0.0.1:{port}"),
        };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": h::require_binary("chromium", "chromium").display().to_string(),
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1400,1000",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }
        }}});
        let v = d.call("POST", "/session", Some(caps));
        let id = v["sessionId"].as_str().expect("a session id").to_owned();
        d.base = format!("{}/session/{id}", d.base);
        d
    }

    fn go(&self, url: &str) {
        self.call("POST", "/url", Some(json!({"url": url})));
    }

    fn script(&self, js: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": js, "args": []})),
        )
    }

    fn element(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .expect("an element reference")
            .to_owned()
    }

    fn screenshot(&self, to: &Path) {
        use base64::Engine as _;
        let v = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64 png"))
            .expect("valid base64");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        assert!(png.len() > 10_000, "a real picture, not a blank page");
        std::fs::write(to, png).unwrap();
    }
}

fn screenshots_dir() -> PathBuf {
    // target/<profile>/deps/<test> -> target/screenshots
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_dashboard_renders_the_demos_real_results_in_chromium() {
    let chromedriver = h::require_binary("chromedriver", "chromium-driver");
    h::require_binary("chromium", "chromium");
    let dir = h::temp_dir();
    let http_port = h::free_tcp_port();
    let agent_port = h::free_tcp_port();
    let data = dir.path().join("demo");
    let mut cmd = Command::new(h::cargo_bin("portwatch-collector"));
    cmd.args([
        "demo",
        "--data-dir",
        data.to_str().unwrap(),
        "--http-addr",
        &format!("127.0.0.1:{http_port}"),
        "--agent-addr",
        &format!("127.0.0.1:{agent_port}"),
        "--interval",
        "1s",
    ]);
    let mut demo = Service::spawn("demo", cmd, dir.path());
    demo.wait_log("dashboard:", Duration::from_secs(60));
    let token = std::fs::read_to_string(data.join("collector").join("admin.token"))
        .expect("the demo's admin token")
        .trim()
        .to_owned();

    let driver_port = h::free_tcp_port();
    let mut cmd = Command::new(chromedriver);
    cmd.arg(format!("--port={driver_port}"));
    let mut driver_service = Service::spawn("chromedriver", cmd, dir.path());
    driver_service.wait_tcp(
        format!("127.0.0.1:{driver_port}").parse().unwrap(),
        Duration::from_secs(20),
    );
    let profile = dir.path().join("chromium-profile");
    let d = Driver::session(driver_port, &profile);
    let site = format!("http://127.0.0.1:{http_port}");

    // Signed out, the dashboard asks for the token; the form signs in.
    d.go(&format!("{site}/"));
    let url = d.script("return location.pathname");
    assert_eq!(url, "/login", "sent to the sign-in page");
    let field = d.element("#token");
    d.call(
        "POST",
        &format!("/element/{field}/value"),
        Some(json!({"text": token})),
    );
    let button = d.element("form[action='/login'] button");
    d.call("POST", &format!("/element/{button}/click"), Some(json!({})));

    // The grid, with the demo's monitors up and its closed port down.
    let grid = h::wait_for(Duration::from_secs(60), || {
        let v = d.script(
            "return location.pathname === '/' ? {
                rows: document.querySelectorAll('table.grid tbody tr').length,
                up: document.querySelectorAll('table.grid span.cell.up').length,
                down: document.querySelectorAll('table.grid span.cell.down').length,
                sparks: document.querySelectorAll('table.grid svg.spark').length
            } : null",
        );
        let ok = v["up"].as_u64().unwrap_or(0) > 0 && v["down"].as_u64().unwrap_or(0) > 0;
        if !ok {
            // The page refreshes itself; reload anyway in case scripts are slow.
            d.go(&format!("{site}/"));
        }
        ok.then_some(v)
    })
    .unwrap_or_else(|| {
        panic!(
            "no up and down cells on the overview; demo log:\n{}",
            demo.log()
        )
    });
    assert!(grid["rows"].as_u64().unwrap() >= 4, "{grid}");
    assert_eq!(grid["sparks"], grid["rows"], "a sparkline per row");
    let shots = screenshots_dir();
    d.screenshot(&shots.join("overview.png"));

    // A monitor page: the latency chart is laid out with a real line.
    let chart = h::wait_for(Duration::from_secs(60), || {
        d.go(&format!("{site}/monitors/collector-http?range=1h"));
        let v = d.script(
            "const p = document.querySelector('svg.chart-svg .series');
             if (!p) return null;
             const b = p.getBoundingClientRect();
             return {w: b.width, h: b.height, title: document.title,
                     uptime: document.querySelectorAll('td.num').length};",
        );
        (v["w"].as_f64().unwrap_or(0.0) > 0.0).then_some(v)
    })
    .unwrap_or_else(|| {
        panic!(
            "no latency line on the monitor page; demo log:\n{}",
            demo.log()
        )
    });
    assert!(chart["title"].as_str().unwrap().contains("collector-http"));
    d.screenshot(&shots.join("monitor.png"));

    // The public status page needs no sign-in (a fresh page of the same
    // browser would still carry the cookie: check its bars render).
    d.go(&format!("{site}/status"));
    let bars = d.script("return document.querySelectorAll('svg.bars rect').length");
    assert!(
        bars.as_u64().unwrap() >= 90,
        "90 daily bars per monitor: {bars}"
    );
    d.screenshot(&shots.join("status.png"));

    d.call("DELETE", "", None);
    driver_service.kill();
    demo.kill();
}

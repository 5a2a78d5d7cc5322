use std::collections::BTreeMap;
use std::time::Duration;

use portwatch_agent::check::{TcpMode, TcpPreset, spec_from_proto};

use super::registry::{MonitorRegistry, RegistryError};
use super::*;

fn parse(text: &str) -> Result<Vec<Monitor>, Problems> {
    #[derive(serde::Deserialize)]
    struct F {
        monitors: Vec<toml::Spanned<RawMonitor>>,
    }
    let f: F = toml::from_str(text).expect("test toml parses");
    let located: Vec<Located> = f
        .monitors
        .into_iter()
        .enumerate()
        .map(|(i, m)| Located {
            line: Some(text[..m.span().start].matches('\n').count() + 1),
            raw: m.into_inner(),
            path: format!("monitors[{i}]"),
        })
        .collect();
    validate_all(&located, "m.toml", Origin::File, &[], Parents::MustExist)
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn raw(name: &str, locations: &[&str]) -> RawMonitor {
    RawMonitor {
        name: name.into(),
        target: "tcp://127.0.0.1:6379".into(),
        locations: locations.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

#[test]
fn a_full_monitor_becomes_the_spec_the_agent_builds() {
    let ms = parse(
        r#"
        [[monitors]]
        name = "pg-main"
        target = "tcp://10.0.0.5:5432"
        interval = "10s"
        timeout = "2s"
        degraded_ms = 500
        preset = "postgres"
        locations = ["bastion-fra-1", "site=ams", "public:eu-west"]
        tags = ["db", "team=payments"]
        owner = "payments"
        severity = "critical"
        runbook = "https://wiki.example/pg"
        depends_on = "pg-host"
        alert = { consecutive_down = 3, locations_down = 2, notification_delay = "1m" }

        [[monitors]]
        name = "pg-host"
        target = "icmp://10.0.0.5"
        locations = ["site=fra"]
        "#,
    )
    .unwrap();
    let pg = &ms[0];
    assert_eq!(pg.name, "pg-main");
    assert_eq!(pg.spec.id, "pg-main");
    assert_eq!(pg.severity, Severity::Critical);
    assert_eq!(pg.alert.consecutive_down, 3);
    assert_eq!(pg.alert.consecutive_up, 1);
    assert_eq!(pg.alert.locations_down, Some(2));
    assert_eq!(pg.alert.notification_delay, Duration::from_secs(60));
    assert!(pg.alert.edge);
    assert_eq!(pg.depends_on.as_deref(), Some("pg-host"));
    assert_eq!(
        pg.locations,
        [
            LocationSel::Agent("bastion-fra-1".into()),
            LocationSel::Label("site".into(), "ams".into()),
            LocationSel::Public(Some("eu-west".into())),
        ]
    );
    let (spec, every) = spec_from_proto(&pg.spec).unwrap();
    assert_eq!(every, Duration::from_secs(10));
    assert_eq!(spec.timeout, Duration::from_secs(2));
    assert!(matches!(spec.tcp, TcpMode::Preset(TcpPreset::Postgres)));
    assert!(pg.runs_on_agent("bastion-fra-1", &labels(&[])));
    assert!(pg.runs_on_agent("x", &labels(&[("site", "ams")])));
    assert!(!pg.runs_on_agent("x", &labels(&[("site", "fra")])));
    assert!(pg.runs_on_public("eu-west") && !pg.runs_on_public("us-east"));
    // The defaults a user does not write.
    let host = &ms[1];
    assert_eq!(host.interval(), DEFAULT_INTERVAL);
    assert_eq!(host.severity, Severity::Medium);
    assert_eq!(host.alert, AlertPolicy::default());
}

#[test]
fn every_problem_is_reported_with_line_and_field() {
    let text = r#"
[[monitors]]
name = "a b"
target = "tcp://h:70000"
interval = "soon"
expect = "maybe"
locations = []
severity = "urgent"
runbook = "wiki/page"
tags = ["has space"]
alert = { consecutive_down = 0, failure_percent = 20 }

[[monitors]]
name = "ok"
target = "udp://h:53"
timeout = "1m"
interval = "10s"
locations = ["public", "public", "=x"]
depends_on = "ghost"
"#;
    let e = parse(text).unwrap_err();
    let all = e.to_string();
    let has = |line: usize, field: &str, why: &str| {
        assert!(
            e.0.iter()
                .any(|p| p.line == Some(line) && p.field.ends_with(field) && p.why.contains(why)),
            "no problem at line {line} on {field} saying {why:?} in:\n{all}"
        );
    };
    has(2, ".name", "letters, digits");
    has(2, ".target", "65535");
    has(2, ".interval", "not a duration");
    has(2, ".expect", "open or closed");
    has(2, ".locations", "at least one location");
    has(2, ".severity", "critical, high, medium or low");
    has(2, ".runbook", "http(s) URL");
    has(2, ".tags", "without spaces");
    has(2, ".alert.consecutive_down", "between 1 and 100");
    has(2, ".alert.failure_percent", "go together");
    has(13, ".timeout", "longer than the interval");
    has(13, ".locations", "listed twice");
    has(13, ".locations", "not a label selector");
    has(13, ".depends_on", "no monitor is named \"ghost\"");
    assert!(all.lines().all(|l| l.starts_with("m.toml:")), "{all}");
    assert_eq!(all.lines().count(), e.0.len());
}

#[test]
fn names_are_unique_and_dependencies_have_no_cycle() {
    let e = parse(
        r#"
        [[monitors]]
        name = "a"
        target = "tcp://h:1"
        locations = ["public"]
        depends_on = "b"
        [[monitors]]
        name = "b"
        target = "tcp://h:2"
        locations = ["public"]
        depends_on = "a"
        [[monitors]]
        name = "a"
        target = "tcp://h:3"
        locations = ["public"]
        "#,
    )
    .unwrap_err();
    let all = e.to_string();
    assert!(
        all.contains("monitors[2] (\"a\").name: is used by another monitor (monitors[0])"),
        "{all}"
    );
    assert!(all.contains("a cycle"), "{all}");
    let e = parse(
        "[[monitors]]\nname = \"self\"\ntarget = \"tcp://h:1\"\nlocations = [\"public\"]\ndepends_on = \"self\"\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("cannot depend on itself"), "{e}");
}

#[test]
fn an_assignment_version_changes_only_with_its_content() {
    let reg = MonitorRegistry::open(Vec::new(), None).unwrap();
    let fra = labels(&[("site", "fra")]);
    let ams = labels(&[("site", "ams")]);
    reg.upsert(raw("redis", &["site=fra"])).unwrap();
    reg.upsert(raw("pg", &["site=ams", "public"])).unwrap();
    let fra_v1 = reg.assignment_for("b1", &fra, None);
    let ams_v1 = reg.assignment_for("b2", &ams, None);
    assert_eq!(
        fra_v1.monitors.iter().map(|m| &m.id).collect::<Vec<_>>(),
        ["redis"]
    );
    assert_eq!(
        ams_v1.monitors.iter().map(|m| &m.id).collect::<Vec<_>>(),
        ["pg"]
    );
    assert_eq!(reg.public_for("collector").len(), 1);
    // Changing pg touches ams's assignment only.
    let mut pg = raw("pg", &["site=ams", "public"]);
    pg.interval = Some("5s".into());
    let mut changes = reg.changes();
    changes.mark_unchanged();
    let (_, created) = reg.upsert(pg.clone()).unwrap();
    assert!(!created);
    assert!(changes.has_changed().unwrap());
    assert_eq!(reg.assignment_for("b1", &fra, None).version, fra_v1.version);
    assert_ne!(reg.assignment_for("b2", &ams, None).version, ams_v1.version);
    // The same definition again is no change at all.
    changes.mark_unchanged();
    reg.upsert(pg).unwrap();
    assert!(!changes.has_changed().unwrap());
    // No monitors: version 1-or-more digest of nothing, never 0.
    assert_ne!(reg.assignment_for("nobody", &labels(&[]), None).version, 0);
}

#[test]
fn a_bad_reload_keeps_the_last_good_set() {
    let reg = MonitorRegistry::open(Vec::new(), None).unwrap();
    let good = vec![Located {
        raw: raw("redis", &["site=fra"]),
        line: Some(1),
        path: "monitors[0]".into(),
    }];
    let change = reg.replace_file(&good, "c.toml").unwrap();
    assert_eq!(change.added, ["redis"]);
    assert!(reg.reload_status().ok);
    let mut broken = raw("redis", &["site=fra"]);
    broken.interval = Some("0s".into());
    let bad = vec![Located {
        raw: broken,
        line: Some(7),
        path: "monitors[0]".into(),
    }];
    let err = reg.replace_file(&bad, "c.toml").unwrap_err();
    assert!(err.to_string().starts_with("c.toml:7: "), "{err}");
    assert_eq!(reg.monitors()[0].interval(), DEFAULT_INTERVAL);
    let status = reg.reload_status();
    assert!(!status.ok && status.error.unwrap().contains("at least 1s"));
    // Removing the monitor from the file is a change like any other.
    let change = reg.replace_file(&[], "c.toml").unwrap();
    assert_eq!(change.removed, ["redis"]);
    assert!(reg.monitors().is_empty());
}

#[test]
fn file_and_api_monitors_share_one_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("monitors.json");
    let file = parse(
        "[[monitors]]\nname = \"from-file\"\ntarget = \"tcp://h:1\"\nlocations = [\"public\"]\n",
    )
    .unwrap();
    let reg = MonitorRegistry::open(file.clone(), Some(&path)).unwrap();
    assert!(matches!(
        reg.upsert(raw("from-file", &["public"])),
        Err(RegistryError::ManagedByFile(_))
    ));
    assert!(matches!(
        reg.delete("from-file"),
        Err(RegistryError::ManagedByFile(_))
    ));
    let mut child = raw("child", &["public"]);
    child.depends_on = Some("parent".into());
    assert!(matches!(
        reg.upsert(child.clone()),
        Err(RegistryError::Invalid(_))
    ));
    reg.upsert(raw("parent", &["public"])).unwrap();
    reg.upsert(child).unwrap();
    assert!(matches!(
        reg.delete("parent"),
        Err(RegistryError::DependedOn { .. })
    ));
    assert!(matches!(
        reg.delete("ghost"),
        Err(RegistryError::NotFound(_))
    ));
    // API monitors survive a restart; the file's come from the file.
    let again = MonitorRegistry::open(file, Some(&path)).unwrap();
    let names: Vec<String> = again.monitors().into_iter().map(|m| m.name).collect();
    assert_eq!(names, ["child", "from-file", "parent"]);
    assert_eq!(again.get("child").unwrap().origin, Origin::Api);
    again.delete("child").unwrap();
    again.delete("parent").unwrap();
    let after = MonitorRegistry::open(Vec::new(), Some(&path)).unwrap();
    assert!(after.monitors().is_empty());
    // A file monitor that takes an API monitor's name is refused on reload.
    after.upsert(raw("taken", &["public"])).unwrap();
    let clash = vec![Located {
        raw: raw("taken", &["public"]),
        line: Some(3),
        path: "monitors[0]".into(),
    }];
    let e = after.replace_file(&clash, "c.toml").unwrap_err();
    assert!(
        e.to_string().contains("already defined through the API"),
        "{e}"
    );
}

#[test]
fn api_and_toml_are_one_model() {
    let json = r#"{"name":"kafka","target":"tcp://10.1.0.9:9092","locations":["site=fra"],
        "preset":"kafka","alert":{"failure_percent":20,"failure_window":"2m"},"severity":"high"}"#;
    let from_json: RawMonitor = serde_json::from_str(json).unwrap();
    let from_toml: RawMonitor = toml::from_str(
        "name = \"kafka\"\ntarget = \"tcp://10.1.0.9:9092\"\nlocations = [\"site=fra\"]\npreset = \"kafka\"\nseverity = \"high\"\nalert = { failure_percent = 20, failure_window = \"2m\" }\n",
    )
    .unwrap();
    assert_eq!(from_json, from_toml);
    let back: RawMonitor =
        serde_json::from_str(&serde_json::to_string(&from_json).unwrap()).unwrap();
    assert_eq!(back, from_json);
    assert!(
        serde_json::from_str::<RawMonitor>(r#"{"name":"x","target":"tcp://h:1","colour":1}"#)
            .is_err()
    );
}

#[test]
fn an_agent_in_a_public_region_runs_that_regions_monitors_and_is_told_so() {
    let reg = MonitorRegistry::open(Vec::new(), None).unwrap();
    reg.upsert(raw("edge-eu", &["public:eu"])).unwrap();
    reg.upsert(raw("edge-all", &["public"])).unwrap();
    reg.upsert(raw("private", &["site=fra"])).unwrap();
    let a = reg.assignment_for("probe-eu", &labels(&[]), Some("eu"));
    assert_eq!(
        a.monitors.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["edge-all", "edge-eu"]
    );
    assert!(a.public_only);
    let us = reg.assignment_for("probe-us", &labels(&[]), Some("us"));
    assert_eq!(us.monitors.len(), 1);
    // Labels still select: a public agent with site=fra also runs "private",
    // under the public policy (so such a check reports blocked addresses).
    let both = reg.assignment_for("probe-fra", &labels(&[("site", "fra")]), Some("eu"));
    assert_eq!(both.monitors.len(), 3);
    let private = reg.assignment_for("bastion", &labels(&[("site", "fra")]), None);
    assert!(!private.public_only);
    assert_eq!(private.monitors.len(), 1);
}

#[test]
fn a_file_monitor_may_depend_on_an_api_monitor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("monitors.json");
    let reg = MonitorRegistry::open(Vec::new(), Some(&path)).unwrap();
    reg.upsert(raw("host-ping", &["site=fra"])).unwrap();
    // The file alone passes (its parent may be elsewhere) ...
    let text = "[[monitors]]\nname = \"db\"\ntarget = \"tcp://h:5432\"\nlocations = [\"site=fra\"]\ndepends_on = \"host-ping\"\n";
    let config = crate::config::Config::parse(text, "c.toml").unwrap();
    // ... and the registry, which knows the API's monitors, accepts it live and at start.
    reg.replace_file(&config.monitor_sources, "c.toml").unwrap();
    MonitorRegistry::open(config.monitors.clone(), Some(&path)).unwrap();
    // Without that parent anywhere, both refuse it.
    let bare = MonitorRegistry::open(Vec::new(), None).unwrap();
    assert!(
        bare.replace_file(&config.monitor_sources, "c.toml")
            .is_err()
    );
    let e = MonitorRegistry::open(config.monitors, None)
        .err()
        .expect("an orphan dependency is refused at start");
    assert!(
        e.to_string().contains("no monitor is named \"host-ping\""),
        "{e}"
    );
}

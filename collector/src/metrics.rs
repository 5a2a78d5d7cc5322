//! `/metrics` in the Prometheus text format (0.0.4): a drop-in for
//! blackbox_exporter users, one series per monitor and location from the
//! newest result (`probe_success`, `probe_duration_seconds`,
//! `probe_dns_lookup_time_seconds`, `probe_ip_protocol`,
//! `probe_ssl_earliest_cert_expiry`, `probe_failed_due_to_regex`, with
//! `monitor`, `target` and `location` labels), the phases blackbox_exporter
//! does not split, the monitor state and open incidents, and the collector's
//! own health: agents connected, their backlog and drops, results stored,
//! notification deliveries and failures.
//!
//! [`render`] is pure over [`Snapshot`], so the format is tested on fixed data
//! with a real parser; the HTTP handler gathers the snapshot.

use std::fmt::Write;

use portwatch_proto::v1 as pb;

/// One monitor at one location, from its newest result.
#[derive(Debug, Clone)]
pub struct ProbeSeries {
    pub monitor: String,
    /// As configured, e.g. `tcp://10.0.0.5:5432`.
    pub target: String,
    pub location: String,
    pub result: pb::CheckResult,
}

/// One agent's link.
#[derive(Debug, Clone, Default)]
pub struct AgentSeries {
    pub name: String,
    pub connected: bool,
    pub backlog: u64,
    pub stored: u64,
    pub duplicates: u64,
    pub dropped_unassigned: u64,
    pub gaps: u64,
    pub cert_expires_unix: i64,
    /// The connected agent's last heartbeat about itself.
    pub health: Option<crate::ingest::AgentHealth>,
}

/// Deliveries of one channel since the collector started.
#[derive(Debug, Clone, Default)]
pub struct ChannelSeries {
    pub channel: String,
    pub delivered: u64,
    pub failed: u64,
}

/// Everything `/metrics` shows, gathered at one instant.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub probes: Vec<ProbeSeries>,
    /// (monitor, state): `up`, `degraded`, `down`, `unknown`, `maintenance`.
    pub monitor_states: Vec<(String, String)>,
    /// (kind, count) of open incidents.
    pub open_incidents: Vec<(String, u64)>,
    pub agents: Vec<AgentSeries>,
    pub channels: Vec<ChannelSeries>,
}

/// The monitor states `portwatch_monitor_state` has a series for.
pub const STATES: [&str; 5] = ["up", "degraded", "down", "unknown", "maintenance"];

/// A label value escaped for the text format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// Borrowed labels of a series.
fn with<'a>(l: &'a [(&'static str, String); 3]) -> Vec<(&'static str, &'a str)> {
    l.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn seconds(us: u64) -> f64 {
    us as f64 / 1e6
}

/// The whole exposition.
pub fn render(s: &Snapshot) -> String {
    let mut o = Out(String::new());
    let labels = |p: &ProbeSeries| -> [(&'static str, String); 3] {
        [
            ("monitor", p.monitor.clone()),
            ("target", p.target.clone()),
            ("location", p.location.clone()),
        ]
    };

    o.family(
        "probe_success",
        "gauge",
        "Whether the newest check succeeded (up or degraded).",
    );
    for p in &s.probes {
        let ok = p.result.status != pb::Status::Down as i32;
        o.sample("probe_success", &with(&labels(p)), f64::from(u8::from(ok)));
    }
    o.family(
        "probe_duration_seconds",
        "gauge",
        "How long the newest check took, all phases.",
    );
    for p in &s.probes {
        let total = p.result.phases.as_ref().map_or(0, |ph| ph.total_us);
        o.sample("probe_duration_seconds", &with(&labels(p)), seconds(total));
    }
    o.family(
        "probe_dns_lookup_time_seconds",
        "gauge",
        "Name resolution time of the newest check (0 for an IP target).",
    );
    for p in &s.probes {
        let dns = p
            .result
            .phases
            .as_ref()
            .and_then(|ph| ph.dns_us)
            .unwrap_or(0);
        o.sample(
            "probe_dns_lookup_time_seconds",
            &with(&labels(p)),
            seconds(dns),
        );
    }
    o.family(
        "probe_ip_protocol",
        "gauge",
        "IP version of the address checked (4 or 6; 0 when none was reached).",
    );
    for p in &s.probes {
        let v = match p.result.address.parse::<std::net::SocketAddr>() {
            Ok(a) if a.is_ipv4() => 4.0,
            Ok(_) => 6.0,
            Err(_) => match p.result.address.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(_)) => 4.0,
                Ok(std::net::IpAddr::V6(_)) => 6.0,
                Err(_) => 0.0,
            },
        };
        o.sample("probe_ip_protocol", &with(&labels(p)), v);
    }
    o.family(
        "probe_ssl_earliest_cert_expiry",
        "gauge",
        "The leaf certificate's notAfter, Unix seconds (TLS checks only).",
    );
    for p in &s.probes {
        if let Some(t) = p
            .result
            .details
            .as_ref()
            .and_then(|d| d.cert_not_after_unix)
        {
            o.sample(
                "probe_ssl_earliest_cert_expiry",
                &with(&labels(p)),
                t as f64,
            );
        }
    }
    o.family(
        "probe_failed_due_to_regex",
        "gauge",
        "Whether the newest check failed because the reply did not match.",
    );
    for p in &s.probes {
        let v = p.result.reason == pb::Reason::UnexpectedReply as i32;
        o.sample(
            "probe_failed_due_to_regex",
            &with(&labels(p)),
            f64::from(u8::from(v)),
        );
    }
    o.family(
        "portwatch_probe_phase_seconds",
        "gauge",
        "Time of each phase of the newest check (dns, connect, tls, first_byte).",
    );
    for p in &s.probes {
        let Some(ph) = &p.result.phases else { continue };
        let l = labels(p);
        for (phase, v) in [
            ("dns", ph.dns_us),
            ("connect", ph.connect_us),
            ("tls", ph.tls_us),
            ("first_byte", ph.first_byte_us),
        ] {
            if let Some(us) = v {
                let mut ls = with(&l);
                ls.push(("phase", phase));
                o.sample("portwatch_probe_phase_seconds", &ls, seconds(us));
            }
        }
    }
    o.family(
        "portwatch_probe_status",
        "gauge",
        "The newest check's status (one series per status, 1 for the current one) and reason.",
    );
    for p in &s.probes {
        let l = labels(p);
        let status = crate::incident::reason_name(p.result.reason);
        let current = match pb::Status::try_from(p.result.status) {
            Ok(pb::Status::Up) => "up",
            Ok(pb::Status::Degraded) => "degraded",
            Ok(pb::Status::Down) => "down",
            _ => "unknown",
        };
        for st in ["up", "degraded", "down"] {
            let mut ls = with(&l);
            ls.push(("status", st));
            ls.push(("reason", if st == current { status.as_str() } else { "" }));
            o.sample(
                "portwatch_probe_status",
                &ls,
                f64::from(u8::from(st == current)),
            );
        }
    }
    o.family(
        "portwatch_probe_last_check_timestamp_seconds",
        "gauge",
        "When the newest check ran (its scheduled time), Unix seconds.",
    );
    for p in &s.probes {
        o.sample(
            "portwatch_probe_last_check_timestamp_seconds",
            &with(&labels(p)),
            p.result.scheduled_at_unix_ms as f64 / 1000.0,
        );
    }
    o.family(
        "portwatch_monitor_state",
        "gauge",
        "The monitor's state across its locations (1 for the current one).",
    );
    for (m, state) in &s.monitor_states {
        for st in STATES {
            o.sample(
                "portwatch_monitor_state",
                &[("monitor", m), ("state", st)],
                f64::from(u8::from(st == state)),
            );
        }
    }
    o.family(
        "portwatch_incidents_open",
        "gauge",
        "Open incidents by kind.",
    );
    for kind in ["down", "edge", "exposure", "agent_offline"] {
        let n = s
            .open_incidents
            .iter()
            .find(|(k, _)| k == kind)
            .map_or(0, |(_, n)| *n);
        o.sample("portwatch_incidents_open", &[("kind", kind)], n as f64);
    }
    o.family(
        "portwatch_agents_connected",
        "gauge",
        "Agents with a live stream.",
    );
    let connected = s.agents.iter().filter(|a| a.connected).count();
    o.sample("portwatch_agents_connected", &[], connected as f64);
    o.family(
        "portwatch_agent_connected",
        "gauge",
        "Whether this agent has a live stream.",
    );
    for a in &s.agents {
        o.sample(
            "portwatch_agent_connected",
            &[("agent", &a.name)],
            f64::from(u8::from(a.connected)),
        );
    }
    o.family(
        "portwatch_agent_backlog",
        "gauge",
        "Results in the agent's buffer not yet acknowledged, as it last said.",
    );
    for a in &s.agents {
        o.sample(
            "portwatch_agent_backlog",
            &[("agent", &a.name)],
            a.backlog as f64,
        );
    }
    o.family(
        "portwatch_agent_cert_expiry_timestamp_seconds",
        "gauge",
        "When the agent's certificate expires, Unix seconds.",
    );
    for a in &s.agents {
        o.sample(
            "portwatch_agent_cert_expiry_timestamp_seconds",
            &[("agent", &a.name)],
            a.cert_expires_unix as f64,
        );
    }
    for (name, help, get) in [
        (
            "portwatch_agent_results_stored_total",
            "Results stored for the first time, since the collector started.",
            (|a: &AgentSeries| a.stored) as fn(&AgentSeries) -> u64,
        ),
        (
            "portwatch_agent_results_duplicate_total",
            "Results received again (a resend after a lost ack), since the collector started.",
            |a: &AgentSeries| a.duplicates,
        ),
        (
            "portwatch_agent_results_dropped_total",
            "Results for monitors not assigned to the agent, dropped.",
            |a: &AgentSeries| a.dropped_unassigned,
        ),
        (
            "portwatch_agent_gaps_total",
            "Gaps the agent reported (results its full buffer dropped).",
            |a: &AgentSeries| a.gaps,
        ),
    ] {
        o.family(name, "counter", help);
        for a in &s.agents {
            o.sample(name, &[("agent", &a.name)], get(a) as f64);
        }
    }
    agent_health(&mut o, &s.agents);
    o.family(
        "portwatch_notifications_total",
        "counter",
        "Notification delivery attempts by channel and outcome, since the collector started.",
    );
    for c in &s.channels {
        o.sample(
            "portwatch_notifications_total",
            &[("channel", &c.channel), ("outcome", "delivered")],
            c.delivered as f64,
        );
        o.sample(
            "portwatch_notifications_total",
            &[("channel", &c.channel), ("outcome", "failed")],
            c.failed as f64,
        );
    }
    o.0
}

/// What connected agents said of themselves in their last heartbeat.
fn agent_health(o: &mut Out, agents: &[AgentSeries]) {
    let healthy: Vec<(&str, crate::ingest::AgentHealth)> = agents
        .iter()
        .filter_map(|a| Some((a.name.as_str(), a.health?)))
        .collect();
    o.family(
        "portwatch_agent_monitors",
        "gauge",
        "Monitors the agent runs, as its last heartbeat said.",
    );
    for (name, h) in &healthy {
        o.sample(
            "portwatch_agent_monitors",
            &[("agent", name)],
            f64::from(h.monitors),
        );
    }
    o.family(
        "portwatch_agent_check_lateness_seconds",
        "gauge",
        "How late the agent started its checks (start minus due time) since it started: median, 99th percentile and maximum.",
    );
    for (name, h) in &healthy {
        for (q, us) in [
            ("0.5", h.lateness_p50_us),
            ("0.99", h.lateness_p99_us),
            ("1", h.lateness_max_us),
        ] {
            o.sample(
                "portwatch_agent_check_lateness_seconds",
                &[("agent", name), ("quantile", q)],
                us as f64 / 1e6,
            );
        }
    }
    for (metric, kind, help, get) in [
        (
            "portwatch_agent_checks_started_total",
            "counter",
            "Checks the agent started since it started.",
            (|h: &crate::ingest::AgentHealth| h.checks_started as f64)
                as fn(&crate::ingest::AgentHealth) -> f64,
        ),
        (
            "portwatch_agent_checks_skipped_total",
            "counter",
            "Due checks the agent did not run since it started (previous run still going, or more than an interval behind).",
            |h| (h.skipped_overlap + h.missed) as f64,
        ),
        (
            "portwatch_agent_resident_memory_bytes",
            "gauge",
            "The agent process's resident memory.",
            |h| h.rss_bytes as f64,
        ),
        (
            "portwatch_agent_cpu_seconds_total",
            "counter",
            "The agent process's CPU time (user + system) since it started.",
            |h| h.cpu_ms as f64 / 1000.0,
        ),
    ] {
        o.family(metric, kind, help);
        for (name, h) in &healthy {
            o.sample(metric, &[("agent", name)], get(h));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(monitor: &str, status: pb::Status, reason: pb::Reason) -> ProbeSeries {
        ProbeSeries {
            monitor: monitor.into(),
            target: "tcp://127.0.0.1:6379".into(),
            location: "agent:site-a".into(),
            result: pb::CheckResult {
                monitor_id: monitor.into(),
                scheduled_at_unix_ms: 1_795_860_000_000,
                status: status as i32,
                reason: reason as i32,
                address: "127.0.0.1:6379".into(),
                phases: Some(pb::Phases {
                    dns_us: None,
                    connect_us: Some(250),
                    tls_us: Some(3_000),
                    first_byte_us: Some(400),
                    total_us: 4_000,
                }),
                details: Some(pb::Details {
                    cert_not_after_unix: Some(1_800_000_000),
                    ..Default::default()
                }),
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_real_parser_reads_every_series_with_its_labels_and_values() {
        let mut odd = probe("regex-check", pb::Status::Down, pb::Reason::UnexpectedReply);
        odd.location = "public:eu-west".into();
        let snap = Snapshot {
            probes: vec![probe("redis", pb::Status::Up, pb::Reason::Ok), odd],
            monitor_states: vec![("redis".into(), "up".into())],
            open_incidents: vec![("down".into(), 2)],
            agents: vec![
                AgentSeries {
                    name: "site-a".into(),
                    connected: true,
                    backlog: 7,
                    stored: 1000,
                    health: Some(crate::ingest::AgentHealth {
                        monitors: 10_000,
                        checks_started: 123_456,
                        skipped_overlap: 3,
                        missed: 1,
                        lateness_p50_us: 250,
                        lateness_p99_us: 4_000,
                        lateness_max_us: 12_500,
                        rss_bytes: 15 << 20,
                        cpu_ms: 61_500,
                    }),
                    ..Default::default()
                },
                // Away: no health series.
                AgentSeries {
                    name: "site-b".into(),
                    connected: false,
                    ..Default::default()
                },
            ],
            channels: vec![ChannelSeries {
                channel: "ops-hook".into(),
                delivered: 3,
                failed: 1,
            }],
        };
        let text = render(&snap);
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("parses");
        let value = |name: &str, label: (&str, &str)| -> f64 {
            let s = scrape
                .samples
                .iter()
                .find(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
                .unwrap_or_else(|| panic!("no {name} {label:?} in\n{text}"));
            match s.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("{other:?}"),
            }
        };
        assert_eq!(value("probe_success", ("monitor", "redis")), 1.0);
        assert_eq!(value("probe_success", ("monitor", "regex-check")), 0.0);
        assert_eq!(
            value("probe_failed_due_to_regex", ("monitor", "regex-check")),
            1.0
        );
        assert_eq!(
            value("probe_failed_due_to_regex", ("monitor", "redis")),
            0.0
        );
        assert_eq!(value("probe_duration_seconds", ("monitor", "redis")), 0.004);
        assert_eq!(value("probe_ip_protocol", ("monitor", "redis")), 4.0);
        assert_eq!(
            value("probe_ssl_earliest_cert_expiry", ("monitor", "redis")),
            1.8e9
        );
        assert_eq!(
            value("portwatch_probe_phase_seconds", ("phase", "tls")),
            0.003
        );
        assert!(
            scrape
                .samples
                .iter()
                .any(|s| s.metric == "portwatch_agents_connected"
                    && matches!(s.value, prometheus_parse::Value::Gauge(v) if v == 1.0)),
            "{text}"
        );
        assert_eq!(value("portwatch_agent_backlog", ("agent", "site-a")), 7.0);
        assert_eq!(
            value("portwatch_agent_monitors", ("agent", "site-a")),
            10_000.0
        );
        let lateness = |q: &str| {
            scrape
                .samples
                .iter()
                .find(|s| {
                    s.metric == "portwatch_agent_check_lateness_seconds"
                        && s.labels.get("quantile") == Some(q)
                })
                .map(|s| match s.value {
                    prometheus_parse::Value::Gauge(v) => v,
                    ref other => panic!("{other:?}"),
                })
        };
        assert_eq!(lateness("0.99"), Some(0.004));
        assert_eq!(lateness("1"), Some(0.0125));
        assert_eq!(
            value("portwatch_agent_checks_skipped_total", ("agent", "site-a")),
            4.0
        );
        assert_eq!(
            value("portwatch_agent_resident_memory_bytes", ("agent", "site-a")),
            (15 << 20) as f64
        );
        assert_eq!(
            value("portwatch_agent_cpu_seconds_total", ("agent", "site-a")),
            61.5
        );
        assert!(
            !text.contains("portwatch_agent_monitors{agent=\"site-b\"}"),
            "{text}"
        );
        assert_eq!(value("portwatch_incidents_open", ("kind", "down")), 2.0);
        assert_eq!(
            value("portwatch_notifications_total", ("outcome", "failed")),
            1.0
        );
        // Every family is documented and typed.
        for family in ["probe_success", "portwatch_notifications_total"] {
            assert!(text.contains(&format!("# HELP {family} ")));
            assert!(text.contains(&format!("# TYPE {family} ")));
        }
    }

    #[test]
    fn label_values_are_escaped_as_the_text_format_says() {
        let mut p = probe("we\"ird\\name", pb::Status::Up, pb::Reason::Ok);
        p.location = "public:eu\nwest".into();
        let text = render(&Snapshot {
            probes: vec![p],
            ..Snapshot::default()
        });
        let want = r#"probe_success{monitor="we\"ird\\name",target="tcp://127.0.0.1:6379",location="public:eu\nwest"} 1"#;
        assert!(text.lines().any(|l| l == want), "{want}\n{text}");
    }
}

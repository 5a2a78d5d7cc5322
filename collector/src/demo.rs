//! `portwatch-collector demo`: the whole product on one machine in one
//! command. A collector (agent port, admin API), a local agent that really
//! enrolls with a one-time token over TLS with the CA pin and then streams over
//! mTLS, and monitors on real local ports: one open, one closed, the
//! collector's own TLS port (certificate expiry), its HTTP port, and ICMP to
//! loopback. Results are printed as they are stored, and incidents as they
//! open and resolve (the closed port is one), until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use portwatch_agent::buffer::SledBuffer;
use portwatch_agent::enroll::{EnrollOptions, enroll};
use portwatch_agent::join::JoinString;
use portwatch_agent::link::{Link, LinkConfig, LinkIdentity};
use portwatch_agent::probe::Engine;
use portwatch_agent::resolve::Resolver;
use portwatch_proto::v1 as pb;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::server;
use crate::token::TokenSpec;

/// Where and how the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub data_dir: Option<PathBuf>,
    pub agent_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub interval: Duration,
}

/// Runs the demo until `stop` resolves; returns the process exit code.
pub async fn run(
    opts: DemoOptions,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let data_dir = opts.data_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("portwatch-demo-{}", std::process::id()))
    });
    let collector_dir = data_dir.join("collector");
    let agent_dir = data_dir.join("agent");
    let agent_listener = TcpListener::bind(opts.agent_addr)
        .await
        .map_err(|e| format!("listen on {}: {e}", opts.agent_addr))?;
    let http_listener = TcpListener::bind(opts.http_addr)
        .await
        .map_err(|e| format!("listen on {}: {e}", opts.http_addr))?;
    let agent_port = agent_listener
        .local_addr()
        .map_err(|e| e.to_string())?
        .port();
    let http_port = http_listener
        .local_addr()
        .map_err(|e| e.to_string())?
        .port();

    // A real local service that accepts connections, and a port that is closed.
    let service = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let service_port = service.local_addr().map_err(|e| e.to_string())?.port();
    tokio::spawn(async move {
        while let Ok((sock, _)) = service.accept().await {
            drop(sock);
        }
    });
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        l.local_addr().map_err(|e| e.to_string())?.port()
    };
    let every = format!("{}s", opts.interval.as_secs().max(1));
    let config_text = format!(
        r#"
server_names = ["localhost", "127.0.0.1"]
# The demo's "public" location runs on this machine and checks loopback:
# a real collector refuses private and special addresses there.
allow_private_targets = true

[[monitors]]
name = "demo-service"
target = "tcp://127.0.0.1:{service_port}"
interval = "{every}"
locations = ["demo-agent", "public"]

[[monitors]]
name = "closed-port"
target = "tcp://127.0.0.1:{closed_port}"
interval = "{every}"
locations = ["demo-agent"]

[[monitors]]
name = "collector-agent-port-tls"
target = "tcp://127.0.0.1:{agent_port}"
interval = "{every}"
tls = {{ ca_file = "{ca}", server_name = "localhost" }}
locations = ["demo-agent"]

[[monitors]]
name = "collector-http"
target = "tcp://127.0.0.1:{http_port}"
interval = "{every}"
degraded_ms = 200
locations = ["demo-agent"]

[[monitors]]
name = "loopback-ping"
target = "icmp://127.0.0.1"
interval = "{every}"
locations = ["site=demo"]
"#,
        ca = collector_dir.join("ca.pem").display(),
    );
    // The CA must exist before the config that points at it is validated.
    std::fs::create_dir_all(&collector_dir).map_err(|e| e.to_string())?;
    crate::ca::Ca::load_or_create(&collector_dir).map_err(|e| e.to_string())?;
    let config = Config::parse(&config_text, "demo config").map_err(|e| e.to_string())?;
    let (collector, admin) = server::open(
        &collector_dir,
        config,
        agent_listener.local_addr().map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let server = {
        let (c, dir, rx) = (collector.clone(), collector_dir.clone(), stop_rx.clone());
        tokio::spawn(async move {
            server::serve(&dir, c, admin, agent_listener, http_listener, stopped(rx)).await
        })
    };

    // A one-time token, exactly as `token create` makes it, and a real enrollment.
    let labels = [("site".to_owned(), "demo".to_owned())].into();
    let new = collector
        .tokens
        .create(
            TokenSpec {
                name: "demo-agent".into(),
                labels,
                ttl: Some(Duration::from_secs(600)),
                public_region: None,
            },
            std::time::SystemTime::now(),
        )
        .map_err(|e| e.to_string())?;
    let join = JoinString::new(
        collector.public_agent_addr.clone(),
        new.record.id.clone(),
        new.secret(),
        collector.ca.pin(),
    )
    .map_err(|e| e.to_string())?;
    let identity = enroll(
        &join,
        &agent_dir,
        &EnrollOptions {
            force: true,
            ..Default::default()
        },
    )
    .await
    .map_err(|e| format!("enrolling the demo agent: {e}"))?;
    println!("portwatch demo");
    println!("  data dir:        {}", data_dir.display());
    println!("  agent port:      127.0.0.1:{agent_port} (enrollment + mTLS stream)");
    println!("  dashboard:       http://127.0.0.1:{http_port}/");
    println!(
        "  sign in with:    the admin token: cat {}",
        collector_dir.join("admin.token").display()
    );
    println!("  status page:     http://127.0.0.1:{http_port}/status (public, no sign-in)");
    println!(
        "  admin API:       http://127.0.0.1:{http_port}/api/v1/agents (Authorization: Bearer <admin token>)"
    );
    println!(
        "  agent enrolled:  {} ({}), CA pin {}",
        identity.info.name,
        identity.agent_id(),
        collector.ca.pin()
    );
    println!(
        "  try:             portwatch-collector agents --data-dir {}",
        collector_dir.display()
    );
    println!();

    let buffer = Arc::new(
        SledBuffer::open(&agent_dir.join("buffer"), 64 * 1024 * 1024).map_err(|e| e.to_string())?,
    );
    let link = Link::new(
        LinkIdentity {
            collector: identity.collector_addr().to_owned(),
            server_name: "localhost".into(),
            cert_pem: identity.cert_pem().to_owned(),
            key_pem: identity.key_pem().to_owned(),
            ca_pem: identity.ca_pem().to_owned(),
        },
        buffer,
        LinkConfig::default(),
    )
    .with_rotation(portwatch_agent::cli::persist_into(agent_dir.clone()));
    let engine = Arc::new(Engine::with_resolver(Resolver::literal_only()));
    let agent = tokio::spawn(link.run(engine, stopped(stop_rx.clone())));

    // Print each monitor's latest stored result as it changes.
    let ids: Vec<String> = collector
        .config
        .monitors
        .iter()
        .map(|m| m.name.clone())
        .collect();
    let mut last_seen = std::collections::HashMap::<(String, String), i64>::new();
    let mut incidents = std::collections::BTreeMap::<u64, crate::incident::Incident>::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let stop = tokio::spawn(stop);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        for id in &ids {
            let Ok(latest) = collector.results.latest(id) else {
                continue;
            };
            for (location, r) in &latest {
                let at = r.scheduled_at_unix_ms;
                let key = (id.clone(), location.clone());
                if last_seen.get(&key) == Some(&at) {
                    continue;
                }
                last_seen.insert(key, at);
                println!("{}", line(id, location, r));
            }
        }
        // Incidents as they open and resolve (the closed port is one).
        let open: std::collections::BTreeMap<u64, crate::incident::Incident> = collector
            .incidents
            .open_incidents()
            .into_iter()
            .map(|i| (i.id, i))
            .collect();
        for (id, i) in &open {
            if !incidents.contains_key(id) {
                println!(
                    "INCIDENT #{id} opened: {} [{}] {} (reason {})",
                    i.monitor,
                    i.kind.as_str(),
                    i.diagnosis,
                    i.reason.as_deref().unwrap_or("-")
                );
            }
        }
        for (id, i) in &incidents {
            if !open.contains_key(id) {
                println!("INCIDENT #{id} resolved: {}", i.monitor);
            }
        }
        incidents = open;
    }
    println!("stopping: the agent drains its buffer, the collector flushes");
    let _ = stop_tx.send(true);
    let _ = agent.await;
    let _ = server.await;
    Ok(())
}

fn line(id: &str, location: &str, r: &pb::CheckResult) -> String {
    let status = pb::Status::try_from(r.status)
        .map(|s| s.as_str_name().trim_start_matches("STATUS_"))
        .unwrap_or("?");
    let reason = pb::Reason::try_from(r.reason)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("REASON_")
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let ph = r.phases.unwrap_or_default();
    let ms = |v: Option<u64>| {
        v.map(|us| format!("{:.2}ms", us as f64 / 1000.0))
            .unwrap_or_else(|| "-".into())
    };
    let mut extra = String::new();
    if let Some(d) = &r.details
        && let Some(days) = d.cert_days_left
    {
        extra = format!(" cert {days}d left");
    }
    format!(
        "{:<26} {:<18} {:<9} {:<18} {:<22} connect={:<9} tls={:<9} total={}{}{}",
        id,
        location,
        status,
        reason,
        r.address,
        ms(ph.connect_us),
        ms(ph.tls_us),
        ms(Some(ph.total_us)),
        extra,
        if r.message.is_empty() {
            String::new()
        } else {
            format!(" - {}", r.message)
        }
    )
}

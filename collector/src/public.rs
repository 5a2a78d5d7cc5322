//! The collector's own public location, `public:<region>`: the agent's probe
//! engine and scheduler running in-process (no second copy of any prober),
//! with the `PublicOnly` address policy so a monitor cannot turn the
//! collector into an SSRF tool against its own loopback, its cloud metadata
//! service or the network it sits in. Such a check comes back down with
//! reason `blocked_address` and a message that says to use an agent.
//!
//! It runs the monitors whose locations select this region, follows every
//! change of the monitor set, and stores its results like an agent's: numbered
//! per source (`public:<region>`), written in small batches (one fsync each).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portwatch_agent::check::spec_from_proto;
use portwatch_agent::probe::{AddressPolicy, Engine, PublicOnly, Registry};
use portwatch_agent::resolve::Resolver;
use portwatch_agent::scheduler::{FirstRun, Monitor as Scheduled, ScheduledResult, Scheduler};
use portwatch_proto::v1 as pb;
use tokio::sync::{mpsc, watch};

use crate::monitors::registry::MonitorRegistry;
use crate::store::{Sample, Store};

/// The public location's sequence space: one per region, kept across
/// restarts (numbering continues from the store's watermark).
const PUBLIC_EPOCH: u64 = 1;

/// Settings of the public prober.
#[derive(Debug, Clone)]
pub struct PublicConfig {
    /// The location is `public:<region>`.
    pub region: String,
    /// Lets checks reach private and special addresses (labs and tests only).
    pub allow_private_targets: bool,
    /// Checks running at once.
    pub max_in_flight: usize,
    /// Results arriving within this time share one write.
    pub linger: Duration,
}

impl Default for PublicConfig {
    fn default() -> Self {
        PublicConfig {
            region: "collector".into(),
            allow_private_targets: false,
            max_in_flight: 256,
            linger: Duration::from_millis(200),
        }
    }
}

impl PublicConfig {
    pub fn location(&self) -> String {
        format!("public:{}", self.region)
    }

    /// The policy every public check runs under.
    pub fn policy(&self) -> PublicOnly {
        if self.allow_private_targets {
            PublicOnly::allowing_private()
        } else {
            PublicOnly::new()
        }
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// What this region runs now, as the scheduler takes it.
fn scheduled(monitors: &MonitorRegistry, region: &str) -> Vec<Scheduled> {
    monitors
        .public_for(region)
        .into_iter()
        .filter_map(|m| match spec_from_proto(&m.spec) {
            Ok((spec, interval)) => Some(Scheduled {
                id: m.name,
                interval,
                spec: Arc::new(spec),
            }),
            // The registry validated it with the same rules: this is a bug.
            Err(e) => {
                tracing::error!(monitor = %m.name, error = %e, "public probe cannot run monitor");
                None
            }
        })
        .collect()
}

/// Runs the public location until `stop` turns true. The resolver is the
/// system's (`/etc/resolv.conf`); pass another for tests.
pub async fn run(
    config: PublicConfig,
    resolver: Resolver,
    monitors: MonitorRegistry,
    store: Arc<dyn Store>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let location = config.location();
    let policy = config.policy();
    if policy.allows_private() {
        tracing::warn!(location = %location, "allow_private_targets is on: public probes may reach private and special addresses (labs and tests only)");
    }
    let policy: Arc<dyn AddressPolicy> = Arc::new(policy);
    let engine = Arc::new(Engine::new(resolver, Registry::standard(), policy));
    let (tx, mut rx) = mpsc::channel::<ScheduledResult>(4096);
    let scheduler = Scheduler::spawn(Vec::new(), engine, config.max_in_flight, tx)
        .map_err(|e| e.to_string())?;
    let mut changes = monitors.changes();
    changes.mark_changed();
    let mut seq = match store.watermark(&location) {
        Ok(Some((PUBLIC_EPOCH, high))) => high,
        Ok(_) => 0,
        Err(e) => return Err(format!("reading the public location's watermark: {e}")),
    };
    // The whole set at start keeps its phases (no burst); monitors added or
    // changed later run once at once.
    let mut first = FirstRun::AtPhase;
    tracing::info!(location = %location, "public probes running");
    let mut pending: Vec<(u64, pb::CheckResult)> = Vec::new();
    let mut flush_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
                let set = scheduled(&monitors, &config.region);
                match scheduler.update_with(set, std::mem::replace(&mut first, FirstRun::Now)).await {
                    Ok(s) => tracing::info!(location = %location, added = s.added, removed = s.removed, kept = s.kept, "public monitors updated"),
                    Err(e) => tracing::error!(location = %location, error = %e, "updating public monitors failed"),
                }
            }
            r = rx.recv() => {
                let Some(r) = r else { break };
                seq += 1;
                let wire = r.result.to_proto(&r.monitor_id, unix_ms(r.scheduled_at), unix_ms(r.started_at));
                pending.push((seq, wire));
                flush_at.get_or_insert_with(|| tokio::time::Instant::now() + config.linger);
                if pending.len() >= 1000 {
                    flush(&store, &location, &mut pending).await;
                    flush_at = None;
                }
            }
            _ = async { tokio::time::sleep_until(flush_at.unwrap_or_else(tokio::time::Instant::now)).await }, if flush_at.is_some() => {
                flush(&store, &location, &mut pending).await;
                flush_at = None;
            }
        }
    }
    let report = scheduler.shutdown(Duration::from_secs(2)).await;
    while let Ok(r) = rx.try_recv() {
        seq += 1;
        let wire = r.result.to_proto(
            &r.monitor_id,
            unix_ms(r.scheduled_at),
            unix_ms(r.started_at),
        );
        pending.push((seq, wire));
    }
    flush(&store, &location, &mut pending).await;
    tracing::info!(location = %location, drained = report.drained, cancelled = report.cancelled, "public probes stopped");
    Ok(())
}

async fn flush(store: &Arc<dyn Store>, location: &str, pending: &mut Vec<(u64, pb::CheckResult)>) {
    if pending.is_empty() {
        return;
    }
    let samples: Vec<Sample> = std::mem::take(pending)
        .into_iter()
        .map(|(seq, result)| Sample {
            monitor_id: result.monitor_id.clone(),
            location: location.to_owned(),
            seq,
            result,
        })
        .collect();
    let n = samples.len();
    // The write fsyncs: keep it off the runtime's worker threads.
    let (store, loc) = (Arc::clone(store), location.to_owned());
    let outcome = tokio::task::spawn_blocking(move || {
        store
            .ingest(
                &loc,
                PUBLIC_EPOCH,
                unix_ms(SystemTime::now()),
                &samples,
                &[],
            )
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    if let Err(e) = outcome {
        tracing::error!(location = %location, results = n, error = %e, "storing public results failed: they are lost");
    }
}

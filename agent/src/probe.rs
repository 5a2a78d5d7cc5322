//! The probe engine: one `Prober` per check type, registered in one place
//! (`Registry::standard`), and `Engine::run`, which resolves the target, applies
//! the location's address policy, runs the prober under the check's deadline
//! and turns the raw outcome into the final verdict (slow, expect-closed).
//!
//! The collector's public probes run this same engine with a public-address
//! policy; there is no second copy of any prober.

pub mod dns;
pub mod icmp;
pub mod ntp;
pub mod policy;
pub mod preset;
pub mod tcp;
pub mod tls;
pub mod udp;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::time::Instant;

use crate::check::{CheckSpec, Host, Protocol};
use crate::resolve::Resolver;
use crate::result::{CheckResult, Reason, Status, micros};

/// Which targets a location may probe: agents everything (`AllowAll`), the
/// collector's public probes no special-purpose address (`PublicOnly`).
pub use policy::{AddressPolicy, AllowAll, PublicOnly, Restricted};

/// Everything a prober needs for one run. The address is already resolved and
/// allowed by the policy.
pub struct ProbeCtx<'a> {
    pub spec: &'a CheckSpec,
    pub addr: SocketAddr,
    /// Host name for SNI, certificate checks and protocol greetings.
    pub server_name: &'a str,
    /// The check must be finished by then.
    pub deadline: Instant,
}

pub type ProbeFuture<'a> = Pin<Box<dyn Future<Output = CheckResult> + Send + 'a>>;

/// One check type. A prober fills status, reason, message, the `connect`, `tls`
/// and `first_byte` phases and the details; the engine adds the address, the
/// `dns` and `total` phases and the final verdict.
pub trait Prober: Send + Sync {
    fn protocol(&self) -> Protocol;
    fn probe<'a>(&'a self, ctx: ProbeCtx<'a>) -> ProbeFuture<'a>;
}

/// The probers of an engine, by protocol.
pub struct Registry {
    probers: HashMap<Protocol, Arc<dyn Prober>>,
}

impl Registry {
    /// Every prober portwatch ships: the one place check types are registered.
    pub fn standard() -> Registry {
        let mut r = Registry {
            probers: HashMap::new(),
        };
        r.register(Arc::new(tcp::TcpProber));
        r.register(Arc::new(udp::UdpProber));
        r.register(Arc::new(icmp::IcmpProber::default()));
        r
    }

    pub fn register(&mut self, p: Arc<dyn Prober>) {
        self.probers.insert(p.protocol(), p);
    }

    pub fn get(&self, proto: Protocol) -> Option<&Arc<dyn Prober>> {
        self.probers.get(&proto)
    }
}

/// Runs checks. Cheap to share behind an `Arc`; one per process is enough.
pub struct Engine {
    resolver: Resolver,
    registry: Registry,
    policy: Arc<dyn AddressPolicy>,
}

impl Engine {
    pub fn new(resolver: Resolver, registry: Registry, policy: Arc<dyn AddressPolicy>) -> Engine {
        Engine {
            resolver,
            registry,
            policy,
        }
    }

    /// The standard probers, all addresses allowed.
    pub fn with_resolver(resolver: Resolver) -> Engine {
        Engine::new(resolver, Registry::standard(), Arc::new(AllowAll))
    }

    /// Runs one check to completion. Never takes longer than the spec's timeout
    /// (plus scheduling noise); failures come back as data.
    pub async fn run(&self, spec: &CheckSpec) -> CheckResult {
        let start = Instant::now();
        let deadline = start + spec.timeout;
        let mut result = self.run_inner(spec, start, deadline).await;
        result.phases.total = micros(start.elapsed());
        finish_verdict(spec, &mut result);
        result
    }

    async fn run_inner(&self, spec: &CheckSpec, start: Instant, deadline: Instant) -> CheckResult {
        let (ips, dns_us) = match &spec.target.host {
            Host::Ip(ip) => (vec![*ip], None),
            Host::Name(name) => {
                let lookup =
                    tokio::time::timeout_at(deadline, self.resolver.resolve(name, spec.family))
                        .await;
                let dns_us = Some(micros(start.elapsed()));
                match lookup {
                    Ok(Ok(ips)) => (ips, dns_us),
                    Ok(Err(f)) => {
                        let mut r = CheckResult::new(Status::Down, f.reason, f.message);
                        r.phases.dns = dns_us;
                        return r;
                    }
                    Err(_) => {
                        let mut r = CheckResult::new(
                            Status::Down,
                            Reason::DnsTimeout,
                            format!("dns {name}: no answer within the check timeout"),
                        );
                        r.phases.dns = dns_us;
                        return r;
                    }
                }
            }
        };
        // Every resolved address must pass, not just the one we would connect to:
        // otherwise a name with one public and one private address slips through.
        for ip in &ips {
            let candidate = SocketAddr::new(*ip, spec.target.port);
            if let Err(why) = self.policy.check(candidate) {
                let mut r = CheckResult::new(Status::Down, Reason::BlockedAddress, why);
                r.address = Some(candidate);
                r.phases.dns = dns_us;
                return r;
            }
        }
        let addr = SocketAddr::new(ips[0], spec.target.port);
        let Some(prober) = self.registry.get(spec.target.protocol) else {
            let mut r = CheckResult::new(
                Status::Down,
                Reason::Internal,
                format!("no prober registered for {}", spec.target.protocol.as_str()),
            );
            r.address = Some(addr);
            return r;
        };
        let server_name = spec.server_name();
        let ctx = ProbeCtx {
            spec,
            addr,
            server_name: &server_name,
            deadline,
        };
        // Probers honour the deadline themselves; this is the backstop that keeps
        // a misbehaving one from holding a scheduler slot forever.
        let backstop = deadline + std::time::Duration::from_millis(50);
        let mut r = match tokio::time::timeout_at(backstop, prober.probe(ctx)).await {
            Ok(r) => r,
            Err(_) => CheckResult::new(
                Status::Down,
                Reason::Timeout,
                "check did not finish within its timeout",
            ),
        };
        r.address = Some(addr);
        r.phases.dns = dns_us;
        r
    }
}

/// Applies the spec's degraded threshold and expect-closed inversion.
fn finish_verdict(spec: &CheckSpec, r: &mut CheckResult) {
    if let (Some(limit), Status::Up) = (spec.degraded_after, r.status) {
        let handshake = match spec.target.protocol {
            Protocol::Tcp => r.phases.connect,
            Protocol::Udp | Protocol::Icmp => r.phases.first_byte,
        };
        if let Some(us) = handshake
            && us > micros(limit)
        {
            r.status = Status::Degraded;
            r.reason = Reason::Slow;
            r.message = format!(
                "handshake took {:.1} ms, above the {} ms threshold",
                us as f64 / 1000.0,
                limit.as_millis()
            );
        }
    }
    if spec.expect_closed {
        match r.reason {
            // Nothing accepted the connection: closed as it must be.
            Reason::Refused
            | Reason::Timeout
            | Reason::NetUnreachable
            | Reason::HostUnreachable
            | Reason::NoReply => {
                r.status = Status::Up;
                r.message = format!("closed as expected ({})", r.reason);
            }
            // Could not tell: resolution or policy failures stay what they are.
            Reason::DnsNxdomain
            | Reason::DnsServfail
            | Reason::DnsTimeout
            | Reason::BlockedAddress
            | Reason::Internal => {}
            // Something answered on a port that must be closed.
            _ => {
                r.status = Status::Down;
                r.reason = Reason::Exposed;
                r.message = "port is open but must be closed".to_owned();
            }
        }
    }
}

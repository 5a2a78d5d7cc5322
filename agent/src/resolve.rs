//! Name resolution for checks, through a real stub resolver (hickory) so DNS
//! failures are data: NXDOMAIN, SERVFAIL/REFUSED and timeout are told apart,
//! and a lookup never blocks a thread the way getaddrinfo would.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
    ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;

use crate::check::Family;
use crate::result::Reason;

/// A DNS failure, already sorted into the taxonomy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsFailure {
    pub reason: Reason,
    pub message: String,
}

/// Why a resolver could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    #[error("reading the system resolver configuration (/etc/resolv.conf): {0}")]
    System(String),
    #[error("building the resolver: {0}")]
    Build(String),
}

/// The resolver every check uses. Cheap to clone (shared cache and connections).
#[derive(Clone)]
pub struct Resolver {
    /// `None` for a resolver that only accepts IP literals (no configuration was available).
    inner: Option<TokioResolver>,
}

impl Resolver {
    /// Reads `/etc/resolv.conf` and honours `/etc/hosts`, like the system would.
    pub fn system() -> Result<Resolver, ResolverError> {
        let mut builder =
            TokioResolver::builder_tokio().map_err(|e| ResolverError::System(e.to_string()))?;
        tune(builder.options_mut());
        let inner = builder
            .build()
            .map_err(|e| ResolverError::Build(e.to_string()))?;
        Ok(Resolver { inner: Some(inner) })
    }

    /// A resolver for checks of IP literals only: every name lookup fails. For
    /// hosts without a usable resolver configuration.
    pub fn literal_only() -> Resolver {
        Resolver { inner: None }
    }

    /// Asks only `nameserver` (UDP, TCP on truncation), never the hosts file nor the system's
    /// resolver. `timeout` bounds each attempt.
    pub fn with_nameserver(
        nameserver: SocketAddr,
        timeout: Duration,
    ) -> Result<Resolver, ResolverError> {
        let mut udp = ConnectionConfig::udp();
        udp.port = nameserver.port();
        let mut tcp = ConnectionConfig::tcp();
        tcp.port = nameserver.port();
        let ns = NameServerConfig::new(nameserver.ip(), true, vec![udp, tcp]);
        let config = ResolverConfig::from_name_servers(vec![ns]);
        let mut builder =
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        let opts = builder.options_mut();
        tune(opts);
        opts.use_hosts_file = ResolveHosts::Never;
        opts.timeout = timeout;
        let inner = builder
            .build()
            .map_err(|e| ResolverError::Build(e.to_string()))?;
        Ok(Resolver { inner: Some(inner) })
    }

    /// Resolves `host` to the addresses of `family`, in the resolver's preference order.
    pub async fn resolve(&self, host: &str, family: Family) -> Result<Vec<IpAddr>, DnsFailure> {
        let Some(inner) = &self.inner else {
            return Err(DnsFailure {
                reason: Reason::DnsServfail,
                message: format!("dns {host}: no resolver is configured on this host"),
            });
        };
        let lookup = inner
            .lookup_ip(host)
            .await
            .map_err(|e| classify(host, &e))?;
        let ips: Vec<IpAddr> = lookup
            .iter()
            .filter(|ip| match family {
                Family::Any => true,
                Family::V4 => ip.is_ipv4(),
                Family::V6 => ip.is_ipv6(),
            })
            .collect();
        if ips.is_empty() {
            let fam = match family {
                Family::V4 => "IPv4",
                Family::V6 => "IPv6",
                Family::Any => "IP",
            };
            return Err(DnsFailure {
                reason: Reason::DnsNxdomain,
                message: format!("{host} has no {fam} address"),
            });
        }
        Ok(ips)
    }
}

fn tune(opts: &mut ResolverOpts) {
    // Both families in parallel, IPv4 first: most private services listen on IPv4.
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    // A monitor must see a failure when it happens, not after a long cached TTL.
    opts.cache_size = 1024;
    opts.positive_max_ttl = Some(Duration::from_secs(30));
    opts.negative_max_ttl = Some(Duration::from_secs(5));
    opts.attempts = 1;
}

/// Sorts a resolver error into NXDOMAIN / SERVFAIL / timeout.
fn classify(host: &str, err: &NetError) -> DnsFailure {
    let (reason, what) = match err {
        NetError::Dns(DnsError::NoRecordsFound(nr))
            if nr.response_code == ResponseCode::NXDomain =>
        {
            (
                Reason::DnsNxdomain,
                "NXDOMAIN: the name does not exist".to_owned(),
            )
        }
        NetError::Dns(DnsError::NoRecordsFound(nr)) => (
            Reason::DnsNxdomain,
            format!("no address records ({})", nr.response_code),
        ),
        NetError::Dns(DnsError::ResponseCode(code)) => {
            (Reason::DnsServfail, format!("the resolver answered {code}"))
        }
        NetError::Timeout => (
            Reason::DnsTimeout,
            "no resolver answered in time".to_owned(),
        ),
        NetError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => (
            Reason::DnsTimeout,
            "no resolver answered in time".to_owned(),
        ),
        // A closed resolver port (ICMP refused on UDP) or no usable server: nothing answered.
        NetError::Io(_) | NetError::NoConnections | NetError::Busy => {
            (Reason::DnsTimeout, format!("no resolver answered: {err}"))
        }
        other => (Reason::DnsServfail, format!("resolution failed: {other}")),
    };
    DnsFailure {
        reason,
        message: format!("dns {host}: {what}"),
    }
}

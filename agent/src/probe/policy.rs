//! Address policies: which targets a location may probe. The engine resolves a
//! name once, asks the policy about EVERY resolved address (with the target's
//! port) and dials only an address it asked about, so neither DNS rebinding nor
//! a name with one public and one private address gets past a policy.
//!
//! - `AllowAll`: the agent's default; agents probe private networks, that is
//!   their job.
//! - `PublicOnly`: the collector's public probes. It refuses every IANA
//!   special-purpose range below, so a monitor cannot turn the collector into
//!   a tool for reaching its own loopback, its cloud metadata service
//!   (169.254.169.254) or the network it sits in (SSRF).
//!   `PublicOnly::allowing_private()` allows everything, for labs and tests
//!   (`allow_private_targets = true` in the collector's config).
//! - `Restricted`: an agent an operator wants to limit to some networks
//!   (`--allow-targets 10.0.0.0/8,2001:db8::/32`) and optionally some ports
//!   (`--allow-ports 22,443,5000-5999`). ICMP targets have no port (port 0):
//!   a port restriction never blocks them, only the networks do.
//!
//! The ranges `PublicOnly` refuses (`SPECIAL_PURPOSE`; a unit test checks this
//! table against it, so the two cannot drift):
//!
//! | range | what it is |
//! |---|---|
//! | `0.0.0.0/8` | "this network" |
//! | `10.0.0.0/8` | private-use |
//! | `100.64.0.0/10` | shared address space (carrier-grade NAT) |
//! | `127.0.0.0/8` | loopback |
//! | `169.254.0.0/16` | link-local, incl. cloud metadata services |
//! | `172.16.0.0/12` | private-use |
//! | `192.0.0.0/24` | IETF protocol assignments |
//! | `192.0.2.0/24` | documentation (TEST-NET-1) |
//! | `192.88.99.0/24` | 6to4 relay anycast (deprecated) |
//! | `192.168.0.0/16` | private-use |
//! | `198.18.0.0/15` | benchmarking |
//! | `198.51.100.0/24` | documentation (TEST-NET-2) |
//! | `203.0.113.0/24` | documentation (TEST-NET-3) |
//! | `224.0.0.0/4` | multicast |
//! | `240.0.0.0/4` | reserved, incl. broadcast 255.255.255.255 |
//! | `::/128` | unspecified |
//! | `::1/128` | loopback |
//! | `::ffff:0.0.0.0/96` | IPv4-mapped |
//! | `::/96` | IPv4-compatible (deprecated) |
//! | `64:ff9b::/96` | NAT64 |
//! | `64:ff9b:1::/48` | local-use NAT64 |
//! | `100::/64` | discard-only |
//! | `2001::/23` | IETF protocol assignments |
//! | `2001::/32` | Teredo |
//! | `2001:db8::/32` | documentation |
//! | `2002::/16` | 6to4 |
//! | `3fff::/20` | documentation |
//! | `5f00::/16` | segment routing (SRv6) SIDs |
//! | `fc00::/7` | unique-local |
//! | `fe80::/10` | link-local |
//! | `fec0::/10` | site-local (deprecated) |
//! | `ff00::/8` | multicast |
//!
//! An address in several ranges is named by the most specific one (`::1` is
//! loopback, not IPv4-compatible). The IPv6 forms that carry an IPv4 address
//! (mapped, IPv4-compatible, NAT64, 6to4, Teredo's client) are refused whole;
//! the refusal also names the embedded IPv4 address and its range when that
//! address is special itself, because that is what the monitor really points at.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

#[cfg(test)]
mod tests;

/// Which targets a location may probe.
pub trait AddressPolicy: Send + Sync {
    /// `Err(why)` refuses the target; `why` says what to do instead. The port
    /// is 0 for ICMP, which has none.
    fn check(&self, addr: SocketAddr) -> Result<(), String>;
}

/// The agent's default: every address is allowed.
pub struct AllowAll;

impl AddressPolicy for AllowAll {
    fn check(&self, _addr: SocketAddr) -> Result<(), String> {
        Ok(())
    }
}

/// An IP network: an address whose bits after the prefix are zero, and the prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    const fn v4(a: [u8; 4], prefix: u8) -> Cidr {
        Cidr {
            addr: IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
            prefix,
        }
    }

    const fn v6(s: [u16; 8], prefix: u8) -> Cidr {
        Cidr {
            addr: IpAddr::V6(Ipv6Addr::new(
                s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
            )),
            prefix,
        }
    }

    /// The network of `addr` with `prefix` bits. Refuses an `addr` with bits set
    /// after the prefix: a typo more often than not.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        let bits = bits_of(addr);
        if prefix > bits {
            return Err(CidrError::PrefixTooLong {
                prefix,
                bits,
                family: if addr.is_ipv4() { "IPv4" } else { "IPv6" },
            });
        }
        let cidr = Cidr { addr, prefix };
        if cidr.first() != addr {
            return Err(CidrError::HostBits {
                given: format!("{addr}/{prefix}"),
                network: Cidr {
                    addr: cidr.first(),
                    prefix,
                },
            });
        }
        Ok(cidr)
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in the network. Never across families: `::ffff:10.0.0.1`
    /// is not in `10.0.0.0/8` (`Restricted` canonicalises mapped addresses itself).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                (u32::from(n) ^ u32::from(a)) as u128 & self.mask() == 0
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => (u128::from(n) ^ u128::from(a)) & self.mask() == 0,
            _ => false,
        }
    }

    /// The lowest address of the network.
    pub fn first(&self) -> IpAddr {
        self.with_host_bits(0)
    }

    /// The highest address of the network.
    pub fn last(&self) -> IpAddr {
        self.with_host_bits(u128::MAX)
    }

    /// The prefix as a mask over the family's width (low bits of the u128 for IPv4).
    fn mask(&self) -> u128 {
        let bits = bits_of(self.addr) as u32;
        let ones = u128::MAX >> (128 - bits);
        ones & !ones.checked_shr(self.prefix as u32).unwrap_or(0)
    }

    fn with_host_bits(&self, host: u128) -> IpAddr {
        match self.addr {
            IpAddr::V4(n) => {
                let v = (u32::from(n) as u128 & self.mask()) | (host & !self.mask() & 0xffff_ffff);
                IpAddr::V4(Ipv4Addr::from(v as u32))
            }
            IpAddr::V6(n) => {
                let v = (u128::from(n) & self.mask()) | (host & !self.mask());
                IpAddr::V6(Ipv6Addr::from(v))
            }
        }
    }
}

/// Why a network could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not an IPv4 or IPv6 address")]
    Address(String),
    #[error("prefix length {0:?} is not a number of bits")]
    Prefix(String),
    #[error("prefix length {prefix} is longer than the {bits} bits of an {family} address")]
    PrefixTooLong {
        prefix: u8,
        bits: u8,
        family: &'static str,
    },
    #[error("{given} has bits set after the prefix: did you mean {network}?")]
    HostBits { given: String, network: Cidr },
}

fn bits_of(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// `10.0.0.0/8`, `2001:db8::/32`, or a bare address (`192.168.1.5` is `/32`).
impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| CidrError::Address(addr.to_owned()))?;
        let prefix = match prefix {
            None => bits_of(addr),
            Some(p) => p
                .parse::<u8>()
                .map_err(|_| CidrError::Prefix(p.to_owned()))?,
        };
        Cidr::new(addr, prefix)
    }
}

/// How a special range carries an IPv4 address, for the refusal message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Embeds {
    Nothing,
    /// The low 32 bits are the IPv4 address of the same host (mapped,
    /// IPv4-compatible, NAT64).
    Low32,
    /// Local-use NAT64 (RFC 8215) when used as a /96: bits 48-95 are zero and the
    /// low 32 bits are the IPv4 address. Other layouts embed nothing we can tell.
    Low32IfPadded,
    /// Bits 16-47: the IPv4 address of the 6to4 site's router.
    SixToFour,
    /// The low 32 bits, inverted: the Teredo client's public IPv4 address.
    TeredoClient,
}

/// One row of the special-purpose table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialRange {
    pub cidr: Cidr,
    pub name: &'static str,
    pub embeds: Embeds,
}

const fn row(cidr: Cidr, name: &'static str, embeds: Embeds) -> SpecialRange {
    SpecialRange { cidr, name, embeds }
}

/// Every range `PublicOnly` refuses (the IANA IPv4 and IPv6 special-purpose
/// registries, minus the few entries marked globally reachable). The module
/// documentation shows this table.
pub const SPECIAL_PURPOSE: &[SpecialRange] = &[
    row(
        Cidr::v4([0, 0, 0, 0], 8),
        "\"this network\"",
        Embeds::Nothing,
    ),
    row(Cidr::v4([10, 0, 0, 0], 8), "private-use", Embeds::Nothing),
    row(
        Cidr::v4([100, 64, 0, 0], 10),
        "shared address space (carrier-grade NAT)",
        Embeds::Nothing,
    ),
    row(Cidr::v4([127, 0, 0, 0], 8), "loopback", Embeds::Nothing),
    row(
        Cidr::v4([169, 254, 0, 0], 16),
        "link-local, incl. cloud metadata services",
        Embeds::Nothing,
    ),
    row(
        Cidr::v4([172, 16, 0, 0], 12),
        "private-use",
        Embeds::Nothing,
    ),
    row(
        Cidr::v4([192, 0, 0, 0], 24),
        "IETF protocol assignments",
        Embeds::Nothing,
    ),
    row(
        Cidr::v4([192, 0, 2, 0], 24),
        "documentation (TEST-NET-1)",
        Embeds::Nothing,
    ),
    row(
        Cidr::v4([192, 88, 99, 0], 24),
        "6to4 relay anycast (deprecated)",
        Embeds::Nothing,
    ),
    row(
        Cidr::v4([192, 168, 0, 0], 16),
        "private-use",
        Embeds::Nothing,
    ),
    row(
        Cidr::v4([198, 18, 0, 0], 15),
        "benchmarking",
        Embeds::Nothing,
    ),
    row(
        Cidr::v4([198, 51, 100, 0], 24),
        "documentation (TEST-NET-2)",
        Embeds::Nothing,
    ),
    row(
        Cidr::v4([203, 0, 113, 0], 24),
        "documentation (TEST-NET-3)",
        Embeds::Nothing,
    ),
    row(Cidr::v4([224, 0, 0, 0], 4), "multicast", Embeds::Nothing),
    row(
        Cidr::v4([240, 0, 0, 0], 4),
        "reserved, incl. broadcast 255.255.255.255",
        Embeds::Nothing,
    ),
    row(Cidr::v6([0; 8], 128), "unspecified", Embeds::Nothing),
    row(
        Cidr::v6([0, 0, 0, 0, 0, 0, 0, 1], 128),
        "loopback",
        Embeds::Nothing,
    ),
    row(
        Cidr::v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96),
        "IPv4-mapped",
        Embeds::Low32,
    ),
    row(
        Cidr::v6([0; 8], 96),
        "IPv4-compatible (deprecated)",
        Embeds::Low32,
    ),
    row(
        Cidr::v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96),
        "NAT64",
        Embeds::Low32,
    ),
    row(
        Cidr::v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
        "local-use NAT64",
        Embeds::Low32IfPadded,
    ),
    row(
        Cidr::v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64),
        "discard-only",
        Embeds::Nothing,
    ),
    row(
        Cidr::v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),
        "IETF protocol assignments",
        Embeds::Nothing,
    ),
    row(
        Cidr::v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32),
        "Teredo",
        Embeds::TeredoClient,
    ),
    row(
        Cidr::v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
        "documentation",
        Embeds::Nothing,
    ),
    row(
        Cidr::v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16),
        "6to4",
        Embeds::SixToFour,
    ),
    row(
        Cidr::v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),
        "documentation",
        Embeds::Nothing,
    ),
    row(
        Cidr::v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16),
        "segment routing (SRv6) SIDs",
        Embeds::Nothing,
    ),
    row(
        Cidr::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
        "unique-local",
        Embeds::Nothing,
    ),
    row(
        Cidr::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
        "link-local",
        Embeds::Nothing,
    ),
    row(
        Cidr::v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
        "site-local (deprecated)",
        Embeds::Nothing,
    ),
    row(
        Cidr::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),
        "multicast",
        Embeds::Nothing,
    ),
];

/// The most specific special-purpose range `ip` is in, if any.
pub fn special_range(ip: IpAddr) -> Option<&'static SpecialRange> {
    SPECIAL_PURPOSE
        .iter()
        .filter(|r| r.cidr.contains(ip))
        .max_by_key(|r| r.cidr.prefix_len())
}

impl SpecialRange {
    /// The IPv4 address `ip` (an address in this range) carries, if the range embeds one.
    pub fn embedded_v4(&self, ip: IpAddr) -> Option<Ipv4Addr> {
        let IpAddr::V6(v6) = ip else { return None };
        let bits = u128::from(v6);
        match self.embeds {
            Embeds::Nothing => None,
            Embeds::Low32 => Some(Ipv4Addr::from(bits as u32)),
            Embeds::Low32IfPadded => {
                ((bits >> 32) & 0xffff_ffff_ffff == 0).then(|| Ipv4Addr::from(bits as u32))
            }
            Embeds::SixToFour => Some(Ipv4Addr::from((bits >> 80) as u32)),
            Embeds::TeredoClient => Some(Ipv4Addr::from(!(bits as u32))),
        }
    }
}

const USE_AN_AGENT: &str = "run this check from an agent inside that network";

/// Why `PublicOnly` refuses `ip`, which is in `range`, and what to do instead.
fn refusal(ip: IpAddr, range: &SpecialRange) -> String {
    let head = format!(
        "{ip} is in {} ({}), which public probes never connect to",
        range.cidr, range.name
    );
    let Some(v4) = range.embedded_v4(ip) else {
        return format!("{head}: {USE_AN_AGENT}");
    };
    match special_range(IpAddr::V4(v4)) {
        Some(inner) => format!(
            "{head}; it embeds {v4}, which is in {} ({}): {USE_AN_AGENT}",
            inner.cidr, inner.name
        ),
        // The same host, written as IPv4: that is the address to monitor.
        None if matches!(range.embeds, Embeds::Low32 | Embeds::Low32IfPadded) => {
            format!("{head}: monitor the IPv4 address {v4} instead")
        }
        // A tunnel endpoint, not the host: the host's native address is what to monitor.
        None => {
            format!("{head}: it tunnels through {v4}; monitor the host's native address instead")
        }
    }
}

/// The collector's public probes: refuses every special-purpose range
/// (`SPECIAL_PURPOSE`) unless built with `allowing_private()`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublicOnly {
    allow_private: bool,
}

impl PublicOnly {
    /// Public addresses only: the setting for any collector reachable by people
    /// who should not reach its network.
    pub fn new() -> PublicOnly {
        PublicOnly::default()
    }

    /// Allows every address (labs, tests, a collector inside the network it
    /// watches). Still a `PublicOnly`, so the collector can warn about it.
    pub fn allowing_private() -> PublicOnly {
        PublicOnly {
            allow_private: true,
        }
    }

    /// Whether this policy lets private and special addresses through.
    pub fn allows_private(&self) -> bool {
        self.allow_private
    }
}

impl AddressPolicy for PublicOnly {
    fn check(&self, addr: SocketAddr) -> Result<(), String> {
        if self.allow_private {
            return Ok(());
        }
        match (special_range(addr.ip()), addr.ip()) {
            (Some(range), ip) => Err(refusal(ip, range)),
            // Only 2000::/3 is allocated for global unicast; anything else
            // (unassigned space, future special uses) is refused until IANA
            // says it is public.
            (None, IpAddr::V6(v6)) if v6.segments()[0] & 0xe000 != 0x2000 => Err(format!(
                "{v6} is outside IPv6 global unicast (2000::/3), which public probes never connect to: {USE_AN_AGENT}"
            )),
            (None, _) => Ok(()),
        }
    }
}

/// A location's policy that the collector can tighten at run time: an agent
/// enrolled as a public location is told so in its assignment, and from then
/// on refuses what `PublicOnly` refuses, on top of its own policy. It never
/// loosens again while the process runs.
pub struct Tightenable {
    base: std::sync::Arc<dyn AddressPolicy>,
    public_only: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Tightenable {
    /// `base`, plus the public-address rule once `switch` is set.
    pub fn new(
        base: std::sync::Arc<dyn AddressPolicy>,
        switch: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> Tightenable {
        Tightenable {
            base,
            public_only: switch,
        }
    }
}

impl AddressPolicy for Tightenable {
    fn check(&self, addr: SocketAddr) -> Result<(), String> {
        if self.public_only.load(std::sync::atomic::Ordering::Acquire) {
            PublicOnly::new().check(addr)?;
        }
        self.base.check(addr)
    }
}

/// Why an allow-list could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{entry:?} is not an IP address or network like 10.0.0.0/8 or 2001:db8::/32: {why}")]
    Network { entry: String, why: CidrError },
    #[error("{entry:?} is not a port or port range like 22 or 5000-5999: {why}")]
    Port { entry: String, why: String },
    #[error("{list:?} has an empty entry (two commas, or a comma at an end)")]
    EmptyEntry { list: String },
    #[error("the list is empty")]
    Empty,
}

/// Parses `10.0.0.0/8,2001:db8::/32,192.168.1.5` (spaces around entries allowed).
pub fn parse_networks(list: &str) -> Result<Vec<Cidr>, PolicyError> {
    entries(list)?
        .map(|e| {
            e.parse().map_err(|why| PolicyError::Network {
                entry: e.to_owned(),
                why,
            })
        })
        .collect()
}

fn entries(list: &str) -> Result<impl Iterator<Item = &str>, PolicyError> {
    if list.trim().is_empty() {
        return Err(PolicyError::Empty);
    }
    if list.split(',').any(|e| e.trim().is_empty()) {
        return Err(PolicyError::EmptyEntry {
            list: list.to_owned(),
        });
    }
    Ok(list.split(',').map(str::trim))
}

/// A set of TCP/UDP ports: `22,80,443,5000-5999`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSet {
    ranges: Vec<(u16, u16)>,
}

impl PortSet {
    pub fn contains(&self, port: u16) -> bool {
        self.ranges.iter().any(|&(lo, hi)| lo <= port && port <= hi)
    }
}

impl FromStr for PortSet {
    type Err = PolicyError;

    fn from_str(list: &str) -> Result<PortSet, PolicyError> {
        let port = |entry: &str, s: &str| -> Result<u16, PolicyError> {
            let bad = |why: String| PolicyError::Port {
                entry: entry.to_owned(),
                why,
            };
            match s.trim().parse::<u64>() {
                Ok(p @ 1..=65535) => Ok(p as u16),
                Ok(p) => Err(bad(format!("{p} is not in 1-65535"))),
                Err(_) => Err(bad(format!("{:?} is not a number", s.trim()))),
            }
        };
        let ranges = entries(list)?
            .map(|e| {
                let (lo, hi) = match e.split_once('-') {
                    Some((lo, hi)) => (port(e, lo)?, port(e, hi)?),
                    None => (port(e, e)?, port(e, e)?),
                };
                if lo > hi {
                    return Err(PolicyError::Port {
                        entry: e.to_owned(),
                        why: format!("the range runs backwards (did you mean {hi}-{lo}?)"),
                    });
                }
                Ok((lo, hi))
            })
            .collect::<Result<_, _>>()?;
        Ok(PortSet { ranges })
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(lo, hi)) in self.ranges.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            if lo == hi {
                write!(f, "{sep}{lo}")?;
            } else {
                write!(f, "{sep}{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

/// An agent limited to some networks and, optionally, some ports. `None` for
/// either means "any". Port 0 (ICMP, which has no port) passes any port list.
/// IPv4-mapped IPv6 targets are judged as the IPv4 address they reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restricted {
    networks: Option<Vec<Cidr>>,
    ports: Option<PortSet>,
}

impl Restricted {
    pub fn new(networks: Option<Vec<Cidr>>, ports: Option<PortSet>) -> Restricted {
        Restricted { networks, ports }
    }

    /// From the flag syntax: `parse(Some("10.0.0.0/8,192.168.1.5"), Some("22,5000-5999"))`.
    pub fn parse(networks: Option<&str>, ports: Option<&str>) -> Result<Restricted, PolicyError> {
        Ok(Restricted {
            networks: networks.map(parse_networks).transpose()?,
            ports: ports.map(str::parse).transpose()?,
        })
    }
}

/// `10.0.0.0/24,192.168.1.5/32 ports 22,443`, for refusals and logs.
impl fmt::Display for Restricted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.networks {
            Some(nets) if nets.is_empty() => f.write_str("no address")?,
            Some(nets) => {
                let nets: Vec<String> = nets.iter().map(Cidr::to_string).collect();
                f.write_str(&nets.join(","))?;
            }
            None => f.write_str("any address")?,
        }
        match &self.ports {
            Some(ports) => write!(f, " ports {ports}"),
            None => Ok(()),
        }
    }
}

impl AddressPolicy for Restricted {
    fn check(&self, addr: SocketAddr) -> Result<(), String> {
        // A mapped address is dialled as the IPv4 address it carries.
        let ip = addr.ip().to_canonical();
        let network_ok = self
            .networks
            .as_ref()
            .is_none_or(|nets| nets.iter().any(|n| n.contains(ip)));
        // ICMP targets carry port 0: there is no port to restrict.
        let port_ok =
            addr.port() == 0 || self.ports.as_ref().is_none_or(|p| p.contains(addr.port()));
        if network_ok && port_ok {
            return Ok(());
        }
        let target = if addr.port() == 0 {
            addr.ip().to_string()
        } else {
            addr.to_string()
        };
        Err(format!(
            "{target} is outside this agent's allowed targets ({self})"
        ))
    }
}

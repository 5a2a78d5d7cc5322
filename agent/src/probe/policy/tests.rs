//! The policies' decisions and messages. Every address here is only parsed and
//! compared, never contacted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn at(s: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(s), port)
}

fn public(s: &str) -> Result<(), String> {
    PublicOnly::new().check(at(s, 443))
}

/// `ip` plus `delta` (wrapping within its family), for walking across range edges.
fn offset(ip: IpAddr, delta: i128) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(v4) => {
            let v = i128::from(u32::from(v4)) + delta;
            u32::try_from(v).ok().map(|v| IpAddr::V4(Ipv4Addr::from(v)))
        }
        IpAddr::V6(v6) => {
            let v = u128::from(v6).checked_add_signed(delta)?;
            Some(IpAddr::V6(Ipv6Addr::from(v)))
        }
    }
}

fn midpoint(c: &Cidr) -> IpAddr {
    match (c.first(), c.last()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let (a, b) = (u32::from(a), u32::from(b));
            IpAddr::V4(Ipv4Addr::from(a + (b - a).div_ceil(2)))
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let (a, b) = (u128::from(a), u128::from(b));
            IpAddr::V6(Ipv6Addr::from(a + (b - a).div_ceil(2)))
        }
        _ => unreachable!("first and last share a family"),
    }
}

/// The brief's list, written out by hand so the table cannot quietly lose a row.
const EXPECTED: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "::ffff:0:0/96",
    "::/96",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "100::/64",
    "2001::/23",
    "2001::/32",
    "2001:db8::/32",
    "2002::/16",
    "3fff::/20",
    "5f00::/16",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
];

#[test]
fn the_table_holds_every_expected_range_and_nothing_else() {
    let expected: Vec<Cidr> = EXPECTED.iter().map(|s| s.parse().unwrap()).collect();
    let table: Vec<Cidr> = SPECIAL_PURPOSE.iter().map(|r| r.cidr).collect();
    assert_eq!(table, expected);
    for r in SPECIAL_PURPOSE {
        // The const constructors skip `Cidr::new`'s checks: do them here.
        assert_eq!(Cidr::new(r.cidr.first(), r.cidr.prefix_len()), Ok(r.cidr));
    }
}

#[test]
fn module_doc_lists_every_range() {
    let source = include_str!("../policy.rs");
    let doc_rows: Vec<&str> = source
        .lines()
        .filter(|l| l.starts_with("//! | `"))
        .collect();
    let table_rows: Vec<String> = SPECIAL_PURPOSE
        .iter()
        .map(|r| format!("//! | `{}` | {} |", r.cidr, r.name))
        .collect();
    assert_eq!(doc_rows, table_rows, "the module doc's table drifted");
}

#[test]
fn every_range_is_blocked_at_its_first_last_and_middle_address() {
    for row in SPECIAL_PURPOSE {
        let c = row.cidr;
        for probe in [c.first(), c.last(), midpoint(&c)] {
            assert!(c.contains(probe), "{c} must contain {probe}");
            let why = public(&probe.to_string()).expect_err(&format!("{probe} ({c}) allowed"));
            // Named by this row or a more specific one nested in it (:: in ::/96 is "unspecified").
            let named = special_range(probe).expect("special");
            assert!(
                named.cidr == c
                    || (c.contains(named.cidr.first()) && named.cidr.prefix_len() > c.prefix_len()),
                "{probe}: named by {} instead of {c}",
                named.cidr
            );
            assert!(
                why.starts_with(&format!("{probe} is in {} ({})", named.cidr, named.name)),
                "{why}"
            );
        }
    }
}

#[test]
fn each_range_ends_exactly_at_its_edges() {
    for row in SPECIAL_PURPOSE {
        let c = row.cidr;
        for outside in [offset(c.first(), -1), offset(c.last(), 1)]
            .into_iter()
            .flatten()
        {
            assert!(!c.contains(outside), "{c} must not contain {outside}");
        }
    }
}

#[test]
fn addresses_just_outside_the_ipv4_ranges_are_allowed() {
    for s in [
        "1.0.0.0",
        "9.255.255.255",
        "11.0.0.0",
        "100.63.255.255",
        "100.128.0.0",
        "126.255.255.255",
        "128.0.0.0",
        "169.253.255.255",
        "169.255.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "191.255.255.255",
        "192.0.1.0",
        "192.0.1.255",
        "192.0.3.0",
        "192.88.98.255",
        "192.88.100.0",
        "192.167.255.255",
        "192.169.0.0",
        "198.17.255.255",
        "198.20.0.0",
        "198.51.99.255",
        "198.51.101.0",
        "203.0.112.255",
        "203.0.114.0",
        "223.255.255.255",
    ] {
        assert_eq!(public(s), Ok(()), "{s}");
    }
}

#[test]
fn ordinary_public_addresses_are_allowed() {
    for s in [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.216.34",
        "2606:4700::1111",
        "2a00:1450::1",
        "2001:4860:4860::8888",
        // Just past the IETF /23 and just before documentation's /32.
        "2001:200::",
        "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff",
        "2001:db9::",
        "2003::",
        "2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff",
    ] {
        // 2001:1ff:... is the last address of 2001::/23: blocked, the rest allowed.
        let expect_blocked = s == "2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff";
        assert_eq!(public(s).is_err(), expect_blocked, "{s}: {:?}", public(s));
    }
}

#[test]
fn ipv6_outside_global_unicast_is_refused() {
    for s in ["4000::1", "1000::", "1fff:ffff::", "fe00::1", "e000::1"] {
        let e = public(s).unwrap_err();
        assert!(
            e.contains("outside IPv6 global unicast (2000::/3)"),
            "{s}: {e}"
        );
    }
    // The edges of 2000::/3 itself.
    assert_eq!(public("2000::1"), Ok(()));
    assert_eq!(public("3ffe:ffff::1"), Ok(()));
}

#[test]
fn refusals_name_the_range_and_what_to_do() {
    assert_eq!(
        public("127.0.0.1").unwrap_err(),
        "127.0.0.1 is in 127.0.0.0/8 (loopback), which public probes never connect to: \
         run this check from an agent inside that network"
    );
    assert_eq!(
        public("169.254.169.254").unwrap_err(),
        "169.254.169.254 is in 169.254.0.0/16 (link-local, incl. cloud metadata services), \
         which public probes never connect to: run this check from an agent inside that network"
    );
    assert_eq!(
        public("::1").unwrap_err(),
        "::1 is in ::1/128 (loopback), which public probes never connect to: \
         run this check from an agent inside that network"
    );
    assert!(
        public("255.255.255.255")
            .unwrap_err()
            .contains("240.0.0.0/4 (reserved, incl. broadcast 255.255.255.255)")
    );
    assert!(
        public("fd12::1")
            .unwrap_err()
            .contains("fc00::/7 (unique-local)")
    );
}

#[test]
fn embedded_ipv4_is_named_when_it_is_special() {
    let cases = [
        // mapped
        (
            "::ffff:127.0.0.1",
            "::ffff:0.0.0.0/96 (IPv4-mapped)",
            Some("127.0.0.1, which is in 127.0.0.0/8 (loopback)"),
        ),
        (
            "::ffff:10.0.0.1",
            "::ffff:0.0.0.0/96 (IPv4-mapped)",
            Some("10.0.0.1, which is in 10.0.0.0/8 (private-use)"),
        ),
        // IPv4-compatible
        (
            "::a00:1", // ::10.0.0.1, as Rust prints it
            "::/96 (IPv4-compatible (deprecated))",
            Some("10.0.0.1, which is in 10.0.0.0/8"),
        ),
        // NAT64 and local-use NAT64 as a /96
        (
            "64:ff9b::7f00:1",
            "64:ff9b::/96 (NAT64)",
            Some("127.0.0.1, which is in 127.0.0.0/8"),
        ),
        (
            "64:ff9b:1::a9fe:a9fe",
            "64:ff9b:1::/48 (local-use NAT64)",
            Some("169.254.169.254, which is in 169.254.0.0/16"),
        ),
        // 6to4 router 127.0.0.1
        (
            "2002:7f00:1::",
            "2002::/16 (6to4)",
            Some("127.0.0.1, which is in 127.0.0.0/8"),
        ),
        // Teredo: server 65.54.227.120, client 192.168.0.1 obfuscated (ffff ^ c0a8:0001 = 3f57:fffe)
        (
            "2001:0:4136:e378:8000:63bf:3f57:fffe",
            "2001::/32 (Teredo)",
            Some("192.168.0.1, which is in 192.168.0.0/16 (private-use)"),
        ),
    ];
    for (addr, range, embedded) in cases {
        let why = public(addr).unwrap_err();
        assert!(
            why.starts_with(&format!(
                "{addr} is in {range}, which public probes never connect to"
            )),
            "{why}"
        );
        if let Some(e) = embedded {
            assert!(why.contains(&format!("it embeds {e}")), "{why}");
        }
        assert!(
            why.ends_with("run this check from an agent inside that network"),
            "{why}"
        );
    }
}

#[test]
fn embedded_public_ipv4_is_still_blocked_with_the_address_to_use() {
    assert_eq!(
        public("::ffff:8.8.8.8").unwrap_err(),
        "::ffff:8.8.8.8 is in ::ffff:0.0.0.0/96 (IPv4-mapped), which public probes never connect to: \
         monitor the IPv4 address 8.8.8.8 instead"
    );
    let why = public("64:ff9b::808:808").unwrap_err();
    assert!(
        why.ends_with("monitor the IPv4 address 8.8.8.8 instead"),
        "{why}"
    );
    let why = public("2002:808:808::1").unwrap_err();
    assert!(
        why.ends_with("it tunnels through 8.8.8.8; monitor the host's native address instead"),
        "{why}"
    );
    // A local-use NAT64 address not laid out as a /96: no embedded address is guessed.
    let why = public("64:ff9b:1:1::1").unwrap_err();
    assert!(
        why.ends_with("run this check from an agent inside that network"),
        "{why}"
    );
    assert!(!why.contains("embeds"), "{why}");
}

#[test]
fn allowing_private_allows_everything_and_says_so() {
    let p = PublicOnly::allowing_private();
    assert!(p.allows_private());
    assert!(!PublicOnly::new().allows_private());
    for s in [
        "127.0.0.1",
        "10.0.0.1",
        "169.254.169.254",
        "::1",
        "fe80::1",
        "8.8.8.8",
    ] {
        assert_eq!(p.check(at(s, 80)), Ok(()), "{s}");
    }
}

#[test]
fn cidr_parsing() {
    let c: Cidr = "10.0.0.0/8".parse().unwrap();
    assert_eq!(
        (c.first(), c.last()),
        (ip("10.0.0.0"), ip("10.255.255.255"))
    );
    let c: Cidr = "192.168.1.5".parse().unwrap();
    assert_eq!(c.to_string(), "192.168.1.5/32");
    assert!(c.contains(ip("192.168.1.5")) && !c.contains(ip("192.168.1.6")));
    let c: Cidr = "2001:db8::/32".parse().unwrap();
    assert_eq!(c.last(), ip("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"));
    let c: Cidr = "::1".parse().unwrap();
    assert_eq!(c.to_string(), "::1/128");
    let all: Cidr = "0.0.0.0/0".parse().unwrap();
    assert!(all.contains(ip("255.255.255.255")) && !all.contains(ip("::1")));
    let all6: Cidr = "::/0".parse().unwrap();
    assert!(all6.contains(ip("ffff::1")) && !all6.contains(ip("1.2.3.4")));

    for (input, why) in [
        (
            "10.0.0.0/33",
            "prefix length 33 is longer than the 32 bits of an IPv4 address",
        ),
        (
            "::/129",
            "prefix length 129 is longer than the 128 bits of an IPv6 address",
        ),
        (
            "10.0.0.1/8",
            "10.0.0.1/8 has bits set after the prefix: did you mean 10.0.0.0/8?",
        ),
        ("10.0.0.0/x", "prefix length \"x\" is not a number of bits"),
        ("10.0.0.0/", "prefix length \"\" is not a number of bits"),
        (
            "example.com",
            "\"example.com\" is not an IPv4 or IPv6 address",
        ),
        ("10.0.0/8", "\"10.0.0\" is not an IPv4 or IPv6 address"),
    ] {
        assert_eq!(
            input.parse::<Cidr>().map_err(|e| e.to_string()),
            Err(why.to_owned()),
            "{input}"
        );
    }
}

#[test]
fn network_and_port_list_errors_are_clear() {
    assert_eq!(
        parse_networks("10.0.0.0/8, 2001:db8::/32 ,192.168.1.5").unwrap(),
        vec![
            "10.0.0.0/8".parse::<Cidr>().unwrap(),
            "2001:db8::/32".parse().unwrap(),
            "192.168.1.5/32".parse().unwrap()
        ]
    );
    assert_eq!(
        parse_networks("10.0.0.0/8,10.0.0.1/8")
            .unwrap_err()
            .to_string(),
        "\"10.0.0.1/8\" is not an IP address or network like 10.0.0.0/8 or 2001:db8::/32: \
         10.0.0.1/8 has bits set after the prefix: did you mean 10.0.0.0/8?"
    );
    assert_eq!(parse_networks(" "), Err(PolicyError::Empty));
    assert_eq!("".parse::<PortSet>(), Err(PolicyError::Empty));
    for list in ["10.0.0.0/8,", ",10.0.0.0/8", "10.0.0.0/8,,::1"] {
        assert_eq!(
            parse_networks(list),
            Err(PolicyError::EmptyEntry {
                list: list.to_owned()
            }),
            "{list:?}"
        );
    }

    let ports: PortSet = "22,80,443,5000-5999".parse().unwrap();
    assert_eq!(ports.to_string(), "22,80,443,5000-5999");
    for (p, inside) in [
        (22, true),
        (23, false),
        (443, true),
        (4999, false),
        (5000, true),
        (5999, true),
        (6000, false),
    ] {
        assert_eq!(ports.contains(p), inside, "{p}");
    }
    for (input, entry, why) in [
        ("22,0", "0", "0 is not in 1-65535"),
        ("65536", "65536", "65536 is not in 1-65535"),
        (
            "99999999999",
            "99999999999",
            "99999999999 is not in 1-65535",
        ),
        ("ssh", "ssh", "\"ssh\" is not a number"),
        (
            "22,6000-5000",
            "6000-5000",
            "the range runs backwards (did you mean 5000-6000?)",
        ),
        ("5000-", "5000-", "\"\" is not a number"),
        ("-22", "-22", "\"\" is not a number"),
        ("1-2-3", "1-2-3", "\"2-3\" is not a number"),
    ] {
        assert_eq!(
            input.parse::<PortSet>(),
            Err(PolicyError::Port {
                entry: entry.to_owned(),
                why: why.to_owned()
            }),
            "{input}"
        );
    }
    assert_eq!(
        "22,,80".parse::<PortSet>().unwrap_err().to_string(),
        "\"22,,80\" has an empty entry (two commas, or a comma at an end)"
    );
}

#[test]
fn restricted_networks_and_ports() {
    let r = Restricted::parse(Some("10.0.0.0/24"), Some("22,443")).unwrap();
    assert_eq!(r.check(at("10.0.0.7", 22)), Ok(()));
    assert_eq!(r.check(at("10.0.0.255", 443)), Ok(()));
    assert_eq!(
        r.check(at("10.1.2.3", 5432)).unwrap_err(),
        "10.1.2.3:5432 is outside this agent's allowed targets (10.0.0.0/24 ports 22,443)"
    );
    // Right network, wrong port; right port, wrong network.
    assert!(r.check(at("10.0.0.7", 5432)).is_err());
    assert!(r.check(at("10.0.1.0", 22)).is_err());
    // ICMP (port 0) is judged by network only.
    assert_eq!(r.check(at("10.0.0.7", 0)), Ok(()));
    assert_eq!(
        r.check(at("10.0.1.7", 0)).unwrap_err(),
        "10.0.1.7 is outside this agent's allowed targets (10.0.0.0/24 ports 22,443)"
    );
    // A mapped address is the IPv4 address it reaches, both ways.
    assert_eq!(r.check(at("::ffff:10.0.0.7", 22)), Ok(()));
    assert!(r.check(at("::ffff:10.0.1.7", 22)).is_err());
    // An IPv6 target against IPv4-only networks.
    assert!(r.check(at("::1", 22)).is_err());
}

#[test]
fn restricted_to_no_network_refuses_everything() {
    let none = Restricted::new(Some(vec![]), None);
    assert_eq!(
        none.check(at("10.0.0.1", 22)).unwrap_err(),
        "10.0.0.1:22 is outside this agent's allowed targets (no address)"
    );
}

#[test]
fn restricted_by_one_dimension_only() {
    let nets = Restricted::parse(Some("192.168.1.5,2001:db8::/32"), None).unwrap();
    assert_eq!(nets.check(at("192.168.1.5", 65535)), Ok(()));
    assert_eq!(nets.check(at("2001:db8:1::9", 1)), Ok(()));
    assert_eq!(
        nets.check(at("192.168.1.6", 80)).unwrap_err(),
        "192.168.1.6:80 is outside this agent's allowed targets (192.168.1.5/32,2001:db8::/32)"
    );
    let ports = Restricted::parse(None, Some("5000-5999")).unwrap();
    assert_eq!(ports.check(at("8.8.8.8", 5000)), Ok(()));
    assert_eq!(ports.check(at("::1", 0)), Ok(()));
    assert_eq!(
        ports.check(at("::1", 80)).unwrap_err(),
        "[::1]:80 is outside this agent's allowed targets (any address ports 5000-5999)"
    );
    assert!(matches!(
        Restricted::parse(Some("10.0.0.0/8"), Some("http")),
        Err(PolicyError::Port { .. })
    ));
    assert!(matches!(
        Restricted::parse(Some("10.0.0.0/8/8"), None),
        Err(PolicyError::Network { .. })
    ));
}

//! The harness's services really start and answer on the ports they were given.

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use portwatch_harness as h;

#[test]
fn redis_answers_ping() {
    let dir = h::temp_dir();
    let port = h::free_tcp_port();
    let _redis = h::redis(dir.path(), port);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"PING\r\n").unwrap();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"+PONG\r\n");
}

#[test]
fn chrony_answers_ntp_and_dnsmasq_listens() {
    let dir = h::temp_dir();
    let port = h::free_udp_port();
    let _chrony = h::chrony(dir.path(), port);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut req = [0u8; 48];
    req[0] = 0x23;
    sock.send_to(&req, ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 128];
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    assert!(n >= 48 && buf[0] & 0x7 == 4, "mode 4 reply");
    let dport = h::free_port_both();
    let _dns = h::dnsmasq(dir.path(), dport, &["--host-record=ok.test,192.0.2.10"]);
}

#[test]
fn postgres_starts_and_accepts() {
    let dir = h::temp_dir();
    let port = h::free_tcp_port();
    let _pg = h::postgres(dir.path(), port, &[]);
    TcpStream::connect(("127.0.0.1", port)).unwrap();
}

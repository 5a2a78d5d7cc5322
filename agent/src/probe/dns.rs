//! The DNS preset of the UDP prober: a real query (type A, recursion desired,
//! random ID) and the reading of the reply. Building and parsing go through
//! hickory's protocol types; the judging is a pure function of the reply bytes
//! so it is tested with fixtures as well as against a real dnsmasq.
//!
//! A DNS server is "up" when it answers authoritatively for what it knows:
//! NOERROR (with or without answers) and NXDOMAIN both prove it is serving.
//! SERVFAIL, REFUSED and the rest mean it answers but cannot serve the name.

use hickory_resolver::proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RecordType};

/// What one datagram on the DNS check's socket means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsReply {
    /// Not an answer to our query (another ID, another question): keep waiting.
    NotOurs,
    /// Our answer, with its response code and the number of answer records.
    Answer { rcode: ResponseCode, answers: u32 },
    /// Something with our ID that is not a usable DNS response.
    Malformed(String),
}

/// A DNS query ready to send, and what its answer must match.
#[derive(Debug, Clone)]
pub struct DnsQuery {
    pub id: u16,
    pub name: Name,
    pub bytes: Vec<u8>,
}

/// Builds a type A query for `name` with recursion desired and the given ID.
pub fn build_query(name: &str, id: u16) -> Result<DnsQuery, String> {
    let mut qname =
        Name::from_ascii(name).map_err(|e| format!("dns name {name:?} is invalid: {e}"))?;
    // Decoded names are always fully qualified; ours must be too for the question to compare equal.
    qname.set_fqdn(true);
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(qname.clone(), RecordType::A));
    let bytes = msg
        .to_vec()
        .map_err(|e| format!("encoding the dns query for {name:?}: {e}"))?;
    Ok(DnsQuery {
        id,
        name: qname,
        bytes,
    })
}

/// Reads one datagram received for `query`. Never panics, whatever the bytes.
pub fn judge_reply(query: &DnsQuery, reply: &[u8]) -> DnsReply {
    // The ID comes first and decides whether the datagram is ours at all, even when
    // the rest does not parse.
    let Some(id) = reply.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
        return DnsReply::Malformed(format!("a {}-byte reply is too short for dns", reply.len()));
    };
    if id != query.id {
        return DnsReply::NotOurs;
    }
    let msg = match Message::from_vec(reply) {
        Ok(m) => m,
        Err(e) => return DnsReply::Malformed(format!("the reply is not valid dns: {e}")),
    };
    if msg.metadata.message_type != MessageType::Response {
        return DnsReply::Malformed("the reply is a dns query, not a response".into());
    }
    // A response for another question is not the answer to ours (RFC 5452). Servers
    // may leave the question out of error responses (FORMERR), so only a different
    // question disqualifies.
    if let Some(q) = msg.queries.first()
        && (q.name() != &query.name || q.query_type() != RecordType::A)
    {
        return DnsReply::NotOurs;
    }
    let answers = u32::try_from(msg.answers.len()).unwrap_or(u32::MAX);
    DnsReply::Answer {
        rcode: msg.metadata.response_code,
        answers,
    }
}

/// Whether an answer with this code shows a serving DNS server.
pub fn rcode_is_up(rcode: ResponseCode) -> bool {
    matches!(rcode, ResponseCode::NoError | ResponseCode::NXDomain)
}

/// The IANA mnemonic of a response code (`NOERROR`, `SERVFAIL`...), as operators write it.
pub fn rcode_name(rcode: ResponseCode) -> String {
    let name = match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::YXDomain => "YXDOMAIN",
        ResponseCode::YXRRSet => "YXRRSET",
        ResponseCode::NXRRSet => "NXRRSET",
        ResponseCode::NotAuth => "NOTAUTH",
        ResponseCode::NotZone => "NOTZONE",
        ResponseCode::BADVERS => "BADVERS",
        ResponseCode::BADSIG => "BADSIG",
        ResponseCode::BADKEY => "BADKEY",
        ResponseCode::BADTIME => "BADTIME",
        ResponseCode::BADMODE => "BADMODE",
        ResponseCode::BADNAME => "BADNAME",
        ResponseCode::BADALG => "BADALG",
        ResponseCode::BADTRUNC => "BADTRUNC",
        ResponseCode::BADCOOKIE => "BADCOOKIE",
        ResponseCode::Unknown(n) => return format!("RCODE{n}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::rr::{RData, Record, rdata::A};

    fn response(query: &DnsQuery, rcode: ResponseCode, answers: usize) -> Vec<u8> {
        let mut msg = Message::response(query.id, OpCode::Query);
        msg.metadata.response_code = rcode;
        msg.add_query(Query::query(query.name.clone(), RecordType::A));
        for i in 0..answers {
            let ip = std::net::Ipv4Addr::new(192, 0, 2, 10 + i as u8);
            msg.add_answer(Record::from_rdata(query.name.clone(), 60, RData::A(A(ip))));
        }
        msg.to_vec().unwrap()
    }

    #[test]
    fn query_is_a_recursive_type_a_question_with_our_id() {
        let q = build_query("ok.test", 0xbeef).unwrap();
        let parsed = Message::from_vec(&q.bytes).unwrap();
        assert_eq!(parsed.metadata.id, 0xbeef);
        assert_eq!(parsed.metadata.message_type, MessageType::Query);
        assert!(parsed.metadata.recursion_desired);
        assert_eq!(parsed.queries.len(), 1);
        assert_eq!(parsed.queries[0].query_type(), RecordType::A);
        assert_eq!(parsed.queries[0].name().to_ascii(), "ok.test.");
        // A trailing dot is the same name.
        assert_eq!(build_query("ok.test.", 1).unwrap().name, q.name);
    }

    #[test]
    fn invalid_names_are_refused() {
        let long = "a".repeat(64);
        assert!(build_query(&format!("{long}.test"), 1).is_err());
    }

    #[test]
    fn answers_are_read_with_rcode_and_count() {
        let q = build_query("ok.test", 7).unwrap();
        assert_eq!(
            judge_reply(&q, &response(&q, ResponseCode::NoError, 2)),
            DnsReply::Answer {
                rcode: ResponseCode::NoError,
                answers: 2
            }
        );
        assert_eq!(
            judge_reply(&q, &response(&q, ResponseCode::NXDomain, 0)),
            DnsReply::Answer {
                rcode: ResponseCode::NXDomain,
                answers: 0
            }
        );
        assert!(rcode_is_up(ResponseCode::NoError) && rcode_is_up(ResponseCode::NXDomain));
        assert!(!rcode_is_up(ResponseCode::ServFail) && !rcode_is_up(ResponseCode::Refused));
    }

    #[test]
    fn replies_to_other_queries_are_not_ours() {
        let q = build_query("ok.test", 7).unwrap();
        let other_id = build_query("ok.test", 8).unwrap();
        assert_eq!(
            judge_reply(&q, &response(&other_id, ResponseCode::NoError, 1)),
            DnsReply::NotOurs
        );
        let other_name = DnsQuery {
            name: Name::from_ascii("evil.test.").unwrap(),
            ..q.clone()
        };
        assert_eq!(
            judge_reply(&q, &response(&other_name, ResponseCode::NoError, 1)),
            DnsReply::NotOurs
        );
    }

    #[test]
    fn garbage_and_truncation_are_malformed_never_a_panic() {
        let q = build_query("ok.test", 0x0102).unwrap();
        let good = response(&q, ResponseCode::NoError, 3);
        for cut in 0..good.len() {
            match judge_reply(&q, &good[..cut]) {
                DnsReply::Malformed(_) => {}
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        // Our ID followed by junk.
        assert!(matches!(
            judge_reply(&q, &[1, 2, 0xff, 0xff, 0xff]),
            DnsReply::Malformed(_)
        ));
        // Our own query echoed back is not a response.
        assert!(
            matches!(judge_reply(&q, &q.bytes), DnsReply::Malformed(m) if m.contains("not a response"))
        );
        // Every single-byte corruption is handled.
        for i in 2..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0xff;
            let _ = judge_reply(&q, &bad);
        }
    }

    #[test]
    fn rcode_names_are_the_mnemonics() {
        assert_eq!(rcode_name(ResponseCode::ServFail), "SERVFAIL");
        assert_eq!(rcode_name(ResponseCode::NXDomain), "NXDOMAIN");
        assert_eq!(rcode_name(ResponseCode::Unknown(3999)), "RCODE3999");
    }
}

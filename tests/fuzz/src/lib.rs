//! What the fuzz targets run: one driver per parser of untrusted bytes,
//! each feeding the fuzzer's input through the same public entry point the
//! agent or collector uses, then checking what a user relies on beyond "no
//! panic": text taken from a peer is escaped and bounded, and a verdict does
//! not depend on how the reply happened to be split into reads.
//!
//! The targets in `fuzz_targets/` are one line each; `run.sh` runs them.

use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use portwatch_agent::check::{MAX_REPLY_BYTES, StartTls, TcpPreset, compile_regex};
use portwatch_agent::probe::preset::{self, Conversation, SendExpect, Verdict};
use portwatch_agent::probe::{dns, ntp};
use portwatch_agent::result::{CheckResult, Reason, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Panics unless `s` is safe to print and store: printable ASCII only (escapes
/// are), and bounded.
fn assert_printable(what: &str, s: &str) {
    assert!(
        s.bytes().all(|b| (0x20..0x7f).contains(&b)),
        "{what}: unescaped text {s:?}"
    );
    assert!(s.len() < 1024, "{what}: unbounded text ({} bytes)", s.len());
}

fn assert_verdict_printable(v: &Verdict) {
    match v {
        Verdict::Up { info: Some(s) } => assert_printable("info", s),
        Verdict::Down { message, .. } => assert_printable("message", message),
        _ => {}
    }
}

/// Splits the input into the read size (its first byte, at least 1) and the
/// reply, capped as the prober caps it.
fn split_reads(data: &[u8]) -> (usize, &[u8]) {
    let (size, reply) = match data.split_first() {
        Some((s, rest)) => (usize::from(*s).max(1), rest),
        None => (1, data),
    };
    (size, &reply[..reply.len().min(MAX_REPLY_BYTES)])
}

/// Judges `reply` as the TCP prober does, `size` bytes per read, until a
/// verdict; then the peer's close or the deadline. With `stable`, the
/// verdict reached must also be the verdict on the whole reply.
fn converse(conv: &dyn Conversation, data: &[u8], stable: bool) {
    let _ = conv.request();
    let (size, reply) = split_reads(data);
    let mut end = 0;
    while end < reply.len() {
        end = (end + size).min(reply.len());
        let v = conv.judge(&reply[..end]);
        if v == Verdict::NeedMore {
            continue;
        }
        assert_verdict_printable(&v);
        if stable {
            assert_eq!(
                conv.judge(reply),
                v,
                "the verdict after {end} bytes changed with more bytes"
            );
        }
        if matches!(v, Verdict::Up { .. }) {
            let _ = conv.farewell();
        }
        return;
    }
    assert_verdict_printable(&conv.on_eof(reply));
    if !reply.is_empty() {
        assert_verdict_printable(&conv.on_timeout(reply));
    }
}

/// A preset's conversation: first byte the read size, the rest the reply.
pub fn preset(preset: TcpPreset, data: &[u8]) {
    let conv = preset::conversation(preset);
    if preset == TcpPreset::Kafka {
        return kafka(conv.as_ref(), data);
    }
    converse(conv.as_ref(), data, true);
}

/// Kafka replies must echo the request's random correlation id: a zero id
/// in the input stands for ours, so the fuzzer reaches what comes after it.
fn kafka(conv: &dyn Conversation, data: &[u8]) {
    let ours = conv.request()[8..12].to_vec();
    let mut data = data.to_vec();
    if let Some(id @ [0, 0, 0, 0]) = data.get_mut(5..9) {
        id.copy_from_slice(&ours);
    }
    converse(conv, &data, true);
}

/// Generic send/expect: the first line is the pattern (as a user would write
/// it), the rest is read size and reply as for the presets.
pub fn expect(data: &[u8]) {
    let Some(nl) = data.iter().position(|&b| b == b'\n') else {
        return;
    };
    let Ok(pattern) = std::str::from_utf8(&data[..nl]) else {
        return;
    };
    // Patterns come from the monitor's owner, not from the probed peer: keep
    // them short so the fuzzer spends its time on replies.
    if pattern.len() > 64 {
        return;
    }
    let Ok(re) = compile_regex(pattern) else {
        return;
    };
    // A regex may match a prefix and not the whole (`^OK$`): no stability.
    converse(&SendExpect::new(None, Some(re)), &data[nl + 1..], false);
}

/// A peer that sends `reply` in reads of `size` bytes, then closes; what we
/// write is swallowed.
struct Scripted<'a> {
    reply: &'a [u8],
    size: usize,
}

impl AsyncRead for Scripted<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.reply.len().min(self.size).min(buf.remaining());
        let (now, later) = self.reply.split_at(n);
        buf.put_slice(now);
        self.reply = later;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Scripted<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a tokio runtime")
    })
}

/// The STARTTLS dialogue: first byte the dialect (smtp, imap, pop3) and read
/// size, the rest every reply of the server in order (greeting, EHLO reply,
/// STARTTLS reply), as one stream that ends with a close.
pub fn starttls(data: &[u8]) {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let dialect = match head % 3 {
        0 => StartTls::Smtp,
        1 => StartTls::Imap,
        _ => StartTls::Pop3,
    };
    let mut peer = Scripted {
        reply: &rest[..rest.len().min(4 * MAX_REPLY_BYTES)],
        size: usize::from(head / 3).max(1),
    };
    let mut r = CheckResult::new(Status::Up, Reason::Ok, "");
    runtime().block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        portwatch_agent::probe::tls::starttls_dialogue(&mut peer, dialect, deadline, &mut r).await;
    });
    assert_printable("message", &r.message);
    if let Some(banner) = &r.details.banner {
        assert_printable("banner", banner);
    }
}

/// One DNS datagram judged against our query; its ID is taken from the
/// datagram so every input is "ours" and reaches the parser.
pub fn dns(data: &[u8]) {
    let id = match data {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => 0,
    };
    let query = dns::build_query("probe.test", id).expect("a valid query");
    match dns::judge_reply(&query, data) {
        dns::DnsReply::Malformed(why) => assert!(why.len() < 4096, "unbounded: {why:?}"),
        dns::DnsReply::Answer { rcode, .. } => {
            let _ = (dns::rcode_is_up(rcode), dns::rcode_name(rcode));
        }
        dns::DnsReply::NotOurs => {}
    }
}

/// One NTP datagram; our transmit time is taken from its origin field so
/// every input is "ours", and the receive time from the bytes after it.
pub fn ntp(data: &[u8]) {
    let read = |at: usize| {
        data.get(at..at + 8)
            .map_or(0, |b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
    };
    let t1 = ntp::NtpTime(read(24));
    let t4 = ntp::NtpTime(read(ntp::PACKET_LEN));
    match ntp::judge_reply(data, t1, t4) {
        ntp::NtpReply::NotNtp(why) | ntp::NtpReply::Rejected(why) => {
            assert_printable("ntp reason", &why)
        }
        ntp::NtpReply::Sample(_) | ntp::NtpReply::NotOurs => {}
    }
}

/// The collector's config file: parse and validate; an error is one clear
/// message, and a valid config's monitors convert to agent checks.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match portwatch_collector::config::Config::parse(text, "fuzz.toml") {
        Ok(_) => {}
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// The join string an operator pastes into `portwatch-agent enroll`: parse;
/// a parsed one encodes back to itself.
pub fn join(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    use portwatch_agent::join::JoinString;
    match JoinString::parse(text) {
        Ok(j) => {
            let again = JoinString::parse(&j.encode()).expect("an encoded join string parses");
            assert!(again == j, "a join string changed through encode/parse");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// The CA, created once per process in a fresh temp dir.
fn ca() -> &'static portwatch_collector::ca::Ca {
    static CA: OnceLock<portwatch_collector::ca::Ca> = OnceLock::new();
    CA.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("portwatch-fuzz-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir for the CA");
        portwatch_collector::ca::Ca::load_or_create(&dir).expect("a CA")
    })
}

/// An enrollment (or renewal) CSR as the collector's CA signs it: whatever
/// the bytes, an error or a certificate for exactly the agent id we chose.
pub fn csr(data: &[u8]) {
    let ca = ca();
    if let Ok(issued) = ca.issue_agent(data, "fuzz-agent", Duration::from_secs(3600)) {
        assert_eq!(
            portwatch_collector::ca::agent_id_of(&issued.cert_der).as_deref(),
            Some("fuzz-agent")
        );
    }
}

/// Every message an agent can send the collector, decoded as tonic decodes
/// it (the first byte picks the message type); a decoded message re-encodes
/// to bytes that decode to the same message. A result batch then goes
/// through the collector's validation before anything is stored
/// (`ingest::check_batch`), and the other direction, an assignment turned
/// into checks by the agent, through its conversion.
pub fn proto(data: &[u8]) {
    use portwatch_proto::v1 as pb;
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 4 {
        0 => {
            let Some(m) = roundtrip::<pb::AgentMessage>(bytes) else {
                return;
            };
            if let Some(pb::agent_message::Msg::Results(batch)) = m.msg {
                result_batch(&batch);
            }
        }
        1 => {
            let _ = roundtrip::<pb::EnrollRequest>(bytes);
        }
        2 => {
            let _ = roundtrip::<pb::RenewRequest>(bytes);
        }
        _ => {
            let Some(m) = roundtrip::<pb::CollectorMessage>(bytes) else {
                return;
            };
            if let Some(pb::collector_message::Msg::Assignment(a)) = m.msg {
                for spec in &a.monitors {
                    if let Err(e) = portwatch_agent::check::spec_from_proto(spec) {
                        let _ = e.to_string();
                    }
                }
            }
        }
    }
}

/// The collector accepts exactly the batches an agent's buffer can produce,
/// so a good batch is never refused (the agent would retry it forever) and a
/// stored one holds what ingest and incidents rely on: seqs above 0 and
/// strictly increasing, every result with a body, a monitor and a status
/// judged by the rules (up, degraded or down), every gap a real range. A
/// refusal says why, in short printable text (it ends the agent's stream).
fn result_batch(batch: &portwatch_proto::v1::ResultBatch) {
    use portwatch_proto::v1 as pb;
    let seqs_increase = batch
        .results
        .iter()
        .try_fold(0u64, |last, sr| (sr.seq > last).then_some(sr.seq))
        .is_some();
    let results_whole = batch.results.iter().all(|sr| {
        sr.result.as_ref().is_some_and(|r| {
            !r.monitor_id.is_empty()
                && matches!(
                    pb::Status::try_from(r.status),
                    Ok(pb::Status::Up | pb::Status::Degraded | pb::Status::Down)
                )
        })
    });
    let gaps_real = batch
        .gaps
        .iter()
        .all(|g| 1 <= g.from_seq && g.from_seq <= g.to_seq);
    let valid = seqs_increase && results_whole && gaps_real;
    match portwatch_collector::ingest::check_batch(batch) {
        Ok(()) => assert!(
            valid,
            "an impossible batch was accepted (seqs increase: {seqs_increase}, \
             results whole: {results_whole}, gaps real: {gaps_real})"
        ),
        Err(why) => {
            assert!(!valid, "a good batch was refused: {why}");
            assert!(!why.is_empty(), "a refusal without a reason");
            assert!(why.len() < 512, "unbounded refusal ({} bytes)", why.len());
            assert_printable("refusal", &why);
        }
    }
}

fn roundtrip<M: prost::Message + Default + PartialEq>(bytes: &[u8]) -> Option<M> {
    let m = M::decode(bytes).ok()?;
    let again = M::decode(m.encode_to_vec().as_slice()).expect("re-encoded message decodes");
    assert!(again == m, "a message changed through encode/decode");
    Some(m)
}

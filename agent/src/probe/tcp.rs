//! The TCP prober: a non-blocking socket2 connect bounded by the check's
//! deadline, then optionally TLS (direct or STARTTLS) and a conversation (a
//! preset or send/expect), each phase timed on the monotonic clock.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::preset::{self, Conversation, Verdict};
use super::{ProbeCtx, ProbeFuture, Prober, tls};
use crate::check::{MAX_REPLY_BYTES, Protocol, TcpMode};
use crate::result::{CheckResult, Reason, Status, escape_excerpt, io_phrase, micros};

/// How much of a reply is kept for display.
pub const BANNER_EXCERPT: usize = 120;
/// How much of a reply a message quotes.
pub const MESSAGE_EXCERPT: usize = 64;

pub struct TcpProber;

impl Prober for TcpProber {
    fn protocol(&self) -> Protocol {
        Protocol::Tcp
    }

    fn probe<'a>(&'a self, ctx: ProbeCtx<'a>) -> ProbeFuture<'a> {
        Box::pin(probe_tcp(ctx))
    }
}

/// A failed connect, sorted into the taxonomy.
#[derive(Debug)]
pub struct ConnectFailure {
    pub reason: Reason,
    pub message: String,
}

/// Connects to `addr` without blocking a thread, giving up at `deadline`.
/// Returns the stream and the handshake time (SYN to SYN-ACK as the kernel saw it).
pub async fn connect(
    addr: SocketAddr,
    deadline: Instant,
) -> Result<(TcpStream, Duration), ConnectFailure> {
    let fail = |e: io::Error| ConnectFailure {
        reason: Reason::from_io(&e),
        message: format!("connect {addr}: {}", io_phrase(&e)),
    };
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(fail)?;
    sock.set_nonblocking(true).map_err(fail)?;
    sock.set_tcp_nodelay(true).map_err(fail)?;
    let start = Instant::now();
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(fail(e)),
    }
    let stream = TcpStream::from_std(std::net::TcpStream::from(sock)).map_err(fail)?;
    match tokio::time::timeout_at(deadline, stream.writable()).await {
        Err(_) => {
            return Err(ConnectFailure {
                reason: Reason::Timeout,
                message: format!(
                    "connect {addr}: no answer within {} ms",
                    ms(deadline.saturating_duration_since(start))
                ),
            });
        }
        Ok(Err(e)) => return Err(fail(e)),
        Ok(Ok(())) => {}
    }
    let took = start.elapsed();
    if let Some(e) = stream.take_error().map_err(fail)? {
        return Err(fail(e));
    }
    // Writable without a pending error but not connected cannot happen on Linux;
    // peer_addr turns it into a clear error rather than a false "up".
    stream.peer_addr().map_err(fail)?;
    Ok((stream, took))
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

async fn probe_tcp(ctx: ProbeCtx<'_>) -> CheckResult {
    let mut r = CheckResult::new(Status::Up, Reason::Ok, "");
    let (stream, took) = match connect(ctx.addr, ctx.deadline).await {
        Ok(ok) => ok,
        Err(f) => return CheckResult::new(Status::Down, f.reason, f.message),
    };
    r.phases.connect = Some(micros(took));
    let conv = conversation_for(&ctx.spec.tcp);
    match &ctx.spec.tls {
        None => {
            if let Some(conv) = conv {
                let mut stream = stream;
                converse(
                    &mut stream,
                    conv.as_ref(),
                    ctx.deadline,
                    Instant::now(),
                    &mut r,
                )
                .await;
            }
        }
        Some(opts) => {
            let Some(mut tls_stream) = tls::negotiate(stream, opts, &ctx, &mut r).await else {
                return r;
            };
            // With STARTTLS the greeting was judged before the upgrade; with direct TLS
            // the conversation runs inside the tunnel.
            if opts.starttls.is_none()
                && let Some(conv) = conv
            {
                let since = Instant::now();
                let before = r.clone();
                converse(&mut tls_stream, conv.as_ref(), ctx.deadline, since, &mut r).await;
                // A certificate verdict (expiring) outranks a healthy conversation.
                if before.status == Status::Degraded && r.status == Status::Up {
                    r.status = before.status;
                    r.reason = before.reason;
                    r.message = before.message;
                }
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), tls_stream.shutdown()).await;
        }
    }
    r
}

fn conversation_for(mode: &TcpMode) -> Option<Box<dyn Conversation>> {
    match mode {
        TcpMode::Connect => None,
        TcpMode::Preset(p) => Some(preset::conversation(*p)),
        TcpMode::Expect { send, expect } => Some(Box::new(preset::SendExpect::new(
            send.clone(),
            expect.clone(),
        ))),
    }
}

/// Sends the conversation's request and reads until it reaches a verdict, the
/// reply outgrows `MAX_REPLY_BYTES`, the peer closes, or the deadline passes.
/// Fills `first_byte` (from `since`), the banner excerpt and the verdict into `r`.
pub async fn converse<S>(
    stream: &mut S,
    conv: &dyn Conversation,
    deadline: Instant,
    since: Instant,
    r: &mut CheckResult,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = conv.request();
    if !request.is_empty() {
        match tokio::time::timeout_at(deadline, stream.write_all(&request)).await {
            Err(_) => {
                return set(
                    r,
                    Status::Down,
                    Reason::Timeout,
                    "timed out sending the request".into(),
                );
            }
            Ok(Err(e)) => {
                return set(
                    r,
                    Status::Down,
                    Reason::from_io(&e),
                    format!("sending the request: {}", io_phrase(&e)),
                );
            }
            Ok(Ok(())) => {}
        }
    }
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let verdict = loop {
        let room = (MAX_REPLY_BYTES - buf.len()).min(chunk.len());
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut chunk[..room])).await {
            Err(_) if buf.is_empty() => {
                break Verdict::Down {
                    reason: Reason::NoReply,
                    message: "connected, but no reply before the timeout".into(),
                };
            }
            Err(_) => break conv.on_timeout(&buf),
            Ok(Err(e)) => {
                break Verdict::Down {
                    reason: Reason::from_io(&e),
                    message: format!("reading the reply: {}", io_phrase(&e)),
                };
            }
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            break conv.on_eof(&buf);
        }
        if buf.is_empty() {
            r.phases.first_byte = Some(micros(since.elapsed()));
        }
        buf.extend_from_slice(&chunk[..n]);
        match conv.judge(&buf) {
            Verdict::NeedMore if buf.len() >= MAX_REPLY_BYTES => {
                break Verdict::Down {
                    reason: Reason::UnexpectedReply,
                    message: format!(
                        "no expected reply within the first {MAX_REPLY_BYTES} bytes: {}",
                        escape_excerpt(&buf, MESSAGE_EXCERPT)
                    ),
                };
            }
            Verdict::NeedMore => continue,
            v => break v,
        }
    };
    if !buf.is_empty() {
        r.details.banner = Some(escape_excerpt(&buf, BANNER_EXCERPT));
    }
    match verdict {
        Verdict::Up { info } => {
            if info.is_some() {
                r.details.server_info = info;
            }
            let farewell = conv.farewell();
            if !farewell.is_empty() {
                // Politeness only: never let it cost the check time.
                let _ = tokio::time::timeout(Duration::from_millis(50), stream.write_all(farewell))
                    .await;
            }
        }
        // Presets quote the server in their own words; the raw excerpt is in
        // `details.banner` for whoever wants the bytes.
        Verdict::Down { reason, message } => {
            set(r, Status::Down, reason, message);
        }
        Verdict::NeedMore => set(
            r,
            Status::Down,
            Reason::UnexpectedReply,
            "the reply ended before it was complete".into(),
        ),
    }
}

fn set(r: &mut CheckResult, status: Status, reason: Reason, message: String) {
    r.status = status;
    r.reason = reason;
    r.message = message;
}

//! Engine benchmark: how close the probe engine gets to the raw loopback
//! connect rate on one core, and how late the scheduler starts checks with
//! 10,000 monitors on the real clock. Prints figures; asserts nothing timed.
//!
//! `cargo bench -p portwatch-agent --bench engine`; `PW_BENCH_QUICK=1` runs
//! each phase for a fraction of the time (CI smoke, a few seconds in all).
//!
//! Only 127.0.0.1 is ever contacted, every loop is bounded in count and time.
//! The listener uses a backlog of 4096: the default (128) overflows under this
//! load and the kernel's SYN retransmit turns that into 1 s stalls.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use tokio::sync::mpsc;

use portwatch_agent::check::CheckSpec;
use portwatch_agent::probe::{Engine, tcp};
use portwatch_agent::resolve::Resolver;
use portwatch_agent::result::{CheckResult, Reason, Status};
use portwatch_agent::scheduler::{
    BoxFuture, Executor, Monitor, ScheduledResult, Scheduler, SchedulerStats,
};

// Shared with the timing bench; each uses part of it.
#[allow(dead_code)]
#[path = "common/blackbox.rs"]
mod blackbox;

/// Upper bound on the iterations of any measuring loop, whatever the clock says.
const MAX_ITERATIONS: u64 = 5_000_000;

struct Durations {
    raw: Duration,
    engine: Duration,
    sched_cheap: Duration,
    sched_engine: Duration,
}

fn main() {
    let quick = std::env::var("PW_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let d = if quick {
        Durations {
            raw: Duration::from_millis(500),
            engine: Duration::from_millis(500),
            sched_cheap: Duration::from_millis(2500),
            sched_engine: Duration::from_millis(2500),
        }
    } else {
        Durations {
            raw: Duration::from_secs(3),
            engine: Duration::from_secs(3),
            sched_cheap: Duration::from_secs(8),
            sched_engine: Duration::from_secs(12),
        }
    };
    println!(
        "portwatch engine benchmark{}",
        if quick { " (quick mode)" } else { "" }
    );
    // Other work on the machine moves every figure below: say how busy it was.
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!(
            "load average: {}",
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let listener = Listener::start().expect("listen on 127.0.0.1");
    let addr = listener.addr;
    println!("listener: {addr}, backlog 4096, accepted by its own thread");

    let fire = raw_fire_and_forget(addr, d.raw);
    fire.print("raw connect+close (non-blocking, not awaited)");
    listener.settle();
    let awaited = raw_epoll(addr, d.raw, 64);
    awaited.print("raw connect, handshake awaited with epoll, 64 in flight, close");
    listener.settle();

    let connect_only = connect_throughput(addr, d.engine, 64);
    connect_only.print("probe::tcp::connect alone, 64 in flight, current_thread");
    listener.settle();
    let engine = engine_throughput(addr, d.engine, 64);
    engine.print("engine Engine::run tcp connect, 64 in flight, current_thread");
    listener.settle();
    if fire.ok > 0 && awaited.ok > 0 {
        println!(
            "engine / raw connect+close: {:.0}% (goal >= 50%); tcp::connect alone / raw: {:.0}%",
            100.0 * engine.rate() / fire.rate(),
            100.0 * connect_only.rate() / fire.rate()
        );
        println!(
            "engine / raw epoll loop (same work as a check): {:.0}% by rate, {:.0}% per CPU second ({:.0} vs {:.0} checks per CPU second)",
            100.0 * engine.rate() / awaited.rate(),
            100.0 * (engine.ok as f64 / engine.cpu) / (awaited.ok as f64 / awaited.cpu),
            engine.ok as f64 / engine.cpu,
            awaited.ok as f64 / awaited.cpu,
        );
    }
    versus_blackbox_exporter(addr, &engine, d.engine);
    listener.settle();

    let stats = scheduler_lateness(10_000, Duration::from_secs(1), d.sched_cheap, None);
    print_sched(
        "10,000 monitors @ 1 s, no-op executor",
        &stats,
        d.sched_cheap,
    );
    let stats = scheduler_lateness(10_000, Duration::from_secs(10), d.sched_engine, Some(addr));
    print_sched(
        "10,000 monitors @ 10 s, real engine tcp connect",
        &stats,
        d.sched_engine,
    );

    let accepted = listener.stop();
    println!("listener accepted {accepted} connections in all");
}

/// The same checks by Prometheus' blackbox_exporter (tcp_connect module),
/// scraped by 64 scrapers at once as a Prometheus with many targets would,
/// with GOMAXPROCS=1 as the engine runs on one thread. Compared by rate and
/// by checks per CPU second (the scrapers' HTTP is the exporter's cost too:
/// it is how it is driven).
fn versus_blackbox_exporter(addr: SocketAddr, engine: &Tally, dur: Duration) {
    if !blackbox::Exporter::available() {
        println!(
            "blackbox_exporter: not installed ({}), skipped; deploy/install-bench-deps.sh installs it",
            blackbox::BINARY
        );
        return;
    }
    let exporter = blackbox::Exporter::start(1, &[], 0);
    exporter.wait_ready();
    let scrapes = exporter.throughput(addr, 64, dur);
    println!(
        "blackbox_exporter tcp_connect, GOMAXPROCS=1, 64 scrapers: {:.0} checks/s ({} in {:.2} s, {} failed{}), {:.2} CPU s: {:.0} checks per CPU second",
        scrapes.rate(),
        scrapes.ok,
        scrapes.elapsed.as_secs_f64(),
        scrapes.failed,
        scrapes
            .first_error
            .as_deref()
            .map(|e| format!(", first: {e}"))
            .unwrap_or_default(),
        scrapes.exporter_cpu,
        scrapes.ok as f64 / scrapes.exporter_cpu.max(0.01)
    );
    println!(
        "engine: {:.0} checks per CPU second ({:.2} CPU s)",
        engine.ok as f64 / engine.cpu.max(0.01),
        engine.cpu
    );
    if scrapes.ok > 0 {
        println!(
            "engine / blackbox_exporter: {:.1}x by rate, {:.1}x per CPU second (goal >= 10x)",
            engine.rate() / scrapes.rate(),
            (engine.ok as f64 / engine.cpu.max(0.01))
                / (scrapes.ok as f64 / scrapes.exporter_cpu.max(0.01))
        );
    }
}

/// A 127.0.0.1 listener with a 4096 backlog and a thread that accepts and drops.
struct Listener {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    thread: JoinHandle<()>,
}

impl Listener {
    fn start() -> io::Result<Listener> {
        let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(socket2::Protocol::TCP))?;
        sock.set_reuse_address(true)?;
        sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
        sock.listen(4096)?;
        let addr = sock
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("listener has no inet address"))?;
        let listener = std::net::TcpListener::from(sock);
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (s, a) = (Arc::clone(&stop), Arc::clone(&accepted));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if listener.accept().is_ok() {
                    a.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(Listener {
            addr,
            stop,
            accepted,
            thread,
        })
    }

    /// Waits (at most 5 s) until the accept thread has caught up: a phase that
    /// left thousands of connections in the accept queue would otherwise make
    /// the next phase pay for 1 s SYN retransmits of an overflowing queue.
    fn settle(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut last = self.accepted.load(Ordering::Relaxed);
        while std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.accepted.load(Ordering::Relaxed);
            if now == last {
                return;
            }
            last = now;
        }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        let _ = self.thread.join();
        self.accepted.load(Ordering::Relaxed)
    }
}

/// Successes and failures (by errno) of a measuring loop.
#[derive(Default)]
struct Tally {
    ok: u64,
    /// Of `ok`, connects that returned EINPROGRESS rather than completing at once.
    in_progress: u64,
    errors: BTreeMap<String, u64>,
    elapsed: Duration,
    /// CPU seconds of the measuring thread meanwhile.
    cpu: f64,
}

impl Tally {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn fail(&mut self, what: String) {
        *self.errors.entry(what).or_default() += 1;
    }

    fn print(&self, label: &str) {
        println!(
            "{label}: {:.0} checks/s ({} in {:.2} s)",
            self.rate(),
            self.ok,
            self.elapsed.as_secs_f64()
        );
        if self.in_progress > 0 {
            println!(
                "  {} of them returned EINPROGRESS (handshake not finished inside connect)",
                self.in_progress
            );
        }
        for (e, n) in &self.errors {
            println!("  {n} failed: {e}");
        }
        if self
            .errors
            .keys()
            .any(|e| e.contains("EADDRNOTAVAIL") || e.contains("net_unreachable"))
        {
            println!(
                "  (EADDRNOTAVAIL: ephemeral ports exhausted by TIME_WAIT; see net.ipv4.tcp_tw_reuse)"
            );
        }
    }
}

fn errno_name(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EADDRNOTAVAIL) => "EADDRNOTAVAIL".into(),
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
        Some(libc::EAGAIN) => "EAGAIN".into(),
        _ => e.to_string(),
    }
}

/// The floor of any connect check: socket, non-blocking connect, close, on one
/// thread. On loopback the handshake usually completes inside connect() (the
/// SYN-ACK is processed in the same softirq), so this is close to a full check.
fn raw_fire_and_forget(addr: SocketAddr, dur: Duration) -> Tally {
    let mut t = Tally::default();
    let target = addr.into();
    let start = Instant::now();
    for _ in 0..MAX_ITERATIONS {
        if start.elapsed() >= dur {
            break;
        }
        let sock = match Socket::new(
            Domain::IPV4,
            Type::STREAM.nonblocking(),
            Some(socket2::Protocol::TCP),
        ) {
            Ok(s) => s,
            Err(e) => {
                t.fail(format!("socket: {}", errno_name(&e)));
                continue;
            }
        };
        match sock.connect(&target) {
            Ok(()) => t.ok += 1,
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
                t.ok += 1;
                t.in_progress += 1;
            }
            Err(e) => t.fail(format!("connect: {}", errno_name(&e))),
        }
        drop(sock);
    }
    t.elapsed = start.elapsed();
    t
}

/// The limit of a complete connect check on one thread: `depth`
/// non-blocking connect()s in flight, each awaited with epoll until the
/// handshake is done, its SO_ERROR read, then closed and replaced. The
/// engine's work without the engine: no runtime, no timer, no allocation.
fn raw_epoll(addr: SocketAddr, dur: Duration, depth: usize) -> Tally {
    use rustix::event::epoll;
    use rustix::io::Errno;
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socket_with, sockopt};
    use std::os::fd::OwnedFd;

    let mut t = Tally::default();
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).expect("epoll_create");
    let open = |slot: usize| -> Result<OwnedFd, String> {
        let fd = socket_with(
            AddressFamily::INET,
            SocketType::STREAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| format!("socket: {e}"))?;
        match rustix::net::connect(&fd, &addr) {
            Ok(()) | Err(Errno::INPROGRESS) => {}
            Err(e) => return Err(format!("connect: {e}")),
        }
        epoll::add(
            &ep,
            &fd,
            epoll::EventData::new_u64(slot as u64),
            epoll::EventFlags::OUT | epoll::EventFlags::ONESHOT,
        )
        .map_err(|e| format!("epoll_ctl: {e}"))?;
        Ok(fd)
    };
    let cpu0 = blackbox::thread_cpu_seconds();
    let start = Instant::now();
    let mut slots: Vec<Option<OwnedFd>> = Vec::with_capacity(depth);
    for slot in 0..depth {
        slots.push(open(slot).map_err(|e| t.fail(e)).ok());
    }
    let mut events: Vec<epoll::Event> = Vec::with_capacity(depth);
    let timeout = rustix::event::Timespec {
        tv_sec: 1,
        tv_nsec: 0,
    };
    let mut done: u64 = 0;
    while done < MAX_ITERATIONS && start.elapsed() < dur {
        events.clear();
        if let Err(e) = epoll::wait(
            &ep,
            rustix::buffer::spare_capacity(&mut events),
            Some(&timeout),
        ) {
            t.fail(format!("epoll_wait: {e}"));
            continue;
        }
        if events.is_empty() {
            t.fail("no handshake finished within 1 s".into());
            break;
        }
        for ev in &events {
            let slot = ev.data.u64() as usize;
            if let Some(fd) = slots[slot].take() {
                match sockopt::socket_error(&fd) {
                    Ok(Ok(())) => t.ok += 1,
                    Ok(Err(e)) => t.fail(format!("handshake: {e}")),
                    Err(e) => t.fail(format!("SO_ERROR: {e}")),
                }
                done += 1;
            }
            slots[slot] = open(slot).map_err(|e| t.fail(e)).ok();
        }
    }
    t.elapsed = start.elapsed();
    t.cpu = blackbox::thread_cpu_seconds() - cpu0;
    t
}

fn single_core_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn engine() -> Arc<Engine> {
    // Targets are IP literals: this resolver is never asked anything.
    let resolver = Resolver::with_nameserver(
        SocketAddr::from(([127, 0, 0, 1], 53)),
        Duration::from_secs(1),
    )
    .expect("resolver");
    Arc::new(Engine::with_resolver(resolver))
}

fn spec(addr: SocketAddr) -> CheckSpec {
    let mut spec = CheckSpec::new(format!("tcp://{addr}").parse().expect("target"));
    spec.timeout = Duration::from_secs(2);
    spec
}

/// `Engine::run` in `concurrency` tasks on a current_thread runtime.
fn engine_throughput(addr: SocketAddr, dur: Duration, concurrency: u64) -> Tally {
    run_concurrent(dur, concurrency, move || {
        let (engine, spec) = (engine(), Arc::new(spec(addr)));
        move || {
            let (engine, spec) = (Arc::clone(&engine), Arc::clone(&spec));
            async move {
                let r = engine.run(&spec).await;
                if r.reason == Reason::Ok {
                    Ok(())
                } else {
                    Err(format!("{}: {}", r.reason, r.message))
                }
            }
        }
    })
}

/// `probe::tcp::connect` (socket, connect, wait for writable, close) without the
/// rest of `Engine::run`: splits the engine's cost into the socket path and the rest.
fn connect_throughput(addr: SocketAddr, dur: Duration, concurrency: u64) -> Tally {
    run_concurrent(dur, concurrency, move || {
        move || async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            match tcp::connect(addr, deadline).await {
                Ok(_) => Ok(()),
                Err(f) => Err(format!("{}: {}", f.reason, f.message)),
            }
        }
    })
}

/// Runs `op` in a loop in each of `concurrency` tasks on a current_thread
/// runtime for `dur`. `setup` runs inside the runtime and returns the op.
fn run_concurrent<S, F, Fut>(dur: Duration, concurrency: u64, setup: S) -> Tally
where
    S: FnOnce() -> F,
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    single_core_runtime().block_on(async move {
        let op = setup();
        let cpu0 = blackbox::thread_cpu_seconds();
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            let op = op.clone();
            tasks.spawn(async move {
                let mut t = Tally::default();
                for _ in 0..MAX_ITERATIONS / concurrency {
                    if start.elapsed() >= dur {
                        break;
                    }
                    match op().await {
                        Ok(()) => t.ok += 1,
                        Err(e) => t.fail(e),
                    }
                }
                t
            });
        }
        let mut all = Tally::default();
        while let Some(t) = tasks.join_next().await {
            let t = t.expect("bench task");
            all.ok += t.ok;
            for (e, n) in t.errors {
                *all.errors.entry(e).or_default() += n;
            }
        }
        all.elapsed = start.elapsed();
        all.cpu = blackbox::thread_cpu_seconds() - cpu0;
        all
    })
}

/// Returns immediately: measures the scheduler alone.
struct NoOp;

impl Executor for NoOp {
    fn execute(&self, _spec: Arc<CheckSpec>) -> BoxFuture<'static, CheckResult> {
        Box::pin(async { CheckResult::new(Status::Up, Reason::Ok, "") })
    }
}

struct SchedRun {
    stats: SchedulerStats,
    results: u64,
    not_ok: u64,
}

/// `count` monitors at `interval` for `dur` on the real clock, single core.
/// With `target`, the real engine connects to it; otherwise a no-op executor.
fn scheduler_lateness(
    count: usize,
    interval: Duration,
    dur: Duration,
    target: Option<SocketAddr>,
) -> SchedRun {
    single_core_runtime().block_on(async move {
        let spec = Arc::new(spec(
            target.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9))),
        ));
        let monitors: Vec<Monitor> = (0..count)
            .map(|i| Monitor {
                id: format!("bench-{i}"),
                interval,
                spec: Arc::clone(&spec),
            })
            .collect();
        let (tx, mut rx) = mpsc::channel::<ScheduledResult>(4096);
        let consumer = tokio::spawn(async move {
            let (mut results, mut not_ok) = (0u64, 0u64);
            while let Some(r) = rx.recv().await {
                results += 1;
                not_ok += u64::from(r.result.reason != Reason::Ok);
            }
            (results, not_ok)
        });
        let handle = match target {
            Some(_) => Scheduler::spawn(monitors, engine(), 256, tx),
            None => Scheduler::spawn(monitors, NoOp, 256, tx),
        }
        .expect("spawn scheduler");
        tokio::time::sleep(dur).await;
        let stats = handle.stats();
        handle.shutdown(Duration::from_secs(3)).await;
        let (results, not_ok) = consumer.await.expect("consumer");
        SchedRun {
            stats,
            results,
            not_ok,
        }
    })
}

fn print_sched(label: &str, run: &SchedRun, dur: Duration) {
    let s = &run.stats;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "scheduler, {label}, {:.1} s: lateness p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms, mean {:.3} ms (goal p99 < 5 ms)",
        dur.as_secs_f64(),
        ms(s.lateness.p50),
        ms(s.lateness.p99),
        ms(s.lateness.max),
        ms(s.lateness.mean)
    );
    println!(
        "  {} started ({:.0}/s), {} skipped (overlap), {} missed, {} results, {} not ok",
        s.started,
        s.started as f64 / dur.as_secs_f64(),
        s.skipped_overlap,
        s.missed,
        run.results,
        run.not_ok
    );
}

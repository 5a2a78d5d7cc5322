//! Runs thousands of monitors, each on its own interval, and sends every result
//! down a channel. The scheduler knows nothing of probing (an [`Executor`] runs
//! a check) nor of where results go (a `tokio::sync::mpsc::Sender`).
//!
//! How it keeps time:
//! - **No drift.** A monitor's due times are `origin + offset + k * interval` on
//!   the monotonic clock, computed from one origin taken at spawn; a run never
//!   sleeps "an interval after the work", so a check that takes 300 ms does not
//!   push the next one back.
//! - **No thundering herd.** Monitors are spread over their interval (see
//!   [`assign_offsets`]), stable across restarts and live updates.
//! - **One timer loop.** A binary heap of due times and one `sleep_until`, not a
//!   task per monitor: 10,000 monitors cost a heap entry and a slot each. A run
//!   is spawned only when it is due.
//! - **Bounded concurrency.** A (fair, FIFO) semaphore of `max_in_flight`
//!   permits; a run waits for a permit in due order, and its lateness includes
//!   that wait.
//! - **No overlap.** A monitor whose previous run is still queued or in flight
//!   is not started again: that slot counts as `skipped_overlap`. Every check is
//!   bounded by its own timeout in the Engine, so a slot is never held forever.
//! - **Live updates.** [`SchedulerHandle::update`] takes the full desired set:
//!   removed monitors stop (a run in flight still completes and reports;
//!   re-adding the id while it runs does not wait for it), and a monitor keeps
//!   its phase unless its own interval group changed.
//! - **New and changed monitors run at once.** A monitor an update adds, or
//!   whose spec it changes, runs right away (someone just asked about it: its
//!   first result must not wait most of an interval), then on its phase grid.
//!   Never twice back to back: its next run is the first grid slot at least
//!   half an interval after the immediate one, the rule every rescheduled
//!   monitor follows, so its first two runs are 0.5 to 1.5 intervals apart.
//!   A changed spec whose previous run is still in flight skips the immediate
//!   run (`skipped_overlap`) and is used from the next run on.
//! - **A whole set arriving at once keeps its phases.** The set given at
//!   spawn, and an update made with [`FirstRun::AtPhase`] (the agent's first
//!   assignment, or one restored from disk at start), run each monitor first
//!   at its phase, as ever: 10,000 monitors must not all fire in one burst.
//! - **Clean shutdown.** [`SchedulerHandle::shutdown`] stops starting checks
//!   (queued runs are dropped), waits for the ones in flight up to a bound so
//!   their results are sent, then aborts the rest.
//!
//! Tests run on paused tokio time, which makes the schedule exact to the
//! millisecond (offsets are whole milliseconds, the timer wheel's resolution).

mod lateness;
mod phase;
#[cfg(test)]
mod tests;

pub use lateness::LatenessSummary;
pub use phase::{assign_offsets, stable_hash};

use phase::first_due_at_or_after;

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::check::CheckSpec;
use crate::probe::Engine;
use crate::result::CheckResult;

use lateness::Histogram;

/// A boxed, sendable future, as the [`Executor`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One monitor: a check and how often to run it. `id` is the identity across
/// updates and restarts (its phase derives from it).
#[derive(Debug, Clone)]
pub struct Monitor {
    pub id: String,
    pub interval: Duration,
    pub spec: Arc<CheckSpec>,
}

/// A check result with the scheduling facts the engine does not know.
///
/// The wall-clock times are the origin's wall time plus monotonic offsets, so
/// they stay consistent with the schedule (and each other) even if the system
/// clock is stepped while the scheduler runs.
#[derive(Debug, Clone)]
pub struct ScheduledResult {
    pub monitor_id: String,
    /// When the run was due (wall clock, derived from the monotonic schedule).
    pub scheduled_at: SystemTime,
    /// When it actually started (after waiting for a permit, if it had to).
    pub started_at: SystemTime,
    /// `started_at - scheduled_at`, measured on the monotonic clock.
    pub lateness: Duration,
    pub result: CheckResult,
}

/// Runs one check. The scheduler relies on the future finishing in bounded
/// time (the Engine enforces the spec's timeout); shutdown aborts it otherwise.
pub trait Executor: Send + Sync + 'static {
    fn execute(&self, spec: Arc<CheckSpec>) -> BoxFuture<'static, CheckResult>;
}

impl Executor for Arc<Engine> {
    fn execute(&self, spec: Arc<CheckSpec>) -> BoxFuture<'static, CheckResult> {
        let engine = Arc::clone(self);
        Box::pin(async move { engine.run(&spec).await })
    }
}

/// Why a monitor set or a scheduler setting was refused, or a call could not be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("monitor {id:?}: interval must be at least 1 ms")]
    BadInterval { id: String },
    #[error("monitor {id:?} appears more than once")]
    DuplicateId { id: String },
    #[error("max in-flight checks must be between 1 and {max}, got {got}")]
    BadConcurrency { got: usize, max: usize },
    #[error("the scheduler has stopped")]
    Stopped,
}

/// Counters and gauges since spawn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Monitors in the current set.
    pub monitors: usize,
    /// Runs that got a permit and started.
    pub started: u64,
    /// Runs whose check finished (result sent or being sent).
    pub completed: u64,
    /// Due slots not run because the monitor's previous run was still queued or in flight.
    pub skipped_overlap: u64,
    /// Due slots passed over because the timer loop was more than an interval behind
    /// (a blocked runtime); the monitor resumes on its grid.
    pub missed: u64,
    /// Queued runs dropped at shutdown before they got a permit.
    pub cancelled: u64,
    /// Runs waiting for a permit now.
    pub queued: u64,
    /// Runs holding a permit now.
    pub in_flight: u64,
    /// How late runs started (actual start minus due time).
    pub lateness: LatenessSummary,
}

/// When the monitors an update adds, or whose spec it changes, run first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstRun {
    /// Right away, then at their phase: monitors added to a running schedule.
    Now,
    /// At their phase, as at spawn: a whole set that arrives at once (a
    /// starting agent's first assignment) must not run as one burst.
    AtPhase,
}

/// What an update did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpdateSummary {
    pub added: usize,
    pub removed: usize,
    /// Added or changed monitors run right away ([`FirstRun::Now`]); also
    /// counted as added, kept or rescheduled.
    pub run_now: usize,
    /// Kept their interval and phase (their spec may have been replaced).
    pub kept: usize,
    /// Moved to a new phase or interval: their own interval changed, or their
    /// interval group gained or lost members.
    pub rescheduled: usize,
}

/// What shutdown did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// In-flight runs that finished (and sent their result) within the grace period.
    pub drained: usize,
    /// Queued runs dropped before they started.
    pub cancelled: usize,
    /// Runs still in flight when the grace period ended, aborted without a result.
    pub abandoned: usize,
}

/// Spawns the timer loop.
pub struct Scheduler;

impl Scheduler {
    /// Starts running `monitors` on the current tokio runtime. At most
    /// `max_in_flight` checks run at once; every result goes to `tx`. The
    /// scheduler stops by itself if `tx`'s receiver is dropped.
    pub fn spawn<E: Executor>(
        monitors: Vec<Monitor>,
        executor: E,
        max_in_flight: usize,
        tx: mpsc::Sender<ScheduledResult>,
    ) -> Result<SchedulerHandle, ScheduleError> {
        if max_in_flight == 0 || max_in_flight > Semaphore::MAX_PERMITS {
            return Err(ScheduleError::BadConcurrency {
                got: max_in_flight,
                max: Semaphore::MAX_PERMITS,
            });
        }
        validate(&monitors)?;
        // Taken together, once: wall timestamps are this pair plus monotonic offsets.
        let origin = Instant::now();
        let origin_wall = SystemTime::now();
        let shared = Arc::new(Shared {
            origin,
            origin_wall,
            executor: Box::new(executor),
            permits: Arc::new(Semaphore::new(max_in_flight)),
            tx,
            monitors: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            skipped_overlap: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            lateness: Histogram::new(),
        });
        let (cmd_tx, cmd_rx) = mpsc::channel(16);
        let mut core = Core {
            shared: Arc::clone(&shared),
            slots: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            heap: BinaryHeap::new(),
            next_gen: 0,
            runs: JoinSet::new(),
        };
        // As of the origin itself: a moment later, a monitor of phase 0 would
        // find its first slot already past and wait a whole interval.
        core.apply(monitors, FirstRun::AtPhase, origin);
        let task = tokio::spawn(core.run(cmd_rx));
        Ok(SchedulerHandle {
            cmds: cmd_tx,
            shared,
            task,
        })
    }
}

/// Controls a running scheduler. Dropping it stops the scheduler and aborts
/// runs in flight; call [`shutdown`](SchedulerHandle::shutdown) to drain.
pub struct SchedulerHandle {
    cmds: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl SchedulerHandle {
    /// Replaces the monitor set with `monitors` (the full desired set) without
    /// restarting; new and changed monitors run right away. Returns once the
    /// timer loop has applied it.
    pub async fn update(&self, monitors: Vec<Monitor>) -> Result<UpdateSummary, ScheduleError> {
        self.update_with(monitors, FirstRun::Now).await
    }

    /// [`update`](SchedulerHandle::update), saying when new and changed
    /// monitors run first.
    pub async fn update_with(
        &self,
        monitors: Vec<Monitor>,
        first: FirstRun,
    ) -> Result<UpdateSummary, ScheduleError> {
        validate(&monitors)?;
        let (ack, done) = oneshot::channel();
        self.cmds
            .send(Command::Update(monitors, first, ack))
            .await
            .map_err(|_| ScheduleError::Stopped)?;
        done.await.map_err(|_| ScheduleError::Stopped)
    }

    /// Each monitor's offset within its interval (its phase), as currently scheduled.
    pub async fn offsets(&self) -> Result<HashMap<String, Duration>, ScheduleError> {
        let (ack, done) = oneshot::channel();
        self.cmds
            .send(Command::Offsets(ack))
            .await
            .map_err(|_| ScheduleError::Stopped)?;
        done.await.map_err(|_| ScheduleError::Stopped)
    }

    /// The schedule's origin: the monotonic instant every due time counts from,
    /// and the wall-clock time taken with it.
    pub fn origin(&self) -> (Instant, SystemTime) {
        (self.shared.origin, self.shared.origin_wall)
    }

    pub fn stats(&self) -> SchedulerStats {
        stats_of(&self.shared)
    }

    /// Reads [`stats`](SchedulerHandle::stats) from elsewhere (a heartbeat)
    /// without keeping the scheduler alive: `None` once it is gone.
    pub fn probe(&self) -> StatsProbe {
        StatsProbe(Arc::downgrade(&self.shared))
    }
}

/// See [`SchedulerHandle::probe`].
#[derive(Clone)]
pub struct StatsProbe(std::sync::Weak<Shared>);

impl StatsProbe {
    pub fn stats(&self) -> Option<SchedulerStats> {
        self.0.upgrade().map(|s| stats_of(&s))
    }
}

fn stats_of(s: &Shared) -> SchedulerStats {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    SchedulerStats {
        monitors: s.monitors.load(Ordering::Relaxed),
        started: load(&s.started),
        completed: load(&s.completed),
        skipped_overlap: load(&s.skipped_overlap),
        missed: load(&s.missed),
        cancelled: load(&s.cancelled),
        queued: load(&s.queued),
        in_flight: load(&s.in_flight),
        lateness: s.lateness.summary(),
    }
}

impl SchedulerHandle {
    /// Stops starting checks, drops queued runs, and waits up to `grace` for
    /// the runs in flight to finish and send their results; aborts the rest.
    pub async fn shutdown(self, grace: Duration) -> ShutdownReport {
        let (ack, done) = oneshot::channel();
        let report = match self.cmds.send(Command::Shutdown(grace, ack)).await {
            Ok(()) => done.await.unwrap_or_default(),
            Err(_) => ShutdownReport::default(),
        };
        let _ = self.task.await;
        report
    }
}

enum Command {
    Update(Vec<Monitor>, FirstRun, oneshot::Sender<UpdateSummary>),
    Offsets(oneshot::Sender<HashMap<String, Duration>>),
    Shutdown(Duration, oneshot::Sender<ShutdownReport>),
}

fn validate(monitors: &[Monitor]) -> Result<(), ScheduleError> {
    let mut seen = HashSet::with_capacity(monitors.len());
    for m in monitors {
        if m.interval < Duration::from_millis(1) {
            return Err(ScheduleError::BadInterval { id: m.id.clone() });
        }
        if !seen.insert(m.id.as_str()) {
            return Err(ScheduleError::DuplicateId { id: m.id.clone() });
        }
    }
    Ok(())
}

/// State shared by the timer loop, the runs and the handle.
struct Shared {
    origin: Instant,
    origin_wall: SystemTime,
    executor: Box<dyn Executor>,
    permits: Arc<Semaphore>,
    tx: mpsc::Sender<ScheduledResult>,
    monitors: AtomicUsize,
    started: AtomicU64,
    completed: AtomicU64,
    skipped_overlap: AtomicU64,
    missed: AtomicU64,
    cancelled: AtomicU64,
    queued: AtomicU64,
    in_flight: AtomicU64,
    lateness: Histogram,
}

impl Shared {
    fn wall(&self, t: Instant) -> SystemTime {
        self.origin_wall + t.saturating_duration_since(self.origin)
    }
}

/// One scheduled monitor.
struct Slot {
    id: Arc<str>,
    interval: Duration,
    offset: Duration,
    spec: Arc<CheckSpec>,
    /// Matches the live heap entry; any other entry for this slot is stale.
    generation: u64,
    /// The due time of the last slot that fired (run or skipped).
    last_due: Option<Instant>,
    /// True from the moment a run is queued until it has sent its result.
    /// Kept across spec and interval changes so an update cannot cause overlap.
    busy: Arc<AtomicBool>,
}

/// A due time in the heap, pointing at a slot.
#[derive(PartialEq, Eq)]
struct Due {
    at: Instant,
    generation: u64,
    slot: usize,
    /// An immediate run off the grid (a new or changed monitor): the next one
    /// goes back to the grid instead of `at + interval`.
    off_grid: bool,
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Reversed: BinaryHeap is a max-heap and we want the earliest first;
        // the generation breaks ties in insertion order.
        (other.at, other.generation).cmp(&(self.at, self.generation))
    }
}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The timer loop's state; owned by its task, so no locks.
struct Core {
    shared: Arc<Shared>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    by_id: HashMap<Arc<str>, usize>,
    heap: BinaryHeap<Due>,
    next_gen: u64,
    runs: JoinSet<()>,
}

impl Core {
    async fn run(mut self, mut cmds: mpsc::Receiver<Command>) {
        let far = || Instant::now() + Duration::from_secs(86_400 * 365);
        let sleep = tokio::time::sleep_until(far());
        tokio::pin!(sleep);
        let shared = Arc::clone(&self.shared);
        loop {
            let next = self.heap.peek().map(|d| d.at).unwrap_or_else(far);
            if sleep.deadline() != next {
                sleep.as_mut().reset(next);
            }
            tokio::select! {
                // Commands first: a shutdown must win over a due slot.
                biased;
                cmd = cmds.recv() => match cmd {
                    Some(Command::Update(monitors, first, ack)) => {
                        let _ = ack.send(self.apply(monitors, first, Instant::now()));
                    }
                    Some(Command::Offsets(ack)) => {
                        let _ = ack.send(self.offsets());
                    }
                    Some(Command::Shutdown(grace, ack)) => {
                        let _ = ack.send(self.drain(grace).await);
                        return;
                    }
                    None => {
                        tracing::debug!("scheduler handle dropped, stopping");
                        self.stop_starting();
                        return;
                    }
                },
                () = shared.tx.closed() => {
                    tracing::warn!("result receiver closed, scheduler stopping");
                    self.stop_starting();
                    return;
                }
                () = &mut sleep => self.fire_due(),
            }
            // Reap finished runs without waiting; each one's result is already sent.
            while let Some(done) = self.runs.try_join_next() {
                if let Err(e) = done
                    && e.is_panic()
                {
                    tracing::error!(error = %e, "a check panicked");
                }
            }
        }
    }

    /// Starts (or skips) every slot due by now and schedules its next one.
    fn fire_due(&mut self) {
        let now = Instant::now();
        while let Some(top) = self.heap.peek() {
            if top.at > now {
                break;
            }
            let Some(due) = self.heap.pop() else { break };
            let Some(slot) = self.slots.get_mut(due.slot).and_then(Option::as_mut) else {
                continue;
            };
            if slot.generation != due.generation {
                continue;
            }
            slot.last_due = Some(due.at);
            if slot.busy.swap(true, Ordering::AcqRel) {
                self.shared.skipped_overlap.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(monitor = %slot.id, "previous run still in flight, slot skipped");
            } else {
                let run = Run {
                    shared: Arc::clone(&self.shared),
                    id: Arc::clone(&slot.id),
                    spec: Arc::clone(&slot.spec),
                    due: due.at,
                    busy: BusyGuard(Arc::clone(&slot.busy)),
                };
                self.shared.queued.fetch_add(1, Ordering::Relaxed);
                self.runs.spawn(run.go());
            }
            let mut next = due.at + slot.interval;
            if due.off_grid {
                next = first_due_at_or_after(
                    self.shared.origin,
                    slot.offset,
                    slot.interval,
                    due.at + slot.interval / 2,
                );
            } else if next <= now {
                // More than an interval behind (the runtime was blocked): skip
                // to the grid instead of firing a burst of catch-up runs.
                let resumed =
                    first_due_at_or_after(self.shared.origin, slot.offset, slot.interval, now);
                let skipped = (resumed - next).as_nanos() / slot.interval.as_nanos();
                self.shared.missed.fetch_add(
                    u64::try_from(skipped).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
                next = resumed;
                if next == now {
                    next += slot.interval;
                    self.shared.missed.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.next_gen += 1;
            slot.generation = self.next_gen;
            self.heap.push(Due {
                at: next,
                generation: self.next_gen,
                slot: due.slot,
                off_grid: false,
            });
        }
    }

    /// Makes `monitors` the current set as of `now`; see [`SchedulerHandle::update`].
    fn apply(&mut self, monitors: Vec<Monitor>, first: FirstRun, now: Instant) -> UpdateSummary {
        let origin = self.shared.origin;
        let offsets: HashMap<String, Duration> = assign_offsets(&monitors)
            .into_iter()
            .map(|(id, off)| (id.to_owned(), off))
            .collect();
        let mut summary = UpdateSummary::default();
        let mut wanted: HashSet<Arc<str>> = HashSet::with_capacity(monitors.len());
        for m in monitors {
            let offset = offsets[&m.id];
            match self.by_id.get(m.id.as_str()) {
                Some(&idx) => {
                    let Some(slot) = self.slots[idx].as_mut() else {
                        continue;
                    };
                    wanted.insert(Arc::clone(&slot.id));
                    let changed = *slot.spec != *m.spec;
                    slot.spec = m.spec;
                    let moved = slot.interval != m.interval || slot.offset != offset;
                    slot.interval = m.interval;
                    slot.offset = offset;
                    if moved {
                        summary.rescheduled += 1;
                    } else {
                        summary.kept += 1;
                    }
                    let run_now = changed && first == FirstRun::Now;
                    let at = if run_now {
                        summary.run_now += 1;
                        now
                    } else if moved {
                        // Never closer than half an interval to the last run: a small
                        // phase shift must not run the monitor twice back to back.
                        let earliest = slot.last_due.map_or(now, |d| (d + m.interval / 2).max(now));
                        first_due_at_or_after(origin, offset, m.interval, earliest)
                    } else {
                        continue;
                    };
                    self.next_gen += 1;
                    slot.generation = self.next_gen;
                    self.heap.push(Due {
                        at,
                        generation: self.next_gen,
                        slot: idx,
                        off_grid: run_now,
                    });
                }
                None => {
                    let id: Arc<str> = Arc::from(m.id.as_str());
                    wanted.insert(Arc::clone(&id));
                    self.next_gen += 1;
                    let off_grid = first == FirstRun::Now;
                    let at = if off_grid {
                        summary.run_now += 1;
                        now
                    } else {
                        first_due_at_or_after(origin, offset, m.interval, now)
                    };
                    let slot = Slot {
                        id: Arc::clone(&id),
                        interval: m.interval,
                        offset,
                        spec: m.spec,
                        generation: self.next_gen,
                        last_due: None,
                        busy: Arc::new(AtomicBool::new(false)),
                    };
                    let idx = match self.free.pop() {
                        Some(i) => {
                            self.slots[i] = Some(slot);
                            i
                        }
                        None => {
                            self.slots.push(Some(slot));
                            self.slots.len() - 1
                        }
                    };
                    self.by_id.insert(id, idx);
                    self.heap.push(Due {
                        at,
                        generation: self.next_gen,
                        slot: idx,
                        off_grid,
                    });
                    summary.added += 1;
                }
            }
        }
        let gone: Vec<Arc<str>> = self
            .by_id
            .keys()
            .filter(|id| !wanted.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(idx) = self.by_id.remove(&id) {
                // Its heap entries become stale; a run in flight still reports.
                self.slots[idx] = None;
                self.free.push(idx);
                summary.removed += 1;
            }
        }
        // Stale entries are dropped as they come due; compact when they dominate
        // so repeated updates cannot grow the heap without bound.
        if self.heap.len() > 2 * self.by_id.len() + 1024 {
            let slots = &self.slots;
            self.heap.retain(|d| {
                slots[d.slot]
                    .as_ref()
                    .is_some_and(|s| s.generation == d.generation)
            });
        }
        self.shared
            .monitors
            .store(self.by_id.len(), Ordering::Relaxed);
        summary
    }

    fn offsets(&self) -> HashMap<String, Duration> {
        self.slots
            .iter()
            .flatten()
            .map(|s| (s.id.to_string(), s.offset))
            .collect()
    }

    /// Closing the semaphore makes every queued run give up instead of starting.
    fn stop_starting(&mut self) {
        self.shared.permits.close();
        self.heap.clear();
    }

    async fn drain(&mut self, grace: Duration) -> ShutdownReport {
        let cancelled_before = self.shared.cancelled.load(Ordering::Relaxed);
        let completed_before = self.shared.completed.load(Ordering::Relaxed);
        self.stop_starting();
        let deadline = Instant::now() + grace;
        let mut abandoned = 0;
        loop {
            match tokio::time::timeout_at(deadline, self.runs.join_next()).await {
                Ok(None) => break,
                Ok(Some(_)) => {}
                Err(_) => {
                    abandoned = self.runs.len();
                    tracing::warn!(
                        abandoned,
                        "checks still running after the shutdown grace period, aborting them"
                    );
                    self.runs.abort_all();
                    while self.runs.join_next().await.is_some() {}
                    break;
                }
            }
        }
        let cancelled = self.shared.cancelled.load(Ordering::Relaxed) - cancelled_before;
        let drained = self.shared.completed.load(Ordering::Relaxed) - completed_before;
        ShutdownReport {
            drained: usize::try_from(drained).unwrap_or(usize::MAX),
            cancelled: usize::try_from(cancelled).unwrap_or(usize::MAX),
            abandoned,
        }
    }
}

/// Clears a monitor's busy flag however its run ends (finished, cancelled, aborted, panicked).
struct BusyGuard(Arc<AtomicBool>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Decrements a gauge however the run ends.
struct Gauge<'a>(&'a AtomicU64);

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One run of one monitor, from queued to result sent.
struct Run {
    shared: Arc<Shared>,
    id: Arc<str>,
    spec: Arc<CheckSpec>,
    due: Instant,
    busy: BusyGuard,
}

impl Run {
    async fn go(self) {
        let Run {
            shared,
            id,
            spec,
            due,
            busy,
        } = self;
        let permit = {
            let _queued = Gauge(&shared.queued);
            match Arc::clone(&shared.permits).acquire_owned().await {
                Ok(p) => p,
                Err(_) => {
                    // Closed: the scheduler is shutting down; this run never starts.
                    shared.cancelled.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        };
        let started = Instant::now();
        let lateness = started.saturating_duration_since(due);
        shared.started.fetch_add(1, Ordering::Relaxed);
        shared.lateness.record(lateness);
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        let result = {
            let _in_flight = Gauge(&shared.in_flight);
            let result = shared.executor.execute(spec).await;
            drop(permit);
            result
        };
        shared.completed.fetch_add(1, Ordering::Relaxed);
        let out = ScheduledResult {
            monitor_id: id.to_string(),
            scheduled_at: shared.wall(due),
            started_at: shared.wall(started),
            lateness,
            result,
        };
        // A slow consumer holds this run (and so the monitor's busy flag), never
        // a permit: back-pressure shows as skipped slots, not as stalled checks.
        if shared.tx.send(out).await.is_err() {
            tracing::debug!(monitor = %id, "result receiver closed, result dropped");
        }
        drop(busy);
    }
}

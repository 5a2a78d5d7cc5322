//! A [`Store`] that tells an observer about every batch it made durable: how
//! results reach incident detection from every writer (agent streams, public
//! probes) without each of them knowing about it.

use std::sync::{Arc, OnceLock};

use portwatch_proto::v1 as pb;

use super::{
    BatchOutcome, Event, EventQuery, IncidentQuery, IncidentRow, ResultQuery, RetentionOutcome,
    Rollup, RollupOutcome, RollupQuery, Sample, SourceGap, Store, StoreError, StoreStats,
    StoredGap, StoredResult, Summary, SummaryQuery,
};

/// Called with the samples of each successful [`Store::ingest`] (duplicates
/// included: the observer deduplicates by check time).
pub type Observer = Arc<dyn Fn(&[Sample]) + Send + Sync>;

/// `inner`, plus an observer that may be set once, after construction (the
/// observer usually needs parts built on top of this store).
pub struct Observed {
    inner: Arc<dyn Store>,
    observer: OnceLock<Observer>,
}

impl Observed {
    pub fn new(inner: Arc<dyn Store>) -> Observed {
        Observed {
            inner,
            observer: OnceLock::new(),
        }
    }

    /// Sets the observer; a second call is ignored.
    pub fn set_observer(&self, observer: Observer) {
        let _ = self.observer.set(observer);
    }
}

impl Store for Observed {
    fn ingest(
        &self,
        source: &str,
        epoch: u64,
        now_ms: i64,
        samples: &[Sample],
        gaps: &[SourceGap],
    ) -> Result<BatchOutcome, StoreError> {
        let out = self.inner.ingest(source, epoch, now_ms, samples, gaps)?;
        if let Some(observe) = self.observer.get() {
            observe(samples);
        }
        Ok(out)
    }

    fn results(&self, q: &ResultQuery) -> Result<Vec<StoredResult>, StoreError> {
        self.inner.results(q)
    }

    fn latest(&self, monitor_id: &str) -> Result<Vec<(String, pb::CheckResult)>, StoreError> {
        self.inner.latest(monitor_id)
    }

    fn latest_all(&self) -> Result<Vec<(String, String, pb::CheckResult)>, StoreError> {
        self.inner.latest_all()
    }

    fn locations_of(&self, monitor_id: &str) -> Result<Vec<String>, StoreError> {
        self.inner.locations_of(monitor_id)
    }

    fn gaps(&self, source: &str) -> Result<Vec<StoredGap>, StoreError> {
        self.inner.gaps(source)
    }

    fn watermark(&self, source: &str) -> Result<Option<(u64, u64)>, StoreError> {
        self.inner.watermark(source)
    }

    fn rollups(&self, q: &RollupQuery) -> Result<Vec<Rollup>, StoreError> {
        self.inner.rollups(q)
    }

    fn summaries(&self, q: &SummaryQuery) -> Result<Vec<Summary>, StoreError> {
        self.inner.summaries(q)
    }

    fn roll_up(&self, now_ms: i64) -> Result<RollupOutcome, StoreError> {
        self.inner.roll_up(now_ms)
    }

    fn retain(&self, now_ms: i64) -> Result<RetentionOutcome, StoreError> {
        self.inner.retain(now_ms)
    }

    fn append_event(&self, event: &Event) -> Result<u64, StoreError> {
        self.inner.append_event(event)
    }

    fn events(&self, q: &EventQuery) -> Result<Vec<(u64, Event)>, StoreError> {
        self.inner.events(q)
    }

    fn put_incident(&self, row: &IncidentRow) -> Result<u64, StoreError> {
        self.inner.put_incident(row)
    }

    fn incident(&self, id: u64) -> Result<Option<IncidentRow>, StoreError> {
        self.inner.incident(id)
    }

    fn incidents(&self, q: &IncidentQuery) -> Result<Vec<IncidentRow>, StoreError> {
        self.inner.incidents(q)
    }

    fn count_results(&self) -> Result<u64, StoreError> {
        self.inner.count_results()
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        self.inner.stats()
    }
}

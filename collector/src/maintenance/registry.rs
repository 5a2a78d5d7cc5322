//! The live set of maintenance windows: the config file's plus the API's
//! (persisted in `maintenance.json`), one namespace. The incident engine asks
//! it whether a monitor is in maintenance at an instant.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{RawWindow, Window, WindowOrigin, validate, validate_all};
use crate::incident::engine::Silencer;

/// API one-off windows are kept this long after they ended (history), then pruned.
pub const KEEP_ENDED_MS: i64 = 30 * 86_400_000;

#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    #[error("no maintenance window is named {0:?}")]
    NotFound(String),
    #[error("maintenance window {0:?} is defined in the config file: change it there")]
    ManagedByFile(String),
    #[error("a maintenance window named {0:?} exists already")]
    Exists(String),
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
    #[error("{path}: {why}")]
    Storage { path: PathBuf, why: String },
}

/// A window covering a monitor now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Active {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub ends_ms: i64,
}

/// One occurrence, for the status page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Occurrence {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub monitors: Vec<String>,
    pub tags: Vec<String>,
    pub start_ms: i64,
    pub end_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct ApiFile {
    windows: Vec<RawWindow>,
}

struct Inner {
    file: Vec<Window>,
    api: Vec<Window>,
}

/// Clone-cheap handle.
#[derive(Clone)]
pub struct MaintenanceRegistry {
    inner: Arc<Mutex<Inner>>,
    path: Option<PathBuf>,
    changes: Arc<watch::Sender<u64>>,
}

impl Default for MaintenanceRegistry {
    /// Empty, in memory.
    fn default() -> Self {
        MaintenanceRegistry::open(Vec::new(), None).expect("an empty in-memory registry opens")
    }
}

impl MaintenanceRegistry {
    /// The file's windows (validated) plus the API's from `api_path` (None:
    /// in memory only). A corrupt file is an error, never an empty set.
    pub fn open(file: Vec<Window>, api_path: Option<&Path>) -> Result<Self, MaintenanceError> {
        let mut api = Vec::new();
        if let Some(path) = api_path {
            let storage = |why: String| MaintenanceError::Storage {
                path: path.to_owned(),
                why,
            };
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    let parsed: ApiFile =
                        serde_json::from_str(&text).map_err(|e| storage(e.to_string()))?;
                    api = validate_all(&parsed.windows, "windows", WindowOrigin::Api)
                        .map_err(|p| storage(p.join("; ")))?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(storage(e.to_string())),
            }
        }
        if let Some(w) = file.iter().find(|f| api.iter().any(|a| a.name == f.name)) {
            return Err(MaintenanceError::Exists(w.name.clone()));
        }
        let (changes, _) = watch::channel(1);
        Ok(MaintenanceRegistry {
            inner: Arc::new(Mutex::new(Inner { file, api })),
            path: api_path.map(Path::to_owned),
            changes: Arc::new(changes),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bumps on every change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Every window, by name.
    pub fn list(&self) -> Vec<Window> {
        let inner = self.lock();
        let mut all: Vec<Window> = inner.file.iter().chain(&inner.api).cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub fn get(&self, name: &str) -> Option<Window> {
        let inner = self.lock();
        inner
            .file
            .iter()
            .chain(&inner.api)
            .find(|w| w.name == name)
            .cloned()
    }

    /// Adds an API window; pruning API windows that ended long ago.
    pub fn add(&self, raw: RawWindow, now_ms: i64) -> Result<Window, MaintenanceError> {
        let w = validate(&raw, "window", WindowOrigin::Api).map_err(MaintenanceError::Invalid)?;
        let mut inner = self.lock();
        if inner
            .file
            .iter()
            .chain(&inner.api)
            .any(|x| x.name == w.name)
        {
            return Err(MaintenanceError::Exists(w.name));
        }
        let mut api: Vec<Window> = inner
            .api
            .iter()
            .filter(|x| !x.over_before(now_ms - KEEP_ENDED_MS))
            .cloned()
            .collect();
        api.push(w.clone());
        self.persist(&api)?;
        inner.api = api;
        drop(inner);
        self.changes.send_modify(|v| *v += 1);
        Ok(w)
    }

    /// Removes an API window (ending it at once if it is running).
    pub fn cancel(&self, name: &str) -> Result<Window, MaintenanceError> {
        let mut inner = self.lock();
        if inner.file.iter().any(|w| w.name == name) {
            return Err(MaintenanceError::ManagedByFile(name.to_owned()));
        }
        let Some(found) = inner.api.iter().find(|w| w.name == name).cloned() else {
            return Err(MaintenanceError::NotFound(name.to_owned()));
        };
        let api: Vec<Window> = inner
            .api
            .iter()
            .filter(|w| w.name != name)
            .cloned()
            .collect();
        self.persist(&api)?;
        inner.api = api;
        drop(inner);
        self.changes.send_modify(|v| *v += 1);
        Ok(found)
    }

    /// Replaces the config file's windows (on reload). Nothing changes on error.
    pub fn replace_file(&self, raws: &[RawWindow]) -> Result<(), Vec<String>> {
        let file = self.check_file(raws)?;
        self.set_file(file);
        Ok(())
    }

    /// Checks the config file's windows against the API's, changing nothing.
    pub fn check_file(&self, raws: &[RawWindow]) -> Result<Vec<Window>, Vec<String>> {
        let file = validate_all(raws, "maintenance", WindowOrigin::File)?;
        let inner = self.lock();
        let clashes: Vec<String> = file
            .iter()
            .filter(|f| inner.api.iter().any(|a| a.name == f.name))
            .map(|f| {
                format!(
                    "maintenance ({:?}).name: an API window has this name: cancel it first",
                    f.name
                )
            })
            .collect();
        if clashes.is_empty() {
            Ok(file)
        } else {
            Err(clashes)
        }
    }

    /// Installs windows [`check_file`](Self::check_file) accepted.
    pub fn set_file(&self, file: Vec<Window>) {
        let mut inner = self.lock();
        if inner.file != file {
            inner.file = file;
            drop(inner);
            self.changes.send_modify(|v| *v += 1);
        }
    }

    /// The window covering `monitor` (with `tags`) at `ts_ms`, the one
    /// ending last when several do.
    pub fn active_for(&self, monitor: &str, tags: &[String], ts_ms: i64) -> Option<Active> {
        let inner = self.lock();
        inner
            .file
            .iter()
            .chain(&inner.api)
            .filter(|w| w.selects(monitor, tags))
            .filter_map(|w| {
                w.occurrence_at(ts_ms).map(|(_, end)| Active {
                    name: w.name.clone(),
                    reason: w.reason.clone(),
                    ends_ms: end,
                })
            })
            .max_by_key(|a| a.ends_ms)
    }

    /// The intervals windows covered `monitor` (with `tags`) within
    /// `[from_ms, to_ms)`, merged: see [`super::covered`].
    pub fn covered(
        &self,
        monitor: &str,
        tags: &[String],
        from_ms: i64,
        to_ms: i64,
    ) -> Vec<(i64, i64)> {
        let inner = self.lock();
        super::covered(
            inner.file.iter().chain(&inner.api),
            monitor,
            tags,
            from_ms,
            to_ms,
        )
    }

    /// Every occurrence overlapping `[from_ms, to_ms)`, by start.
    pub fn upcoming(&self, from_ms: i64, to_ms: i64) -> Vec<Occurrence> {
        let inner = self.lock();
        let mut out: Vec<Occurrence> = inner
            .file
            .iter()
            .chain(&inner.api)
            .flat_map(|w| {
                w.occurrences(from_ms, to_ms)
                    .into_iter()
                    .map(|(start_ms, end_ms)| Occurrence {
                        name: w.name.clone(),
                        reason: w.reason.clone(),
                        monitors: w.monitors.clone(),
                        tags: w.tags.clone(),
                        start_ms,
                        end_ms,
                    })
            })
            .collect();
        out.sort_by(|a, b| (a.start_ms, &a.name).cmp(&(b.start_ms, &b.name)));
        out
    }

    fn persist(&self, api: &[Window]) -> Result<(), MaintenanceError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let storage = |why: String| MaintenanceError::Storage {
            path: path.clone(),
            why,
        };
        let file = ApiFile {
            windows: api.iter().map(|w| w.raw.clone()).collect(),
        };
        let text = serde_json::to_string_pretty(&file).map_err(|e| storage(e.to_string()))?;
        crate::state::write_atomic(path, text.as_bytes()).map_err(|e| storage(e.to_string()))
    }
}

impl Silencer for MaintenanceRegistry {
    fn active(&self, monitor: &str, tags: &[String], ts_ms: i64) -> Option<String> {
        self.active_for(monitor, tags, ts_ms).map(|a| a.name)
    }
}

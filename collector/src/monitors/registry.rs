//! The live monitor set: the config file's monitors plus the API's, one
//! model. It answers "what does this agent run" and "what does this public
//! region run", and tells listeners when anything changed, so agent streams
//! push a new assignment (only to agents whose set actually changed: an
//! assignment's version is a digest of its content).
//!
//! API monitors persist in `monitors.json` in the data dir (written
//! atomically); file monitors come back from the file on every start. A
//! reload that fails validation changes nothing: the last good set stays.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use portwatch_proto::v1 as pb;
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Located, Monitor, Origin, Parents, Problem, Problems, RawMonitor, validate_all};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no monitor is named {0:?}")]
    NotFound(String),
    #[error("monitor {0:?} is defined in the config file: change it there")]
    ManagedByFile(String),
    #[error("{0}")]
    Invalid(Problems),
    #[error("monitor {name:?} is needed by {dependents:?} (depends_on)")]
    DependedOn {
        name: String,
        dependents: Vec<String>,
    },
    #[error("{path}: {why}")]
    Storage { path: PathBuf, why: String },
}

/// The outcome of the last config file (re)load.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct ReloadStatus {
    #[schema(value_type = Option<String>)]
    pub file: Option<PathBuf>,
    /// When it was last (re)loaded, in unix ms.
    #[serde(with = "unix_ms_opt")]
    #[schema(value_type = Option<u64>)]
    pub at: Option<SystemTime>,
    pub ok: bool,
    /// Every problem of a rejected file, one per line.
    pub error: Option<String>,
}

mod unix_ms_opt {
    use std::time::{SystemTime, UNIX_EPOCH};
    pub fn serialize<S: serde::Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }
}

/// What a change did, by monitor name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ApiFile {
    monitors: Vec<RawMonitor>,
}

struct Inner {
    file: Vec<Monitor>,
    api: Vec<Monitor>,
    reload: ReloadStatus,
}

/// Shared handle; clones see the same set.
#[derive(Clone)]
pub struct MonitorRegistry {
    inner: Arc<Mutex<Inner>>,
    changes: Arc<watch::Sender<u64>>,
    api_path: Option<PathBuf>,
    /// The sorted set as of a change count, shared by readers until the
    /// next change (the dashboard and the status read it per request).
    snapshot: Arc<Mutex<(u64, Arc<Vec<Monitor>>)>>,
}

fn diff(old: &[Monitor], new: &[Monitor]) -> Change {
    let old: BTreeMap<&str, &Monitor> = old.iter().map(|m| (m.name.as_str(), m)).collect();
    let new: BTreeMap<&str, &Monitor> = new.iter().map(|m| (m.name.as_str(), m)).collect();
    let mut c = Change::default();
    for (name, m) in &new {
        match old.get(name) {
            None => c.added.push((*name).to_owned()),
            Some(o) if o != m => c.changed.push((*name).to_owned()),
            Some(_) => {}
        }
    }
    c.removed = old
        .keys()
        .filter(|n| !new.contains_key(*n))
        .map(|n| (*n).to_owned())
        .collect();
    c
}

/// A stable digest of an assignment's content: equal sets, equal versions,
/// across restarts too. Never 0 (0 means "nothing assigned yet").
fn version_of(monitors: &[pb::MonitorSpec], public_only: bool) -> u64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&[u8::from(public_only)]);
    for m in monitors {
        let bytes = m.encode_to_vec();
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(&bytes);
    }
    let d = ctx.finish();
    let mut v = [0u8; 8];
    v.copy_from_slice(&d.as_ref()[..8]);
    // Keep it within i64 so JSON consumers never lose precision.
    (u64::from_be_bytes(v) >> 11).max(1)
}

impl Default for MonitorRegistry {
    /// Empty and in memory only (API monitors are not persisted).
    fn default() -> Self {
        MonitorRegistry::open(Vec::new(), None).expect("an empty in-memory registry opens")
    }
}

impl MonitorRegistry {
    /// A registry with the file's monitors (already validated) and the API's
    /// from `api_path` (None: API monitors live in memory only, for tests).
    pub fn open(file: Vec<Monitor>, api_path: Option<&Path>) -> Result<Self, RegistryError> {
        let mut api = Vec::new();
        if let Some(path) = api_path {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    let parsed: ApiFile =
                        serde_json::from_str(&text).map_err(|e| RegistryError::Storage {
                            path: path.to_owned(),
                            why: e.to_string(),
                        })?;
                    let located: Vec<Located> = parsed
                        .monitors
                        .into_iter()
                        .enumerate()
                        .map(|(i, raw)| Located {
                            raw,
                            line: None,
                            path: format!("monitors[{i}]"),
                        })
                        .collect();
                    api = validate_all(
                        &located,
                        &path.display().to_string(),
                        Origin::Api,
                        &file,
                        Parents::MustExist,
                    )
                    .map_err(RegistryError::Invalid)?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(RegistryError::Storage {
                        path: path.to_owned(),
                        why: e.to_string(),
                    });
                }
            }
        }
        // The file was checked on its own: its parents may be API monitors.
        let known: std::collections::HashSet<&str> =
            file.iter().chain(&api).map(|m| m.name.as_str()).collect();
        let orphans: Vec<Problem> = file
            .iter()
            .filter_map(|m| {
                let parent = m.depends_on.as_deref()?;
                (!known.contains(parent)).then(|| Problem {
                    origin: "config file".into(),
                    line: None,
                    field: format!("monitor {:?}.depends_on", m.name),
                    why: format!("no monitor is named {parent:?}"),
                })
            })
            .collect();
        if !orphans.is_empty() {
            return Err(RegistryError::Invalid(Problems(orphans)));
        }
        let (changes, _) = watch::channel(1);
        Ok(MonitorRegistry {
            inner: Arc::new(Mutex::new(Inner {
                file,
                api,
                reload: ReloadStatus::default(),
            })),
            changes: Arc::new(changes),
            api_path: api_path.map(Path::to_owned),
            snapshot: Arc::new(Mutex::new((0, Arc::new(Vec::new())))),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    /// Bumps on every change of the set.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Every monitor, by name.
    pub fn monitors(&self) -> Vec<Monitor> {
        let inner = self.lock();
        let mut all: Vec<Monitor> = inner.file.iter().chain(&inner.api).cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Every monitor, by name, shared: no copy while the set is unchanged.
    pub fn snapshot(&self) -> Arc<Vec<Monitor>> {
        // The count bumps after each change is made, so a snapshot built
        // after reading count N holds at least change N.
        let version = *self.changes.borrow();
        let mut cached = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        if cached.0 != version {
            *cached = (version, Arc::new(self.monitors()));
        }
        cached.1.clone()
    }

    pub fn get(&self, name: &str) -> Option<Monitor> {
        let inner = self.lock();
        inner
            .file
            .iter()
            .chain(&inner.api)
            .find(|m| m.name == name)
            .cloned()
    }

    /// What the agent with this name and labels runs. An agent enrolled as
    /// a public location (`public_region`) also runs the monitors selecting
    /// that region, and is told to refuse private addresses.
    pub fn assignment_for(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        public_region: Option<&str>,
    ) -> pb::Assignment {
        // Asked by every agent stream on every change: copy only what it runs.
        let inner = self.lock();
        let mut monitors: Vec<pb::MonitorSpec> = inner
            .file
            .iter()
            .chain(&inner.api)
            .filter(|m| {
                m.runs_on_agent(name, labels) || public_region.is_some_and(|r| m.runs_on_public(r))
            })
            .map(|m| m.spec.clone())
            .collect();
        drop(inner);
        monitors.sort_by(|a, b| a.id.cmp(&b.id));
        let public_only = public_region.is_some();
        pb::Assignment {
            version: version_of(&monitors, public_only),
            monitors,
            public_only,
        }
    }

    /// What the collector's public region `region` runs.
    pub fn public_for(&self, region: &str) -> Vec<Monitor> {
        self.monitors()
            .into_iter()
            .filter(|m| m.runs_on_public(region))
            .collect()
    }

    /// Replaces the file's monitors with a freshly parsed file. On any
    /// problem nothing changes and the problems are returned (and kept in the
    /// reload status).
    pub fn replace_file(&self, located: &[Located], origin: &str) -> Result<Change, Problems> {
        let mut inner = self.lock();
        let checked = validate_all(
            located,
            origin,
            Origin::File,
            &inner.api,
            Parents::MustExist,
        );
        let now = Some(SystemTime::now());
        match checked {
            Ok(new) => {
                let change = diff(&inner.file, &new);
                inner.file = new;
                inner.reload = ReloadStatus {
                    file: Some(PathBuf::from(origin)),
                    at: now,
                    ok: true,
                    error: None,
                };
                drop(inner);
                if !change.is_empty() {
                    self.notify();
                }
                Ok(change)
            }
            Err(problems) => {
                inner.reload = ReloadStatus {
                    file: Some(PathBuf::from(origin)),
                    at: now,
                    ok: false,
                    error: Some(problems.to_string()),
                };
                Err(problems)
            }
        }
    }

    /// Records a reload that failed before its monitors could be checked (the
    /// file did not parse, or a setting outside the monitors is invalid).
    pub fn reload_failed(&self, origin: &str, error: String) {
        self.lock().reload = ReloadStatus {
            file: Some(PathBuf::from(origin)),
            at: Some(SystemTime::now()),
            ok: false,
            error: Some(error),
        };
    }

    pub fn reload_status(&self) -> ReloadStatus {
        self.lock().reload.clone()
    }

    /// Creates or replaces an API monitor. Returns it and whether it is new.
    pub fn upsert(&self, raw: RawMonitor) -> Result<(Monitor, bool), RegistryError> {
        let mut inner = self.lock();
        if inner.file.iter().any(|m| m.name == raw.name) {
            return Err(RegistryError::ManagedByFile(raw.name));
        }
        let created = !inner.api.iter().any(|m| m.name == raw.name);
        // Validate against everything else that stays live.
        let others: Vec<Monitor> = inner
            .file
            .iter()
            .chain(inner.api.iter().filter(|m| m.name != raw.name))
            .cloned()
            .collect();
        let located = [Located {
            raw,
            line: None,
            path: "monitor".into(),
        }];
        let mut checked = validate_all(&located, "api", Origin::Api, &others, Parents::MustExist)
            .map_err(RegistryError::Invalid)?;
        let monitor = checked.remove(0);
        let mut api: Vec<Monitor> = inner
            .api
            .iter()
            .filter(|m| m.name != monitor.name)
            .cloned()
            .collect();
        api.push(monitor.clone());
        api.sort_by(|a, b| a.name.cmp(&b.name));
        self.persist(&api)?;
        let changed = created || inner.api.iter().all(|m| m != &monitor);
        inner.api = api;
        drop(inner);
        if changed {
            self.notify();
        }
        Ok((monitor, created))
    }

    /// Deletes an API monitor; refused while another monitor depends on it.
    pub fn delete(&self, name: &str) -> Result<Monitor, RegistryError> {
        let mut inner = self.lock();
        if inner.file.iter().any(|m| m.name == name) {
            return Err(RegistryError::ManagedByFile(name.to_owned()));
        }
        let Some(found) = inner.api.iter().find(|m| m.name == name).cloned() else {
            return Err(RegistryError::NotFound(name.to_owned()));
        };
        let dependents: Vec<String> = inner
            .file
            .iter()
            .chain(&inner.api)
            .filter(|m| m.depends_on.as_deref() == Some(name))
            .map(|m| m.name.clone())
            .collect();
        if !dependents.is_empty() {
            return Err(RegistryError::DependedOn {
                name: name.to_owned(),
                dependents,
            });
        }
        let api: Vec<Monitor> = inner
            .api
            .iter()
            .filter(|m| m.name != name)
            .cloned()
            .collect();
        self.persist(&api)?;
        inner.api = api;
        drop(inner);
        self.notify();
        Ok(found)
    }

    /// Writes the API monitors: temp file, fsync, rename, so a crash leaves
    /// the old or the new file, never half of one.
    fn persist(&self, api: &[Monitor]) -> Result<(), RegistryError> {
        let Some(path) = &self.api_path else {
            return Ok(());
        };
        let err = |e: std::io::Error| RegistryError::Storage {
            path: path.clone(),
            why: e.to_string(),
        };
        let file = ApiFile {
            monitors: api.iter().map(|m| m.raw.clone()).collect(),
        };
        let text = serde_json::to_string_pretty(&file).map_err(|e| RegistryError::Storage {
            path: path.clone(),
            why: e.to_string(),
        })?;
        crate::state::write_atomic(path, text.as_bytes()).map_err(err)?;
        Ok(())
    }
}

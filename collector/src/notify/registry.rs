//! The live notification channels: the config file's `[[notifications]]`
//! plus the API's, one namespace (an API channel cannot take a file
//! channel's name, and the API cannot change or delete a file channel).
//!
//! API channels persist in `notifications.json` in the data dir, written
//! atomically with mode 0600: unlike the other registries' files it holds
//! secrets (webhook keys and URLs, SMTP passwords, routing keys). File
//! channels come back from the file on every start and are replaced on each
//! reload, which leaves the API's alone.
//!
//! Every change hands the full set to the [`Dispatcher`], under the
//! registry's lock so that two changes reach it in the order they were made;
//! a channel whose definition did not change keeps its worker and queue.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::{Channel, Dispatcher, RawChannel, validate_channel, validate_channels};
use crate::monitors::Origin;

/// The API channels' file in the collector's data dir.
pub const API_FILE: &str = "notifications.json";

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("no notification channel is named {0:?}")]
    NotFound(String),
    #[error("notification channel {0:?} is defined in the config file: change it there")]
    ManagedByFile(String),
    #[error(
        "notification channel {0:?} is defined in the config file and through the API: delete the API one or rename the file's"
    )]
    Clash(String),
    /// Every problem of a definition, one per line.
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
    #[error("{path}: {why}")]
    Storage { path: PathBuf, why: String },
}

/// One live channel: where it is defined, as written, and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelEntry {
    pub origin: Origin,
    /// As written, secrets included: show [`RawChannel::redacted`] instead.
    pub raw: RawChannel,
    pub channel: Channel,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ApiFile {
    channels: Vec<RawChannel>,
}

struct Inner {
    file: Vec<ChannelEntry>,
    api: Vec<ChannelEntry>,
}

impl Inner {
    fn all(&self) -> impl Iterator<Item = &ChannelEntry> {
        self.file.iter().chain(&self.api)
    }
}

/// Shared handle; clones see the same set.
#[derive(Clone)]
pub struct ChannelRegistry {
    inner: Arc<Mutex<Inner>>,
    path: Option<PathBuf>,
    dispatcher: Option<Dispatcher>,
}

impl Default for ChannelRegistry {
    /// Empty, in memory, delivering nowhere.
    fn default() -> Self {
        ChannelRegistry::open(&[], None, None).expect("an empty in-memory registry opens")
    }
}

fn entries(raws: &[RawChannel], channels: Vec<Channel>, origin: Origin) -> Vec<ChannelEntry> {
    raws.iter()
        .cloned()
        .zip(channels)
        .map(|(raw, channel)| ChannelEntry {
            origin,
            raw,
            channel,
        })
        .collect()
}

impl ChannelRegistry {
    /// The config file's channels plus the API's from `api_path` (None: in
    /// memory only), handed to `dispatcher` (None: nowhere, for tests). A
    /// corrupt or invalid API file is an error, never an empty set, and so is
    /// a name defined in both.
    pub fn open(
        file: &[RawChannel],
        api_path: Option<&Path>,
        dispatcher: Option<Dispatcher>,
    ) -> Result<Self, ChannelError> {
        let checked = validate_channels(file).map_err(ChannelError::Invalid)?;
        let file = entries(file, checked, Origin::File);
        let mut api = Vec::new();
        if let Some(path) = api_path {
            let storage = |why: String| ChannelError::Storage {
                path: path.to_owned(),
                why,
            };
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    let parsed: ApiFile =
                        serde_json::from_str(&text).map_err(|e| storage(e.to_string()))?;
                    let checked =
                        validate_channels(&parsed.channels).map_err(|p| storage(p.join("; ")))?;
                    api = entries(&parsed.channels, checked, Origin::Api);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(storage(e.to_string())),
            }
        }
        if let Some(c) = file
            .iter()
            .find(|f| api.iter().any(|a| a.raw.name == f.raw.name))
        {
            return Err(ChannelError::Clash(c.raw.name.clone()));
        }
        let registry = ChannelRegistry {
            inner: Arc::new(Mutex::new(Inner { file, api })),
            path: api_path.map(Path::to_owned),
            dispatcher,
        };
        registry.push(&registry.lock());
        Ok(registry)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands every channel to the dispatcher. Called with the lock held.
    fn push(&self, inner: &Inner) {
        if let Some(d) = &self.dispatcher {
            d.set_channels(inner.all().map(|e| e.channel.clone()).collect());
        }
    }

    /// Every channel, by name.
    pub fn list(&self) -> Vec<ChannelEntry> {
        let inner = self.lock();
        let mut all: Vec<ChannelEntry> = inner.all().cloned().collect();
        all.sort_by(|a, b| a.raw.name.cmp(&b.raw.name));
        all
    }

    pub fn get(&self, name: &str) -> Option<ChannelEntry> {
        self.lock().all().find(|e| e.raw.name == name).cloned()
    }

    /// Creates or replaces an API channel; returns it and whether it is new.
    /// When it replaces an API channel of the same kind, the write-only
    /// fields named in `omitted` (left out of the request) keep their stored
    /// values.
    pub fn upsert(
        &self,
        mut raw: RawChannel,
        omitted: &[&str],
    ) -> Result<(ChannelEntry, bool), ChannelError> {
        let mut inner = self.lock();
        if inner.file.iter().any(|e| e.raw.name == raw.name) {
            return Err(ChannelError::ManagedByFile(raw.name));
        }
        let stored = inner.api.iter().find(|e| e.raw.name == raw.name);
        let created = stored.is_none();
        if let Some(stored) = stored {
            raw.keep_write_only(&stored.raw, omitted);
        }
        let channel = validate_channel(&raw, &format!("channel {:?}", raw.name))
            .map_err(ChannelError::Invalid)?;
        let entry = ChannelEntry {
            origin: Origin::Api,
            raw,
            channel,
        };
        let mut api: Vec<ChannelEntry> = inner
            .api
            .iter()
            .filter(|e| e.raw.name != entry.raw.name)
            .cloned()
            .collect();
        api.push(entry.clone());
        api.sort_by(|a, b| a.raw.name.cmp(&b.raw.name));
        self.persist(&api)?;
        inner.api = api;
        self.push(&inner);
        Ok((entry, created))
    }

    /// Deletes an API channel. Its worker ends once its queue is done.
    pub fn delete(&self, name: &str) -> Result<ChannelEntry, ChannelError> {
        let mut inner = self.lock();
        if inner.file.iter().any(|e| e.raw.name == name) {
            return Err(ChannelError::ManagedByFile(name.to_owned()));
        }
        let Some(found) = inner.api.iter().find(|e| e.raw.name == name).cloned() else {
            return Err(ChannelError::NotFound(name.to_owned()));
        };
        let api: Vec<ChannelEntry> = inner
            .api
            .iter()
            .filter(|e| e.raw.name != name)
            .cloned()
            .collect();
        self.persist(&api)?;
        inner.api = api;
        self.push(&inner);
        Ok(found)
    }

    /// Checks a reloaded file's channels, and their names against the API's,
    /// changing nothing.
    pub fn check_file(&self, raws: &[RawChannel]) -> Result<Vec<ChannelEntry>, Vec<String>> {
        let file = entries(raws, validate_channels(raws)?, Origin::File);
        let inner = self.lock();
        let clashes: Vec<String> = file
            .iter()
            .filter(|f| inner.api.iter().any(|a| a.raw.name == f.raw.name))
            .map(|f| {
                format!(
                    "notifications ({:?}).name: an API channel has this name: delete it first",
                    f.raw.name
                )
            })
            .collect();
        if clashes.is_empty() {
            Ok(file)
        } else {
            Err(clashes)
        }
    }

    /// Installs the file channels [`check_file`](Self::check_file) accepted;
    /// the API's stay.
    pub fn set_file(&self, file: Vec<ChannelEntry>) {
        let mut inner = self.lock();
        if inner.file != file {
            inner.file = file;
            self.push(&inner);
        }
    }

    /// Both steps of a reload. Nothing changes on error.
    pub fn replace_file(&self, raws: &[RawChannel]) -> Result<(), Vec<String>> {
        let file = self.check_file(raws)?;
        self.set_file(file);
        Ok(())
    }

    /// Writes the API channels: temp file (0600), fsync, rename.
    fn persist(&self, api: &[ChannelEntry]) -> Result<(), ChannelError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let storage = |why: String| ChannelError::Storage {
            path: path.clone(),
            why,
        };
        let file = ApiFile {
            channels: api.iter().map(|e| e.raw.clone()).collect(),
        };
        let text = serde_json::to_string_pretty(&file).map_err(|e| storage(e.to_string()))?;
        crate::state::write_atomic(path, text.as_bytes()).map_err(|e| storage(e.to_string()))
    }
}

#[cfg(test)]
mod tests;

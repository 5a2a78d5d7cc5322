//! The agent registry: every agent that ever enrolled, its current
//! certificate and whether it is revoked.
//!
//! The stream handlers take an agent's identity from its verified certificate
//! and ask `is_revoked` before serving it; revocations are written to sled and
//! flushed before `revoke` returns, so they survive a collector restart.
//!
//! Names are unique among active (non-revoked) agents, kept by a name -> id
//! index tree: a second agent enrolling with a name already in use gets the
//! name with its id's random suffix appended.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionalTree,
};

use crate::state::{State, StateError, unix_ms};
use crate::token::RedeemError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no agent named or with id {0:?}")]
    NotFound(String),
    #[error(transparent)]
    State(#[from] StateError),
}

/// One enrolled agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// The identity in its certificate (`portwatch://agent/<id>`).
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub enrolled_at_unix_ms: i64,
    /// Hex serial and expiry of the agent's current certificate.
    pub cert_serial: String,
    pub cert_not_after_unix_ms: i64,
    pub revoked: bool,
    pub revoked_at_unix_ms: Option<i64>,
    /// What the agent reported at enrollment, for display only.
    pub hostname: String,
    pub agent_version: String,
    /// Enrolled as the public location `public:<region>`: it runs public
    /// monitors under the public address policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_region: Option<String>,
}

/// The registry, in the `agents` (id -> JSON) and `agent_names` (name -> id,
/// active agents only) trees of the collector state.
#[derive(Clone)]
pub struct AgentRegistry {
    state: State,
    agents: sled::Tree,
    names: sled::Tree,
}

impl AgentRegistry {
    pub const TREE: &'static str = "agents";
    pub const NAMES_TREE: &'static str = "agent_names";

    pub fn open(state: &State) -> Result<AgentRegistry, StateError> {
        Ok(AgentRegistry {
            state: state.clone(),
            agents: state.tree(Self::TREE)?,
            names: state.tree(Self::NAMES_TREE)?,
        })
    }

    /// The agent with this id.
    pub fn get(&self, id: &str) -> Result<Option<AgentRecord>, StateError> {
        self.agents
            .get(id.as_bytes())?
            .map(|v| decode(&v))
            .transpose()
    }

    /// The active (non-revoked) agent with this name.
    pub fn by_name(&self, name: &str) -> Result<Option<AgentRecord>, StateError> {
        match self.names.get(name.as_bytes())? {
            Some(id) => self.get(&String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    /// Every agent, revoked ones included, in enrollment order.
    pub fn list(&self) -> Result<Vec<AgentRecord>, StateError> {
        let mut all = Vec::new();
        for kv in self.agents.iter() {
            all.push(decode(&kv?.1)?);
        }
        all.sort_by_key(|a| (a.enrolled_at_unix_ms, a.id.clone()));
        Ok(all)
    }

    /// Revokes the active agent named `name_or_id`, or the agent with that id
    /// (an id also finds an agent already revoked; revoking twice is a no-op).
    /// Durable when it returns. Frees the name for a new agent.
    pub fn revoke(&self, name_or_id: &str, now: SystemTime) -> Result<AgentRecord, AgentError> {
        let agent = match self.by_name(name_or_id)? {
            Some(a) => a,
            None => self
                .get(name_or_id)?
                .ok_or_else(|| AgentError::NotFound(name_or_id.to_owned()))?,
        };
        let id = agent.id.clone();
        let revoked = self
            .update(&id, |a| {
                if !a.revoked {
                    a.revoked = true;
                    a.revoked_at_unix_ms = Some(unix_ms(now));
                }
            })?
            .ok_or_else(|| AgentError::NotFound(name_or_id.to_owned()))?;
        // Remove the name only if it still points at this agent.
        let _ = self
            .names
            .compare_and_swap(revoked.name.as_bytes(), Some(id.as_bytes()), None::<&[u8]>)
            .map_err(StateError::from)?;
        self.state.flush_blocking()?;
        tracing::info!(agent = %id, name = %revoked.name, "agent revoked");
        Ok(revoked)
    }

    /// Whether the agent may be served. An id the registry does not know
    /// counts as revoked: a certificate for it must not be accepted.
    pub fn is_revoked(&self, id: &str) -> Result<bool, StateError> {
        Ok(self.get(id)?.is_none_or(|a| a.revoked))
    }

    /// Records the certificate a renewal issued.
    pub fn record_cert(
        &self,
        id: &str,
        serial: &str,
        not_after: SystemTime,
    ) -> Result<AgentRecord, AgentError> {
        let rec = self
            .update(id, |a| {
                a.cert_serial = serial.to_owned();
                a.cert_not_after_unix_ms = unix_ms(not_after);
            })?
            .ok_or_else(|| AgentError::NotFound(id.to_owned()))?;
        self.state.flush_blocking()?;
        Ok(rec)
    }

    /// Read-modify-write of one record, retried if it changed meanwhile.
    fn update(
        &self,
        id: &str,
        change: impl Fn(&mut AgentRecord),
    ) -> Result<Option<AgentRecord>, StateError> {
        loop {
            let Some(old) = self.agents.get(id.as_bytes())? else {
                return Ok(None);
            };
            let mut rec = decode(&old)?;
            change(&mut rec);
            let swapped =
                self.agents
                    .compare_and_swap(id.as_bytes(), Some(&old), Some(encode(&rec)))?;
            if swapped.is_ok() {
                return Ok(Some(rec));
            }
        }
    }

    pub(crate) fn trees(&self) -> (&sled::Tree, &sled::Tree) {
        (&self.agents, &self.names)
    }

    /// Inside the enrollment transaction: `wanted` if no active agent has it,
    /// else `wanted-<suffix of id>`; the name is claimed for `id`.
    pub(crate) fn claim_name(
        names: &TransactionalTree,
        wanted: &str,
        id: &str,
    ) -> ConflictableTransactionResult<String, RedeemError> {
        let mut name = wanted.to_owned();
        if names.get(name.as_bytes())?.is_some() {
            let suffix = id.rsplit('-').next().unwrap_or(id);
            name = format!("{wanted}-{suffix}");
            if names.get(name.as_bytes())?.is_some() {
                return Err(ConflictableTransactionError::Abort(RedeemError::State(
                    StateError::Corrupt(format!("agent name {name:?} taken twice")),
                )));
            }
        }
        names.insert(name.as_bytes(), id.as_bytes())?;
        Ok(name)
    }

    pub(crate) fn insert_in(
        agents: &TransactionalTree,
        agent: &AgentRecord,
    ) -> ConflictableTransactionResult<(), RedeemError> {
        agents.insert(agent.id.as_bytes(), encode(agent))?;
        Ok(())
    }
}

fn encode(a: &AgentRecord) -> Vec<u8> {
    serde_json::to_vec(a).expect("an agent record serializes")
}

fn decode(v: &[u8]) -> Result<AgentRecord, StateError> {
    serde_json::from_slice(v).map_err(|e| StateError::Corrupt(format!("agent record: {e}")))
}

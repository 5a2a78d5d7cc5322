//! The agent's configuration file (TOML), read by `portwatch-agent run
//! --config FILE`. The Debian package installs it as `/etc/portwatch/agent.toml`
//! and its systemd unit passes it.
//!
//! It holds the daemon's run options only, each the twin of a `run` flag; a
//! flag given on the command line wins over the file, field by field. The
//! data dir is not in it: `enroll` and `run` must agree on it, so both take it
//! from `--data-dir` / `PORTWATCH_AGENT_DATA_DIR` (default
//! `/var/lib/portwatch-agent`, the package's state dir).

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The result buffer's bound when neither the file nor `--buffer-mib` sets it.
pub const DEFAULT_BUFFER_MIB: u64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
}

/// The file as written; every field is optional.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Bound on the on-disk result buffer, in MiB (`--buffer-mib`). Default 256.
    pub buffer_mib: Option<u64>,
    /// Probe only addresses in these networks, e.g. "10.0.0.0/8,192.168.1.5"
    /// (`--allow-targets`, same syntax). Default: every address.
    pub allow_targets: Option<String>,
    /// Probe only these TCP/UDP ports, e.g. "22,5432,6000-6999"
    /// (`--allow-ports`, same syntax). Default: every port.
    pub allow_ports: Option<String>,
}

impl AgentConfig {
    /// Reads `path`. Field values are checked where they are used
    /// (`RunArgs::settings`), which names the file and the field.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        AgentConfig::parse(&text).map_err(|message| ConfigError::Syntax {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses the text of a config file; the error is one line.
    pub fn parse(text: &str) -> Result<AgentConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim().replace('\n', " "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_or_all_commented_file_means_the_defaults() {
        assert_eq!(AgentConfig::parse("").unwrap(), AgentConfig::default());
        assert_eq!(
            AgentConfig::parse("# buffer_mib = 256\n# allow_ports = \"22\"\n").unwrap(),
            AgentConfig::default()
        );
    }

    #[test]
    fn fields_are_read_and_unknown_ones_refused() {
        let c = AgentConfig::parse(
            "buffer_mib = 64\nallow_targets = \"10.0.0.0/8\"\nallow_ports = \"22,5432\"\n",
        )
        .unwrap();
        assert_eq!(c.buffer_mib, Some(64));
        assert_eq!(c.allow_targets.as_deref(), Some("10.0.0.0/8"));
        assert_eq!(c.allow_ports.as_deref(), Some("22,5432"));

        let e = AgentConfig::parse("buffer_mb = 64\n").unwrap_err();
        assert!(e.contains("unknown field `buffer_mb`"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
        let e = AgentConfig::parse("buffer_mib = \"lots\"\n").unwrap_err();
        assert!(e.contains("buffer_mib"), "{e}");
    }

    /// The conffile the Debian package installs: as shipped it is the
    /// defaults; with its examples switched on, every value is one `run`
    /// accepts.
    #[test]
    fn the_packaged_file_is_the_defaults_and_its_examples_are_valid() {
        let shipped = include_str!("../../deploy/etc/agent.toml");
        assert_eq!(AgentConfig::parse(shipped).unwrap(), AgentConfig::default());

        let on: String = shipped
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest
                        .split_once(" = ")
                        .is_some_and(|(k, _)| !k.contains(' ')) =>
                {
                    rest
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let c = AgentConfig::parse(&on).unwrap();
        assert_eq!(c.buffer_mib, Some(DEFAULT_BUFFER_MIB));
        crate::probe::policy::parse_networks(c.allow_targets.as_deref().unwrap()).unwrap();
        c.allow_ports
            .as_deref()
            .unwrap()
            .parse::<crate::probe::policy::PortSet>()
            .unwrap();
    }
}

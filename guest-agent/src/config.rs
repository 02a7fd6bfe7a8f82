//! Agent settings from the kernel command line (`/proc/cmdline`).
//!
//! Keys with a dot are module parameters to the kernel, so it neither uses
//! them nor passes them to init's argv/env: the agent reads them back from
//! `/proc/cmdline`. Unknown `firedoor.*` keys are errors, so a typo is seen
//! on the console instead of silently ignored.

use firedoor_protocol::{cmdline, DEFAULT_AGENT_PORT};
use log::LevelFilter;

use crate::fault::Fault;

/// What the agent was told to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// vsock port of the ttrpc server.
    pub port: u32,
    /// Maximum log level written to the console.
    pub log_level: LevelFilter,
    /// A fault armed for Firedoor's tests (`firedoor.fault=`, see `fault`).
    pub fault: Option<Fault>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            port: DEFAULT_AGENT_PORT,
            log_level: LevelFilter::Info,
            fault: None,
        }
    }
}

/// A setting the agent cannot run with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{key}={value}: not a valid vsock port (1-4294967294)")]
    BadPort { key: String, value: String },
    #[error("{key}={value}: unknown log level (use error, warn, info, debug or trace)")]
    BadLogLevel { key: String, value: String },
    #[error("{key}={value}: unknown fault (use {})", Fault::KINDS)]
    BadFault { key: String, value: String },
    #[error(
        "{key}: unknown firedoor setting (known: {}, {}, {})",
        cmdline::PORT,
        cmdline::LOG,
        cmdline::FAULT
    )]
    UnknownKey { key: String },
    #[error("{key} needs a value ({key}=...)")]
    MissingValue { key: String },
}

impl AgentConfig {
    /// Parses the whole kernel command line; non-firedoor words are ignored.
    pub fn from_cmdline(line: &str) -> Result<Self, ConfigError> {
        let mut config = AgentConfig::default();
        for word in split_cmdline(line) {
            let (key, value) = match word.split_once('=') {
                Some((key, value)) => (key, Some(value)),
                None => (word.as_str(), None),
            };
            if !key.starts_with("firedoor.") {
                continue;
            }
            let value = value.ok_or_else(|| ConfigError::MissingValue { key: key.into() })?;
            match key {
                cmdline::PORT => config.port = parse_port(key, value)?,
                cmdline::LOG => config.log_level = parse_level(key, value)?,
                cmdline::FAULT => {
                    config.fault = Some(value.parse().map_err(|()| ConfigError::BadFault {
                        key: key.into(),
                        value: value.into(),
                    })?)
                }
                _ => return Err(ConfigError::UnknownKey { key: key.into() }),
            }
        }
        Ok(config)
    }
}

fn parse_port(key: &str, value: &str) -> Result<u32, ConfigError> {
    match value.parse::<u32>() {
        // 0 is reserved and u32::MAX is VMADDR_PORT_ANY.
        Ok(port) if port != 0 && port != u32::MAX => Ok(port),
        _ => Err(ConfigError::BadPort {
            key: key.into(),
            value: value.into(),
        }),
    }
}

/// Parses a log level name (`info`, `DEBUG`, ...).
pub fn parse_level(key: &str, value: &str) -> Result<LevelFilter, ConfigError> {
    value.parse().map_err(|_| ConfigError::BadLogLevel {
        key: key.into(),
        value: value.into(),
    })
}

/// Splits like the kernel does: on whitespace, except inside double quotes,
/// which are removed (`a="b c"` is one word `a=b c`).
fn split_cmdline(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut in_word = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_firedoor_keys() {
        let config = AgentConfig::from_cmdline("console=ttyS0 reboot=t panic=-1 quiet\n").unwrap();
        assert_eq!(config, AgentConfig::default());
        assert_eq!(config.port, 1024);
    }

    #[test]
    fn reads_port_and_level() {
        let config =
            AgentConfig::from_cmdline("console=ttyS0 firedoor.port=2000 firedoor.log=DEBUG")
                .unwrap();
        assert_eq!(config.port, 2000);
        assert_eq!(config.log_level, LevelFilter::Debug);
    }

    #[test]
    fn last_value_wins_like_the_kernel() {
        let config = AgentConfig::from_cmdline("firedoor.port=5 firedoor.port=6").unwrap();
        assert_eq!(config.port, 6);
    }

    #[test]
    fn quoted_values_keep_spaces() {
        assert_eq!(
            split_cmdline(r#"a "b c"=d e="f g" h"#),
            vec!["a", "b c=d", "e=f g", "h"]
        );
        let err = AgentConfig::from_cmdline(r#"firedoor.log="very loud""#).unwrap_err();
        assert!(err.to_string().contains("very loud"), "{err}");
    }

    #[test]
    fn rejects_bad_ports() {
        for bad in ["0", "-1", "abc", "4294967295", "4294967296", ""] {
            let err = AgentConfig::from_cmdline(&format!("firedoor.port={bad}")).unwrap_err();
            assert!(matches!(err, ConfigError::BadPort { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn rejects_unknown_key_and_missing_value() {
        let err = AgentConfig::from_cmdline("firedoor.prot=1024").unwrap_err();
        assert_eq!(
            err.to_string(),
            "firedoor.prot: unknown firedoor setting (known: firedoor.port, firedoor.log, \
             firedoor.fault)"
        );
        let err = AgentConfig::from_cmdline("firedoor.port").unwrap_err();
        assert!(matches!(err, ConfigError::MissingValue { .. }));
    }

    #[test]
    fn arms_a_fault_only_when_asked() {
        assert_eq!(AgentConfig::from_cmdline("quiet").unwrap().fault, None);
        let config = AgentConfig::from_cmdline("firedoor.fault=exit").unwrap();
        assert_eq!(config.fault, Some(Fault::AgentExit));
        let err = AgentConfig::from_cmdline("firedoor.fault=boom").unwrap_err();
        assert_eq!(
            err.to_string(),
            "firedoor.fault=boom: unknown fault (use panic, exit or hang)"
        );
    }

    #[test]
    fn rejects_bad_level() {
        let err = AgentConfig::from_cmdline("firedoor.log=chatty").unwrap_err();
        assert!(matches!(err, ConfigError::BadLogLevel { .. }));
    }
}

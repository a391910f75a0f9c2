//! What the plugin is told from outside: its identity (flags, or the
//! environment a runtime launches it with) and the optional plugin config file
//! (`/etc/nri/conf.d/NN-netattach.conf`, passed verbatim in `Configure`).

use std::os::fd::RawFd;
use std::path::PathBuf;

/// Environment of a plugin launched by the runtime.
pub const ENV_SOCKET: &str = "NRI_PLUGIN_SOCKET";
pub const ENV_NAME: &str = "NRI_PLUGIN_NAME";
pub const ENV_IDX: &str = "NRI_PLUGIN_IDX";

/// The runtime's socket for external plugins.
pub const DEFAULT_SOCKET: &str = "/var/run/nri/nri.sock";
pub const DEFAULT_NAME: &str = "netattach";
pub const DEFAULT_IDX: &str = "10";

/// Name and index the plugin registers with (`NN-name` in the runtime's logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub idx: String,
}

impl Identity {
    /// Checks the pair; a name given as `NN-name` (containerd 1.7.0–1.7.6 put
    /// the full file name in NRI_PLUGIN_NAME) is reduced to `name`.
    pub fn new(name: &str, idx: &str) -> Result<Identity, String> {
        if !(idx.len() == 2 && idx.bytes().all(|b| b.is_ascii_digit())) {
            return Err(format!("plugin index {idx:?} is not two digits"));
        }
        let name = match name.split_once('-') {
            Some((prefix, rest))
                if prefix.len() == 2 && prefix.bytes().all(|b| b.is_ascii_digit()) =>
            {
                rest
            }
            _ => name,
        };
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok {
            return Err(format!(
                "plugin name {name:?} is not a valid NRI plugin name"
            ));
        }
        Ok(Identity {
            name: name.to_string(),
            idx: idx.to_string(),
        })
    }
}

/// How to reach the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// External plugin: connect to this socket, reconnect when it goes away.
    Socket(PathBuf),
    /// Launched by the runtime: a connected socket inherited as this fd.
    Inherited(RawFd),
}

/// The launched-mode environment, if the runtime started us: the fd, and the
/// name and index it gave.
pub fn launched_from_env() -> Result<Option<(RawFd, Identity)>, String> {
    let Some(fd) = std::env::var_os(ENV_SOCKET) else {
        return Ok(None);
    };
    let fd = fd
        .to_str()
        .and_then(|s| s.parse::<RawFd>().ok())
        .filter(|&fd| fd >= 0)
        .ok_or_else(|| format!("{ENV_SOCKET}={fd:?} is not a file descriptor number"))?;
    let name = std::env::var(ENV_NAME).unwrap_or_else(|_| DEFAULT_NAME.to_string());
    let idx = std::env::var(ENV_IDX).unwrap_or_else(|_| DEFAULT_IDX.to_string());
    Ok(Some((fd, Identity::new(&name, &idx)?)))
}

/// Settings of the plugin config file; absent keys keep the command line's.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FileConfig {
    pub config_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub log_file: Option<PathBuf>,
}

/// Parses the plugin config: `key = value` (or `key: value`) lines with `#`
/// comments and optionally quoted values, or one JSON object. Keys:
/// `config_dir`, `state_dir`, `log_file`. An unknown key is an error, so a
/// typo does not silently do nothing.
pub fn parse_config(text: &str) -> Result<FileConfig, String> {
    let mut config = FileConfig::default();
    let trimmed = text.trim();
    if trimmed.starts_with('{') {
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(trimmed).map_err(|e| format!("plugin config: {e}"))?;
        for (key, value) in map {
            let value = value
                .as_str()
                .ok_or_else(|| format!("plugin config: {key} must be a string"))?;
            set(&mut config, &key, value)?;
        }
        return Ok(config);
    }
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .or_else(|| line.split_once(':'))
            .ok_or_else(|| format!("plugin config line {}: expected `key = value`", n + 1))?;
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        set(&mut config, key.trim(), value)
            .map_err(|e| format!("plugin config line {}: {e}", n + 1))?;
    }
    Ok(config)
}

fn set(config: &mut FileConfig, key: &str, value: &str) -> Result<(), String> {
    if !value.starts_with('/') {
        return Err(format!("{key} must be an absolute path, not {value:?}"));
    }
    let slot = match key {
        "config_dir" => &mut config.config_dir,
        "state_dir" => &mut config.state_dir,
        "log_file" => &mut config.log_file,
        _ => {
            return Err(format!(
                "unknown key {key:?} (known: config_dir, state_dir, log_file)"
            ))
        }
    };
    *slot = Some(PathBuf::from(value));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_checks_and_strips_the_index_prefix() {
        let id = Identity::new("10-netattach", "10").unwrap();
        assert_eq!(id.name, "netattach");
        assert_eq!(Identity::new("netattach", "05").unwrap().idx, "05");
        assert!(Identity::new("netattach", "5").is_err());
        assert!(Identity::new("netattach", "1a").is_err());
        assert!(Identity::new("net/attach", "10").is_err());
        assert!(Identity::new("", "10").is_err());
    }

    #[test]
    fn config_in_both_forms() {
        let c = parse_config(
            "# netattach\nstate_dir = \"/srv/state\"\nconfig_dir: /srv/nets\n\nlog_file='/var/log/x.log'\n",
        )
        .unwrap();
        assert_eq!(c.state_dir, Some(PathBuf::from("/srv/state")));
        assert_eq!(c.config_dir, Some(PathBuf::from("/srv/nets")));
        assert_eq!(c.log_file, Some(PathBuf::from("/var/log/x.log")));
        let c = parse_config(r#"{"state_dir": "/a"}"#).unwrap();
        assert_eq!(c.state_dir, Some(PathBuf::from("/a")));
        assert_eq!(parse_config("").unwrap(), FileConfig::default());
    }

    #[test]
    fn config_refuses_typos_and_relative_paths() {
        let e = parse_config("statedir = /a").unwrap_err();
        assert!(e.contains("line 1") && e.contains("statedir"), "{e}");
        assert!(parse_config("state_dir = a/b").is_err());
        assert!(parse_config("state_dir").is_err());
        assert!(parse_config(r#"{"log_file": 3}"#).is_err());
    }
}

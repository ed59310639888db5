//! The daemon's TOML configuration file: the control socket and a list of exports, each a table
//! of the same keys a `--disk` spec takes (so paths may contain `,` or `:`).
//!
//! ```toml
//! api-socket = "/run/strata/api.sock"     # optional
//!
//! [[export]]
//! socket = "/run/strata/vm1.sock"
//! format = "raw"
//! path = "/images/vm1, copy.raw"
//! num-queues = 2
//! write-cache = true
//!
//! [[export]]
//! socket = "/run/strata/scratch.sock"
//! format = "mem"
//! size = "1G"
//! ```

use std::path::{Path, PathBuf};

use crate::server::DiskSpec;

/// A parsed configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `api-socket`: where the control socket listens, if anywhere.
    pub api_socket: Option<PathBuf>,
    /// The exports, in file order.
    pub exports: Vec<DiskSpec>,
}

/// Errors reading a configuration file; each names the file and the place.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{0}: {1}")]
    Read(String, std::io::Error),
    /// Not valid TOML.
    #[error("{0}: {1}")]
    Toml(String, toml::de::Error),
    /// Valid TOML with wrong content.
    #[error("{0}: {1}")]
    Invalid(String, String),
}

impl Config {
    /// Read and parse `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(name.clone(), e))?;
        Config::parse(&name, &text)
    }

    /// Parse `text` (named `name` in errors).
    pub fn parse(name: &str, text: &str) -> Result<Config, ConfigError> {
        let invalid = |msg: String| ConfigError::Invalid(name.to_string(), msg);
        let table: toml::Table = text.parse().map_err(|e| ConfigError::Toml(name.to_string(), e))?;
        let mut cfg = Config { api_socket: None, exports: Vec::new() };
        for (key, value) in table {
            match (key.as_str(), value) {
                ("api-socket", toml::Value::String(s)) => cfg.api_socket = Some(s.into()),
                ("export", toml::Value::Array(items)) => {
                    for (i, item) in items.into_iter().enumerate() {
                        let toml::Value::Table(t) = item else {
                            return Err(invalid(format!("export #{}: must be a table ([[export]])", i + 1)));
                        };
                        let pairs = t
                            .into_iter()
                            .map(|(k, v)| {
                                scalar(&v)
                                    .map(|v| (k.clone(), v))
                                    .ok_or(format!("export #{}: key {k:?} must be a string, number or boolean", i + 1))
                            })
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(invalid)?;
                        let spec =
                            DiskSpec::from_pairs(pairs).map_err(|e| invalid(format!("export #{}: {e}", i + 1)))?;
                        cfg.exports.push(spec);
                    }
                }
                (other, _) => {
                    return Err(invalid(format!("unknown or mistyped key {other:?} (api-socket, [[export]])")))
                }
            }
        }
        Ok(cfg)
    }
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Boolean(b) => Some(if *b { "on" } else { "off" }.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_take_paths_with_commas() {
        let cfg = Config::parse(
            "t.toml",
            "api-socket = \"/tmp/api\"\n[[export]]\nsocket = \"/tmp/a.sock\"\nformat = \"raw\"\npath = \"/x/a,b:c.raw\"\nnum-queues = 2\nread-only = true\n",
        )
        .unwrap();
        assert_eq!(cfg.api_socket.as_deref(), Some(Path::new("/tmp/api")));
        let e = &cfg.exports[0];
        assert_eq!(e.settings.num_queues, 2);
        assert!(e.settings.read_only);
        assert!(e.device.contains(&("path".to_string(), "/x/a,b:c.raw".to_string())));
    }

    #[test]
    fn unknown_top_level_key_is_refused_with_file_name() {
        let err = Config::parse("t.toml", "bogus = 1").unwrap_err().to_string();
        assert!(err.contains("t.toml") && err.contains("bogus"), "{err}");
    }
}

//! The daemon's TOML configuration file: the control socket, named nodes and a list of exports,
//! each a table of the same keys a `--disk` spec takes (so paths may contain `,` or `:`).
//!
//! A `[[node]]` is a device built once and named; later nodes and exports refer to it from any
//! path-valued key as `node:NAME` (a stack), and an export serves a node as it is with
//! `node = "NAME"` in place of `format`. Nodes are built in file order.
//!
//! ```toml
//! api-socket = "/run/strata/api.sock"     # optional
//! metrics = "127.0.0.1:9101"               # optional: Prometheus /metrics (or "unix:PATH")
//! seccomp = "on"                          # optional sandbox keys (docs/sandbox.md): on|log|off,
//! user = "strata:strata"                  # the user to run as after start-up,
//! keep-cap = ["CAP_SYS_RAWIO"]            # capabilities kept, chroot = "/srv/strata",
//! allow-dir = ["/images/new"]             # directories `add` may open images in
//!
//! [[node]]
//! name = "base"
//! format = "raw"
//! path = "/images/base.raw"
//!
//! [[node]]
//! name = "vm2"
//! format = "qcow2"
//! path = "node:base"                      # a qcow2 image inside the raw node
//!
//! [[export]]
//! socket = "/run/strata/vm2.sock"
//! node = "vm2"
//!
//! [[export]]
//! socket = "/run/strata/vm1.sock"
//! format = "raw"
//! path = "/images/vm1, copy.raw"
//! num-queues = 2
//! write-cache = true
//!
//! [[export]]
//! socket = "/run/strata/vm3.sock"
//! format = "qcow2"
//! path = "/images/vm3.qcow2"
//! backing-dir = ["/images/bases", "/srv/golden"]  # a repeatable key takes an array
//!
//! [[export]]
//! socket = "/run/strata/scratch.sock"
//! format = "mem"
//! size = "1G"
//! iops-total = 5000                       # I/O limits: the --disk keys (docs/server.md)
//! throttle-group = "scratch"
//! ```

use std::path::{Path, PathBuf};

use crate::sandbox::SeccompMode;
use crate::server::DiskSpec;

/// A parsed configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `api-socket`: where the control socket listens, if anywhere.
    pub api_socket: Option<PathBuf>,
    /// `metrics`: where `/metrics` is served, if anywhere (as `--metrics` takes it).
    pub metrics: Option<crate::metrics::MetricsAddr>,
    /// Named nodes, in file order (each may refer to the ones before it).
    pub nodes: Vec<NodeSpec>,
    /// The exports, in file order.
    pub exports: Vec<DiskSpec>,
    /// The sandbox keys (`seccomp`, `user`, `keep-cap`, `chroot`); the command line wins.
    pub sandbox: SandboxKeys,
}

/// The sandbox keys of a configuration file (docs/sandbox.md).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SandboxKeys {
    /// `seccomp = "on" | "log" | "off"`.
    pub seccomp: Option<SeccompMode>,
    /// `user = "USER[:GROUP]"`.
    pub user: Option<String>,
    /// `keep-cap = ["CAP_..."]`.
    pub keep_caps: Vec<String>,
    /// `chroot = "DIR"`.
    pub chroot: Option<PathBuf>,
    /// `allow-dir = ["DIR", ...]`.
    pub allow_dirs: Vec<PathBuf>,
}

/// A `[[node]]` table: a device built once and referred to as `node:NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// The node's name.
    pub name: String,
    /// Its device keys (`format` and the format's keys).
    pub device: Vec<(String, String)>,
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
        let mut cfg = Config {
            api_socket: None,
            metrics: None,
            nodes: Vec::new(),
            exports: Vec::new(),
            sandbox: SandboxKeys::default(),
        };
        for (key, value) in table {
            match (key.as_str(), value) {
                ("api-socket", toml::Value::String(s)) => cfg.api_socket = Some(s.into()),
                ("metrics", toml::Value::String(s)) => {
                    cfg.metrics = Some(crate::metrics::MetricsAddr::parse(&s).map_err(&invalid)?)
                }
                ("seccomp", toml::Value::String(s)) => {
                    cfg.sandbox.seccomp = Some(s.parse().map_err(|e| invalid(format!("seccomp: {e}")))?)
                }
                ("user", toml::Value::String(s)) => cfg.sandbox.user = Some(s),
                ("chroot", toml::Value::String(s)) => cfg.sandbox.chroot = Some(s.into()),
                ("allow-dir", toml::Value::Array(items)) => {
                    for item in items {
                        match item {
                            toml::Value::String(d) => cfg.sandbox.allow_dirs.push(d.into()),
                            other => return Err(invalid(format!("allow-dir: expected directories, found {other}"))),
                        }
                    }
                }
                ("keep-cap", toml::Value::Array(items)) => {
                    for item in items {
                        match item {
                            toml::Value::String(c) => cfg.sandbox.keep_caps.push(c),
                            other => return Err(invalid(format!("keep-cap: expected names, found {other}"))),
                        }
                    }
                }
                ("export", toml::Value::Array(items)) => {
                    for (i, item) in items.into_iter().enumerate() {
                        let pairs = pairs_of("export", i, item).map_err(&invalid)?;
                        let spec =
                            DiskSpec::from_pairs(pairs).map_err(|e| invalid(format!("export #{}: {e}", i + 1)))?;
                        cfg.exports.push(spec);
                    }
                }
                ("node", toml::Value::Array(items)) => {
                    for (i, item) in items.into_iter().enumerate() {
                        let node = node_of(i, pairs_of("node", i, item).map_err(&invalid)?).map_err(&invalid)?;
                        if cfg.nodes.iter().any(|n| n.name == node.name) {
                            return Err(invalid(format!("node #{}: the name {:?} is used twice", i + 1, node.name)));
                        }
                        cfg.nodes.push(node);
                    }
                }
                (other, _) => {
                    return Err(invalid(format!(
                        "unknown or mistyped key {other:?} (api-socket, metrics, seccomp, user, keep-cap, chroot, allow-dir, [[node]], [[export]])"
                    )))
                }
            }
        }
        Ok(cfg)
    }
}

/// The keys of the `i`th `[[what]]` table as strings.
fn pairs_of(what: &str, i: usize, item: toml::Value) -> Result<Vec<(String, String)>, String> {
    let toml::Value::Table(t) = item else {
        return Err(format!("{what} #{}: must be a table ([[{what}]])", i + 1));
    };
    let mut out = Vec::new();
    for (k, v) in t {
        // An array gives a repeatable key several values (`backing-dir = ["/a", "/b"]`); the
        // spec refuses it on any other key.
        let values = match &v {
            toml::Value::Array(a) => a.iter().collect(),
            v => vec![v],
        };
        for v in values {
            let v = scalar(v).ok_or(format!("{what} #{}: key {k:?} must be a string, number or boolean", i + 1))?;
            out.push((k.clone(), v));
        }
    }
    Ok(out)
}

fn node_of(i: usize, mut pairs: Vec<(String, String)>) -> Result<NodeSpec, String> {
    let at = pairs.iter().position(|(k, _)| k == "name").ok_or(format!("node #{}: missing name", i + 1))?;
    let name = pairs.remove(at).1;
    if name.is_empty() || name.contains([',', ':', '=']) {
        return Err(format!("node #{}: name {name:?} must be non-empty without ',', ':' or '='", i + 1));
    }
    if !pairs.iter().any(|(k, _)| k == "format") {
        return Err(format!("node {name}: missing format (formats are named, never probed)"));
    }
    Ok(NodeSpec { name, device: pairs })
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
    fn sandbox_keys_parse_and_bad_ones_are_named() {
        let cfg = Config::parse(
            "s.toml",
            "seccomp = \"log\"\nuser = \"nobody\"\nkeep-cap = [\"CAP_SYS_RAWIO\"]\nchroot = \"/srv\"\nallow-dir = [\"/a\"]\n",
        )
        .unwrap();
        assert_eq!(cfg.sandbox.seccomp, Some(SeccompMode::Log));
        assert_eq!(cfg.sandbox.user.as_deref(), Some("nobody"));
        assert_eq!(cfg.sandbox.keep_caps, ["CAP_SYS_RAWIO"]);
        assert_eq!(cfg.sandbox.chroot, Some(PathBuf::from("/srv")));
        assert_eq!(cfg.sandbox.allow_dirs, [PathBuf::from("/a")]);
        let e = Config::parse("s.toml", "seccomp = \"maybe\"\n").unwrap_err().to_string();
        assert!(e.contains("s.toml") && e.contains("seccomp") && e.contains("maybe"), "{e}");
    }

    #[test]
    fn an_array_gives_a_repeatable_key_each_value() {
        let cfg = Config::parse(
            "t.toml",
            "[[export]]\nsocket = \"/tmp/a.sock\"\nformat = \"qcow2\"\npath = \"/x/a.qcow2\"\nbacking-dir = [\"/b\", \"/c\"]\n",
        )
        .unwrap();
        let dirs: Vec<&str> =
            cfg.exports[0].device.iter().filter(|(k, _)| k == "backing-dir").map(|(_, v)| v.as_str()).collect();
        assert_eq!(dirs, ["/b", "/c"]);
    }

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
    fn nodes_and_node_exports_parse_in_order() {
        let cfg = Config::parse(
            "t.toml",
            "[[node]]\nname = \"base\"\nformat = \"mem\"\nsize = \"1M\"\n\
             [[node]]\nname = \"img\"\nformat = \"qcow2\"\npath = \"node:base\"\n\
             [[export]]\nsocket = \"/tmp/a.sock\"\nnode = \"img\"\n",
        )
        .unwrap();
        assert_eq!(cfg.nodes.len(), 2);
        assert_eq!(cfg.nodes[1].name, "img");
        assert!(cfg.nodes[1].device.contains(&("path".to_string(), "node:base".to_string())));
        assert_eq!(cfg.exports[0].device, vec![("node".to_string(), "img".to_string())]);
    }

    #[test]
    fn bad_nodes_are_refused_with_the_node_named() {
        let dup = "[[node]]\nname = \"a\"\nformat = \"mem\"\n[[node]]\nname = \"a\"\nformat = \"mem\"\n";
        assert!(Config::parse("t.toml", dup).unwrap_err().to_string().contains("twice"));
        let nameless = "[[node]]\nformat = \"mem\"\n";
        assert!(Config::parse("t.toml", nameless).unwrap_err().to_string().contains("missing name"));
        let formatless = "[[node]]\nname = \"a\"\n";
        assert!(Config::parse("t.toml", formatless).unwrap_err().to_string().contains("format"));
    }

    #[test]
    fn metrics_takes_an_address_and_a_bad_one_is_named() {
        let cfg = Config::parse("t.toml", "metrics = \"[::1]:9101\"\n").unwrap();
        assert_eq!(cfg.metrics.unwrap().to_string(), "[::1]:9101");
        let err = Config::parse("t.toml", "metrics = \"localhost:1\"\n").unwrap_err().to_string();
        assert!(err.contains("t.toml") && err.contains("localhost:1") && err.contains("IP:PORT"), "{err}");
    }

    #[test]
    fn exports_take_io_limits_and_a_throttle_group() {
        let cfg = Config::parse(
            "t.toml",
            "[[export]]\nsocket = \"/tmp/a.sock\"\nformat = \"mem\"\nthrottle-group = \"g\"\niops-total = 5000\nbps-write = \"100M\"\n",
        )
        .unwrap();
        let s = &cfg.exports[0].settings;
        assert_eq!(
            (s.throttle_group.as_deref(), s.limits.describe().as_str()),
            (Some("g"), "bps-write=104857600,iops-total=5000")
        );
        let bad = "[[export]]\nsocket = \"/tmp/a.sock\"\nformat = \"mem\"\niops-total = -5\n";
        let e = Config::parse("t.toml", bad).unwrap_err().to_string();
        assert!(e.contains("t.toml") && e.contains("export #1") && e.contains("iops-total"), "{e}");
    }

    #[test]
    fn unknown_top_level_key_is_refused_with_file_name() {
        let err = Config::parse("t.toml", "bogus = 1").unwrap_err().to_string();
        assert!(err.contains("t.toml") && err.contains("bogus"), "{err}");
    }
}

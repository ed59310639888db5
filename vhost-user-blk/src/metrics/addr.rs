//! Where `--metrics` listens: `127.0.0.1:PORT`, `[::1]:PORT` (any IP literal and port the user
//! names; never a host name, so nothing is looked up) or `unix:PATH`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// A parsed `--metrics` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsAddr {
    /// A TCP address: an IP literal and a port.
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl MetricsAddr {
    /// Parse `s`; the error says what was expected.
    pub fn parse(s: &str) -> Result<MetricsAddr, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!("metrics address {s:?}: unix: needs a path (unix:/run/strata/metrics.sock)"));
            }
            return Ok(MetricsAddr::Unix(PathBuf::from(path)));
        }
        s.parse::<SocketAddr>().map(MetricsAddr::Tcp).map_err(|_| {
            format!(
                "metrics address {s:?}: expected IP:PORT (127.0.0.1:9101, [::1]:9101) or unix:PATH; \
                 host names are not looked up"
            )
        })
    }
}

impl fmt::Display for MetricsAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsAddr::Tcp(a) => write!(f, "{a}"),
            MetricsAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_v4_v6_and_unix_parse_and_the_rest_is_refused_with_the_forms() {
        assert_eq!(MetricsAddr::parse("127.0.0.1:9101").unwrap().to_string(), "127.0.0.1:9101");
        assert_eq!(MetricsAddr::parse("[::1]:9101").unwrap().to_string(), "[::1]:9101");
        assert_eq!(MetricsAddr::parse("unix:/tmp/m.sock").unwrap(), MetricsAddr::Unix("/tmp/m.sock".into()));
        for bad in ["localhost:9101", "127.0.0.1", ":9101", "unix:", "", "127.0.0.1:99999"] {
            let e = MetricsAddr::parse(bad).unwrap_err();
            assert!(e.contains("expected IP:PORT") || e.contains("needs a path"), "{bad}: {e}");
        }
    }
}

//! The `--disk socket=PATH[,num-queues=N][,read-only=on][,reconnect=MS]` option.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Most queues a disk may ask for.
pub const MAX_QUEUES: u16 = 16;
/// Longest `reconnect` interval accepted, in milliseconds.
pub const MAX_RECONNECT_MS: u64 = 60_000;

/// One vhost-user-blk disk given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// The backend's vhost-user socket.
    pub socket: PathBuf,
    /// Queues to use (at most what the backend offers).
    pub num_queues: u16,
    /// The disk must be read-only: the backend has to offer VIRTIO_BLK_F_RO (it refuses the
    /// guest's writes), else vmm-mini refuses to start.
    pub read_only: bool,
    /// When the backend goes away, keep the guest running and try to connect again this often
    /// (`reconnect=MS`); None: the guest ends (exit 4).
    pub reconnect: Option<Duration>,
}

/// Why a disk spec was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiskSpecError {
    /// No `socket=` key.
    #[error("disk spec '{0}': socket=PATH is required")]
    MissingSocket(String),
    /// A key this VMM does not know.
    #[error("disk spec '{spec}': unknown key '{key}' (known: socket, num-queues, read-only, reconnect)")]
    UnknownKey {
        /// The whole spec.
        spec: String,
        /// The offending key.
        key: String,
    },
    /// A value that does not parse or is out of range.
    #[error("disk spec '{spec}': bad value '{value}' for {key}: {why}")]
    BadValue {
        /// The whole spec.
        spec: String,
        /// The key.
        key: String,
        /// Its value.
        value: String,
        /// What is wrong.
        why: &'static str,
    },
}

impl FromStr for DiskSpec {
    type Err = DiskSpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let mut socket = None;
        let mut num_queues = 1;
        let mut read_only = false;
        let mut reconnect = None;
        for part in spec.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            let bad = |why| DiskSpecError::BadValue { spec: spec.into(), key: key.into(), value: value.into(), why };
            match key {
                "socket" if !value.is_empty() => socket = Some(PathBuf::from(value)),
                "socket" => return Err(bad("empty path")),
                "num-queues" => {
                    num_queues = value.parse::<u16>().map_err(|_| bad("not a number"))?;
                    if num_queues == 0 || num_queues > MAX_QUEUES {
                        return Err(bad("must be 1 to 16"));
                    }
                }
                "read-only" => {
                    read_only = match value {
                        "on" | "true" | "yes" => true,
                        "off" | "false" | "no" => false,
                        _ => return Err(bad("expected on or off")),
                    }
                }
                "reconnect" => {
                    let ms = value.parse::<u64>().map_err(|_| bad("not a number of milliseconds"))?;
                    if ms == 0 || ms > MAX_RECONNECT_MS {
                        return Err(bad("must be 1 to 60000 milliseconds"));
                    }
                    reconnect = Some(Duration::from_millis(ms));
                }
                _ => return Err(DiskSpecError::UnknownKey { spec: spec.into(), key: key.into() }),
            }
        }
        let socket = socket.ok_or_else(|| DiskSpecError::MissingSocket(spec.into()))?;
        Ok(DiskSpec { socket, num_queues, read_only, reconnect })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_alone_gives_one_writable_queue() {
        let d: DiskSpec = "socket=/tmp/a.sock".parse().unwrap();
        assert_eq!(d, DiskSpec { socket: "/tmp/a.sock".into(), num_queues: 1, read_only: false, reconnect: None });
    }

    #[test]
    fn all_keys_parse() {
        let d: DiskSpec = "socket=/s,num-queues=4,read-only=on,reconnect=100".parse().unwrap();
        assert_eq!((d.num_queues, d.read_only, d.reconnect), (4, true, Some(Duration::from_millis(100))));
    }

    #[test]
    fn bad_specs_are_refused_with_the_key_named() {
        assert!(matches!("num-queues=2".parse::<DiskSpec>(), Err(DiskSpecError::MissingSocket(_))));
        assert!(matches!("socket=/s,foo=1".parse::<DiskSpec>(), Err(DiskSpecError::UnknownKey { .. })));
        let e = "socket=/s,num-queues=0".parse::<DiskSpec>().unwrap_err();
        assert!(e.to_string().contains("num-queues"), "{e}");
        assert!("socket=/s,read-only=maybe".parse::<DiskSpec>().is_err());
        assert!("socket=".parse::<DiskSpec>().is_err());
        for bad in ["reconnect=0", "reconnect=60001", "reconnect=-1", "reconnect=1s", "reconnect="] {
            let e = format!("socket=/s,{bad}").parse::<DiskSpec>().unwrap_err().to_string();
            assert!(e.contains("reconnect"), "{bad}: {e}");
        }
    }
}

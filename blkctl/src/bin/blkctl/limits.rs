//! `blkctl limits`: show or change a served export's I/O limits through the daemon's control
//! socket (`vhost_user_blk::api::limits`).

use std::path::PathBuf;

use serde_json::{json, Map, Value};
use vhost_user_blk::api::raid::call;
use vhost_user_blk::server::qos::limits::{is_limit_key, parse_value};

/// The limits subcommand.
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Show or change a served export's I/O limits (QEMU's throttle keys).
    ///
    /// Without KEY=VALUE, prints the limits in force. With them, changes only those keys (0
    /// removes a limit) and prints the result; on an export in a throttle group this changes the
    /// group's limits, for every member. Keys: iops-total, iops-read, iops-write, bps-total,
    /// bps-read, bps-write, each also with -max (burst rate) and -max-length (burst seconds), and
    /// iops-size. bps keys and iops-size take K, M, G suffixes. Invalid changes are refused
    /// whole: nothing changes.
    #[command(after_help = "Examples:\n  blkctl limits --api-socket /run/strata/api.sock vm1\n  \
                            blkctl limits --api-socket /run/strata/api.sock vm1 iops-total=5000 bps-write=100M\n  \
                            blkctl limits --api-socket /run/strata/api.sock vm1 iops-total=0")]
    Limits {
        /// The daemon's control socket.
        #[arg(long, value_name = "PATH")]
        api_socket: PathBuf,
        /// The export's name.
        name: String,
        /// Limits to change, KEY=VALUE.
        #[arg(value_name = "KEY=VALUE")]
        changes: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

impl crate::Group for Cmd {
    fn run(self) -> Result<(), Box<dyn std::error::Error>> {
        let Cmd::Limits { api_socket, name, changes, json } = self;
        let req = if changes.is_empty() {
            json!({"cmd": "limits", "name": name})
        } else {
            json!({"cmd": "set-limits", "name": name, "limits": parse_changes(&changes)?})
        };
        let answer = call(&api_socket, &req)?;
        if json {
            println!("{answer}");
        } else {
            print_human(&answer);
        }
        Ok(())
    }
}

/// `KEY=VALUE` words as a `set-limits` map; 0 is accepted (it removes the limit).
fn parse_changes(words: &[String]) -> Result<Map<String, Value>, String> {
    let mut m = Map::new();
    for w in words {
        let (k, v) = w.split_once('=').ok_or(format!("{w:?}: expected KEY=VALUE"))?;
        if !is_limit_key(k) {
            return Err(format!("{k:?} is not a limit key (see blkctl limits --help)"));
        }
        let n = if v == "0" { 0 } else { parse_value(k, v)? };
        if m.insert(k.to_string(), n.into()).is_some() {
            return Err(format!("{k}: given twice"));
        }
    }
    Ok(m)
}

fn print_human(answer: &Value) {
    let name = answer["name"].as_str().unwrap_or("?");
    match answer["group"].as_str() {
        Some(g) => println!("{name}: throttle group {g} ({} members)", answer["members"]),
        None => println!("{name}:"),
    }
    match answer["limits"].as_object() {
        Some(l) if !l.is_empty() => {
            for (k, v) in l {
                println!("  {k:<24} {v}");
            }
        }
        _ => println!("  no limits"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_parse_with_suffixes_and_zero_and_refuse_bad_words() {
        let m = parse_changes(&["iops-total=5000".into(), "bps-write=1M".into(), "iops-read=0".into()]).unwrap();
        assert_eq!(Value::Object(m), json!({"iops-total": 5000, "bps-write": 1048576, "iops-read": 0}));
        assert!(parse_changes(&["iops-total".into()]).unwrap_err().contains("KEY=VALUE"));
        assert!(parse_changes(&["nope=1".into()]).unwrap_err().contains("not a limit key"));
        assert!(parse_changes(&["iops-total=-1".into()]).unwrap_err().contains("iops-total"));
        assert!(parse_changes(&["iops-total=1".into(), "iops-total=2".into()]).unwrap_err().contains("twice"));
    }
}

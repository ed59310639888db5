//! What `blkctl thin` prints: the JSON answer with `--json`, else text made from it (one line
//! for each command that changes something). Sizes for people are in IEC units.

use std::path::Path;

use blockdev::size::format_iec;
use thin::check::CheckReport;
use thin::overcommit_text;
use serde_json::{json, Value};
use vhost_user_blk::api::thin::check_report_json;

type CmdResult = Result<(), Box<dyn std::error::Error>>;

/// Print `v` as JSON with `json`, else the text `line` makes of it.
pub fn answer(v: &Value, json: bool, line: fn(&Value) -> String) -> CmdResult {
    if json {
        emit(&format!("{}\n", serde_json::to_string_pretty(v)?));
    } else {
        emit(&line(v));
    }
    Ok(())
}

fn u(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("?")
}

fn iec(v: &Value, key: &str) -> String {
    format_iec(u(v, key))
}

/// `overcommitted 2.5x: 20 GiB provisioned on 8 GiB` from an answer's overcommit fields.
fn overcommit(v: &Value) -> String {
    let size = if v.get("pool-size").is_some() { u(v, "pool-size") } else { u(v, "size") };
    overcommit_text(u(v, "provisioned"), size)
}

/// `pool-create`.
pub fn pool_created(v: &Value) -> String {
    format!(
        "created thin pool on {}: {} in {} data blocks of {}, {} of metadata (uuid {})\n",
        s(v, "pool"),
        iec(v, "size"),
        u(v, "data-blocks"),
        iec(v, "block-size"),
        format_iec(u(v, "metadata-pages") * 4096),
        s(v, "uuid")
    )
}

/// `pool-grow`.
pub fn pool_grown(v: &Value) -> String {
    format!(
        "thin pool {} grown from {} to {} ({} data blocks of {}, {} free)\n",
        s(v, "pool"),
        iec(v, "old-size"),
        iec(v, "size"),
        u(v, "data-blocks"),
        iec(v, "block-size"),
        iec(v, "free")
    )
}

/// `create`.
pub fn created(v: &Value) -> String {
    format!("created thin volume '{}' of {} in {}; pool {}\n", s(v, "volume"), iec(v, "size"), s(v, "pool"), overcommit(v))
}

/// `snapshot`.
pub fn snapshot(v: &Value) -> String {
    format!(
        "created snapshot '{}' of '{}' ({}) in {}; pool {}\n",
        s(v, "snapshot"),
        s(v, "origin"),
        iec(v, "size"),
        s(v, "pool"),
        overcommit(v)
    )
}

/// `remove`.
pub fn removed(v: &Value) -> String {
    format!("removed thin volume '{}' from {}, freeing {}\n", s(v, "removed"), s(v, "pool"), iec(v, "freed"))
}

/// `resize`.
pub fn resized(v: &Value) -> String {
    let dropped = match u(v, "discarded") {
        0 => String::new(),
        n => format!(", dropping {} ({n} bytes) of mapped data", format_iec(n)),
    };
    format!(
        "resized thin volume '{}' in {} from {} to {}{dropped}; pool {}\n",
        s(v, "volume"),
        s(v, "pool"),
        iec(v, "old-size"),
        iec(v, "size"),
        overcommit(v)
    )
}

/// `pool-info` as text.
pub fn pool_info(v: &Value) -> String {
    let low = v["below-low-water"].as_bool().unwrap_or(false);
    let (prov, size) = (u(v, "provisioned"), u(v, "size"));
    let provisioned = if prov > size {
        format!("{} (overcommitted {:.1}x)", format_iec(prov), prov as f64 / size as f64)
    } else {
        format!("{} (not overcommitted)", format_iec(prov))
    };
    format!(
        "uuid: {}\nblock size: {}\nsize: {}\nused: {} ({} of {} blocks)\nfree: {}{}\nprovisioned: {provisioned}\n\
         transaction id: {}\nmetadata: {} of {} pages free\nvolumes: {}\n",
        s(v, "uuid"),
        iec(v, "block-size"),
        iec(v, "size"),
        iec(v, "used"),
        u(v, "used-blocks"),
        u(v, "data-blocks"),
        iec(v, "free"),
        if low { " (below the 10% low-water mark)" } else { "" },
        u(v, "transaction-id"),
        u(v, "metadata-free-pages"),
        u(v, "metadata-pages"),
        u(v, "volumes")
    )
}

/// `list` as text.
pub fn list(v: &Value) -> String {
    let mut out = format!("{:<24} {:>10} {:>10}\n", "NAME", "SIZE", "MAPPED");
    for vol in v.as_array().map(Vec::as_slice).unwrap_or(&[]) {
        out.push_str(&format!("{:<24} {:>10} {:>10}\n", s(vol, "name"), iec(vol, "size"), iec(vol, "mapped")));
    }
    out
}

/// `check`: the report, then exit with its code (0 clean, 3 leaks only, 2 corruption).
pub fn check(pool: &Path, rep: &CheckReport, json: bool) -> CmdResult {
    let code = rep.exit_code();
    if json {
        let mut v = json!({
            "filename": pool.display().to_string(),
            "corruptions": rep.errors.len(),
            "leaks": rep.leaks.len() as u64 - rep.repaired,
            "leaks-fixed": rep.repaired,
        });
        if let (Some(obj), Value::Object(more)) = (v.as_object_mut(), check_report_json(rep)) {
            obj.extend(more);
        }
        emit(&format!("{}\n", serde_json::to_string_pretty(&v)?));
    } else {
        let mut out = String::new();
        for e in &rep.errors {
            out.push_str(&format!("ERROR {e}\n"));
        }
        for (b, stored, found) in &rep.leaks {
            out.push_str(&format!("Leaked data block {b}: refcount {stored}, {found} reference(s)\n"));
        }
        out.push_str(&match code {
            0 if rep.repaired > 0 => format!("Repaired {} leaks; no errors remain.\n", rep.repaired),
            0 => "No errors were found in the pool.\n".to_string(),
            _ => format!("{} errors and {} leaked blocks were found in the pool.\n", rep.errors.len(), rep.leaks.len()),
        });
        emit(&out);
    }
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

/// Print to stdout; a closed pipe is not an error worth a panic.
fn emit(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().write_all(text.as_bytes());
}

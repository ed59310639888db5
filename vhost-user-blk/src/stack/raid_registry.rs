//! The arrays this process serves, found again by their members (the control socket's `raid-*`
//! commands name an array by its member list, as `blkctl raid` does), and the background
//! rebuilds running on them.
//!
//! Members are keyed by [`member_key`]: an absolute path with symlinks resolved (the directory
//! only, for a member file that does not exist), or `node:NAME`. An array answers to any list
//! whose every member it was opened with or holds now (after a replacement both the old and the
//! new list name it).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;

use blockdev::{BlockDev, IoCtx};
use raid::{Array, RebuildOptions};

use super::NODE_PREFIX;

/// The key a member is known by: `node:NAME` as is; a path made absolute, symlinks resolved
/// (for a path that does not exist, its directory's).
pub fn member_key(name: &str) -> String {
    if name.starts_with(NODE_PREFIX) {
        return name.to_string();
    }
    let p = Path::new(name);
    if let Ok(c) = std::fs::canonicalize(p) {
        return c.display().to_string();
    }
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    match (std::fs::canonicalize(&dir), p.file_name()) {
        (Ok(d), Some(f)) => d.join(f).display().to_string(),
        _ => name.to_string(),
    }
}

struct Entry {
    /// Keys of the members the array was opened with, and of replacements added since.
    keys: Vec<String>,
    array: Weak<Array>,
}

fn registry() -> &'static Mutex<Vec<Entry>> {
    static ARRAYS: OnceLock<Mutex<Vec<Entry>>> = OnceLock::new();
    ARRAYS.get_or_init(Default::default)
}

/// Remember `array`, opened on the members `keys` (see [`member_key`]).
pub fn register(keys: Vec<String>, array: &Arc<Array>) {
    let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
    reg.retain(|e| e.array.strong_count() > 0);
    reg.push(Entry { keys, array: Arc::downgrade(array) });
    OPENED.with(|o| {
        if let Some(v) = o.borrow_mut().as_mut() {
            v.push(Arc::downgrade(array));
        }
    });
}

thread_local! {
    /// Arrays registered on this thread inside [`collect_opened`].
    static OPENED: std::cell::RefCell<Option<Vec<Weak<Array>>>> = const { std::cell::RefCell::new(None) };
}

/// Run `f` (which opens a device stack on this thread) and return, with its result, the arrays
/// it assembled: the daemon closes them cleanly at shutdown.
pub fn collect_opened<T>(f: impl FnOnce() -> T) -> (T, Vec<Weak<Array>>) {
    let outer = OPENED.with(|o| o.borrow_mut().replace(Vec::new()));
    let r = f();
    let mine = OPENED.with(|o| std::mem::replace(&mut *o.borrow_mut(), outer)).unwrap_or_default();
    OPENED.with(|o| {
        if let Some(v) = o.borrow_mut().as_mut() {
            v.extend(mine.iter().cloned());
        }
    });
    (r, mine)
}

/// Mark the arrays in `arrays` that are still alive clean (flushed, write-intent bits cleared,
/// superblocks clean with events bumped), so the next assembly needs no resync. An array
/// with a rebuild running is only flushed (the rebuild resumes from its checkpoint). True when
/// every one succeeded.
pub fn close_all(arrays: &[Arc<Array>]) -> bool {
    if arrays.is_empty() {
        return true;
    }
    let io = match IoCtx::new() {
        Ok(io) => io,
        Err(e) => {
            tracing::error!("cannot close the arrays cleanly: {e}");
            return false;
        }
    };
    let mut ok = true;
    for arr in arrays {
        let name = arr.describe();
        let rebuilding = rebuild_job(&arr.status().uuid).is_some_and(|j| j.running());
        let res = if rebuilding {
            tracing::warn!("{name}: a rebuild is running: left dirty, it resumes at the next start");
            io.block_on(arr.flush(&io, blockdev::IoTag::meta("raid.shutdown")))
        } else {
            io.block_on(arr.close(&io))
        };
        match res {
            Ok(()) if !rebuilding => tracing::info!("{name}: closed clean"),
            Ok(()) => {}
            Err(e) => {
                tracing::error!("{name}: clean close failed: {e}");
                ok = false;
            }
        }
    }
    ok
}

/// Add `key` to the names the array answers to (a replacement member).
pub fn add_key(array: &Arc<Array>, key: String) {
    let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = reg.iter_mut().find(|e| e.array.upgrade().is_some_and(|a| Arc::ptr_eq(&a, array))) {
        if !e.keys.contains(&key) {
            e.keys.push(key);
        }
    }
}

/// The served array whose members include every one of `keys`. The error lists what is served.
pub fn find(keys: &[String]) -> Result<Arc<Array>, String> {
    let reg = registry().lock().unwrap_or_else(|p| p.into_inner());
    let live: Vec<(&Entry, Arc<Array>)> = reg.iter().filter_map(|e| e.array.upgrade().map(|a| (e, a))).collect();
    let hits: Vec<&Arc<Array>> =
        live.iter().filter(|(e, _)| keys.iter().all(|k| e.keys.contains(k))).map(|(_, a)| a).collect();
    match hits.as_slice() {
        [a] => Ok((*a).clone()),
        [] if live.is_empty() => Err(format!("no array with members {} is served here (none is)", keys.join(":"))),
        [] => {
            let served: Vec<String> = live.iter().map(|(e, _)| e.keys.join(":")).collect();
            Err(format!("no array with members {} is served here (served: {})", keys.join(":"), served.join("; ")))
        }
        _ => Err(format!("members {} name more than one served array: list more of them", keys.join(":"))),
    }
}

/// A background rebuild: its state, as `raid-status` reports it.
pub struct RebuildJob {
    started: Instant,
    running: AtomicBool,
    outcome: Mutex<Option<Result<(u64, f64), String>>>,
}

impl RebuildJob {
    /// `{"running":..,"seconds":..,"bytes":..,"mb_s":..,"error":..}`.
    pub fn to_json(&self) -> serde_json::Value {
        let outcome = self.outcome.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match outcome {
            None => serde_json::json!({"running": self.running.load(Ordering::Acquire),
                                       "seconds": self.started.elapsed().as_secs_f64()}),
            Some(Ok((bytes, secs))) => serde_json::json!({"running": false, "seconds": secs, "bytes": bytes,
                                                           "mb_s": bytes as f64 / secs.max(1e-9) / 1e6}),
            Some(Err(e)) => serde_json::json!({"running": false, "error": e}),
        }
    }

    /// Still running.
    pub fn running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }
}

fn jobs() -> &'static Mutex<HashMap<String, Arc<RebuildJob>>> {
    static JOBS: OnceLock<Mutex<HashMap<String, Arc<RebuildJob>>>> = OnceLock::new();
    JOBS.get_or_init(Default::default)
}

/// The last rebuild started on the array with UUID `uuid`, if any.
pub fn rebuild_job(uuid: &str) -> Option<Arc<RebuildJob>> {
    jobs().lock().unwrap_or_else(|p| p.into_inner()).get(uuid).cloned()
}

/// Rebuild `array`'s rebuilding members on a thread of its own (with its own io_uring), while
/// the exports go on serving it. Refused while a rebuild of it runs.
pub fn start_rebuild(array: Arc<Array>, opts: RebuildOptions) -> Result<Arc<RebuildJob>, String> {
    let uuid = array.status().uuid;
    let mut all = jobs().lock().unwrap_or_else(|p| p.into_inner());
    if all.get(&uuid).is_some_and(|j| j.running()) {
        return Err(format!("array {uuid}: a rebuild is already running"));
    }
    let job =
        Arc::new(RebuildJob { started: Instant::now(), running: AtomicBool::new(true), outcome: Mutex::new(None) });
    let j = job.clone();
    let name = array.describe();
    blockdev::thread::spawn(blockdev::thread::ThreadKind::Background, "raid-rebuild", move || {
        let res = IoCtx::new().and_then(|io| io.block_on(array.rebuild(&io, opts)));
        let secs = j.started.elapsed().as_secs_f64();
        let outcome = match res {
            Ok(bytes) => {
                tracing::info!(
                    "{name}: rebuild done: {bytes} bytes in {secs:.2}s ({:.1} MB/s)",
                    bytes as f64 / secs.max(1e-9) / 1e6
                );
                Ok((bytes, secs))
            }
            Err(e) => {
                tracing::error!("{name}: rebuild failed: {e}");
                Err(e.to_string())
            }
        };
        *j.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
        j.running.store(false, Ordering::Release);
    })
    .map_err(|e| format!("array {uuid}: cannot start the rebuild thread: {e}"))?;
    all.insert(uuid, job.clone());
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_absolute_for_files_that_exist_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.img");
        std::fs::write(&f, b"x").unwrap();
        let canon = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(member_key(&f.display().to_string()), canon.join("a.img").display().to_string());
        let missing = dir.path().join("gone.img");
        assert_eq!(member_key(&missing.display().to_string()), canon.join("gone.img").display().to_string());
        assert_eq!(member_key("node:r0"), "node:r0");
    }
}

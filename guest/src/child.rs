//! Run a machine process (QEMU, vmm-mini) to its end with its console captured and a deadline.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Error, GuestOutput, Result};

/// Spawns `cmd` (stdin closed), captures stdout as the console and stderr, and waits until it
/// exits or `timeout` passes (then kills it and returns [`Error::Timeout`] with both so far).
/// Unless `quiet`, each console line is echoed to our stderr as `<name>| ...` and each stderr
/// line as `<name> stderr| ...`.
pub(crate) fn run_captured(
    mut cmd: Command,
    name: &'static str,
    timeout: Duration,
    quiet: bool,
) -> Result<GuestOutput> {
    let shown = format!("{cmd:?}");
    if !quiet {
        eprintln!("{name}: {shown}");
    }
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Command { cmd: shown.clone(), detail: e.to_string() })?;
    let console = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let prefixes = if quiet { (None, None) } else { (Some(format!("{name}| ")), Some(format!("{name} stderr| "))) };
    let readers = [
        child.stdout.take().map(|s| pump(s, console.clone(), prefixes.0)),
        child.stderr.take().map(|s| pump(s, stderr.clone(), prefixes.1)),
    ];
    let text = |buf: &Arc<Mutex<Vec<u8>>>| {
        String::from_utf8_lossy(&buf.lock().unwrap_or_else(|e| e.into_inner())).replace('\r', "")
    };
    let deadline = start + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                readers.into_iter().flatten().for_each(|r| drop(r.join()));
                return Err(Error::Timeout {
                    secs: timeout.as_secs(),
                    output: format!("{}\n{name} stderr:\n{}", text(&console), text(&stderr)),
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(Error::Command { cmd: shown, detail: e.to_string() }),
        }
    };
    readers.into_iter().flatten().for_each(|r| drop(r.join()));
    let out = GuestOutput { console: text(&console), stderr: text(&stderr), status, elapsed: start.elapsed() };
    if !quiet {
        eprintln!("{name}: exited with {} after {:.1} s", out.status, out.elapsed.as_secs_f64());
    }
    Ok(out)
}

/// Copies a pipe into `buf`, echoing complete lines to stderr with `prefix` (if any).
pub(crate) fn pump(
    mut src: impl Read + Send + 'static,
    buf: Arc<Mutex<Vec<u8>>>,
    prefix: Option<String>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        let mut line = Vec::new();
        loop {
            let n = match src.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(&chunk[..n]);
            let Some(prefix) = prefix.as_deref() else { continue };
            for &b in &chunk[..n] {
                if b == b'\n' {
                    eprintln!("{prefix}{}", String::from_utf8_lossy(&line).trim_end_matches('\r'));
                    line.clear();
                } else {
                    line.push(b);
                }
            }
        }
        if let (Some(prefix), false) = (prefix, line.is_empty()) {
            eprintln!("{prefix}{}", String::from_utf8_lossy(&line));
        }
    })
}

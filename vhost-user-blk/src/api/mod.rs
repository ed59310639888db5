//! The control socket: JSON over a Unix socket, one request per line and one answer per line,
//! served by tokio on its own thread (the control plane only; the data path never waits on it).
//!
//! Requests:
//! - `{"cmd":"list"}` → `{"ok":true,"result":[{"name":..,"disk":..,"settings":{..},"size":..},..]}`
//! - `{"cmd":"stats","name":"NAME"}` → `{"ok":true,"result":{"reads":..,"latency_p99_us":..,..}}`
//! - `{"cmd":"add","disk":"socket=PATH,format=FMT,..."}` → `{"ok":true}`
//! - `{"cmd":"remove","name":"NAME"}` → `{"ok":true}` (drains and flushes first)
//! - `{"cmd":"limits","name":"NAME"}` and `{"cmd":"set-limits","name":"NAME","limits":{..}}`:
//!   an export's I/O limits ([`limits`])
//! - `{"cmd":"thin","op":...}`: a served thin pool's volumes ([`thin`])
//! - `{"cmd":"resize","name":"NAME","size":SIZE[,"shrink":true]}` → `{"ok":true,"result":{"size":..,
//!   "notified":..}}`: a live resize of an export ([`resize`])
//!
//! - `raid-status`, `raid-fail`, `raid-replace`, `raid-scrub`: live operations on a served
//!   array ([`raid`])
//!
//! Errors: `{"ok":false,"error":"message"}`. Lines longer than 64 KiB close the connection.

pub mod limits;
pub mod thin;

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::server::serve::{bind_socket, SocketFile};
use crate::server::{Daemon, DiskSpec};

pub mod raid;
pub mod resize;
pub mod runtime;

pub use runtime::ControlRuntime;

/// Longest request line accepted.
const MAX_LINE: usize = 64 * 1024;

/// One control request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// List the exports.
    List,
    /// Statistics of one export.
    Stats {
        /// Export name.
        name: String,
    },
    /// Add an export from a `--disk` spec.
    Add {
        /// The spec.
        disk: String,
    },
    /// Remove an export.
    Remove {
        /// Export name.
        name: String,
    },
    /// Status of a served RAID array.
    RaidStatus(raid::StatusReq),
    /// Mark a member of a served RAID array faulty.
    RaidFail(raid::FailReq),
    /// Replace a member of a served RAID array and rebuild it in the background.
    RaidReplace(raid::ReplaceReq),
    /// Scrub a served RAID array.
    RaidScrub(raid::ScrubReq),
    /// The I/O limits in force on an export.
    Limits(limits::LimitsReq),
    /// Change an export's (or its throttle group's) I/O limits.
    SetLimits(limits::SetLimitsReq),
    /// A thin pool command (`"op"` selects it).
    Thin(thin::ThinRequest),
    /// Change an export's size while it is served.
    Resize(resize::ResizeReq),
}

/// The running control socket; the socket file is removed when dropped, if the path still
/// names it.
pub struct ApiServer {
    socket: SocketFile,
}

impl ApiServer {
    /// Bind `path` (replacing a stale socket) and serve it on a new control-plane runtime.
    pub fn start(path: &Path, daemon: Arc<Daemon>) -> std::io::Result<ApiServer> {
        let rt = ControlRuntime::start()?;
        ApiServer::start_on(path, daemon, rt.handle())
    }

    /// Bind `path` (replacing a stale socket) and serve it on the runtime behind `rt`.
    pub fn start_on(path: &Path, daemon: Arc<Daemon>, rt: &tokio::runtime::Handle) -> std::io::Result<ApiServer> {
        let (std_listener, socket) = bind_socket(path).map_err(std::io::Error::other)?;
        std_listener.set_nonblocking(true)?;
        let _guard = rt.enter();
        let listener = UnixListener::from_std(std_listener)?;
        rt.spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(serve_client(stream, daemon.clone()));
                    }
                    Err(e) => {
                        tracing::warn!("control socket: accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
        });
        tracing::info!(socket = %path.display(), "control socket listening");
        Ok(ApiServer { socket })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if !self.socket.remove_if_ours() {
            tracing::warn!(socket = %self.socket.path().display(), "control socket path now names another socket; left in place");
        }
    }
}

async fn serve_client(stream: UnixStream, daemon: Arc<Daemon>) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut limited = (&mut rd).take(MAX_LINE as u64 + 1);
        match limited.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.len() > MAX_LINE {
            let _ = wr.write_all(b"{\"ok\":false,\"error\":\"request line too long\"}\n").await;
            return;
        }
        let answer = match serde_json::from_slice::<Request>(&line) {
            Ok(req) => {
                let d = daemon.clone();
                tokio::task::spawn_blocking(move || handle(&d, req))
                    .await
                    .unwrap_or_else(|e| json!({"ok": false, "error": format!("internal error: {e}")}))
            }
            Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
        };
        let mut out = answer.to_string().into_bytes();
        out.push(b'\n');
        if wr.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// Carry out one request.
pub fn handle(daemon: &Daemon, req: Request) -> Value {
    let res: Result<Value, String> = match req {
        Request::List => serde_json::to_value(daemon.list()).map_err(|e| e.to_string()),
        Request::Stats { name } => daemon
            .stats(&name)
            .ok_or(format!("{name}: no such export"))
            .and_then(|s| serde_json::to_value(s).map_err(|e| e.to_string())),
        Request::Add { disk } => DiskSpec::parse(&disk).and_then(|spec| daemon.add(&spec)).map(|()| Value::Null),
        Request::Remove { name } => daemon.remove(&name).map(|()| Value::Null),
        Request::RaidStatus(r) => raid::status(r),
        Request::RaidFail(r) => raid::fail(r),
        Request::RaidReplace(r) => raid::replace(r),
        Request::RaidScrub(r) => raid::scrub(r),
        Request::Limits(r) => limits::get(daemon, r),
        Request::SetLimits(r) => limits::set(daemon, r),
        Request::Thin(req) => thin::handle(daemon, req),
        Request::Resize(req) => resize::resize(daemon, req),
    };
    match res {
        Ok(Value::Null) => json!({"ok": true}),
        Ok(v) => json!({"ok": true, "result": v}),
        Err(e) => json!({"ok": false, "error": e}),
    }
}

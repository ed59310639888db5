//! A small HTTP/1.1 responder for `/metrics` on the control plane's tokio runtime.
//!
//! One request per connection (`Connection: close`). Built to be left open to anything that can
//! connect: the request head must arrive whole within [`HEAD_TIMEOUT`] and fit in
//! [`MAX_HEAD`] bytes (else 408 or 431 and the connection closes), at most
//! [`MAX_CONNECTIONS`] connections are served at once (more are closed at once), only `GET` and
//! `HEAD` are answered (405), and every path but `/metrics` is a 404. Nothing a client sends
//! can panic or block the runtime: the page is rendered on the blocking pool.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;

use super::render::{render, CONTENT_TYPE};
use crate::server::Daemon;

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its whole request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to take the answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 32;
/// Headers parsed at most.
const MAX_HEADERS: usize = 64;

/// Admission for new connections: a connection holds a permit while it is served.
pub fn limiter() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(MAX_CONNECTIONS))
}

/// Serve one connection: read one request, answer it, close.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, daemon: Arc<Daemon>) {
    let answer = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Err(_) => Answer::status(408, "Request Timeout", "the request head did not arrive in time\n"),
        Ok(Err(HeadError::Closed)) => return,
        Ok(Err(HeadError::TooLarge)) => {
            Answer::status(431, "Request Header Fields Too Large", "the request head is too large\n")
        }
        Ok(Err(HeadError::Bad)) => Answer::status(400, "Bad Request", "not an HTTP/1.x request\n"),
        Ok(Ok(req)) => route(req, daemon).await,
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&answer.bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// What was asked.
struct Head {
    method: String,
    path: String,
}

enum HeadError {
    /// The client left before sending a whole head.
    Closed,
    /// More than [`MAX_HEAD`] bytes without the head's end.
    TooLarge,
    /// Not HTTP.
    Bad,
}

async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Head, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                return Ok(Head {
                    method: req.method.unwrap_or_default().to_string(),
                    path: req.path.unwrap_or_default().to_string(),
                })
            }
            Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => {}
            Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(_) => return Err(HeadError::Bad),
        }
    }
}

async fn route(req: Head, daemon: Arc<Daemon>) -> Answer {
    let path = req.path.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return Answer::status(404, "Not Found", "not found: the metrics are at /metrics\n");
    }
    let head_only = match req.method.as_str() {
        "GET" => false,
        "HEAD" => true,
        _ => {
            let mut a = Answer::status(405, "Method Not Allowed", "only GET and HEAD\n");
            a.extra = "Allow: GET, HEAD\r\n";
            return a;
        }
    };
    let page = match tokio::task::spawn_blocking(move || render(&daemon)).await {
        Ok(p) => p,
        Err(e) => return Answer::status(500, "Internal Server Error", &format!("rendering failed: {e}\n")),
    };
    Answer { code: 200, reason: "OK", content_type: CONTENT_TYPE, body: page.into_bytes(), head_only, extra: "" }
}

/// An answer to write.
struct Answer {
    code: u16,
    reason: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    head_only: bool,
    extra: &'static str,
}

impl Answer {
    fn status(code: u16, reason: &'static str, text: &str) -> Answer {
        Answer {
            code,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: text.as_bytes().to_vec(),
            head_only: false,
            extra: "",
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
            self.code,
            self.reason,
            self.content_type,
            self.body.len(),
            self.extra
        )
        .into_bytes();
        if !self.head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ask(request: &[u8]) -> String {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(serve(server, crate::server::Daemon::new()));
        client.write_all(request).await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        task.await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn paths_methods_and_garbage_get_their_status() {
        let ok = ask(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.contains("version=0.0.4"), "{ok}");
        assert!(ok.contains("# TYPE strata_requests_total counter"), "{ok}");
        let head = ask(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"), "{head}");
        assert!(ask(b"GET / HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 404"));
        assert!(ask(b"POST /metrics HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 405"));
        assert!(ask(b"\x00\x01garbage\r\n\r\n").await.starts_with("HTTP/1.1 400"));
        let mut huge = b"GET /metrics HTTP/1.1\r\n".to_vec();
        huge.extend(std::iter::repeat_n(b"X-A: b\r\n".as_slice(), 2000).flatten());
        assert!(ask(&huge).await.starts_with("HTTP/1.1 431"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_head_is_cut_off_with_408() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let task = tokio::spawn(serve(server, crate::server::Daemon::new()));
        client.write_all(b"GET /metr").await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        task.await.unwrap();
        assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 408"));
    }
}

//! A minimal HTTP/1.1 client for tests, so test binaries need no HTTP client crate.

use crate::{Result, TestkitError};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response: status code and body text.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.body)
            .map_err(|e| TestkitError::Setup(format!("body is not JSON ({e}): {}", self.body)))
    }
}

/// How long one request may take. Test servers get ports in the ephemeral range, so a poll
/// of a child that died or has not bound yet can connect to itself and read its own request
/// back, which never completes; callers polling in a loop need each attempt to end.
const HTTP_GET_DEADLINE: Duration = Duration::from_secs(10);

/// `GET path` against `addr`, with `Connection: close`; fails after [`HTTP_GET_DEADLINE`].
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<HttpResponse> {
    http_get_within(addr, path, HTTP_GET_DEADLINE).await
}

/// [`http_get`] with its own deadline.
pub async fn http_get_within(
    addr: SocketAddr,
    path: &str,
    deadline: Duration,
) -> Result<HttpResponse> {
    tokio::time::timeout(deadline, get(addr, path))
        .await
        .map_err(|_| TestkitError::Io {
            what: format!("GET {path} from {addr}"),
            source: std::io::ErrorKind::TimedOut.into(),
        })?
}

async fn get(addr: SocketAddr, path: &str) -> Result<HttpResponse> {
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| TestkitError::Io { what, source }
    };
    let mut stream = TcpStream::connect(addr).await.map_err(io("connecting"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(io("writing request"))?;
    // Read until the body announced by Content-Length is complete (some servers keep the
    // connection open despite `Connection: close`), or to the end of the stream.
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(io("reading response"))?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
        if let Some(expected) = complete_length(&raw) {
            if raw.len() >= expected {
                break;
            }
        }
    }
    parse_response(&raw)
}

/// Total response length when the head is complete and declares a Content-Length.
fn complete_length(raw: &[u8]) -> Option<usize> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let length = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    })?;
    Some(head_end + length)
}

fn parse_response(raw: &[u8]) -> Result<HttpResponse> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| TestkitError::Setup(format!("malformed HTTP response: {text}")))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| TestkitError::Setup(format!("no status line: {head}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// A peer that accepts connections and writes back whatever each one sends: what a client
/// sees when it connects to itself (a dead server's port lies in the ephemeral range, so a
/// reconnect can be handed it as its own source port). It never answers a request, whatever
/// the protocol. Stops when the returned task is aborted.
pub async fn echo_peer() -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| TestkitError::Io {
            what: "binding the echo peer".into(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| TestkitError::Io {
        what: "reading the echo peer's address".into(),
        source,
    })?;
    let task = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut reader, mut writer) = socket.into_split();
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
                let _ = writer.shutdown().await;
            });
        }
    });
    Ok((addr, task))
}

//! An HTTP/1.1 `GET` for tests: hyper's client connection (the HTTP stack kube and axum
//! already build) behind one call that returns status, headers and body text, with a deadline
//! every polling test needs.

use crate::{Result, TestkitError};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
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
    let failed = |what: &str| {
        let what = format!("{what} (GET {path} from {addr})");
        move |error: hyper::Error| TestkitError::Io {
            what,
            source: std::io::Error::other(error),
        }
    };
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| TestkitError::Io {
            what: format!("connecting to {addr}"),
            source,
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(failed("handshake"))?;
    // The connection task ends with the response (Connection: close) or with this request.
    let driver = tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| TestkitError::Setup(format!("GET {path}: {e}")))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(failed("request"))?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| {
            let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (n.as_str().to_owned(), value)
        })
        .collect();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(failed("reading body"))?
        .to_bytes();
    driver.abort();
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// A peer that accepts connections and writes back whatever each one sends: what a client
/// sees when it connects to itself (a dead server's port lies in the ephemeral range, so a
/// reconnect can be handed it as its own source port). It never answers a request, whatever
/// the protocol. Stops when the returned task is aborted.
pub async fn echo_peer() -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let (listener, addr) = crate::process::bind_loopback("the echo peer").await?;
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

//! The HTTP side of the tests: requests sent through the tools' one HTTP client
//! ([`quickv::http`]), answers with the assertions the tests make on them, and raw bytes for
//! requests no HTTP client would send.

use std::net::SocketAddr;
use std::time::Duration;

use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::Method;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use quickv::http::{form, FORM};

/// One HTTP answer, with the headers the tests look at.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// `Content-Type`, empty when absent.
    pub content_type: String,
    /// `Allow`, on a 405.
    pub allow: Option<String>,
    /// The body, which must be UTF-8.
    pub body: String,
}

impl Response {
    /// The body as JSON, after checking it is declared as JSON.
    pub fn json(&self) -> Value {
        assert_eq!(self.content_type, "application/json", "{self:?}");
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// Asserts a 4xx/5xx JSON error with the given status and error code; returns the reason.
    pub fn expect_error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "{self:?}");
        let doc = self.json();
        assert_eq!(doc["success"], "false", "{self:?}");
        assert_eq!(doc["error"], code, "{self:?}");
        doc["reason"].as_str().expect("reason").to_string()
    }

    /// Asserts a 200 refusal (`success` false) and returns its reason.
    pub fn expect_refusal(&self) -> String {
        assert_eq!(self.status, 200, "{self:?}");
        let doc = self.json();
        assert_eq!(doc["success"], "false", "{self:?}");
        doc["reason"].as_str().expect("reason").to_string()
    }
}

/// Sends one request on `io` (plain or TLS, opened by the caller); an error if the connection
/// fails or the body is not UTF-8.
pub async fn try_send<I>(
    io: I,
    authority: &str,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: String,
) -> Result<Response, String>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let answer = quickv::http::send_on(io, authority, method, path, content_type, body)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Response {
        status: answer.status,
        content_type: answer.header(CONTENT_TYPE).unwrap_or_default().to_string(),
        allow: answer.header(ALLOW).map(str::to_string),
        body: String::from_utf8(answer.body.to_vec()).map_err(|e| e.to_string())?,
    })
}

/// One request on a fresh plain-TCP connection.
pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: String,
) -> Response {
    let tcp = TcpStream::connect(addr).await.expect("connect http");
    try_send(tcp, &addr.to_string(), method, path, content_type, body)
        .await
        .expect("http request")
}

/// `GET path`.
pub async fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, Method::GET, path, None, String::new()).await
}

/// `POST path` with a form body.
pub async fn post(addr: SocketAddr, path: &str, fields: &[(&str, &str)]) -> Response {
    request(addr, Method::POST, path, Some(FORM), form(fields)).await
}

/// One request with an already encoded `form` (a form content type when it is not empty) on a
/// fresh connection: `(status, body)`, or why it failed. For loops that expect failures.
pub async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    form: &str,
) -> Result<(u16, String), String> {
    let content_type = (!form.is_empty()).then_some(FORM);
    let answer = quickv::http::send(
        &addr.to_string(),
        method,
        path,
        content_type,
        form.to_string(),
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok((
        answer.status,
        String::from_utf8_lossy(&answer.body).into_owned(),
    ))
}

/// Writes raw bytes (for requests no HTTP client would send) and reads until the server closes.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect http");
    tcp.write_all(request).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out))
        .await
        .expect("server closes the connection")
        .expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

//! A minimal HTTP/1.1 client: one request per connection, the answer read whole. It is the one
//! HTTP client of the tools and the tests: the tester's gateway operations
//! ([`crate::tester::http`]), the classic kit and the HTTP tests all send through it, over plain
//! TCP ([`send`]) or over any stream the caller opened, such as a TLS one ([`send_on`]).
//!
//! A failure says whether the request can have reached the server ([`Failure::Lost`]) or
//! certainly did not ([`Failure::NotSent`]): a write whose connection broke after it was written
//! may have been applied.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderName, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// The content type of a form body ([`form`]).
pub const FORM: &str = "application/x-www-form-urlencoded";

/// One answer, read whole.
#[derive(Clone, Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Response {
    /// The value of header `name`, if present and text.
    pub fn header(&self, name: HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Why no answer came back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// Never written: the connection (or the HTTP handshake on it) could not be made.
    #[error("{0}")]
    NotSent(String),
    /// Written (or maybe written), then the connection failed.
    #[error("{0}")]
    Lost(String),
}

/// One request to `addr` (`HOST:PORT`) on a fresh TCP connection, without Nagle's delay.
pub async fn send(
    addr: &str,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<Bytes>,
) -> Result<Response, Failure> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| Failure::NotSent(format!("cannot connect to {addr}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    send_on(tcp, addr, method, path, content_type, body).await
}

/// One request on `io`, a connection the caller opened (plain or TLS), naming `authority` in
/// the `Host` header. The connection is used for this request only.
pub async fn send_on<I>(
    io: I,
    authority: &str,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<Bytes>,
) -> Result<Response, Failure>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| Failure::NotSent(format!("HTTP handshake with {authority}: {e}")))?;
    // The connection task ends with the connection: after this one exchange, or on an error.
    tokio::spawn(conn);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, authority);
    if let Some(content_type) = content_type {
        request = request.header(CONTENT_TYPE, content_type);
    }
    let request = request
        .body(Full::new(body.into()))
        .map_err(|e| Failure::NotSent(format!("cannot build the request: {e}")))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| Failure::Lost(format!("connection to {authority} failed: {e}")))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| Failure::Lost(format!("answer from {authority} cut short: {e}")))?
        .to_bytes();
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// A form body (`application/x-www-form-urlencoded`), every byte outside the unreserved set
/// percent-encoded.
pub fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes every byte outside the unreserved set.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_encode_every_reserved_byte() {
        assert_eq!(
            form(&[("key", "a b&c"), ("value", "100%")]),
            "key=a%20b%26c&value=100%25"
        );
        assert_eq!(encode("é~"), "%C3%A9~");
    }
}

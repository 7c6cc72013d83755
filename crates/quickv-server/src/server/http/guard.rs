//! What the gateway refuses before any role check: requests a browser made on behalf of a web
//! page, requests that name a host other than this gateway, and (opt-in) requests without the
//! gateway's token.
//!
//! Plain HTTP has no client authentication, so it listens on loopback only; but loopback is
//! reachable by every local user and by every browser on the host. A page cannot read a foreign
//! answer, yet its request still takes effect: an `<img src=…/kvman/shutdown>` or an auto-submitted
//! form (a CORS "simple request", sent without a preflight) would stop the server or delete a key.
//! And a page whose name re-resolves to 127.0.0.1 (DNS rebinding) becomes same-origin with the
//! gateway and may read everything. Plain HTTP clients — curl, Go's `net/http`, the classic
//! harness — send neither `Origin` nor `Sec-Fetch-Site`, and name the address they dialed in
//! `Host`. So the guard refuses, with `403`:
//!
//! - a `Sec-Fetch-Site` other than `none` or `same-origin` (browsers send it with every request);
//! - an `Origin` that is not this gateway (`null` included);
//! - on a loopback gateway, a `Host` other than the bound address or `localhost` (with the bound
//!   port, when it names one). A request without `Host` (HTTP/1.0) passes: browsers always send
//!   one.
//!
//! With `--http-token FILE` every request on the plain gateway must also carry
//! `Authorization: Bearer TOKEN` (else `401`), which keeps out the local users who cannot read the
//! file. The HTTPS gateway applies the two browser rules too (a browser holding a client
//! certificate must not be driven by a page either); its TLS name check already defeats
//! rebinding.

use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST, ORIGIN};
use hyper::{Request, Response, StatusCode};

use crate::config::ServerConfig;
use crate::error::{Error, Result};
use crate::server::node::{Node, Stats};

/// Index of the 4xx class in [`crate::server::node::Stats::http_responses`].
const CLASS_4XX: usize = 3;
/// Longest token file read, in bytes (a token is a line; anything longer is a mistake).
const MAX_TOKEN_BYTES: u64 = 4096;

/// The gateway's request guard, built once at start.
#[derive(Debug)]
pub struct Guard {
    /// The bound address: the only authority besides `localhost` a `Host` or `Origin` may name.
    bound: SocketAddr,
    /// `https` or `http`: the scheme an allowed `Origin` carries.
    scheme: &'static str,
    /// Whether `Host` is checked: on a loopback gateway (elsewhere the names clients use are not
    /// known to the server, and plain HTTP there is `--http-insecure` anyway).
    check_host: bool,
    /// The bearer token of `--http-token`, when set.
    token: Option<String>,
}

impl Guard {
    /// The guard of the gateway bound at `bound`; reads the token file if configured.
    pub fn new(config: &ServerConfig, bound: SocketAddr) -> Result<Guard> {
        let token = match &config.tls.http_token {
            Some(path) => Some(read_token(path)?),
            None => None,
        };
        Ok(Guard {
            bound,
            scheme: if config.http_tls { "https" } else { "http" },
            check_host: !config.http_tls && bound.ip().is_loopback(),
            token,
        })
    }

    /// The refusal for `req`, or `None` to let it through. Counted as a 4xx answer.
    pub fn refusal<B>(&self, node: &Node, req: &Request<B>) -> Option<Response<Full<Bytes>>> {
        let (status, reason) = self.judge(req)?;
        if let Some(counter) = node.stats.http_responses.get(CLASS_4XX) {
            Stats::bump(counter);
        }
        let error = match status {
            StatusCode::UNAUTHORIZED => "unauthorized",
            _ => "forbidden",
        };
        let body = serde_json::json!({ "error": error, "reason": reason }).to_string();
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Some(resp)
    }

    /// The status and sentence of a refusal.
    fn judge<B>(&self, req: &Request<B>) -> Option<(StatusCode, String)> {
        let header = |name| req.headers().get(name).map(|v: &HeaderValue| v.to_str());
        if let Some(site) = header("sec-fetch-site") {
            let site = site.unwrap_or("");
            if !site.eq_ignore_ascii_case("none") && !site.eq_ignore_ascii_case("same-origin") {
                return Some((
                    StatusCode::FORBIDDEN,
                    format!("cross-site request refused (Sec-Fetch-Site: {site})"),
                ));
            }
        }
        if let Some(origin) = header(ORIGIN.as_str()) {
            let origin = origin.unwrap_or("");
            let ours = origin
                .strip_prefix(self.scheme)
                .and_then(|rest| rest.strip_prefix("://"))
                .is_some_and(|authority| self.is_ours(authority));
            if !ours {
                return Some((
                    StatusCode::FORBIDDEN,
                    format!("cross-origin request refused (Origin: {origin})"),
                ));
            }
        }
        if self.check_host {
            if let Some(host) = header(HOST.as_str()) {
                let host = host.unwrap_or("");
                if !self.is_ours(host) {
                    return Some((
                        StatusCode::FORBIDDEN,
                        format!(
                            "Host {host:?} is not this gateway ({} or localhost:{})",
                            self.bound,
                            self.bound.port()
                        ),
                    ));
                }
            }
        }
        if let Some(token) = &self.token {
            let sent = header(AUTHORIZATION.as_str())
                .and_then(|v| v.ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if !same_bytes(sent.trim().as_bytes(), token.as_bytes()) {
                return Some((
                    StatusCode::UNAUTHORIZED,
                    "this gateway needs Authorization: Bearer with the token of --http-token"
                        .into(),
                ));
            }
        }
        None
    }

    /// Whether `authority` (`host[:port]`) names this gateway: the bound IP or `localhost`, and
    /// the bound port if it names one.
    fn is_ours(&self, authority: &str) -> bool {
        let (host, port) = split_authority(authority);
        // Without a port the name alone decides: a browser leaves the port out only for 80, and a
        // page cannot make it send `localhost` or our address as the host of another site.
        let port_ok = port.is_none_or(|p| p.parse::<u16>().ok() == Some(self.bound.port()));
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host_ok = host.eq_ignore_ascii_case("localhost")
            || host.parse::<std::net::IpAddr>().ok() == Some(self.bound.ip());
        port_ok && host_ok
    }
}

/// `host[:port]` split at the port's colon; an IPv6 literal keeps its brackets (`[::1]:80`), a bare
/// one (several colons) has no port.
fn split_authority(authority: &str) -> (&str, Option<&str>) {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => {
                let (host, rest) = authority.split_at(end + 1);
                match rest {
                    "" => (host, None),
                    _ => (host, Some(rest.strip_prefix(':').unwrap_or(rest))),
                }
            }
            None => (authority, Some("")),
        };
    }
    match authority.split_once(':') {
        Some((host, port)) if !port.contains(':') => (host, Some(port)),
        _ => (authority, None),
    }
}

/// Compares without stopping at the first difference (the token must not leak by timing).
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads the token file: private to its owner (no group or other permission bits), one
/// non-empty line.
fn read_token(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| Error::file(path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::Config(format!(
                "{}: the HTTP token file has mode {mode:04o}; make it 0600 (chmod 600), or other \
                 local users can read the token",
                path.display()
            )));
        }
    }
    if meta.len() > MAX_TOKEN_BYTES {
        return Err(Error::Config(format!(
            "{}: the HTTP token file is larger than {MAX_TOKEN_BYTES} bytes",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    let token = text.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(Error::Config(format!(
            "{}: the HTTP token file must hold one token (no spaces)",
            path.display()
        )));
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(bound: &str) -> Guard {
        Guard {
            bound: bound.parse().expect("addr"),
            scheme: "http",
            check_host: true,
            token: None,
        }
    }

    #[test]
    fn authorities_naming_the_gateway_pass_and_others_do_not() {
        let g = guard("127.0.0.1:8080");
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST:8080",
            "localhost",
        ] {
            assert!(g.is_ours(ok), "{ok}");
        }
        for bad in [
            "rebind.attacker.example:8080",
            "127.0.0.1:8081",
            "127.0.0.2:8080",
            "[::1]:8080",
            "",
            "localhost:",
        ] {
            assert!(!g.is_ours(bad), "{bad}");
        }
        let v6 = guard("[::1]:80");
        for ok in ["[::1]:80", "[::1]", "localhost"] {
            assert!(v6.is_ours(ok), "{ok}");
        }
        assert!(!v6.is_ours("[::2]:80"));
        assert_eq!(split_authority("::1"), ("::1", None));
    }
}

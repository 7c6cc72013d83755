//! End-to-end tests of the HTTP/JSON gateway and `/metrics`: real server processes (a real pair
//! where replication matters), a real HTTP/1.1 client (hyper's), raw TCP for broken requests, and a
//! strict parser of the Prometheus text format.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{ALLOW, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{free_addr, free_tcp_addr, fresh_certs, wait_state, Pair, ServerProc};

const FORM: &str = "application/x-www-form-urlencoded";

// ---------------------------------------------------------------------------------------------
// A small HTTP client.

/// One HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    allow: Option<String>,
    body: String,
}

impl Answer {
    /// The body as JSON, after checking it is declared as JSON.
    fn json(&self) -> Value {
        assert_eq!(self.content_type, "application/json", "{self:?}");
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// Asserts a 4xx/5xx JSON error with the given status and error code; returns the reason.
    fn expect_error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "{self:?}");
        let doc = self.json();
        assert_eq!(doc["success"], "false", "{self:?}");
        assert_eq!(doc["error"], code, "{self:?}");
        doc["reason"].as_str().expect("reason").to_string()
    }

    /// Asserts a 200 refusal (`success` false) and returns its reason.
    fn expect_refusal(&self) -> String {
        assert_eq!(self.status, 200, "{self:?}");
        let doc = self.json();
        assert_eq!(doc["success"], "false", "{self:?}");
        doc["reason"].as_str().expect("reason").to_string()
    }
}

/// Sends one request on `io` with hyper's client; an error if the connection fails.
async fn try_send<I>(
    io: I,
    authority: &str,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: String,
) -> Result<Answer, String>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, authority);
    if let Some(ct) = content_type {
        req = req.header(CONTENT_TYPE, ct);
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let header = |name| {
        resp.headers()
            .get(name)
            .and_then(|v: &hyper::header::HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let (status, content_type, allow) = (
        resp.status().as_u16(),
        header(CONTENT_TYPE).unwrap_or_default(),
        header(ALLOW),
    );
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(Answer {
        status,
        content_type,
        allow,
        body: String::from_utf8(body.to_vec()).map_err(|e| e.to_string())?,
    })
}

/// One request on a fresh plain-TCP connection.
async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: String,
) -> Answer {
    let tcp = TcpStream::connect(addr).await.expect("connect http");
    try_send(tcp, &addr.to_string(), method, path, content_type, body)
        .await
        .expect("http request")
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    request(addr, Method::GET, path, None, String::new()).await
}

async fn post(addr: SocketAddr, path: &str, fields: &[(&str, &str)]) -> Answer {
    request(addr, Method::POST, path, Some(FORM), form(fields)).await
}

/// A form body, every byte outside the unreserved set percent-encoded.
fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Writes raw bytes (for requests no HTTP client would send) and reads until the server closes.
async fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
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

// ---------------------------------------------------------------------------------------------
// A strict parser of the Prometheus text format.

/// A parsed metrics page: every series (`name{sorted labels}`) and its value.
#[derive(Debug)]
struct Scrape {
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    /// The value of one series; fails the test if it is absent.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let key = series_key(
            name,
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        *self
            .samples
            .get(&key)
            .unwrap_or_else(|| panic!("no series {key} on the page"))
    }

    /// The sum of every series of `name` (all label values).
    fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(k, _)| k.split('{').next() == Some(name))
            .map(|(_, v)| v)
            .sum()
    }
}

fn series_key(name: &str, mut labels: Vec<(String, String)>) -> String {
    labels.sort();
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{name}{{{}}}", inner.join(","))
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    valid_metric_name(name) && !name.contains(':')
}

/// Parses one sample line `name{l="v",…} value` (no timestamp: we never write one).
fn parse_sample(line: &str) -> (String, Vec<(String, String)>, f64) {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value: {line:?}"));
    let name = &line[..name_end];
    assert!(valid_metric_name(name), "bad metric name in {line:?}");
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut pos = 0;
        loop {
            let eq = after[pos..]
                .find('=')
                .map(|i| pos + i)
                .unwrap_or_else(|| panic!("label without '=' in {line:?}"));
            let label = &after[pos..eq];
            assert!(
                valid_label_name(label),
                "bad label name {label:?} in {line:?}"
            );
            assert_eq!(
                after.get(eq + 1..eq + 2),
                Some("\""),
                "unquoted label value in {line:?}"
            );
            let mut value = String::new();
            let mut i = eq + 2;
            loop {
                let c = after[i..]
                    .chars()
                    .next()
                    .unwrap_or_else(|| panic!("unterminated label value in {line:?}"));
                i += c.len_utf8();
                match c {
                    '"' => break,
                    '\\' => {
                        let escaped = after[i..].chars().next();
                        value.push(match escaped {
                            Some('\\') => '\\',
                            Some('"') => '"',
                            Some('n') => '\n',
                            other => panic!("bad escape {other:?} in {line:?}"),
                        });
                        i += 1;
                    }
                    c => value.push(c),
                }
            }
            labels.push((label.to_string(), value));
            match after.get(i..i + 1) {
                Some(",") => pos = i + 1,
                Some("}") => {
                    rest = &after[i + 1..];
                    break;
                }
                other => panic!("expected ',' or '}}' after a label, got {other:?} in {line:?}"),
            }
        }
    }
    let value = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("expected one space before the value in {line:?}"));
    assert!(
        !value.contains(' '),
        "trailing fields (timestamp?) in {line:?}"
    );
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("bad value {v:?} in {line:?}")),
    };
    let mut seen = HashSet::new();
    for (l, _) in &labels {
        assert!(seen.insert(l.clone()), "label {l} repeated in {line:?}");
    }
    (name.to_string(), labels, value)
}

/// Parses a whole page strictly: HELP/TYPE well-formed and once per family, TYPE before the
/// family's samples, a family's samples contiguous, no duplicate series, counters named `_total`,
/// histogram buckets cumulative with increasing `le` ending in `+Inf`, `_count` equal to the
/// `+Inf` bucket, and `_sum` present.
fn parse_prometheus(page: &str) -> Scrape {
    assert!(page.ends_with('\n'), "a page ends with a newline");
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashSet<String> = HashSet::new();
    let mut closed: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut samples = BTreeMap::new();
    // (family, labels without le) → [(le, cumulative count)]
    let mut buckets: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
    let mut hist_counts: BTreeMap<(String, String), f64> = BTreeMap::new();
    let mut hist_sums: HashSet<(String, String)> = HashSet::new();

    for line in page.lines() {
        assert!(!line.is_empty(), "blank line in the page");
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment
                .strip_prefix(' ')
                .expect("'# ' comment")
                .splitn(3, ' ');
            let (kw, name, text) = (parts.next(), parts.next(), parts.next());
            let name = name.unwrap_or_else(|| panic!("comment without a name: {line:?}"));
            assert!(valid_metric_name(name), "bad name in {line:?}");
            match kw {
                Some("HELP") => {
                    assert!(text.is_some_and(|t| !t.is_empty()), "empty HELP: {line:?}");
                    assert!(helps.insert(name.to_string()), "second HELP for {name}");
                }
                Some("TYPE") => {
                    let kind = text.unwrap_or_default();
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "bad TYPE {kind:?}"
                    );
                    assert!(
                        types.insert(name.to_string(), kind.to_string()).is_none(),
                        "second TYPE for {name}"
                    );
                    assert!(
                        !closed.contains(name) && current.as_deref() != Some(name),
                        "TYPE of {name} after its samples"
                    );
                }
                other => panic!("unknown comment {other:?} (strict: only HELP and TYPE)"),
            }
            continue;
        }
        let (name, labels, value) = parse_sample(line);
        let family = if types.contains_key(&name) {
            name.clone()
        } else {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let base = name.strip_suffix(suffix)?;
                    (types.get(base).map(String::as_str) == Some("histogram"))
                        .then(|| base.to_string())
                })
                .unwrap_or_else(|| panic!("sample {name} has no TYPE before it"))
        };
        assert!(helps.contains(&family), "no HELP for {family}");
        if current.as_deref() != Some(family.as_str()) {
            if let Some(prev) = current.take() {
                closed.insert(prev);
            }
            assert!(
                !closed.contains(&family),
                "samples of {family} are not contiguous"
            );
            current = Some(family.clone());
        }
        let kind = types[&family].as_str();
        if kind == "counter" {
            assert!(name.ends_with("_total"), "counter {name} not named _total");
            assert!(value >= 0.0, "negative counter {line:?}");
        }
        if kind == "histogram" {
            let without_le: Vec<(String, String)> =
                labels.iter().filter(|(k, _)| k != "le").cloned().collect();
            let group = (family.clone(), series_key("", without_le));
            if name.ends_with("_bucket") {
                let le = labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .map(|(_, v)| v.as_str())
                    .unwrap_or_else(|| panic!("bucket without le: {line:?}"));
                let le: f64 = match le {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().unwrap_or_else(|_| panic!("bad le {v:?}")),
                };
                buckets.entry(group).or_default().push((le, value));
            } else if name.ends_with("_count") {
                hist_counts.insert(group, value);
            } else {
                assert!(name.ends_with("_sum"), "{name}");
                hist_sums.insert(group);
            }
        }
        assert!(
            samples.insert(series_key(&name, labels), value).is_none(),
            "duplicate series in {line:?}"
        );
    }
    for (group, series) in &buckets {
        assert!(
            series.windows(2).all(|w| w[0].0 < w[1].0),
            "le not increasing in {group:?}"
        );
        assert!(
            series.windows(2).all(|w| w[0].1 <= w[1].1),
            "buckets not cumulative in {group:?}: {series:?}"
        );
        let last = series.last().expect("at least one bucket");
        assert_eq!(last.0, f64::INFINITY, "{group:?} does not end in +Inf");
        assert_eq!(
            hist_counts.get(group),
            Some(&last.1),
            "{group:?}: _count != +Inf bucket"
        );
        assert!(hist_sums.contains(group), "{group:?} has no _sum");
    }
    assert_eq!(
        buckets.len(),
        hist_counts.len(),
        "a histogram _count without buckets"
    );
    Scrape { samples }
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let page = get(addr, "/metrics").await;
    assert_eq!(page.status, 200);
    assert!(
        page.content_type.starts_with("text/plain; version=0.0.4"),
        "{page:?}"
    );
    parse_prometheus(&page.body)
}

/// The parser is the test's judge, so it must reject what it claims to reject.
#[test]
fn the_prometheus_parser_rejects_broken_pages() {
    let good = "# HELP h_seconds x\n# TYPE h_seconds histogram\nh_seconds_bucket{le=\"1\"} 1\nh_seconds_bucket{le=\"+Inf\"} 2\nh_seconds_sum 3.5\nh_seconds_count 2\n# HELP c_total y\n# TYPE c_total counter\nc_total{a=\"q\\\"\"} 4\n";
    let s = parse_prometheus(good);
    assert_eq!(s.value("c_total", &[("a", "q\"")]), 4.0);
    assert_eq!(s.value("h_seconds_count", &[]), 2.0);
    for bad in [
        good.replace("le=\"1\"} 1", "le=\"1\"} 3"), // not cumulative
        good.replace("le=\"+Inf\"", "le=\"2\""),    // no +Inf
        good.replace("h_seconds_count 2", "h_seconds_count 1"),
        good.replace("# TYPE c_total counter\n", ""), // sample without TYPE
        good.replace("c_total{a", "c_total {a"),      // stray space
        good.replace("} 4", "} 4 123"),               // timestamp
        good.replace("counter", "countr"),
        format!("{good}h_seconds_sum 1\n"), // not contiguous, duplicate
        good.replace("\n# HELP c_total y", "\n\n# HELP c_total y"),
    ] {
        let result = std::panic::catch_unwind(|| parse_prometheus(&bad));
        assert!(result.is_err(), "accepted a broken page:\n{bad}");
    }
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test]
async fn classic_api_end_to_end_on_a_pair_then_shutdown_over_http() {
    let mut pair = Pair::start_with_http(&[]).await;
    let p = pair.primary_http.expect("primary http");
    let b = pair.backup_http.expect("backup http");
    let tricky = "a value & more = 100% +plus \u{2713}";

    let ok = post(p, "/kv/insert", &[("key", "k1"), ("value", tricky)]).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body, r#"{"success":"true"}"#, "the classic shape");
    let again = post(p, "/kv/insert", &[("key", "k1"), ("value", "x")]).await;
    assert_eq!(again.expect_refusal(), "the key already exists");
    assert_eq!(
        get(p, "/kv/get?key=k1").await.json(),
        json!({"success": "true", "value": tricky})
    );

    let odd_key = "key with spaces/&?=";
    let path = format!("/kv/get?key={}", encode(odd_key));
    post(p, "/kv/insert", &[("key", odd_key), ("value", "v2")]).await;
    assert_eq!(
        get(p, &path).await.json(),
        json!({"success": "true", "value": "v2"})
    );

    let upd = post(p, "/kv/update", &[("key", "k1"), ("value", "updated")]).await;
    assert_eq!(upd.json(), json!({"success": "true"}));
    let missing = post(p, "/kv/update", &[("key", "nope"), ("value", "x")]).await;
    assert_eq!(missing.expect_refusal(), "the key does not exist");
    assert_eq!(
        get(p, "/kv/get?key=nope").await.expect_refusal(),
        "the key does not exist"
    );

    let del = post(p, "/kv/delete", &[("key", odd_key)]).await;
    assert_eq!(del.json(), json!({"success": "true", "value": "v2"}));
    assert_eq!(
        get(p, &path).await.expect_refusal(),
        "the key does not exist"
    );
    let del = post(p, "/kv/delete", &[("key", odd_key)]).await;
    assert_eq!(del.expect_refusal(), "the key does not exist");

    assert_eq!(
        get(p, "/kvman/countkey").await.json(),
        json!({"result": "1"})
    );
    assert_eq!(get(p, "/kvman/dump").await.json(), json!({"k1": "updated"}));
    let status = get(p, "/kvman/status").await.json();
    assert_eq!(status["role"], "primary");
    assert_eq!(status["state"], "sync");
    assert_eq!(status["keys"], 1);
    assert_eq!(status["http"], p.to_string());

    // The backup: it already applied every acknowledged write, serves reads, refuses writes.
    assert_eq!(
        get(b, "/kv/get?key=k1").await.json(),
        json!({"success": "true", "value": "updated"})
    );
    let refused = post(b, "/kv/insert", &[("key", "b1"), ("value", "x")]).await;
    let reason = refused.expect_refusal();
    assert!(
        reason.starts_with("unavailable:") && reason.contains("backup"),
        "{reason}"
    );
    let refused = post(b, "/kv/delete", &[("key", "k1")]).await;
    assert!(refused.expect_refusal().starts_with("unavailable:"));
    assert_eq!(
        get(b, "/kvman/countkey").await.json(),
        json!({"result": "1"})
    );
    assert_eq!(get(b, "/kvman/dump").await.json(), json!({"k1": "updated"}));
    assert_eq!(get(b, "/kvman/status").await.json()["role"], "backup");

    // HTTP and QUIC see the same store.
    let quic = pair.primary_client().await;
    assert_eq!(
        quic.get("k1").await.expect("quic get"),
        Some(Bytes::from("updated"))
    );
    assert_eq!(quic.get("b1").await.expect("quic get"), None);
    pair.assert_converged().await;

    // Shutdown over HTTP: answered, then the process exits cleanly.
    let bye = get(p, "/kvman/shutdown").await;
    assert_eq!(bye.json(), json!({"success": "true"}));
    let primary = pair.primary.as_mut().expect("primary");
    let exit = primary.wait_exit(Duration::from_secs(15));
    assert!(exit.success(), "the primary exited with {exit:?}");
    assert!(
        TcpStream::connect(p).await.is_err(),
        "the gateway's port is closed after shutdown"
    );
}

/// The classic server read parameters as Go's `FormValue` does: from a form body or the query
/// string, whatever the method; classic clients (its tester among them) send `POST /kv/get` with a
/// form body, and writes with the fields in the query string.
#[tokio::test]
async fn parameters_are_read_like_go_form_value() {
    let pair = Pair::start_with_http(&[]).await;
    let p = pair.primary_http.expect("primary http");
    let b = pair.backup_http.expect("backup http");

    // A write with its fields in the query string and no body.
    let ok = request(
        p,
        Method::POST,
        "/kv/insert?key=q&value=from-query",
        None,
        String::new(),
    )
    .await;
    assert_eq!(ok.json(), json!({"success": "true"}));
    // A write with one field in each place.
    let ok = request(
        p,
        Method::POST,
        "/kv/insert?value=mixed",
        Some(FORM),
        "key=m".into(),
    )
    .await;
    assert_eq!(ok.json(), json!({"success": "true"}));
    // The body wins over the query string, as in Go.
    let ok = request(
        p,
        Method::POST,
        "/kv/update?key=q&value=loser",
        Some(FORM),
        "value=winner".into(),
    )
    .await;
    assert_eq!(ok.json(), json!({"success": "true"}));

    // Reads: POST with a form body, POST with a query string, GET with a query string, on both
    // servers.
    for server in [p, b] {
        let read = post(server, "/kv/get", &[("key", "q")]).await;
        assert_eq!(read.json(), json!({"success": "true", "value": "winner"}));
        let read = request(
            server,
            Method::POST,
            "/kv/get?key=m",
            Some(FORM),
            String::new(),
        )
        .await;
        assert_eq!(read.json(), json!({"success": "true", "value": "mixed"}));
        let read = get(server, "/kv/get?key=m").await;
        assert_eq!(read.json(), json!({"success": "true", "value": "mixed"}));
        let missing = post(server, "/kv/get", &[("key", "absent")]).await;
        assert_eq!(missing.expect_refusal(), "the key does not exist");
        assert_eq!(
            post(server, "/kvman/countkey", &[]).await.json(),
            json!({"result": "2"})
        );
        assert_eq!(
            post(server, "/kvman/dump", &[]).await.json(),
            json!({"m": "mixed", "q": "winner"})
        );
    }

    // A GET must not write; a GET's body is not read (as in Go).
    let wrong = get(p, "/kv/insert?key=g&value=1").await;
    assert_eq!(wrong.allow.as_deref(), Some("POST"));
    assert_eq!(wrong.status, 405);
    let ignored = request(p, Method::GET, "/kv/get", Some(FORM), "key=q".into()).await;
    assert!(
        ignored
            .expect_error(400, "bad_request")
            .contains("missing field `key`"),
        "{ignored:?}"
    );
    // A field given twice in one place is refused rather than guessed.
    let twice = post(p, "/kv/get", &[("key", "q"), ("key", "m")]).await;
    assert!(twice
        .expect_error(400, "bad_request")
        .contains("more than once"));
}

#[tokio::test]
async fn with_the_backup_killed_writes_are_refused_with_a_reason_and_reads_served() {
    let mut pair = Pair::start_with_http(&[]).await;
    let p = pair.primary_http.expect("primary http");
    assert_eq!(
        post(p, "/kv/insert", &[("key", "a"), ("value", "1")])
            .await
            .json(),
        json!({"success": "true"})
    );
    pair.kill_backup();
    wait_state(pair.primary_addr, pair.certs.path(), "cold_start").await;

    let before = scrape(p).await;
    for (path, fields) in [
        ("/kv/insert", vec![("key", "b"), ("value", "2")]),
        ("/kv/update", vec![("key", "a"), ("value", "9")]),
        ("/kv/delete", vec![("key", "a")]),
    ] {
        let reason = post(p, path, &fields).await.expect_refusal();
        assert!(
            reason.starts_with("unavailable:") && reason.contains("not in sync"),
            "{path}: {reason}"
        );
    }
    assert_eq!(
        get(p, "/kv/get?key=a").await.json(),
        json!({"success": "true", "value": "1"}),
        "reads are still served, and the refused update never took effect"
    );
    assert_eq!(
        get(p, "/kv/get?key=b").await.expect_refusal(),
        "the key does not exist",
        "a refused insert never takes effect"
    );
    assert_eq!(
        get(p, "/kvman/countkey").await.json(),
        json!({"result": "1"})
    );

    let after = scrape(p).await;
    for op in ["insert", "update", "delete"] {
        let delta = after.value("quickv_ops_total", &[("op", op), ("result", "unavailable")])
            - before.value("quickv_ops_total", &[("op", op), ("result", "unavailable")]);
        assert_eq!(delta, 1.0, "{op}");
    }
    assert_eq!(
        after.value("quickv_replication_state", &[("state", "cold_start")]),
        1.0
    );
    assert_eq!(
        after.value("quickv_replication_state", &[("state", "sync")]),
        0.0
    );
    assert_eq!(after.sum("quickv_replication_state"), 1.0, "one-hot");
    assert_eq!(after.value("quickv_replication_link_up", &[]), 0.0);
}

#[tokio::test]
async fn malformed_and_oversized_requests_get_json_errors_and_the_server_carries_on() {
    let certs = fresh_certs();
    let http = free_tcp_addr();
    let http_arg = http.to_string();
    let mut server = ServerProc::start(
        "standalone",
        free_addr(),
        certs.path(),
        &[
            "--http",
            &http_arg,
            "--max-key",
            "64",
            "--max-value",
            "1024",
        ],
    );
    let mut four_xx = 0.0;
    let mut expect = |answer: Answer, status: u16, code: &str| -> String {
        four_xx += 1.0;
        answer.expect_error(status, code)
    };

    let r = expect(get(http, "/kv/get?key=%zz").await, 400, "bad_request");
    assert!(r.contains("percent escape"), "{r}");
    let r = expect(get(http, "/kv/get").await, 400, "bad_request");
    assert!(r.contains("missing field `key`"), "{r}");
    let r = expect(get(http, "/kv/get?key=a&key=b").await, 400, "bad_request");
    assert!(r.contains("more than once"), "{r}");
    let r = expect(
        post(http, "/kv/insert", &[("key", "k")]).await,
        400,
        "bad_request",
    );
    assert!(r.contains("missing field `value`"), "{r}");
    let bad_body = request(
        http,
        Method::POST,
        "/kv/delete",
        Some(FORM),
        "key=%4".into(),
    )
    .await;
    expect(bad_body, 400, "bad_request");
    let text = request(
        http,
        Method::POST,
        "/kv/delete",
        Some("text/plain"),
        "key=a".into(),
    )
    .await;
    expect(text, 415, "unsupported_media_type");

    let wrong = get(http, "/kv/insert").await;
    assert_eq!(wrong.allow.as_deref(), Some("POST"));
    expect(wrong, 405, "method_not_allowed");
    let wrong = request(http, Method::PUT, "/kvman/countkey", None, String::new()).await;
    assert_eq!(wrong.allow.as_deref(), Some("GET, POST"));
    expect(wrong, 405, "method_not_allowed");
    expect(get(http, "/kv/nothing").await, 404, "not_found");

    // Limits: the boundary is accepted, one byte more is refused before routing.
    let at_limit = "v".repeat(1024);
    let ok = post(http, "/kv/insert", &[("key", "big"), ("value", &at_limit)]).await;
    assert_eq!(ok.json(), json!({"success": "true"}));
    let over = "v".repeat(1025);
    let r = expect(
        post(http, "/kv/insert", &[("key", "big2"), ("value", &over)]).await,
        413,
        "value_too_large",
    );
    assert!(r.contains("1025") && r.contains("1024"), "{r}");
    let long_key = "k".repeat(65);
    expect(
        post(http, "/kv/update", &[("key", &long_key), ("value", "v")]).await,
        413,
        "key_too_large",
    );
    expect(
        get(http, &format!("/kv/get?key={long_key}")).await,
        413,
        "key_too_large",
    );
    let huge_query = format!("/kv/get?key={}", "q".repeat(3 * 64 + 4096 + 1));
    expect(get(http, &huge_query).await, 414, "too_large");

    // A body declared larger than the cap is refused before it is sent.
    let (status, body) = raw(
        http,
        format!("POST /kv/insert HTTP/1.1\r\nHost: {http}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000000000\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    four_xx += 1.0;
    assert_eq!(status, 413, "{body}");
    let doc: Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(doc["error"], "too_large");
    // Not HTTP at all: hyper refuses it (a bare 400, below our JSON layer), nothing breaks.
    let (status, _) = raw(http, b"HELLO THERE\r\n\r\n").await;
    assert_eq!(status, 400);

    // Still serving, with exactly the one accepted write, and every refusal counted.
    assert_eq!(
        get(http, "/kvman/countkey").await.json(),
        json!({"result": "1"})
    );
    let page = scrape(http).await;
    assert_eq!(
        page.value("quickv_http_responses_total", &[("class", "4xx")]),
        four_xx
    );
    assert_eq!(
        page.value("quickv_ops_total", &[("op", "insert"), ("result", "ok")]),
        1.0
    );
    assert_eq!(
        page.sum("quickv_ops_total"),
        2.0,
        "refused requests never reach the router: one insert, one count"
    );
    assert_eq!(page.value("quickv_store_bytes", &[]), (3 + 1024) as f64);
    assert!(page.value("process_resident_memory_bytes", &[]) > 1e6);
    assert!(
        !page
            .samples
            .keys()
            .any(|k| k.starts_with("quickv_replication")),
        "a standalone server has no replication metrics"
    );

    let bye = get(http, "/kvman/shutdown").await;
    assert_eq!(bye.json(), json!({"success": "true"}));
    let exit = server.wait_exit(Duration::from_secs(15));
    assert!(exit.success(), "exited with {exit:?}");
}

#[tokio::test]
async fn metrics_parse_and_count_quic_and_http_traffic_exactly() {
    let pair = Pair::start_with_http(&[]).await;
    let p = pair.primary_http.expect("primary http");
    let b = pair.backup_http.expect("backup http");
    let quic = pair.primary_client().await;
    let before = scrape(p).await;

    const HTTP_INSERTS: usize = 7;
    const QUIC_INSERTS: usize = 5;
    for i in 0..HTTP_INSERTS {
        let r = post(
            p,
            "/kv/insert",
            &[("key", &format!("h{i}")), ("value", "v")],
        )
        .await;
        assert_eq!(r.json(), json!({"success": "true"}));
    }
    for i in 0..QUIC_INSERTS {
        quic.insert(format!("q{i}"), "v")
            .await
            .expect("quic insert");
    }
    post(p, "/kv/insert", &[("key", "h0"), ("value", "v")])
        .await
        .expect_refusal();
    quic.get("h1").await.expect("get");
    quic.get("missing").await.expect("get");

    let after = scrape(p).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    let total = (HTTP_INSERTS + QUIC_INSERTS) as f64;
    assert_eq!(
        delta("quickv_ops_total", &[("op", "insert"), ("result", "ok")]),
        total
    );
    assert_eq!(
        delta(
            "quickv_ops_total",
            &[("op", "insert"), ("result", "exists")]
        ),
        1.0
    );
    assert_eq!(
        delta("quickv_ops_total", &[("op", "get"), ("result", "ok")]),
        1.0
    );
    assert_eq!(
        delta(
            "quickv_ops_total",
            &[("op", "get"), ("result", "not_found")]
        ),
        1.0
    );
    assert_eq!(
        delta("quickv_op_duration_seconds_count", &[("op", "insert")]),
        total + 1.0
    );
    assert!(delta("quickv_op_duration_seconds_sum", &[("op", "insert")]) > 0.0);
    assert_eq!(
        delta(
            "quickv_op_duration_seconds_bucket",
            &[("op", "insert"), ("le", "+Inf")]
        ),
        total + 1.0
    );
    assert_eq!(after.value("quickv_store_keys", &[]), total);
    assert_eq!(after.value("quickv_store_bytes", &[]), total * 3.0);
    assert!(
        after.value("quickv_connections", &[]) >= 1.0,
        "the QUIC client is connected"
    );
    assert!(
        after.value("quickv_streams", &[]) >= 1.0,
        "and holds a stream open"
    );
    assert!(
        after.value("quickv_http_connections", &[]) >= 1.0,
        "this scrape"
    );
    assert!(after.value("quickv_ops_total", &[("op", "hello"), ("result", "ok")]) >= 1.0);
    assert_eq!(
        after.value("quickv_replication_state", &[("state", "sync")]),
        1.0
    );
    assert_eq!(after.value("quickv_replication_link_up", &[]), 1.0);
    assert_eq!(after.value("quickv_replication_lag", &[]), 0.0);
    assert_eq!(
        after.sum("quickv_replication_lane_offset") - before.sum("quickv_replication_lane_offset"),
        after.sum("quickv_replication_lane_acked") - before.sum("quickv_replication_lane_acked"),
        "every offset sent was acknowledged"
    );
    assert!(
        after.sum("quickv_replication_lane_acked") - before.sum("quickv_replication_lane_acked")
            >= total,
        "each replicated write took a lane offset"
    );
    assert!(after.value("process_resident_memory_bytes", &[]) > 1e6);

    let backup = scrape(b).await;
    assert_eq!(
        backup.value("quickv_replication_state", &[("state", "sync")]),
        1.0
    );
    assert_eq!(backup.value("quickv_store_keys", &[]), total);
    assert_eq!(
        backup.value("quickv_replication_digest_mismatches_total", &[]),
        0.0
    );
    assert_eq!(
        backup.value(
            "quickv_info",
            &[
                ("role", "backup"),
                ("version", env!("CARGO_PKG_VERSION")),
                ("run_id", backup_run_id(b).await.as_str())
            ]
        ),
        1.0
    );
    for result in [
        "ok",
        "not_found",
        "exists",
        "unavailable",
        "indeterminate",
        "error",
    ] {
        assert_eq!(
            backup.value("quickv_ops_total", &[("op", "insert"), ("result", result)]),
            0.0,
            "replicated writes are not client requests on the backup"
        );
    }
}

/// The backup's run id, from its status page.
async fn backup_run_id(addr: SocketAddr) -> String {
    get(addr, "/kvman/status").await.json()["run_id"]
        .as_str()
        .expect("run_id")
        .to_string()
}

#[tokio::test]
async fn the_tls_gateway_demands_a_client_certificate() {
    let certs = fresh_certs();
    let http = free_tcp_addr();
    let http_arg = http.to_string();
    let _server = ServerProc::start(
        "standalone",
        free_addr(),
        certs.path(),
        &["--http", &http_arg, "--http-tls"],
    );
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let dir = certs.path();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(dir.join("ca.pem")).expect("ca.pem") {
        roots.add(cert.expect("ca cert")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = || {
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots.clone())
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("client.pem"))
        .expect("client.pem")
        .collect::<Result<_, _>>()
        .expect("client cert");
    let key = PrivateKeyDer::from_pem_file(dir.join("client.key")).expect("client.key");
    let with_cert = builder()
        .with_client_auth_cert(chain, key)
        .expect("client auth");
    let without_cert = builder().with_no_client_auth();

    let call = |config: rustls::ClientConfig| async move {
        let tcp = TcpStream::connect(http).await.expect("connect");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        try_send(
            tls,
            "localhost",
            Method::GET,
            "/kvman/countkey",
            None,
            String::new(),
        )
        .await
    };
    let answer = call(with_cert)
        .await
        .expect("a client certificate is accepted");
    assert_eq!(answer.json(), json!({"result": "0"}));
    assert!(
        call(without_cert).await.is_err(),
        "a client without a certificate must be refused"
    );
    // Plain HTTP to the TLS port gets nothing useful either.
    let tcp = TcpStream::connect(http).await.expect("connect");
    let plain = try_send(
        tcp,
        "x",
        Method::GET,
        "/kvman/countkey",
        None,
        String::new(),
    )
    .await;
    assert!(plain.is_err(), "{plain:?}");
}

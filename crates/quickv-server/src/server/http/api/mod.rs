//! The classic API: one HTTP request → one [`Op`] → [`router::handle`] → one JSON answer.
//!
//! Everything an operation can do goes through the router, exactly as a QUIC request does, so the
//! answers mean the same: the backup refuses writes, a restarted server refuses reads until it has
//! synced, a write on the primary is answered only after the backup's ack (or `indeterminate` if
//! the link fails first). This module only translates.
//!
//! HTTP status codes say whether the request was *understood*; the JSON says how it *ended*. A
//! refusal by the store or the pair (exists, not found, unavailable, indeterminate) is a 200 with
//! `"success":"false"` and a `"reason"`, as the classic API answered; a request we could not make
//! sense of is a 4xx with `"error"` (a stable code) and `"reason"`; a server fault is a 500.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};

use tokio_util::task::task_tracker::TaskTrackerToken;

mod answer;
mod dump;

pub use answer::ApiBody;
use answer::{bad_form, success, ApiResponse, Count, Verdict, JSON};

use crate::server::http::form::{Form, FormError};
use crate::server::http::metrics;
use crate::server::http::Release;
use crate::server::metrics::{OpKind, Outcome};
use crate::server::node::{Node, Stats};
use crate::server::router::{self, Handled};
use quickv_proto::{ErrorCode, Limits, Op, Reply};

/// Room in a form body beyond its key and value, in bytes: field names, `=` and `&`, and any
/// extra fields a tool sends along.
pub const FORM_SLACK_BYTES: usize = 4 * 1024;
/// Worst-case growth of percent-encoding: every byte as `%XX`.
const PERCENT_ENCODING_FACTOR: usize = 3;

/// The largest form body accepted: a key and a value at their limits, percent-encoded at worst,
/// plus [`FORM_SLACK_BYTES`]. Anything a QUIC client may store can be stored through a form.
pub fn max_body(limits: &Limits) -> usize {
    limits
        .max_key
        .saturating_add(limits.max_value)
        .saturating_mul(PERCENT_ENCODING_FACTOR)
        .saturating_add(FORM_SLACK_BYTES)
}

/// The longest query string accepted (`/kv/get?key=…`): a key at its limit, percent-encoded.
pub fn max_query(limits: &Limits) -> usize {
    limits
        .max_key
        .saturating_mul(PERCENT_ENCODING_FACTOR)
        .saturating_add(FORM_SLACK_BYTES)
}

/// Longest the answer to `/kvman/shutdown` waits, beyond the drain timeout, for the server to
/// release its ports (it then answers anyway; the server logs why the ports are still held).
pub const PORT_RELEASE_WAIT: Duration = Duration::from_secs(10);

/// Answers one HTTP request; never fails (every problem is an answer). `in_flight` keeps the
/// server's drain waiting for this answer; a shutdown's answer instead lets the drain go on and
/// waits until the server has released its ports (see [`crate::server::http::Release`]).
pub async fn respond(
    node: &Arc<Node>,
    req: Request<Incoming>,
    in_flight: TaskTrackerToken,
    release: &Release,
) -> Response<ApiBody> {
    let shutdown = req.uri().path() == "/kvman/shutdown";
    let answer = route(node, req).await;
    if shutdown && answer.status == StatusCode::OK && node.shutdown.is_cancelled() {
        drop(in_flight);
        let limit = node.config.drain_timeout.saturating_add(PORT_RELEASE_WAIT);
        let _ = tokio::time::timeout(limit, release.ports_free.cancelled()).await;
    }
    let class = usize::from(answer.status.as_u16() / 100).saturating_sub(1);
    if let Some(counter) = node.stats.http_responses.get(class) {
        Stats::bump(counter);
    }
    answer.into_response()
}

/// Dispatches on the path, then the method.
///
/// Parameters are read the way the classic server read them (Go's `FormValue`): from a form body
/// or the query string, the body winning when both name a field. Reads (`/kv/get`, `/kvman/*`,
/// `/metrics`) take GET or POST; writes take POST (a GET must not change data: a crawler or a
/// browser's prefetch would).
async fn route(node: &Arc<Node>, req: Request<Incoming>) -> ApiResponse {
    let path = req.uri().path().to_string();
    let (write, read) = (Allowed::Post, Allowed::GetOrPost);
    match path.as_str() {
        "/kv/insert" => {
            with_params(node, req, write, |p| async move {
                write_op(node, &p, Write::Insert).await
            })
            .await
        }
        "/kv/update" => {
            with_params(node, req, write, |p| async move {
                write_op(node, &p, Write::Update).await
            })
            .await
        }
        "/kv/delete" => {
            with_params(node, req, write, |p| async move {
                write_op(node, &p, Write::Delete).await
            })
            .await
        }
        "/kv/get" => {
            with_params(node, req, read, |p| async move { read_key(node, &p).await }).await
        }
        "/kvman/countkey" => {
            with_params(node, req, read, |_| async move {
                match call(node, Op::Count).await {
                    Routed::Reply(Reply::Count(n)) => ApiResponse::json(&Count {
                        result: n.to_string(),
                    }),
                    other => refusal(other),
                }
            })
            .await
        }
        "/kvman/dump" => {
            with_params(node, req, read, |_| async move {
                match call(node, Op::Dump).await {
                    Routed::Dump => match node.dump_slots.clone().try_acquire_owned() {
                        Ok(slot) => {
                            ApiResponse::streamed(dump::DumpBody::start(node.clone(), slot))
                        }
                        Err(_) => refusal(Routed::Reply(Reply::Unavailable(format!(
                            "too many dumps in progress (max_dumps {}); retry later",
                            node.config.max_dumps
                        )))),
                    },
                    other => refusal(other),
                }
            })
            .await
        }
        "/kvman/status" => {
            with_params(node, req, read, |_| async move {
                match call(node, Op::Status).await {
                    // Already a JSON document: sent as the router wrote it.
                    Routed::Reply(Reply::Status(text)) => ApiResponse {
                        status: StatusCode::OK,
                        content_type: JSON,
                        body: Bytes::from(text),
                        allow: None,
                        stream: None,
                    },
                    other => refusal(other),
                }
            })
            .await
        }
        "/kvman/shutdown" => {
            with_params(node, req, read, |_| async move {
                match call(node, Op::Shutdown).await {
                    Routed::Shutdown => {
                        node.shutdown.cancel();
                        success()
                    }
                    other => refusal(other),
                }
            })
            .await
        }
        "/metrics" => {
            with_params(node, req, read, |_| async move {
                ApiResponse {
                    status: StatusCode::OK,
                    content_type: metrics::CONTENT_TYPE,
                    body: Bytes::from(metrics::render(node)),
                    allow: None,
                    stream: None,
                }
            })
            .await
        }
        path => ApiResponse::error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no endpoint {path}; see docs/http.md"),
        ),
    }
}

/// The methods an endpoint serves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Allowed {
    /// Writes.
    Post,
    /// Reads and management: what the classic server served to either.
    GetOrPost,
}

impl Allowed {
    /// The largest form body an endpoint reads: a write's key and value ([`max_body`]); for a
    /// read, what its query string may hold ([`max_query`]): a read carries no value, so a larger
    /// body is refused before it is buffered.
    fn body_cap(self, limits: &Limits) -> usize {
        match self {
            Allowed::Post => max_body(limits),
            Allowed::GetOrPost => max_query(limits),
        }
    }

    fn admits(self, method: &Method) -> bool {
        match self {
            Allowed::Post => method == Method::POST,
            Allowed::GetOrPost => method == Method::GET || method == Method::POST,
        }
    }

    /// The `Allow` header of a 405.
    fn header(self) -> &'static str {
        match self {
            Allowed::Post => "POST",
            Allowed::GetOrPost => "GET, POST",
        }
    }
}

/// A request's parameters: the form body's fields, then the query string's.
#[derive(Debug, Default)]
pub struct Params {
    /// Fields of an `application/x-www-form-urlencoded` POST body.
    body: Form,
    /// Fields of the query string.
    query: Form,
}

impl Params {
    /// Decodes the query string and, for a POST, the form body (at most `body_cap` bytes);
    /// bounded in size and time.
    async fn read(
        node: &Node,
        req: Request<Incoming>,
        body_cap: usize,
    ) -> Result<Params, ApiResponse> {
        let limits = node.config.limits;
        let query = req.uri().query().unwrap_or("");
        if query.len() > max_query(&limits) {
            return Err(ApiResponse::error(
                StatusCode::URI_TOO_LONG,
                "too_large",
                format!(
                    "query string of {} bytes exceeds the limit of {} bytes",
                    query.len(),
                    max_query(&limits)
                ),
            ));
        }
        let query = Form::parse(query.as_bytes()).map_err(bad_form)?;
        // As Go's ParseForm: a body is read for POST only (a GET's body is ignored).
        let body = if req.method() == Method::POST {
            form_body(node, req, body_cap).await?
        } else {
            Form::default()
        };
        Ok(Params { body, query })
    }

    /// The value of `name` from the body if it is there, else from the query string (as Go's
    /// `FormValue`); a name given twice in the same place is an error rather than a guess.
    pub fn optional(&self, name: &'static str) -> Result<Option<Bytes>, FormError> {
        match self.body.optional(name)? {
            Some(value) => Ok(Some(value)),
            None => self.query.optional(name),
        }
    }

    /// The value of `name`, which must be present.
    pub fn required(&self, name: &'static str) -> Result<Bytes, FormError> {
        self.optional(name)?.ok_or(FormError::Missing(name))
    }
}

/// Checks the method, reads the parameters, then runs `serve` with them.
async fn with_params<'n, F, Fut>(
    node: &'n Node,
    req: Request<Incoming>,
    allowed: Allowed,
    serve: F,
) -> ApiResponse
where
    F: FnOnce(Params) -> Fut,
    Fut: std::future::Future<Output = ApiResponse> + 'n,
{
    if !allowed.admits(req.method()) {
        let mut answer = ApiResponse::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!(
                "{} {} is not served; use {}",
                req.method(),
                req.uri().path(),
                allowed.header()
            ),
        );
        answer.allow = Some(allowed.header());
        return answer;
    }
    match Params::read(node, req, allowed.body_cap(&node.config.limits)).await {
        Ok(params) => serve(params).await,
        Err(answer) => answer,
    }
}

/// The write endpoints.
#[derive(Clone, Copy)]
enum Write {
    Insert,
    Update,
    Delete,
}

/// `POST /kv/insert|update|delete`.
async fn write_op(node: &Node, form: &Params, kind: Write) -> ApiResponse {
    let limits = node.config.limits;
    let fields = || -> Result<Op, ApiResponse> {
        let key = form.required("key").map_err(bad_form)?;
        check_key(&key, &limits)?;
        let value = |form: &Params| -> Result<Bytes, ApiResponse> {
            let value = form.required("value").map_err(bad_form)?;
            if value.len() > limits.max_value {
                return Err(ApiResponse::error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "value_too_large",
                    format!(
                        "value of {} bytes exceeds the limit of {} bytes",
                        value.len(),
                        limits.max_value
                    ),
                ));
            }
            Ok(value)
        };
        Ok(match kind {
            Write::Insert => Op::Insert {
                key,
                value: value(form)?,
            },
            Write::Update => Op::Update {
                key,
                value: value(form)?,
            },
            Write::Delete => Op::Delete { key },
        })
    };
    match fields() {
        Ok(op) => outcome(call(node, op).await),
        Err(answer) => answer,
    }
}

/// `GET|POST /kv/get` with `key`.
async fn read_key(node: &Node, params: &Params) -> ApiResponse {
    let key = match params.required("key") {
        Ok(key) => key,
        Err(e) => return bad_form(e),
    };
    if let Err(answer) = check_key(&key, &node.config.limits) {
        return answer;
    }
    outcome(call(node, Op::Get { key }).await)
}

/// Reads and decodes a form body, bounded in size (`cap`) and time (the idle timeout).
async fn form_body(node: &Node, req: Request<Incoming>, cap: usize) -> Result<Form, ApiResponse> {
    // Another media type is refused only if a body came with it (an empty POST with any
    // Content-Type carries its fields in the query string, which classic clients do).
    let wrong_type = req.headers().get(CONTENT_TYPE).and_then(|ct| {
        let form_type = ct
            .to_str()
            .ok()
            .and_then(|s| s.split(';').next())
            .map(str::trim);
        match form_type {
            Some(t) if t.eq_ignore_ascii_case("application/x-www-form-urlencoded") => None,
            _ => Some(ApiResponse::error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "expected an application/x-www-form-urlencoded body, got {}",
                    String::from_utf8_lossy(ct.as_bytes())
                ),
            )),
        }
    });
    let too_large = |n: u64| {
        ApiResponse::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("body of {n} bytes or more exceeds the limit of {cap} bytes"),
        )
    };
    let mut body = req.into_body();
    // A declared Content-Length over the cap is refused before a byte of the body is read.
    let declared = body.size_hint().lower();
    if declared > u64::try_from(cap).unwrap_or(u64::MAX) {
        return Err(too_large(declared));
    }
    let deadline = tokio::time::Instant::now() + node.config.idle_timeout;
    let mut buf = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(ApiResponse::error(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    "the request body did not arrive in time".into(),
                ))
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ApiResponse::error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("cannot read the request body: {e}"),
                ))
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            let total = buf.len().saturating_add(data.len());
            if total > cap {
                return Err(too_large(u64::try_from(total).unwrap_or(u64::MAX)));
            }
            buf.extend_from_slice(&data);
        }
    }
    match wrong_type {
        Some(refused) if !buf.is_empty() => Err(refused),
        _ => Form::parse(&buf).map_err(bad_form),
    }
}

/// Refuses a key over `max_key`, as the QUIC decoder does.
fn check_key(key: &Bytes, limits: &Limits) -> Result<(), ApiResponse> {
    if key.len() > limits.max_key {
        return Err(ApiResponse::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "key_too_large",
            format!(
                "key of {} bytes exceeds the limit of {} bytes",
                key.len(),
                limits.max_key
            ),
        ));
    }
    Ok(())
}

/// What the router said, once known.
enum Routed {
    /// An answer (for a replicated write: after the ack, or `Indeterminate`).
    Reply(Reply),
    /// A dump is allowed (the caller streams it).
    Dump,
    /// The shutdown was accepted; the caller starts it after answering.
    Shutdown,
}

/// Routes one op and waits for its answer, recording it in the metrics like a QUIC request.
async fn call(node: &Node, op: Op) -> Routed {
    Stats::bump(&node.stats.requests);
    let kind = OpKind::of(&op);
    let started = Instant::now();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let req = quickv_proto::Request {
        id: 0,
        op,
        session: None,
    };
    let to = || crate::replication::oneshot::reply_to(tx);
    let routed = match router::handle(node, req, to) {
        Handled::Now(reply) => Routed::Reply(reply),
        Handled::Later => Routed::Reply(
            rx.await
                .unwrap_or_else(|_| Reply::Indeterminate(quickv_core::reply::LOST.into())),
        ),
        Handled::Dump => Routed::Dump,
        Handled::Shutdown => Routed::Shutdown,
    };
    match &routed {
        Routed::Reply(reply) => node.metrics.record(kind, reply, started.elapsed()),
        Routed::Dump | Routed::Shutdown => {
            node.metrics
                .record_outcome(kind, Outcome::Ok, started.elapsed())
        }
    }
    routed
}

/// The JSON of a key-value operation's answer.
fn outcome(routed: Routed) -> ApiResponse {
    match routed {
        Routed::Reply(Reply::Ok) => success(),
        Routed::Reply(Reply::Value(v)) => ApiResponse::json(&Verdict {
            value: Some(&String::from_utf8_lossy(&v)),
            ..Verdict::TRUE
        }),
        other => refusal(other),
    }
}

/// The JSON of a refusal, or of an answer that does not fit the endpoint (a bug: 500).
fn refusal(routed: Routed) -> ApiResponse {
    let refused = |reason: String| {
        ApiResponse::json(&Verdict {
            reason: Some(&reason),
            ..Verdict::FALSE
        })
    };
    match routed {
        Routed::Reply(Reply::NotFound) => refused("the key does not exist".into()),
        Routed::Reply(Reply::Exists) => refused("the key already exists".into()),
        Routed::Reply(Reply::Unavailable(why)) => refused(format!("unavailable: {why}")),
        Routed::Reply(Reply::Indeterminate(why)) => refused(format!("indeterminate: {why}")),
        Routed::Reply(Reply::Error { code, message }) => {
            let status = match code {
                ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::BAD_REQUEST,
            };
            ApiResponse::error(status, "server_error", format!("{code}: {message}"))
        }
        Routed::Reply(_) | Routed::Dump | Routed::Shutdown => ApiResponse::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the router gave an answer this endpoint does not expect".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    #[test]
    fn caps_cover_a_fully_escaped_key_and_value() {
        let limits = Limits::new(10, 100);
        assert_eq!(max_body(&limits), 330 + FORM_SLACK_BYTES);
        assert_eq!(max_query(&limits), 30 + FORM_SLACK_BYTES);
        assert_eq!(max_body(&Limits::new(usize::MAX, 1)), usize::MAX);
    }

    #[test]
    fn refusals_keep_the_classic_shape() {
        let body = |a: ApiResponse| serde_json::from_slice::<Value>(&a.body).expect("json");
        let a = refusal(Routed::Reply(Reply::Indeterminate("link lost".into())));
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(
            std::str::from_utf8(&a.body).expect("utf-8"),
            r#"{"success":"false","reason":"indeterminate: link lost"}"#,
            "success comes first, as in the classic API"
        );
        let a = outcome(Routed::Reply(Reply::Value(Bytes::from_static(b"v"))));
        assert_eq!(body(a), json!({"success": "true", "value": "v"}));
        let a = refusal(Routed::Shutdown);
        assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
        let a = refusal(Routed::Reply(Reply::Error {
            code: ErrorCode::UnsupportedVersion,
            message: "x".into(),
        }));
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
    }
}

//! Role checks on the gateway: a request is mapped to the operation it would become and refused
//! with `403 forbidden` before [`super::api`] sees it when the connection's role does not allow it
//! (the same table as over QUIC, [`crate::server::auth::required`]). Paths that are no operation
//! (`/metrics`, unknown paths) are left to the API, which needs no more than `read` for them.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};

use crate::pki::Access;
use crate::server::auth;
use crate::server::metrics::OpKind;
use crate::server::node::{Node, Stats};
use quickv_proto::{Op, Reply};

/// Index of the 4xx class in [`crate::server::node::Stats::http_responses`].
const CLASS_4XX: usize = 3;

/// The `403` answer when `access` may not do what `req` asks; `None` to let the request through.
/// A refusal is counted like one over QUIC (`forbidden` in status, `result="forbidden"` in
/// `/metrics`).
pub fn refusal<B>(node: &Node, access: Access, req: &Request<B>) -> Option<Response<Full<Bytes>>> {
    let op = operation(req.uri().path())?;
    let reply = auth::refusal(access, &op)?;
    node.security.count_forbidden();
    node.metrics.record(OpKind::of(&op), &reply, Duration::ZERO);
    if let Some(counter) = node.stats.http_responses.get(CLASS_4XX) {
        Stats::bump(counter);
    }
    let reason = match reply {
        Reply::Error { message, .. } => message,
        _ => "forbidden".into(),
    };
    let body = serde_json::json!({ "error": "forbidden", "reason": reason }).to_string();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::FORBIDDEN;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Some(resp)
}

/// The operation a path stands for (its arguments do not matter for the role check).
fn operation(path: &str) -> Option<Op> {
    let key = Bytes::new;
    Some(match path {
        "/kv/insert" => Op::Insert {
            key: key(),
            value: key(),
        },
        "/kv/update" => Op::Update {
            key: key(),
            value: key(),
        },
        "/kv/delete" => Op::Delete { key: key() },
        "/kv/get" => Op::Get { key: key() },
        "/kvman/countkey" => Op::Count,
        "/kvman/dump" => Op::Dump,
        "/kvman/status" => Op::Status,
        "/kvman/shutdown" => Op::Shutdown,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_api_path_maps_to_its_operation() {
        for (path, name) in [
            ("/kv/insert", "insert"),
            ("/kv/update", "update"),
            ("/kv/delete", "delete"),
            ("/kv/get", "get"),
            ("/kvman/countkey", "count"),
            ("/kvman/dump", "dump"),
            ("/kvman/status", "status"),
            ("/kvman/shutdown", "shutdown"),
        ] {
            assert_eq!(operation(path).map(|op| op.name()), Some(name), "{path}");
        }
        assert!(operation("/metrics").is_none());
    }
}

//! Operations over the HTTP gateway (`quickv test --via http`): the same judge, with every request
//! and the final dumps sent as the classic API's clients send them, so the gateway is held to the
//! same model as QUIC.
//!
//! Each request opens its own TCP connection (as the classic tester's clients do) and sends a
//! form-encoded POST, through the tools' one HTTP client ([`crate::http`]). The JSON answer maps
//! onto [`Answer`]: `success` `"true"` is `ok` or the value; a refusal's `reason` says `exists`,
//! `not found`, `unavailable: …` or `indeterminate: …`; anything else is an error. A connection
//! that fails before the request was written is `no connection`; one that fails after is
//! `indeterminate` for a write (it may have been applied) and `no connection` for a read.

use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use serde_json::Value;

use crate::http::{self, encode, Failure, FORM};
use crate::tester::judge::Answer;
use crate::tester::script::KvOp;

/// Sends `op` to the gateway at `addr` and waits up to `timeout` for the answer.
pub async fn call(addr: &str, op: &KvOp, timeout: Duration) -> Answer {
    let (path, form) = request_of(op);
    match tokio::time::timeout(timeout, post(addr, path, form)).await {
        Err(_) => Answer::no_answer_within(timeout),
        Ok(Err(Failure::NotSent(why))) => Answer::Unreachable(why),
        Ok(Err(Failure::Lost(why))) if op.is_write() => Answer::Indeterminate(why),
        Ok(Err(Failure::Lost(why))) => Answer::Unreachable(why),
        Ok(Ok((status, body))) => answer_of(op, status, &body),
    }
}

/// `POST /kvman/dump` on the gateway at `addr`: every pair, or the failure as an answer.
pub async fn dump(addr: &str, timeout: Duration) -> Result<Vec<(Bytes, Bytes)>, Answer> {
    let (status, body) =
        match tokio::time::timeout(timeout, post(addr, "/kvman/dump", String::new())).await {
            Err(_) => return Err(Answer::no_answer_within(timeout)),
            Ok(Err(Failure::NotSent(why) | Failure::Lost(why))) => {
                return Err(Answer::Unreachable(why))
            }
            Ok(Ok(answer)) => answer,
        };
    dump_of(status, &body)
}

/// The endpoint and form body of an operation.
fn request_of(op: &KvOp) -> (&'static str, String) {
    let field = |name: &str, value: &str| format!("{name}={}", encode(value));
    match op {
        KvOp::Insert { key, value } => (
            "/kv/insert",
            format!("{}&{}", field("key", key), field("value", value)),
        ),
        KvOp::Update { key, value } => (
            "/kv/update",
            format!("{}&{}", field("key", key), field("value", value)),
        ),
        KvOp::Remove { key } => ("/kv/delete", field("key", key)),
        KvOp::Get { key } => ("/kv/get", field("key", key)),
    }
}

/// What an HTTP answer means for the judge.
fn answer_of(op: &KvOp, status: u16, body: &[u8]) -> Answer {
    let shown = || String::from_utf8_lossy(body).into_owned();
    let Ok(doc) = serde_json::from_slice::<Value>(body) else {
        return Answer::Error(format!("HTTP {status}, not JSON: {}", shown()));
    };
    if status != 200 {
        return Answer::Error(format!("HTTP {status}: {}", shown()));
    }
    let reason = doc.get("reason").and_then(Value::as_str).unwrap_or("");
    match (doc.get("success").and_then(Value::as_str), op) {
        (Some("true"), KvOp::Insert { .. } | KvOp::Update { .. }) => Answer::Ok,
        (Some("true"), KvOp::Remove { .. } | KvOp::Get { .. }) => {
            match doc.get("value").and_then(Value::as_str) {
                Some(value) => Answer::Value(Bytes::from(value.to_string())),
                None => Answer::Error(format!("success without a value: {}", shown())),
            }
        }
        (Some("false"), _) if reason == "the key already exists" => Answer::Exists,
        (Some("false"), _) if reason == "the key does not exist" => Answer::NotFound,
        (Some("false"), _) if reason.starts_with("unavailable:") => {
            Answer::Unavailable(reason.trim_start_matches("unavailable:").trim().into())
        }
        (Some("false"), _) if reason.starts_with("indeterminate:") => {
            Answer::Indeterminate(reason.trim_start_matches("indeterminate:").trim().into())
        }
        _ => Answer::Error(format!("unexpected answer: {}", shown())),
    }
}

/// The pairs of a `/kvman/dump` answer (one JSON object).
fn dump_of(status: u16, body: &[u8]) -> Result<Vec<(Bytes, Bytes)>, Answer> {
    let shown = || String::from_utf8_lossy(body).into_owned();
    let doc: Value = serde_json::from_slice(body)
        .map_err(|_| Answer::Error(format!("HTTP {status}, not JSON: {}", shown())))?;
    if status != 200 {
        return Err(Answer::Error(format!("HTTP {status}: {}", shown())));
    }
    // A refusal has only these fields (a table could hold a key named `success`, not all three
    // of a refusal's keys alone).
    let refusal = doc.as_object().is_some_and(|o| {
        o.keys()
            .all(|k| ["success", "reason", "error"].contains(&k.as_str()))
            && o.contains_key("reason")
    });
    if refusal && doc.get("success").and_then(Value::as_str) == Some("false") {
        let reason = doc.get("reason").and_then(Value::as_str).unwrap_or("");
        return Err(match reason.strip_prefix("unavailable:") {
            Some(why) => Answer::Unavailable(why.trim().into()),
            None => Answer::Error(shown()),
        });
    }
    let Value::Object(map) = doc else {
        return Err(Answer::Error(format!(
            "a dump that is not an object: {}",
            shown()
        )));
    };
    map.into_iter()
        .map(|(key, value)| match value {
            Value::String(v) => Ok((Bytes::from(key), Bytes::from(v))),
            other => Err(Answer::Error(format!(
                "key {key:?} holds {other}, not a string"
            ))),
        })
        .collect()
}

/// One form POST on a fresh connection: `(status, body)`.
async fn post(addr: &str, path: &str, form: String) -> Result<(u16, Vec<u8>), Failure> {
    let response = http::send(addr, Method::POST, path, Some(FORM), form).await?;
    Ok((response.status, response.body.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get() -> KvOp {
        KvOp::Get { key: "k".into() }
    }

    fn insert() -> KvOp {
        KvOp::Insert {
            key: "a b&c".into(),
            value: "100%".into(),
        }
    }

    #[test]
    fn operations_become_form_posts() {
        assert_eq!(
            request_of(&insert()),
            ("/kv/insert", "key=a%20b%26c&value=100%25".to_string())
        );
        assert_eq!(request_of(&get()), ("/kv/get", "key=k".to_string()));
        assert_eq!(
            request_of(&KvOp::Remove { key: "x".into() }).0,
            "/kv/delete"
        );
    }

    #[test]
    fn answers_map_onto_the_judges() {
        let ok = br#"{"success":"true"}"#;
        assert_eq!(answer_of(&insert(), 200, ok), Answer::Ok);
        let value = br#"{"success":"true","value":"v"}"#;
        assert_eq!(
            answer_of(&get(), 200, value),
            Answer::Value(Bytes::from("v"))
        );
        assert!(matches!(answer_of(&get(), 200, ok), Answer::Error(_)));
        let exists = br#"{"success":"false","reason":"the key already exists"}"#;
        assert_eq!(answer_of(&insert(), 200, exists), Answer::Exists);
        let missing = br#"{"success":"false","reason":"the key does not exist"}"#;
        assert_eq!(answer_of(&get(), 200, missing), Answer::NotFound);
        let busy = br#"{"success":"false","reason":"unavailable: backup down"}"#;
        assert_eq!(
            answer_of(&insert(), 200, busy),
            Answer::Unavailable("backup down".into())
        );
        let lost = br#"{"success":"false","reason":"indeterminate: link lost"}"#;
        assert_eq!(
            answer_of(&insert(), 200, lost),
            Answer::Indeterminate("link lost".into())
        );
        let bad = br#"{"success":"false","error":"bad_request","reason":"x"}"#;
        assert!(matches!(answer_of(&get(), 400, bad), Answer::Error(_)));
        assert!(matches!(
            answer_of(&get(), 200, b"<html>"),
            Answer::Error(_)
        ));
    }

    #[test]
    fn dumps_are_one_object_of_strings() {
        let entries = dump_of(200, br#"{"a":"1","b":"2"}"#).expect("a dump");
        assert_eq!(
            entries,
            vec![
                (Bytes::from("a"), Bytes::from("1")),
                (Bytes::from("b"), Bytes::from("2"))
            ]
        );
        assert!(matches!(
            dump_of(
                200,
                br#"{"success":"false","reason":"unavailable: not current"}"#
            ),
            Err(Answer::Unavailable(_))
        ));
        assert!(matches!(dump_of(200, br#"{"a":1}"#), Err(Answer::Error(_))));
        assert!(matches!(dump_of(200, b"[]"), Err(Answer::Error(_))));
    }
}

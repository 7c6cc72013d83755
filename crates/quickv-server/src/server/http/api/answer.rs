//! The documents the classic API answers with (`{"success":"true"}`, a value, a count, a dump,
//! an error) and the HTTP response that carries one.

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::Serialize;

use super::dump::DumpBody;
use crate::server::http::form::FormError;

/// The body of a gateway response: a document built whole, or a streamed dump.
pub type ApiBody = Either<Full<Bytes>, DumpBody>;

/// The content type of every answer but `/metrics`.
pub(super) const JSON: &str = "application/json";

/// `{"success":"true"}`.
pub(super) fn success() -> ApiResponse {
    ApiResponse::json(&Verdict::TRUE)
}

/// The classic answer document, fields in the classic order: `success` first, then whichever of
/// `value`, `error`, `reason` apply. `success` is the *string* `"true"`/`"false"`, as the classic
/// API had it.
#[derive(Serialize)]
pub(super) struct Verdict<'a> {
    /// `"true"` or `"false"`: a string, because classic clients compare it as one.
    pub(super) success: &'static str,
    /// The value read (get) or removed (delete).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) value: Option<&'a str>,
    /// A stable code for programs, on 4xx/5xx answers only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) error: Option<&'a str>,
    /// Why it failed, for humans.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) reason: Option<&'a str>,
}

impl Verdict<'_> {
    pub(super) const TRUE: Verdict<'static> = Verdict {
        success: "true",
        value: None,
        error: None,
        reason: None,
    };
    pub(super) const FALSE: Verdict<'static> = Verdict {
        success: "false",
        ..Verdict::TRUE
    };
}

/// `/kvman/countkey`: the count as a string, as the classic API had it.
#[derive(Serialize)]
pub(super) struct Count {
    /// The number of keys, in decimal.
    pub(super) result: String,
}

/// A 400 for a form or query string we could not read.
pub(super) fn bad_form(e: FormError) -> ApiResponse {
    ApiResponse::error(StatusCode::BAD_REQUEST, "bad_request", e.to_string())
}

/// A response about to be sent.
pub(super) struct ApiResponse {
    /// 200 whenever the request was understood (see the module docs).
    pub(super) status: StatusCode,
    /// JSON everywhere but `/metrics`.
    pub(super) content_type: &'static str,
    /// The encoded document.
    pub(super) body: Bytes,
    /// The `Allow` header of a 405.
    pub(super) allow: Option<&'static str>,
    /// A streamed body, sent instead of `body` (the dump).
    pub(super) stream: Option<DumpBody>,
}

impl ApiResponse {
    /// A 200 with a JSON body.
    pub(super) fn json(doc: &impl Serialize) -> ApiResponse {
        match serde_json::to_vec(doc) {
            Ok(body) => ApiResponse {
                status: StatusCode::OK,
                content_type: JSON,
                body: Bytes::from(body),
                allow: None,
                stream: None,
            },
            // Only maps with non-string keys fail to serialize; ours have none.
            Err(e) => ApiResponse {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                content_type: "text/plain; charset=utf-8",
                body: Bytes::from(format!("cannot encode the answer: {e}")),
                allow: None,
                stream: None,
            },
        }
    }

    /// A 4xx/5xx with `{"success":"false","error":code,"reason":reason}`.
    pub(super) fn error(status: StatusCode, code: &str, reason: String) -> ApiResponse {
        ApiResponse {
            status,
            ..ApiResponse::json(&Verdict {
                error: Some(code),
                reason: Some(&reason),
                ..Verdict::FALSE
            })
        }
    }

    /// A 200 whose JSON body is streamed (no `Content-Length`: chunked).
    pub(super) fn streamed(body: DumpBody) -> ApiResponse {
        ApiResponse {
            status: StatusCode::OK,
            content_type: JSON,
            body: Bytes::new(),
            allow: None,
            stream: Some(body),
        }
    }

    pub(super) fn into_response(self) -> Response<ApiBody> {
        let body = match self.stream {
            Some(stream) => Either::Right(stream),
            None => Either::Left(Full::new(self.body)),
        };
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        if let Some(allow) = self.allow {
            headers.insert(ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

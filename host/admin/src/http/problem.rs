//! Errors as RFC 9457 problem details. Every refusal the API makes, including the ones axum
//! makes before a handler runs (bad JSON, unknown route, wrong method, body too large), is
//! one of these, so clients parse a single error shape.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::ControlError;

/// Prefix of every problem `type`; the rest is the `code`.
pub const PROBLEM_TYPE_BASE: &str = "https://switchboard.dev/problems/";
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// A problem details body. `code` is Switchboard's stable machine-readable code (the last
/// segment of `type`); `detail` says what was wrong with this request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: String,
}

impl Problem {
    pub fn new(status: u16, code: &str, title: &str, detail: impl Into<String>) -> Problem {
        Problem {
            type_uri: format!("{PROBLEM_TYPE_BASE}{code}"),
            title: title.to_owned(),
            status,
            detail: detail.into(),
            code: code.to_owned(),
        }
    }

    /// A malformed request (body, path parameter or content type). `status` is 400, or 413
    /// when the body was over the route's limit.
    pub(crate) fn invalid(status: u16, detail: impl Into<String>) -> Problem {
        Problem::new(status, "invalid-argument", "Invalid argument", detail)
    }

    pub(crate) fn route_not_found(path: &str) -> Problem {
        Problem::new(404, "not-found", "Not found", format!("no route {path}"))
    }

    pub(crate) fn method_not_allowed(method: &str, path: &str) -> Problem {
        Problem::new(
            405,
            "method-not-allowed",
            "Method not allowed",
            format!("{path} does not take {method} (see the Allow header)"),
        )
    }

    /// The request's body did not arrive within the server's body timeout. The connection is
    /// closed with the answer.
    pub(crate) fn request_timeout(timeout: std::time::Duration) -> Problem {
        Problem::new(
            408,
            "request-timeout",
            "Request body not received in time",
            format!(
                "the request body was not received within {} ms",
                timeout.as_millis()
            ),
        )
    }

    /// Too many requests of a bounded kind (plugin uploads) are running; retry shortly.
    pub(crate) fn busy(detail: impl Into<String>) -> Problem {
        Problem::new(429, "busy", "Too many concurrent requests", detail)
    }
}

impl From<ControlError> for Problem {
    fn from(e: ControlError) -> Problem {
        Problem::new(e.status(), e.code(), e.title(), e.to_string())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut resp = (status, body).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        match self.status {
            // RFC 6750 §3: a 401 names the scheme the client should use.
            401 => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // The rest of the body may still be on its way: nothing more can be read on this
            // connection as a request.
            408 => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            429 if self.code == "busy" => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
    }
}

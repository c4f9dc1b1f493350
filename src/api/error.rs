//! The API's error answer: a status and messages naming what was wrong, as JSON, with the
//! message kept for the request log.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::backend::ApplyError;

/// An error answer: status and a message naming what was wrong.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    messages: Vec<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            messages: vec![message.into()],
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 400 with every validation error.
    pub fn invalid(errors: crate::config::ConfigErrors) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            messages: errors.0,
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    /// The same error about a part of the request: every message starts with `at.`.
    pub(super) fn within(mut self, at: &str) -> Self {
        for m in self.messages.iter_mut() {
            *m = format!("{at}.{m}");
        }
        self
    }

    pub(super) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    pub(super) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }
}

/// The message of an error answer, for the request log.
#[derive(Clone)]
pub(super) struct Logged(pub(super) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = self.messages.join("; ");
        let body = json!({
            "code": self.status.as_u16(),
            "error": self.status.canonical_reason().unwrap_or("error"),
            "message": message,
            "errors": self.messages,
        });
        let mut r = (self.status, axum::Json(body)).into_response();
        r.extensions_mut().insert(Logged(message));
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            // The store is retried in the background; a few seconds is a fair first wait.
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("5"),
            );
        }
        r
    }
}

impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Conflict(m) => ApiError::conflict(m),
            ApplyError::Invalid(m) => ApiError::bad_request(m),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        // Where the store is and what its driver said stay in the gateway's log (the caller
        // may be any gateway's token holder); the caller learns what happened and what to do.
        match e {
            StoreError::Conflict(m) => ApiError::conflict(m),
            StoreError::Unavailable { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the state store is unreachable: nothing was changed; reads still answer; retry later",
            ),
            StoreError::Failed(_) | StoreError::Invalid(_) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the state store refused the change: nothing was changed (the gateway's log has the reason)",
            ),
        }
    }
}

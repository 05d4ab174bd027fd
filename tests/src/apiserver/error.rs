//! Failures as the API server reports them: an HTTP code plus a `Status`
//! object with a machine-readable reason, which kube-rs turns into
//! `kube::Error::Api`.

use std::fmt;

use serde_json::{Value, json};

use super::resources::Resource;

/// A failed request: what the fake server answered, and what the test
/// controls return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    /// The `Status` reason: `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`,
    /// `BadRequest`, `Expired`, `MethodNotAllowed`, `UnsupportedMediaType`.
    pub reason: &'static str,
    pub message: String,
    /// `Status.details`, where one object is concerned (boxed: errors
    /// travel in `Result`s and should stay small).
    pub details: Option<Box<Details>>,
}

/// The object an error is about, and the causes (such as the fields of an
/// apply conflict).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Details {
    pub group: String,
    /// The plural resource name, as the API server puts it here.
    pub kind: String,
    pub name: String,
    pub causes: Vec<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn invalid(res: &Resource, name: &str, message: impl Into<String>) -> Self {
        let message = format!("{} \"{name}\" is invalid: {}", res.kind, message.into());
        Self::new(422, "Invalid", message).about(res, name)
    }

    pub fn not_found(res: &Resource, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", res.qualified()),
        )
        .about(res, name)
    }

    pub fn already_exists(res: &Resource, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", res.qualified()),
        )
        .about(res, name)
    }

    /// Optimistic concurrency: the writer's copy is older than the stored one.
    pub fn conflict(res: &Resource, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                res.qualified()
            ),
        )
        .about(res, name)
    }

    pub fn stale(res: &Resource, name: &str) -> Self {
        Self::conflict(
            res,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// A watch or continue token older than the kept history.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn about(mut self, res: &Resource, name: &str) -> Self {
        self.details = Some(Box::new(Details {
            group: res.group.to_string(),
            kind: res.plural.to_string(),
            name: name.to_string(),
            causes: Vec::new(),
        }));
        self
    }

    /// The `Status` object of the response body (or of a watch ERROR event).
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            let mut details = json!({ "name": d.name, "group": d.group, "kind": d.kind });
            if !d.causes.is_empty() {
                details["causes"] = Value::Array(d.causes.clone());
            }
            status["details"] = details;
        }
        status
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

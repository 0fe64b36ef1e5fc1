//! Errors as the AWS JSON 1.1 protocol carries them: an HTTP status and a body
//! `{"__type": "<Code>", "message": "..."}`.

/// An error the endpoint answers with. `code` is the error shape's name (for the model's errors)
/// or the AWS common error code; see [`crate::model::COMMON_ERRORS`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} ({status}): {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Error code, the body's `__type`.
    pub code: &'static str,
    /// Human-readable message, the body's `message`.
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// `ValidationException` (400): a request that is not valid.
    pub(crate) fn validation(message: impl Into<String>) -> Self {
        Self::new(400, "ValidationException", message)
    }

    /// `ResourceNotFoundException` (400): a stack, layer or instance that does not exist.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(400, "ResourceNotFoundException", message)
    }

    /// `SerializationException` (400): a body that is not JSON, or a member of the wrong type.
    pub(crate) fn serialization(message: impl Into<String>) -> Self {
        Self::new(400, "SerializationException", message)
    }

    /// `AccessDeniedException` (400): the caller may not do this.
    pub(crate) fn access_denied(message: impl Into<String>) -> Self {
        Self::new(400, "AccessDeniedException", message)
    }

    /// `InternalFailure` (500).
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalFailure", message)
    }

    /// The JSON body of the error response.
    pub fn body(&self) -> String {
        serde_json::json!({ "__type": self.code, "message": self.message }).to_string()
    }
}

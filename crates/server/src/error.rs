//! Errors of the gateway layer. Each variant knows what a client may be told
//! ([`UserFacingError`]); the full detail goes to the server log only.

use dbward_provision::{ErrorKind, UserFacingError};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum GatewayError {
    #[error("store: {0}")]
    Store(#[from] dbward_store::StoreError),
    #[error("certificates: {0}")]
    Pki(#[from] dbward_pki::PkiError),
    #[error("{0}")]
    Model(#[from] dbward_model::ModelError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("configuration: {0}")]
    Config(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    TooManyRequests(String),
    /// Busy right now; the client may retry shortly (503).
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl UserFacingError for GatewayError {
    fn client_message(&self) -> Option<String> {
        match self {
            GatewayError::Store(_)
            | GatewayError::Pki(_)
            | GatewayError::Io(_)
            | GatewayError::Internal(_) => None,
            GatewayError::Model(_)
            | GatewayError::Config(_)
            | GatewayError::BadRequest(_)
            | GatewayError::NotFound(_)
            | GatewayError::Conflict(_)
            | GatewayError::Unauthorized(_)
            | GatewayError::Forbidden(_)
            | GatewayError::TooManyRequests(_)
            | GatewayError::Unavailable(_) => Some(self.to_string()),
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            GatewayError::Model(_)
            | GatewayError::BadRequest(_)
            | GatewayError::NotFound(_)
            | GatewayError::Conflict(_)
            | GatewayError::Unauthorized(_)
            | GatewayError::Forbidden(_)
            | GatewayError::TooManyRequests(_) => ErrorKind::User,
            GatewayError::Store(_)
            | GatewayError::Pki(_)
            | GatewayError::Io(_)
            | GatewayError::Config(_)
            | GatewayError::Unavailable(_)
            | GatewayError::Internal(_) => ErrorKind::Internal,
        }
    }
}

impl GatewayError {
    /// Text safe to show to a client.
    pub fn user_message(&self) -> String {
        self.client_message()
            .unwrap_or_else(|| "internal error; see the gateway log".to_string())
    }
}

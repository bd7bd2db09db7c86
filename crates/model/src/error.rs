//! The one error type of the model crate.
//!
//! Parse errors carry the file name and line so that an operator can find the mistake;
//! validation errors name the resource they are about.

use thiserror::Error;

/// Everything that can go wrong while reading, checking or writing resources and configuration.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ModelError {
    /// Syntax or type error at a known place in a file.
    #[error("{file}:{line}: {message}")]
    Parse {
        /// File name as given by the caller (`-` for stdin).
        file: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong, without the location.
        message: String,
    },
    /// A configuration key that dbward does not know.
    #[error("{file}:{line}: unknown field \"{field}\"")]
    UnknownField {
        /// File name as given by the caller.
        file: String,
        /// 1-based line number.
        line: usize,
        /// The key as written.
        field: String,
    },
    /// A problem in a file where no line is known.
    #[error("{file}: {message}")]
    File {
        /// File name as given by the caller.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// A resource or configuration value that parses but breaks a rule.
    #[error("{subject}: {message}")]
    Invalid {
        /// What the error is about, e.g. `role "dev"`.
        subject: String,
        /// Which rule is broken.
        message: String,
    },
    /// A duration string that is not of the form `12h`, `8h30m`, `90s`.
    #[error("invalid duration {input:?}: {reason}")]
    InvalidDuration {
        /// The text as given.
        input: String,
        /// Why it was refused.
        reason: String,
    },
    /// Serialising a resource failed (not expected for well-formed values).
    #[error("cannot serialise {what}: {message}")]
    Serialize {
        /// What was being written.
        what: String,
        /// The serialiser's message.
        message: String,
    },
}

impl ModelError {
    pub(crate) fn invalid(subject: impl Into<String>, message: impl Into<String>) -> Self {
        ModelError::Invalid {
            subject: subject.into(),
            message: message.into(),
        }
    }
}

//! The one error type of the launcher. Messages name the program, the file or the package to
//! install; they hold server logs, never passwords (there are none: sockets and certificates).

/// Why a local server could not be prepared, started or queried.
#[derive(Debug, thiserror::Error)]
pub enum LocalDbError {
    /// A program or account is missing; the message names what to install.
    #[error("{0}")]
    NotInstalled(String),
    /// A file-system or process operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A program ran and failed; holds its exit status and output.
    #[error("{what} failed ({status}): {output}")]
    Failed {
        what: String,
        status: String,
        output: String,
    },
    /// The server did not come up; holds the end of its log.
    #[error("{0}")]
    Start(String),
}

impl LocalDbError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalDbError {
        let what = what.into();
        move |source| LocalDbError::Io { what, source }
    }
}

pub(crate) type Result<T> = std::result::Result<T, LocalDbError>;

//! Why quickstart could not set up or run its sandbox. Every message is for the person at the
//! terminal: it names the step, the file or the package to install.

/// A failed or interrupted quickstart.
#[derive(Debug, thiserror::Error)]
pub enum QuickstartError {
    /// Ctrl-C or SIGTERM arrived while the sandbox was being prepared.
    #[error("interrupted while starting; everything started so far was stopped")]
    Interrupted,
    #[error(transparent)]
    LocalDb(#[from] dbward_localdb::LocalDbError),
    #[error(transparent)]
    Gateway(#[from] dbward_server::GatewayError),
    #[error("store: {0}")]
    Store(#[from] dbward_store::StoreError),
    #[error("certificates: {0}")]
    Pki(#[from] dbward_pki::PkiError),
    #[error(transparent)]
    Model(#[from] dbward_model::ModelError),
    #[error("encoding a resource: {0}")]
    Json(#[from] serde_json::Error),
    #[error("hashing the password: {0}")]
    Password(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl QuickstartError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> QuickstartError {
        let what = what.into();
        move |source| QuickstartError::Io { what, source }
    }
}

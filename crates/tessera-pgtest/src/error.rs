//! Why a throwaway server could not be had.

use std::path::PathBuf;

/// Why [`crate::PgServer`] could not start, stop or serve a database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgTestError {
    /// No PostgreSQL server binaries on this machine (the only error
    /// [`crate::PgServer::start_or_skip`] turns into a skip).
    #[error(
        "no PostgreSQL server binaries (initdb, postgres) in {searched:?}; install Debian's \
         `postgresql` package or set TESSERA_POSTGRES_BIN to their directory"
    )]
    NoBinaries {
        /// The directories looked in.
        searched: Vec<PathBuf>,
    },

    /// This process is root and there is no `postgres` user to run the server as
    /// (`initdb` and `postgres` refuse root).
    #[error(
        "running as root, and there is no `postgres` user to run PostgreSQL as \
         (Debian's `postgresql` package creates it)"
    )]
    NoUnprivilegedUser,

    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What the harness was doing.
        what: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },

    /// `initdb` failed.
    #[error("initdb failed ({status}): {stderr}")]
    Initdb {
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },

    /// `postgres` exited while starting.
    #[error("postgres exited while starting ({status}); its log ends:\n{log}")]
    Exited {
        /// Its exit status.
        status: String,
        /// The end of its log.
        log: String,
    },

    /// Starting or stopping took longer than a minute.
    #[error("{what} postgres took over a minute; its log ends:\n{log}")]
    Timeout {
        /// `starting` or `stopping`.
        what: &'static str,
        /// The end of its log.
        log: String,
    },

    /// A statement on the running server failed.
    #[error("postgres: {0}")]
    Sql(#[from] sqlx::Error),
}

impl PgTestError {
    /// A constructor for [`PgTestError::Io`], for `map_err`.
    pub(crate) fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> PgTestError {
        move |source| PgTestError::Io { what, source }
    }
}

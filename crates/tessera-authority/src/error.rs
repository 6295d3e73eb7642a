use std::path::PathBuf;

/// Everything that can go wrong creating, loading or using the authority.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityError {
    /// Reading or writing a file of the CA store failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("reading", "writing", ...).
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file holding key material is readable or writable by others.
    #[error(
        "{path} has mode {mode:o}; key material must not be accessible to group or others (chmod 600)"
    )]
    InsecureKeyFile {
        /// The file concerned.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A PEM file did not contain what was expected.
    #[error("{path}: {reason}")]
    BadPem {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The CA state file is not valid.
    #[error("CA state {path} is corrupt: {reason}")]
    CorruptState {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An upstream CA certificate does not qualify as a signing certificate.
    #[error("upstream CA certificate is not usable: {0}")]
    UpstreamCa(String),
    /// The upstream key does not belong to the upstream certificate.
    #[error("upstream CA key does not match the upstream CA certificate")]
    UpstreamKeyMismatch,
    /// rcgen failed to build or sign a certificate.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The requested SVID is not acceptable.
    /// A fresh SVID key could not be made (the system RNG failed, or the key library
    /// produced a PKCS#8 layout this crate does not know: no key is guessed at).
    #[error("generating the SVID key failed: {0}")]
    KeyGeneration(String),

    #[error("invalid SVID request: {0}")]
    InvalidRequest(String),
    /// The active CA expires before the requested SVID could be valid for a useful time.
    #[error("the signing CA expires at {ca_not_after} (unix); refusing to issue")]
    CaExpired {
        /// The CA's expiry, unix seconds.
        ca_not_after: i64,
    },
    /// A certificate we produced failed our own profile check (a bug, never ignored).
    #[error("issued certificate failed the SVID profile check: {0}")]
    SelfCheck(#[from] tessera_identity::ProfileError),
}

impl AuthorityError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        AuthorityError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

use std::path::PathBuf;

use tessera_identity::{IdKind, NodeId};

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
    /// A fresh SVID key could not be made (the system RNG failed, or the key library
    /// produced a PKCS#8 layout this crate does not know: no key is guessed at).
    #[error("generating the SVID key failed: {0}")]
    KeyGeneration(String),
    /// The requested SVID is not acceptable.
    #[error("invalid SVID request: {0}")]
    InvalidRequest(String),
    /// The active CA expires before the requested SVID could be valid for a useful time.
    #[error("the signing CA expires at {ca_not_after} (unix); refusing to issue")]
    CaExpired {
        /// The CA's expiry, unix seconds.
        ca_not_after: i64,
    },
    /// An authority built from a node CA was asked for an identity a node CA may not sign:
    /// an MCP server, a node, an administrator or any non-Tessera SPIFFE ID. Those come
    /// from the cluster's root, on the attested node's request.
    #[error("the node CA of {node} may not issue {spiffe_id} (a {} identity)", kind.map_or("non-Tessera", IdKind::as_str))]
    NodeCaMayNotIssue {
        /// The node whose CA was asked.
        node: NodeId,
        /// The SPIFFE ID requested.
        spiffe_id: String,
        /// Its kind, `None` for a SPIFFE ID of no Tessera shape.
        kind: Option<IdKind>,
    },
    /// A node's JWT signing key (cluster mode) was asked to sign a token for an identity
    /// nodes do not issue (an MCP server): verifiers refuse such a token
    /// (`jwt_node_key_may_not_sign`), so it is not made.
    #[error("a node's JWT key may sign client and task tokens only, not {spiffe_id}")]
    NodeJwtKeyMayNotSign {
        /// The SPIFFE ID requested.
        spiffe_id: String,
    },
    /// Only a cluster's root (or upstream) authority signs node CAs and certifies keys
    /// for other identities; this one is standalone or a node's.
    #[error("this authority is not a cluster root: {0}")]
    NotClusterRoot(&'static str),
    /// A public key to certify is not one Tessera issues for (ECDSA P-256, DER
    /// SubjectPublicKeyInfo), or a node CA key is not one.
    #[error("unsupported public key: {0}")]
    UnsupportedPublicKey(String),
    /// A CA of the chain allows fewer CAs below it than the authority needs
    /// (`pathLenConstraint`): verifiers would refuse what it signs.
    #[error("CA '{subject}' has pathLen {path_len}, but {needed} CA(s) must fit below it")]
    PathLenTooShort {
        /// The CA's subject.
        subject: String,
        /// Its pathLen.
        path_len: u32,
        /// How many CAs must fit below it.
        needed: u32,
    },
    /// A self-signed root with the wrong pathLen for the authority's mode (0 standalone,
    /// 1 in cluster mode): e.g. a standalone agent's CA directory given to the server.
    #[error("the self-signed root has pathLen {found:?}, this mode needs {expected}")]
    RootPathLen {
        /// The pathLen this mode needs.
        expected: u32,
        /// The root's.
        found: Option<u32>,
    },
    /// A CA chain handed to the authority does not verify or does not fit.
    #[error("the CA chain is not usable: {0}")]
    CaChain(String),
    /// The certificate given as a node CA breaks the node-CA profile.
    #[error("not a usable node CA: {0}")]
    InvalidNodeCa(#[source] tessera_identity::ProfileError),
    /// The node CA key does not belong to the node CA certificate.
    #[error("the node CA key does not match the node CA certificate")]
    NodeCaKeyMismatch,
    /// A renewed node CA names another node than the authority's.
    #[error("the new node CA is {found}'s, this authority is {expected}'s")]
    NodeMismatch {
        /// The authority's node.
        expected: NodeId,
        /// The node the new CA names.
        found: NodeId,
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

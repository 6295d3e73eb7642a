//! Tessera's identity model: what a Tessera identity *is*, independent of how certificates
//! are issued or how TLS uses them.
//!
//! * [`TrustDomain`], [`ClientName`], [`ServerName`], [`NodeName`], [`AdminName`],
//!   [`TaskId`]: the validated parts.
//! * [`ClientId`], [`TaskSpiffeId`], [`ServerId`], [`TesseraId`]: the three workload SPIFFE ID
//!   shapes (`spiffe://td/client/<name>`, `.../client/<name>/task/<ulid>`,
//!   `spiffe://td/mcp/<name>`); [`NodeId`], [`AdminId`]: the cluster control plane's
//!   (`spiffe://td/node/<name>`, `spiffe://td/admin/<name>`); [`AnyId`]: any of the five.
//!   Each parses exactly what it prints; [`validate_spiffe_id`] for the generic SPIFFE rules.
//! * [`Scope`], [`ScopeSet`]: which MCP operations a task may use.
//! * [`TaskClaims`]: the DER task-claims extension of a task SVID.
//! * [`check_leaf_svid`], [`check_signing_cert`], [`check_intermediate`]: X.509-SVID
//!   profile checks; [`NodeCaExtension`], [`check_node_ca`],
//!   [`IntermediateCa::check_may_issue`]: node CAs and what they may sign (cluster mode).
//! * [`validate_jwt_svid`], [`JwtBundle`], [`JwtSvidClaims`]: the JWT-SVID profile, its
//!   JWKS bundle, and the one validation every JWT consumer shares.
//!
//! The crate is pure: no I/O, no async, no clock (except [`TaskId::new`], which reads the
//! system time to mint a ULID). Validity windows are returned for callers to compare with
//! their own, injectable, time.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod claims;
mod error;
mod id;
mod jwt_svid;
mod kind;
mod name;
mod node_ca;
mod scope;
mod spiffe_id;
mod svid;
mod task_id;
mod trust_domain;

pub use claims::{
    ClaimsError, MAX_CLAIMS_DER_LEN, MAX_CONSENT_ID_LEN, MAX_PURPOSE_LEN, MAX_SCOPES,
    MAX_SUBJECT_LEN, TASK_CLAIMS_OID, TASK_CLAIMS_OID_ARCS, TASK_CLAIMS_VERSION, TaskClaims,
    TextField, task_claims_oid, task_claims_oid_der,
};
pub use error::IdError;
pub use id::{AdminId, AnyId, ClientId, IdKind, NodeId, ServerId, TaskSpiffeId, TesseraId};
pub use jwt_svid::{
    Audience, JWT_LEEWAY_SECS, JWT_SVID_ALGORITHM, JwksError, JwtBundle, JwtKey, JwtSvidClaims,
    JwtSvidError, MAX_AUDIENCE_LEN, MAX_AUDIENCES, MAX_JWKS_KEYS, MAX_JWKS_LEN, MAX_JWT_SVID_LEN,
    MAX_KID_LEN, MAX_NODE_JWT_KEYS, NODE_KEY_ID_PREFIX, TASK_CLAIM, ValidJwtSvid, check_audiences,
    is_node_key_id, validate_jwt_svid,
};
pub use name::{AdminName, ClientName, MAX_NAME_LEN, NodeName, ServerName};
pub use node_ca::{
    MAX_NODE_CA_DER_LEN, NODE_CA_OID, NODE_CA_OID_ARCS, NODE_CA_VERSION, NodeCaError,
    NodeCaExtension, node_ca_oid_der,
};
pub use scope::{MAX_RESOURCE_PATTERN_LEN, Scope, ScopeError, ScopeKind, ScopeSet, UnsafeShape};
pub use spiffe_id::{MAX_SPIFFE_ID_LEN, validate_spiffe_id};
pub use svid::{
    CaBinding, IntermediateCa, LeafSvid, ProfileError, ca_path_len, check_intermediate,
    check_leaf_svid, check_node_ca, check_signing_cert, has_node_ca_extension,
};
pub use task_id::TaskId;
pub use trust_domain::{MAX_TRUST_DOMAIN_LEN, TrustDomain};

/// Re-exported so callers can name [`TaskId::from_ulid`]'s argument without a direct dependency.
pub use ulid::Ulid;

#[cfg(test)]
mod proptests;

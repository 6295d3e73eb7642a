//! Tessera's signing authority.
//!
//! Owns the CA keys, issues X.509-SVIDs in the profile the SPIFFE standard asks
//! for (see `tessera_identity::check_leaf_svid`), rotates the CA with overlap and
//! publishes the trust bundle. [`JwtAuthority`] does the same for JWT-SVIDs: a P-256
//! signing key per trust domain, rotated with overlap, published as a JWKS.
//!
//! Two modes:
//! - **self-signed** (default): a root CA is created on first start in the data
//!   directory (key file mode 0600) and reused on restart; rotation is automatic
//!   and two-phase (a *prepared* CA is published in the bundle before it signs).
//! - **upstream**: an intermediate CA loaded from PEM files; SVID chains carry the
//!   intermediate(s) and the bundle holds the upstream roots. Rotation then is the
//!   operator's job (replace the files, restart).
//!
//! In cluster mode ([`Authority::open_cluster`]) the server's root (pathLen 1) or upstream
//! intermediate also signs node CAs (pathLen 0, [`Authority::sign_node_ca`]) and certifies
//! MCP server, node and admin keys ([`Authority::issue_for_key`]); each node's agent
//! issues client and task SVIDs with its node CA ([`Authority::from_node_ca`]) and
//! nothing else.
//!
//! * `authority`: [`Authority`]: the set of CAs (active, prepared, retiring), loading
//!   them from disk, rotation, and the bundle it publishes.
//! * `ca`: one signing CA: certificate, key and the chain it adds to SVIDs.
//! * `issue`: issuing X.509-SVIDs ([`SvidSpec`] → [`IssuedSvid`], or [`SignedSvid`] for
//!   a public key from elsewhere).
//! * `node_ca`: cluster mode's node CAs ([`ClusterPolicy`], [`IssuedNodeCa`]); `keys`:
//!   [`NodeCaKey`] and the public keys the authority certifies; `chain`: checks on a CA
//!   chain handed to it (signatures, path lengths).
//! * `bundle`: [`TrustBundle`], every CA certificate a verifier must accept now.
//! * `pem`: PEM reading and atomic, private file writes.
//! * `error`: [`AuthorityError`].

#![forbid(unsafe_code)]

mod authority;
mod bundle;
mod ca;
mod chain;
mod error;
mod issue;
mod jwt;
mod keys;
mod node_ca;
mod pem;

pub use authority::{Authority, AuthorityConfig, CaMode, GeneratedRoot, RotationPolicy};
pub use bundle::TrustBundle;
pub use error::AuthorityError;
pub use issue::{IssuedSvid, SignedSvid, SvidSpec};
pub use jwt::{
    IssuedJwtSvid, JwtAuthority, JwtKeyOwner, JwtKeyPolicy, JwtSvidSpec, PublishedJwtKey,
};
pub use keys::NodeCaKey;
pub use node_ca::{ClusterPolicy, IssuedNodeCa, MAX_NODE_CA_TTL, MIN_NODE_CA_TTL};
pub use pem::is_private_file;

#[cfg(test)]
mod tests;

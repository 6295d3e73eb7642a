//! The node-CA extension: what makes an intermediate CA a node's, and names the node.
//!
//! In cluster mode the server signs each attested node a short-lived intermediate CA
//! (pathLen 0) whose key stays on the node. Its URI SAN stays `spiffe://<td>` (the
//! verifiers' [`crate::check_intermediate`] refuses a CA naming a path), so the node is
//! named here, in a non-critical extension under the project's 2.25 arc. The extension is
//! also the mark: a CA carrying it may sign client and task SVIDs only
//! ([`crate::IdKind::issuable_by_node_ca`]), and verifiers detect node CAs by it, never
//! by the length of a chain. A CA without it is a plain intermediate.
//!
//! # ASN.1 module
//!
//! ```asn1
//! TesseraNodeCa DEFINITIONS EXPLICIT TAGS ::= BEGIN
//!
//! -- id-tessera-node-ca OBJECT IDENTIFIER ::= { 2 25 5417763894914156504 }
//! -- extnValue of that extension (critical = FALSE) is the DER encoding of NodeCa.
//!
//! NodeCa ::= SEQUENCE {
//!     version  INTEGER (1),   -- this module is version 1
//!     node     UTF8String     -- spiffe://<td>/node/<name>, <td> the CA's own
//! }
//!
//! END
//! ```
//!
//! Decoding is strict DER, bounded before it starts, and re-encoded to refuse anything
//! that does not come back byte-identical.

use der::{Decode, Encode, Sequence};

use crate::error::IdError;
use crate::id::NodeId;

/// Dotted form of the node-CA extension OID: a random 63-bit arc under 2.25, chosen as
/// [`crate::TASK_CLAIMS_OID`] was (version nibble 0, so no generated UUID collides).
pub const NODE_CA_OID: &str = "2.25.5417763894914156504";

/// Arcs of [`NODE_CA_OID`], for `rcgen::CustomExtension::from_oid_content`.
pub const NODE_CA_OID_ARCS: &[u64] = &[2, 25, 5_417_763_894_914_156_504];

/// DER content bytes of [`NODE_CA_OID`] (no tag, no length).
const NODE_CA_OID_DER: &[u8] = &[0x69, 0xcb, 0x97, 0xf0, 0xf1, 0xed, 0x8a, 0xae, 0x8f, 0x58];

/// DER content bytes of the node-CA OID, without tag and length: what `x509_parser`'s
/// `Oid::as_bytes()` returns for the extension's `extnID`.
pub fn node_ca_oid_der() -> &'static [u8] {
    NODE_CA_OID_DER
}

/// The only node-CA extension version this crate writes and reads.
pub const NODE_CA_VERSION: u8 = 1;

/// Largest encoded extension accepted, in bytes: a node id is at most 2048 bytes
/// ([`crate::MAX_SPIFFE_ID_LEN`]), plus a few bytes of framing.
pub const MAX_NODE_CA_DER_LEN: usize = 2048 + 16;

/// A node-CA extension that could not be decoded or broke a rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeCaError {
    /// The encoded extension is larger than [`MAX_NODE_CA_DER_LEN`].
    #[error("node-CA extension is {len} bytes, larger than the maximum of {max}")]
    TooLarge {
        /// Size of the input in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The input is not DER of the `NodeCa` structure.
    #[error("node-CA extension is not valid DER: {0}")]
    Der(#[source] der::Error),
    /// The input decodes but re-encodes differently: not canonical DER.
    #[error("node-CA extension is not canonical DER")]
    NonCanonical,
    /// The version is not [`NODE_CA_VERSION`].
    #[error("node-CA extension version {version} is not supported (expected {NODE_CA_VERSION})")]
    UnsupportedVersion {
        /// The version found.
        version: u8,
    },
    /// The node is not a Tessera node SPIFFE ID.
    #[error("node-CA extension names an invalid node: {0}")]
    InvalidNodeId(#[source] IdError),
}

/// What the node-CA extension says: the CA belongs to `node`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeCaExtension {
    /// The node whose CA this is.
    pub node: NodeId,
}

/// The wire form, field for field as in the ASN.1 module.
#[derive(Sequence)]
struct RawNodeCa {
    version: u8,
    node: String,
}

// === impl NodeCaExtension ===

impl NodeCaExtension {
    /// The extension for `node`'s CA.
    pub fn new(node: NodeId) -> Self {
        Self { node }
    }

    /// The DER encoding: the `extnValue` contents of the node-CA extension.
    pub fn to_der(&self) -> Vec<u8> {
        RawNodeCa {
            version: NODE_CA_VERSION,
            node: self.node.to_string(),
        }
        .to_der()
        // A node id is at most 2048 bytes, far below DER's length limit.
        .expect("a node id encodes")
    }

    /// Decodes and validates the extension's DER.
    ///
    /// # Errors
    /// Input over [`MAX_NODE_CA_DER_LEN`], anything but exactly one strict-DER `NodeCa`,
    /// an unknown version, a node that is not `spiffe://<td>/node/<name>`, input that does
    /// not re-encode identically: each its [`NodeCaError`].
    pub fn from_der(der: &[u8]) -> Result<Self, NodeCaError> {
        if der.len() > MAX_NODE_CA_DER_LEN {
            return Err(NodeCaError::TooLarge {
                len: der.len(),
                max: MAX_NODE_CA_DER_LEN,
            });
        }
        let raw = RawNodeCa::from_der(der).map_err(NodeCaError::Der)?;
        if raw.version != NODE_CA_VERSION {
            return Err(NodeCaError::UnsupportedVersion {
                version: raw.version,
            });
        }
        let ext = Self {
            node: raw.node.parse().map_err(NodeCaError::InvalidNodeId)?,
        };
        if ext.to_der() != der {
            return Err(NodeCaError::NonCanonical);
        }
        Ok(ext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IdKind;

    #[test]
    fn oid_bytes_match_dotted_form_and_arcs() {
        let bytes = node_ca_oid_der();
        let first = u64::from(bytes[0]);
        let mut arcs = vec![first / 40, first % 40];
        let mut acc: u128 = 0;
        for &b in &bytes[1..] {
            acc = (acc << 7) | u128::from(b & 0x7f);
            if b & 0x80 == 0 {
                arcs.push(u64::try_from(acc).unwrap());
                acc = 0;
            }
        }
        assert_eq!(arcs, NODE_CA_OID_ARCS);
        let dotted: Vec<String> = arcs.iter().map(ToString::to_string).collect();
        assert_eq!(dotted.join("."), NODE_CA_OID);
        assert_ne!(bytes, crate::task_claims_oid_der());
    }

    #[test]
    fn round_trips_byte_identically() {
        let ext = NodeCaExtension::new("spiffe://acme.corp/node/worker-1".parse().unwrap());
        let der = ext.to_der();
        assert_eq!(NodeCaExtension::from_der(&der).unwrap(), ext);
    }

    #[test]
    fn hostile_encodings_are_refused() {
        let raw = |version: u8, node: &str| RawNodeCa {
            version,
            node: node.into(),
        };
        let good = raw(1, "spiffe://acme.corp/node/n1").to_der().unwrap();
        let mut trailing = good.clone();
        trailing.push(0);
        let mut truncated = good.clone();
        truncated.pop();
        // The same SEQUENCE with a long-form length: BER, not DER.
        let mut long_form = vec![0x30, 0x81, good[1]];
        long_form.extend_from_slice(&good[2..]);
        let huge = vec![0x30; MAX_NODE_CA_DER_LEN + 1];
        type Want = fn(&NodeCaError) -> bool;
        let cases: Vec<(&str, Vec<u8>, Want)> = vec![
            ("empty", vec![], |e| matches!(e, NodeCaError::Der(_))),
            ("trailing byte", trailing, |e| {
                matches!(e, NodeCaError::Der(_))
            }),
            ("truncated", truncated, |e| matches!(e, NodeCaError::Der(_))),
            ("long-form length", long_form, |e| {
                matches!(e, NodeCaError::Der(_) | NodeCaError::NonCanonical)
            }),
            ("over the size bound", huge, |e| {
                matches!(e, NodeCaError::TooLarge { .. })
            }),
            (
                "version 2",
                raw(2, "spiffe://acme.corp/node/n1").to_der().unwrap(),
                |e| matches!(e, NodeCaError::UnsupportedVersion { version: 2 }),
            ),
            (
                "a client, not a node",
                raw(1, "spiffe://acme.corp/client/n1").to_der().unwrap(),
                |e| {
                    matches!(
                        e,
                        NodeCaError::InvalidNodeId(IdError::WrongKind {
                            expected: IdKind::Node,
                            found: IdKind::Client
                        })
                    )
                },
            ),
            (
                "node name invalid",
                raw(1, "spiffe://acme.corp/node/a b").to_der().unwrap(),
                |e| matches!(e, NodeCaError::InvalidNodeId(_)),
            ),
            (
                "not a SPIFFE ID",
                raw(1, "worker-1").to_der().unwrap(),
                |e| matches!(e, NodeCaError::InvalidNodeId(_)),
            ),
        ];
        for (case, der, want) in cases {
            let err = NodeCaExtension::from_der(&der).unwrap_err();
            assert!(want(&err), "case {case}: {err:?}");
        }
    }
}

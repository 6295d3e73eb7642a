//! X.509-SVID profile checks (`standards/X509-SVID.md`), plus Tessera's task claims.
//!
//! These are the structural checks a verifier runs on a certificate *in addition to*
//! RFC 5280 path validation, which is done elsewhere (rustls/webpki against the trust
//! bundle). Nothing here verifies signatures or looks at the clock: [`LeafSvid`] returns the
//! validity window so callers compare it with their own (injectable) time.

use std::collections::HashSet;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension, X509Extension};
use x509_parser::prelude::FromDer;

use crate::claims::{ClaimsError, TaskClaims, task_claims_oid_der};
use crate::error::IdError;
use crate::id::{AnyId, ClientId, IdKind, NodeId, TaskSpiffeId, TesseraId};
use crate::node_ca::{NodeCaError, NodeCaExtension, node_ca_oid_der};
use crate::spiffe_id::validate_spiffe_id;
use crate::task_id::TaskId;
use crate::trust_domain::TrustDomain;

/// What a leaf X.509-SVID that passed [`check_leaf_svid`] says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafSvid {
    /// The SPIFFE ID from the single URI SAN, exactly as written in the certificate.
    pub spiffe_id: String,
    /// The trust domain of that SPIFFE ID.
    pub trust_domain: TrustDomain,
    /// The serial number, lowercase hex without separators or leading zero bytes
    /// (at least two digits), for revocation lists and audit.
    pub serial_hex: String,
    /// Start of validity, seconds since the Unix epoch.
    pub not_before_unix: i64,
    /// End of validity, seconds since the Unix epoch.
    pub not_after_unix: i64,
    /// The task claims extension, if the certificate carries one. When `Some`, its task id
    /// and client id equal those of the URI SAN.
    pub claims: Option<TaskClaims>,
    /// The SPIFFE ID as a Tessera workload identity, if it has one of those shapes; `None`
    /// for other valid SPIFFE IDs, node and admin ones included (callers that only accept
    /// Tessera workloads refuse those).
    pub tessera_id: Option<TesseraId>,
    /// Which Tessera shape the SPIFFE ID has, node and admin included; `None` for any
    /// other SPIFFE ID.
    pub kind: Option<IdKind>,
}

/// A certificate that does not fit the X.509-SVID profile.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// The bytes are not a DER X.509 certificate.
    #[error("not a DER X.509 certificate: {reason}")]
    Malformed {
        /// The parser's message.
        reason: String,
    },
    /// Bytes follow the certificate.
    #[error("{len} bytes follow the certificate")]
    TrailingData {
        /// Number of trailing bytes.
        len: usize,
    },
    /// An extension appears more than once (RFC 5280 forbids it).
    #[error("extension {oid} appears more than once")]
    DuplicateExtension {
        /// Dotted OID of the extension.
        oid: String,
    },
    /// A standard extension's contents do not parse.
    #[error("extension {oid} is malformed")]
    MalformedExtension {
        /// Dotted OID of the extension.
        oid: String,
    },
    /// A leaf does not have exactly one URI SAN.
    #[error("leaf SVID must have exactly one URI SAN, found {found}")]
    UriSanCount {
        /// Number of URI SANs found (0 when there is no SAN extension at all).
        found: usize,
    },
    /// A URI SAN is not a valid SPIFFE ID.
    #[error("URI SAN {uri:?} is not a valid SPIFFE ID: {source}")]
    InvalidSpiffeId {
        /// The URI SAN.
        uri: String,
        /// The SPIFFE rule it breaks.
        #[source]
        source: IdError,
    },
    /// A leaf's SPIFFE ID has no path (it names a trust domain, not a workload).
    #[error("leaf SVID SPIFFE ID {spiffe_id:?} has no path")]
    LeafRootPath {
        /// The SPIFFE ID.
        spiffe_id: String,
    },
    /// A signing certificate's SPIFFE ID has a path.
    #[error("signing certificate SPIFFE ID {spiffe_id:?} must not have a path")]
    SigningCertPath {
        /// The SPIFFE ID.
        spiffe_id: String,
    },
    /// The subject is empty but the SAN extension is not critical (RFC 5280 §4.2.1.6).
    #[error("subject is empty but the subjectAltName extension is not critical")]
    SanNotCritical,
    /// The BasicConstraints extension is missing.
    #[error("BasicConstraints extension is missing")]
    MissingBasicConstraints,
    /// A leaf has `cA=true`.
    #[error("leaf SVID has cA=true")]
    LeafIsCa,
    /// A signing certificate has `cA=false`.
    #[error("signing certificate has cA=false")]
    SigningCertNotCa,
    /// The KeyUsage extension is missing.
    #[error("KeyUsage extension is missing")]
    MissingKeyUsage,
    /// The KeyUsage extension is not critical.
    #[error("KeyUsage extension is not critical")]
    KeyUsageNotCritical,
    /// A leaf lacks `digitalSignature`.
    #[error("leaf SVID KeyUsage lacks digitalSignature")]
    MissingDigitalSignature,
    /// A leaf has `keyCertSign`.
    #[error("leaf SVID KeyUsage has keyCertSign")]
    LeafKeyCertSign,
    /// A leaf has `cRLSign`.
    #[error("leaf SVID KeyUsage has cRLSign")]
    LeafCrlSign,
    /// A signing certificate lacks `keyCertSign`.
    #[error("signing certificate KeyUsage lacks keyCertSign")]
    MissingKeyCertSign,
    /// The ExtendedKeyUsage extension is present but lacks serverAuth or clientAuth.
    #[error(
        "ExtendedKeyUsage must contain serverAuth and clientAuth (serverAuth: {server_auth}, clientAuth: {client_auth})"
    )]
    ExtendedKeyUsage {
        /// Whether serverAuth is present.
        server_auth: bool,
        /// Whether clientAuth is present.
        client_auth: bool,
    },
    /// The task-claims extension is marked critical; it must not be, so plain SPIFFE
    /// verifiers still accept the SVID.
    #[error("task claims extension is critical")]
    ClaimsCritical,
    /// The task-claims extension does not decode or breaks a claims rule.
    #[error("task claims extension is invalid: {0}")]
    InvalidClaims(#[source] ClaimsError),
    /// The certificate carries task claims, but its SPIFFE ID is not a task id.
    #[error("task claims on an SVID whose SPIFFE ID {spiffe_id:?} is not a task id")]
    ClaimsWithoutTaskId {
        /// The SPIFFE ID.
        spiffe_id: String,
    },
    /// The claims' task id differs from the task in the URI SAN.
    #[error("task claims task id {claims} differs from URI SAN task id {san}")]
    ClaimsTaskMismatch {
        /// Task id in the URI SAN.
        san: TaskId,
        /// Task id in the claims.
        claims: TaskId,
    },
    /// The claims' client id differs from the client in the URI SAN.
    #[error("task claims client id {claims} differs from URI SAN client id {san}")]
    ClaimsClientMismatch {
        /// Client id in the URI SAN.
        san: ClientId,
        /// Client id in the claims.
        claims: ClientId,
    },
    /// The node-CA extension is marked critical; it must not be, so plain SPIFFE and
    /// X.509 verifiers still accept chains through the node CA.
    #[error("node-CA extension is critical")]
    NodeCaCritical,
    /// The node-CA extension does not decode or breaks a rule.
    #[error("node-CA extension is invalid: {0}")]
    InvalidNodeCa(#[source] NodeCaError),
    /// A leaf carries the node-CA extension, which only a CA may.
    #[error("leaf SVID carries the node-CA extension")]
    NodeCaExtensionOnLeaf,
    /// A node CA without the URI SAN `spiffe://<td>`: a node CA must name its trust domain.
    #[error("node CA of {node:?} does not carry its trust domain's SPIFFE ID")]
    NodeCaUnnamed {
        /// The node the extension names.
        node: String,
    },
    /// The node-CA extension names a node of another trust domain than the CA's.
    #[error("node CA for trust domain {trust_domain:?} names node {node:?} of another")]
    NodeCaForeignNode {
        /// The CA's trust domain.
        trust_domain: String,
        /// The node the extension names.
        node: String,
    },
    /// A node CA whose BasicConstraints pathLen is not exactly 0: it could sign a CA.
    #[error("node CA must have pathLen 0, found {found:?}")]
    NodeCaPathLen {
        /// The pathLen found, `None` when unconstrained.
        found: Option<u32>,
    },
    /// A CA certificate that was required to be a node CA carries no node-CA extension.
    #[error("CA certificate is not a node CA (no node-CA extension)")]
    NotNodeCa,
    /// A chain through a node CA ends in a leaf a node CA may not sign (an MCP server,
    /// a node, an administrator, or any non-Tessera identity).
    #[error("node CA of {node:?} may not issue a {} SVID", kind.map_or("non-Tessera", IdKind::as_str))]
    NodeCaMayNotIssue {
        /// The node whose CA signed (or was sent with) the leaf.
        node: String,
        /// The kind of the leaf, `None` for a SPIFFE ID of no Tessera shape.
        kind: Option<IdKind>,
    },
    /// An intermediate CA in a peer's chain names another trust domain than the one it
    /// is verified for: under a shared upstream root, one trust domain's CA minting
    /// another's identities.
    #[error("intermediate CA names trust domain {found:?}, not {expected:?}")]
    IntermediateForeignTrustDomain {
        /// The trust domain the chain is verified for (the leaf's).
        expected: String,
        /// The SPIFFE ID the intermediate carries.
        found: String,
    },
}

/// How a CA certificate in a peer's chain is bound to the trust domain it is verified
/// for (see [`check_intermediate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaBinding {
    /// It carries the trust domain's SPIFFE ID, `spiffe://<td>`.
    Named,
    /// It carries no SPIFFE ID, as a CA of a corporate PKI may not.
    Unnamed,
}

/// What an intermediate CA in a peer's chain is, as far as issuance goes (see
/// [`check_intermediate`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntermediateCa {
    /// How it is bound to the trust domain.
    pub binding: CaBinding,
    /// The node it belongs to, if it is a node CA (it carries the node-CA extension, which
    /// then passed every node-CA rule); `None` for a plain intermediate.
    pub node: Option<NodeId>,
}

impl IntermediateCa {
    /// Refuses a leaf of `kind` (`None`: no Tessera shape) in a chain this CA is part
    /// of, when this CA may not have signed it: a node CA signs clients and tasks only.
    ///
    /// A plain intermediate (no node-CA extension) is the trust domain's own CA, as an
    /// upstream PKI issues it to the server or a standalone agent: it may sign any leaf,
    /// and node CAs within its path length. Tessera issues no other plain intermediate.
    ///
    /// # Errors
    /// [`ProfileError::NodeCaMayNotIssue`].
    pub fn check_may_issue(&self, kind: Option<IdKind>) -> Result<(), ProfileError> {
        match &self.node {
            Some(node) if !kind.is_some_and(IdKind::issuable_by_node_ca) => {
                Err(ProfileError::NodeCaMayNotIssue {
                    node: node.to_string(),
                    kind,
                })
            }
            _ => Ok(()),
        }
    }
}

/// Checks a DER leaf certificate against the X.509-SVID profile and Tessera's claims rules.
///
/// Requires: exactly one URI SAN, a valid SPIFFE ID with a non-root path; BasicConstraints
/// present with `cA=false`; KeyUsage present and critical, with `digitalSignature` and
/// without `keyCertSign`/`cRLSign`; ExtendedKeyUsage, if present, with both serverAuth and
/// clientAuth; a critical SAN extension when the subject is empty; no duplicate or
/// malformed standard extensions. The task-claims extension, if present, must be
/// non-critical, decode, and match the URI SAN, which must then be a [`TaskSpiffeId`].
/// A task SAN without claims passes (`claims: None`): whether to require them is the
/// caller's policy.
///
/// # Errors
/// The first profile rule broken, as a [`ProfileError`].
pub fn check_leaf_svid(der: &[u8]) -> Result<LeafSvid, ProfileError> {
    let cert = parse(der)?;
    let tbs = &cert.tbs_certificate;
    check_extensions_well_formed(tbs.extensions())?;

    let uris = uri_sans(&cert)?;
    let [uri] = uris.as_slice() else {
        return Err(ProfileError::UriSanCount { found: uris.len() });
    };
    let (trust_domain, path) =
        validate_spiffe_id(uri).map_err(|source| ProfileError::InvalidSpiffeId {
            uri: (*uri).to_owned(),
            source,
        })?;
    if path.is_empty() {
        return Err(ProfileError::LeafRootPath {
            spiffe_id: (*uri).to_owned(),
        });
    }

    let bc = tbs
        .basic_constraints()
        .map_err(|_| malformed_ext(&x509_parser::oid_registry::OID_X509_EXT_BASIC_CONSTRAINTS))?
        .ok_or(ProfileError::MissingBasicConstraints)?;
    if bc.value.ca {
        return Err(ProfileError::LeafIsCa);
    }

    let ku = tbs
        .key_usage()
        .map_err(|_| malformed_ext(&x509_parser::oid_registry::OID_X509_EXT_KEY_USAGE))?
        .ok_or(ProfileError::MissingKeyUsage)?;
    if !ku.critical {
        return Err(ProfileError::KeyUsageNotCritical);
    }
    if !ku.value.digital_signature() {
        return Err(ProfileError::MissingDigitalSignature);
    }
    if ku.value.key_cert_sign() {
        return Err(ProfileError::LeafKeyCertSign);
    }
    if ku.value.crl_sign() {
        return Err(ProfileError::LeafCrlSign);
    }

    let eku = tbs
        .extended_key_usage()
        .map_err(|_| malformed_ext(&x509_parser::oid_registry::OID_X509_EXT_EXTENDED_KEY_USAGE))?;
    if let Some(eku) = eku
        && !(eku.value.server_auth && eku.value.client_auth)
    {
        return Err(ProfileError::ExtendedKeyUsage {
            server_auth: eku.value.server_auth,
            client_auth: eku.value.client_auth,
        });
    }

    if find_extension(tbs.extensions(), node_ca_oid_der()).is_some() {
        return Err(ProfileError::NodeCaExtensionOnLeaf);
    }

    let any_id: Option<AnyId> = uri.parse().ok();
    let kind = any_id.as_ref().map(AnyId::kind);
    let tessera_id = match any_id {
        Some(AnyId::Workload(id)) => Some(id),
        _ => None,
    };
    let claims = match find_extension(tbs.extensions(), task_claims_oid_der()) {
        None => None,
        Some(ext) => {
            if ext.critical {
                return Err(ProfileError::ClaimsCritical);
            }
            let claims = TaskClaims::from_der(ext.value).map_err(ProfileError::InvalidClaims)?;
            let Some(TesseraId::Task(san)) = &tessera_id else {
                return Err(ProfileError::ClaimsWithoutTaskId {
                    spiffe_id: (*uri).to_owned(),
                });
            };
            check_claims_match(san, &claims)?;
            Some(claims)
        }
    };

    Ok(LeafSvid {
        spiffe_id: (*uri).to_owned(),
        trust_domain,
        serial_hex: serial_hex(tbs.raw_serial()),
        not_before_unix: tbs.validity().not_before.timestamp(),
        not_after_unix: tbs.validity().not_after.timestamp(),
        claims,
        tessera_id,
        kind,
    })
}

/// Checks a DER CA certificate (root or intermediate) against the X.509-SVID profile for
/// signing certificates.
///
/// Requires: BasicConstraints present with `cA=true`; KeyUsage present and critical with
/// `keyCertSign`; every `spiffe:` URI SAN a valid SPIFFE ID without a path (a trust domain
/// ID); a critical SAN extension when the subject is empty; no duplicate or malformed
/// standard extensions.
///
/// # Errors
/// The first profile rule broken, as a [`ProfileError`].
pub fn check_signing_cert(der: &[u8]) -> Result<(), ProfileError> {
    let cert = parse(der)?;
    let tbs = &cert.tbs_certificate;
    check_extensions_well_formed(tbs.extensions())?;

    for id in ca_spiffe_ids(uri_sans(&cert)?) {
        id?;
    }

    let bc = tbs
        .basic_constraints()
        .map_err(|_| malformed_ext(&x509_parser::oid_registry::OID_X509_EXT_BASIC_CONSTRAINTS))?
        .ok_or(ProfileError::MissingBasicConstraints)?;
    if !bc.value.ca {
        return Err(ProfileError::SigningCertNotCa);
    }

    let ku = tbs
        .key_usage()
        .map_err(|_| malformed_ext(&x509_parser::oid_registry::OID_X509_EXT_KEY_USAGE))?
        .ok_or(ProfileError::MissingKeyUsage)?;
    if !ku.critical {
        return Err(ProfileError::KeyUsageNotCritical);
    }
    if !ku.value.key_cert_sign() {
        return Err(ProfileError::MissingKeyCertSign);
    }
    Ok(())
}

/// Checks an intermediate CA certificate a peer presented with its leaf, for a chain
/// verified against the bundle of `trust_domain` (the leaf's).
///
/// Path validation says only that some bundle root signed the intermediate. When trust
/// domains share an upstream root (each agent given an intermediate of one corporate
/// PKI), that root signs every domain's intermediates, and the holder of domain B's
/// could mint domain A's identities. So every SPIFFE ID the intermediate carries (a
/// `spiffe:` URI SAN, scheme matched case-insensitively) must be exactly
/// `spiffe://<trust_domain>`, without a path. An intermediate with no SPIFFE ID is
/// [`CaBinding::Unnamed`]: accepting it is the caller's policy.
///
/// An intermediate carrying the node-CA extension ([`crate::NodeCaExtension`]) is a node
/// CA, and must then fit the node-CA profile: the extension once, non-critical, strict
/// DER, naming a node of `trust_domain`; the CA named `spiffe://<trust_domain>`; no
/// duplicate or malformed extension; BasicConstraints cA=true with pathLen exactly 0;
/// KeyUsage keyCertSign. What it may sign is [`IntermediateCa::check_may_issue`]'s.
///
/// Signatures and validity are path validation's job (webpki); this reads names and,
/// for a node CA, its constraints.
///
/// # Errors
/// [`ProfileError::Malformed`]/[`ProfileError::TrailingData`] if `der` is not one
/// certificate, [`ProfileError::InvalidSpiffeId`] or [`ProfileError::SigningCertPath`]
/// for a malformed SPIFFE ID, [`ProfileError::IntermediateForeignTrustDomain`] for
/// another trust domain's, and a node-CA rule's variant for a node CA breaking it.
pub fn check_intermediate(
    der: &[u8],
    trust_domain: &TrustDomain,
) -> Result<IntermediateCa, ProfileError> {
    let cert = parse(der)?;
    let mut binding = CaBinding::Unnamed;
    for id in ca_spiffe_ids(uri_sans(&cert)?) {
        let (td, uri) = id?;
        if &td != trust_domain {
            return Err(ProfileError::IntermediateForeignTrustDomain {
                expected: trust_domain.to_string(),
                found: uri.to_owned(),
            });
        }
        binding = CaBinding::Named;
    }
    let node = node_ca(&cert, trust_domain, binding)?;
    Ok(IntermediateCa { binding, node })
}

/// Checks a CA certificate the caller requires to be a node CA of `trust_domain` (the
/// authority's self-check of what it signs, an agent loading the CA the server gave it):
/// the signing-certificate profile ([`check_signing_cert`]) and every node-CA rule of
/// [`check_intermediate`]. Returns the node it belongs to.
///
/// # Errors
/// The first rule broken, as a [`ProfileError`]; [`ProfileError::NotNodeCa`] for a CA
/// without the node-CA extension.
pub fn check_node_ca(der: &[u8], trust_domain: &TrustDomain) -> Result<NodeId, ProfileError> {
    check_signing_cert(der)?;
    check_intermediate(der, trust_domain)?
        .node
        .ok_or(ProfileError::NotNodeCa)
}

/// Whether a certificate carries the node-CA extension at all, whatever else it says:
/// for a verifier refusing a node CA as a trust anchor (a bundle holds roots; a node CA
/// there would let its key sign any identity unchecked).
///
/// # Errors
/// [`ProfileError::Malformed`]/[`ProfileError::TrailingData`] if `der` is not one
/// certificate.
pub fn has_node_ca_extension(der: &[u8]) -> Result<bool, ProfileError> {
    let cert = parse(der)?;
    Ok(find_extension(cert.tbs_certificate.extensions(), node_ca_oid_der()).is_some())
}

/// The node a CA certificate belongs to, if it carries the node-CA extension, after
/// every node-CA rule (see [`check_intermediate`]).
fn node_ca(
    cert: &X509Certificate<'_>,
    trust_domain: &TrustDomain,
    binding: CaBinding,
) -> Result<Option<NodeId>, ProfileError> {
    let tbs = &cert.tbs_certificate;
    let Some(ext) = find_extension(tbs.extensions(), node_ca_oid_der()) else {
        return Ok(None);
    };
    // Node CAs are Tessera's own: hold them to the whole profile, duplicates included
    // (the lookup above saw only the first of two node-CA extensions).
    check_extensions_well_formed(tbs.extensions())?;
    if ext.critical {
        return Err(ProfileError::NodeCaCritical);
    }
    let node = NodeCaExtension::from_der(ext.value)
        .map_err(ProfileError::InvalidNodeCa)?
        .node;
    if binding != CaBinding::Named {
        return Err(ProfileError::NodeCaUnnamed {
            node: node.to_string(),
        });
    }
    if node.trust_domain() != trust_domain {
        return Err(ProfileError::NodeCaForeignNode {
            trust_domain: trust_domain.to_string(),
            node: node.to_string(),
        });
    }
    let bc = tbs
        .basic_constraints()
        .map_err(|_| malformed_ext(&x509_parser::oid_registry::OID_X509_EXT_BASIC_CONSTRAINTS))?
        .ok_or(ProfileError::MissingBasicConstraints)?;
    if !bc.value.ca {
        return Err(ProfileError::SigningCertNotCa);
    }
    if bc.value.path_len_constraint != Some(0) {
        return Err(ProfileError::NodeCaPathLen {
            found: bc.value.path_len_constraint,
        });
    }
    let ku = tbs
        .key_usage()
        .map_err(|_| malformed_ext(&x509_parser::oid_registry::OID_X509_EXT_KEY_USAGE))?
        .ok_or(ProfileError::MissingKeyUsage)?;
    if !ku.value.key_cert_sign() {
        return Err(ProfileError::MissingKeyCertSign);
    }
    Ok(Some(node))
}

/// The `pathLenConstraint` of a CA certificate: how many intermediate CAs may follow it
/// on the way to a leaf. `None` when it sets none (or has no BasicConstraints).
///
/// Trust anchors are not certificates to webpki (only a name and a key), so it never
/// applies an anchor's constraint; verifiers that honour it read it here.
///
/// # Errors
/// [`ProfileError::Malformed`] if `der` is not one certificate, or a malformed
/// BasicConstraints extension.
pub fn ca_path_len(der: &[u8]) -> Result<Option<u32>, ProfileError> {
    let cert = parse(der)?;
    let bc = cert
        .tbs_certificate
        .basic_constraints()
        .map_err(|_| malformed_ext(&x509_parser::oid_registry::OID_X509_EXT_BASIC_CONSTRAINTS))?;
    Ok(bc.and_then(|bc| bc.value.path_len_constraint))
}

/// Parses exactly one DER certificate.
fn parse(der: &[u8]) -> Result<X509Certificate<'_>, ProfileError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| ProfileError::Malformed {
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(ProfileError::TrailingData { len: rest.len() });
    }
    Ok(cert)
}

/// Refuses duplicate extensions and standard extensions whose contents do not parse.
fn check_extensions_well_formed(extensions: &[X509Extension<'_>]) -> Result<(), ProfileError> {
    let mut seen = HashSet::new();
    for ext in extensions {
        if !seen.insert(ext.oid.as_bytes()) {
            return Err(ProfileError::DuplicateExtension {
                oid: ext.oid.to_id_string(),
            });
        }
        if let ParsedExtension::ParseError { .. } = ext.parsed_extension() {
            return Err(malformed_ext(&ext.oid));
        }
    }
    Ok(())
}

/// The URI SANs of `cert`, checking SAN criticality when the subject is empty.
fn uri_sans<'a>(cert: &'a X509Certificate<'a>) -> Result<Vec<&'a str>, ProfileError> {
    let tbs = &cert.tbs_certificate;
    let san = tbs
        .subject_alternative_name()
        .map_err(|_| malformed_ext(&x509_parser::oid_registry::OID_X509_EXT_SUBJECT_ALT_NAME))?;
    let Some(san) = san else {
        return Ok(Vec::new());
    };
    if tbs.subject().iter().next().is_none() && !san.critical {
        return Err(ProfileError::SanNotCritical);
    }
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect())
}

/// The SPIFFE IDs a CA certificate carries, in SAN order, each checked to be a valid
/// SPIFFE ID without a path (a trust domain ID), with its trust domain.
///
/// Only SPIFFE IDs are constrained; the scheme is matched case-insensitively here so
/// `SPIFFE://..` cannot slip past as "not a SPIFFE ID". Lazy, so a caller that also
/// checks each trust domain reports the first broken rule in SAN order.
fn ca_spiffe_ids(
    uris: Vec<&str>,
) -> impl Iterator<Item = Result<(TrustDomain, &str), ProfileError>> {
    uris.into_iter()
        .filter(|uri| {
            uri.get(..7)
                .is_some_and(|scheme| scheme.eq_ignore_ascii_case("spiffe:"))
        })
        .map(|uri| {
            let (td, path) =
                validate_spiffe_id(uri).map_err(|source| ProfileError::InvalidSpiffeId {
                    uri: uri.to_owned(),
                    source,
                })?;
            if !path.is_empty() {
                return Err(ProfileError::SigningCertPath {
                    spiffe_id: uri.to_owned(),
                });
            }
            Ok((td, uri))
        })
}

/// The first extension with OID `oid_der` (DER content bytes), if present.
fn find_extension<'a, 'b>(
    extensions: &'b [X509Extension<'a>],
    oid_der: &[u8],
) -> Option<&'b X509Extension<'a>> {
    extensions.iter().find(|ext| ext.oid.as_bytes() == oid_der)
}

/// Requires the claims to name the same task and client as the URI SAN.
fn check_claims_match(san: &TaskSpiffeId, claims: &TaskClaims) -> Result<(), ProfileError> {
    if claims.task_id != san.task {
        return Err(ProfileError::ClaimsTaskMismatch {
            san: san.task,
            claims: claims.task_id,
        });
    }
    if claims.client_id != san.client {
        return Err(ProfileError::ClaimsClientMismatch {
            san: san.client.clone(),
            claims: claims.client_id.clone(),
        });
    }
    Ok(())
}

/// A `MalformedExtension` error for `oid`.
fn malformed_ext(oid: &x509_parser::oid_registry::Oid<'_>) -> ProfileError {
    ProfileError::MalformedExtension {
        oid: oid.to_id_string(),
    }
}

/// Lowercase hex of the serial's magnitude: leading zero bytes (DER sign padding) dropped,
/// at least one byte kept.
fn serial_hex(raw: &[u8]) -> String {
    let start = raw
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    raw[start..].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod node_ca_tests;
#[cfg(test)]
mod tests;

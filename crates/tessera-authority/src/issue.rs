//! Issuing X.509-SVIDs.

use std::time::Duration;

use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, PublicKeyData, SanType, SignatureAlgorithm,
};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use tessera_identity::{NodeId, TaskClaims};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::AuthorityError;
use crate::ca::{SigningCa, random_serial};
use crate::keys::ForeignKey;

/// What to issue.
#[derive(Clone, Copy, Debug)]
pub struct SvidSpec<'a> {
    /// The SPIFFE ID to put in the URI SAN; must be in the authority's trust domain.
    pub spiffe_id: &'a str,
    /// Requested lifetime; capped by `not_after_cap` and by the CA's own expiry.
    pub ttl: Duration,
    /// Absolute upper bound for notAfter, unix seconds (a task's deadline).
    pub not_after_cap: Option<i64>,
    /// Task claims to embed in the claims extension.
    pub claims: Option<&'a TaskClaims>,
}

/// An issued SVID with its private key. `Debug` never prints the key.
#[derive(Clone)]
pub struct IssuedSvid {
    /// The SPIFFE ID in the certificate.
    pub spiffe_id: String,
    /// Leaf first, then any intermediates (DER).
    pub chain_der: Vec<Vec<u8>>,
    /// The private key, PKCS#8 DER; zeroed on drop.
    pub key_pkcs8_der: Zeroizing<Vec<u8>>,
    /// Serial number, lower-case hex.
    pub serial_hex: String,
    /// notBefore, unix seconds.
    pub not_before_unix: i64,
    /// notAfter, unix seconds.
    pub not_after_unix: i64,
    /// The node whose CA signed it, for an authority built from a node CA
    /// ([`crate::Authority::from_node_ca`]); `None` when a root or upstream CA signed it.
    /// Audit records name it.
    pub issuer_node: Option<NodeId>,
}

/// An SVID certificate the authority signed for someone else's public key
/// ([`crate::Authority::issue_for_key`]): the private key never was here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedSvid {
    /// The SPIFFE ID in the certificate.
    pub spiffe_id: String,
    /// Leaf first, then any intermediates (DER).
    pub chain_der: Vec<Vec<u8>>,
    /// Serial number, lower-case hex.
    pub serial_hex: String,
    /// notBefore, unix seconds.
    pub not_before_unix: i64,
    /// notAfter, unix seconds.
    pub not_after_unix: i64,
    /// The node whose CA signed it, if a node CA did.
    pub issuer_node: Option<NodeId>,
}

impl SignedSvid {
    /// Midpoint of the validity: when the holder should ask for the next one.
    pub fn half_life_unix(&self) -> i64 {
        self.not_before_unix + (self.not_after_unix - self.not_before_unix) / 2
    }
}

impl std::fmt::Debug for IssuedSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedSvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("serial_hex", &self.serial_hex)
            .field("not_before_unix", &self.not_before_unix)
            .field("not_after_unix", &self.not_after_unix)
            .field("issuer_node", &self.issuer_node)
            .field("key_pkcs8_der", &"<redacted>")
            .finish()
    }
}

impl IssuedSvid {
    /// Concatenated DER chain, the Workload API's `x509_svid` field.
    pub fn chain_concat(&self) -> Vec<u8> {
        self.chain_der.concat()
    }

    /// Midpoint of the validity: when a holder should rotate.
    pub fn half_life_unix(&self) -> i64 {
        self.not_before_unix + (self.not_after_unix - self.not_before_unix) / 2
    }
}

/// A fresh P-256 key for one SVID: its PKCS#8 document, which also holds the public key.
///
/// Why not `rcgen::KeyPair::generate_for`: it generates the PKCS#8 document, then parses
/// it back into a signing key, which derives the public key a second time (a P-256 base
/// point multiplication, ~4 % of the agent's CPU under a BeginTask load). An SVID key never
/// signs anything here; the certificate needs only its public half, which ring's PKCS#8
/// document carries in its last bytes.
struct LeafKey {
    pkcs8: Zeroizing<Vec<u8>>,
}

/// The end of ring's P-256 PKCS#8 v1 document: `[1] { BIT STRING { 0x00, 0x04 ‖ X ‖ Y } }`,
/// the ECPrivateKey's public key (RFC 5915), an uncompressed point of 65 bytes.
const PUBLIC_KEY_TRAILER: [u8; 5] = [0xa1, 0x44, 0x03, 0x42, 0x00];
const PUBLIC_KEY_LEN: usize = 65;

impl LeafKey {
    fn generate() -> Result<LeafKey, AuthorityError> {
        let document =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &SystemRandom::new())
                .map_err(|_| AuthorityError::KeyGeneration("the system RNG failed".into()))?;
        let pkcs8 = Zeroizing::new(document.as_ref().to_vec());
        let Some(trailer_at) = pkcs8
            .len()
            .checked_sub(PUBLIC_KEY_LEN + PUBLIC_KEY_TRAILER.len())
        else {
            return Err(AuthorityError::KeyGeneration(
                "PKCS#8 document too short".into(),
            ));
        };
        let (trailer, point) = pkcs8[trailer_at..].split_at(PUBLIC_KEY_TRAILER.len());
        if trailer != PUBLIC_KEY_TRAILER || point[0] != 0x04 {
            return Err(AuthorityError::KeyGeneration(
                "unexpected PKCS#8 layout: no uncompressed public key at its end".into(),
            ));
        }
        Ok(LeafKey { pkcs8 })
    }
}

impl PublicKeyData for LeafKey {
    fn der_bytes(&self) -> &[u8] {
        &self.pkcs8[self.pkcs8.len() - PUBLIC_KEY_LEN..]
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// Clock skew allowance: certificates are valid a little before they are made.
const BACKDATE: time::Duration = time::Duration::seconds(10);

/// Issues an SVID with a fresh key, signed by `ca`.
pub(crate) fn issue(
    ca: &SigningCa,
    trust_domain: &tessera_identity::TrustDomain,
    spec: &SvidSpec<'_>,
    now: OffsetDateTime,
) -> Result<IssuedSvid, AuthorityError> {
    let key = LeafKey::generate()?;
    let signed = sign_leaf(ca, trust_domain, spec, &key, now)?;
    Ok(IssuedSvid {
        spiffe_id: signed.spiffe_id,
        chain_der: signed.chain_der,
        key_pkcs8_der: key.pkcs8,
        serial_hex: signed.serial_hex,
        not_before_unix: signed.not_before_unix,
        not_after_unix: signed.not_after_unix,
        issuer_node: None,
    })
}

/// Signs an SVID for the DER SubjectPublicKeyInfo `public_key` (ECDSA P-256 only).
pub(crate) fn issue_for_key(
    ca: &SigningCa,
    trust_domain: &tessera_identity::TrustDomain,
    spec: &SvidSpec<'_>,
    public_key: &[u8],
    now: OffsetDateTime,
) -> Result<SignedSvid, AuthorityError> {
    let key = ForeignKey::from_spki_der(public_key)?;
    sign_leaf(ca, trust_domain, spec, &key, now)
}

/// Signs the leaf `spec` asks for, for `key`, by `ca`, and checks it back.
fn sign_leaf(
    ca: &SigningCa,
    trust_domain: &tessera_identity::TrustDomain,
    spec: &SvidSpec<'_>,
    key: &impl PublicKeyData,
    now: OffsetDateTime,
) -> Result<SignedSvid, AuthorityError> {
    let (td, path) = tessera_identity::validate_spiffe_id(spec.spiffe_id)
        .map_err(|e| AuthorityError::InvalidRequest(e.to_string()))?;
    if &td != trust_domain {
        return Err(AuthorityError::InvalidRequest(format!(
            "{} is not in trust domain {}",
            spec.spiffe_id,
            trust_domain.as_str()
        )));
    }
    if path.is_empty() {
        return Err(AuthorityError::InvalidRequest(
            "an SVID's SPIFFE ID needs a path".into(),
        ));
    }
    let now_unix = now.unix_timestamp();
    let ttl = i64::try_from(spec.ttl.as_secs()).unwrap_or(i64::MAX);
    let mut not_after = now_unix.saturating_add(ttl).min(ca.not_after);
    if let Some(cap) = spec.not_after_cap {
        not_after = not_after.min(cap);
    }
    if not_after <= now_unix {
        if ca.not_after <= now_unix {
            return Err(AuthorityError::CaExpired {
                ca_not_after: ca.not_after,
            });
        }
        return Err(AuthorityError::InvalidRequest(
            "requested validity ends before it starts".into(),
        ));
    }

    let mut params = CertificateParams::default();
    // Empty subject: rcgen then marks the SAN critical, as the X.509-SVID spec asks.
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names =
        vec![SanType::URI(spec.spiffe_id.try_into().map_err(|_| {
            AuthorityError::InvalidRequest("SPIFFE ID is not IA5".into())
        })?)];
    // ExplicitNoCa writes BasicConstraints cA=false; NoCa would omit it and
    // standard clients reject such a leaf.
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    params.not_before = (now - BACKDATE)
        .max(OffsetDateTime::from_unix_timestamp(ca.not_before).unwrap_or(now - BACKDATE));
    params.not_after = OffsetDateTime::from_unix_timestamp(not_after)
        .map_err(|e| AuthorityError::InvalidRequest(e.to_string()))?;
    if let Some(claims) = spec.claims {
        claims
            .validate()
            .map_err(|e| AuthorityError::InvalidRequest(format!("task claims: {e}")))?;
        let mut ext = CustomExtension::from_oid_content(
            tessera_identity::TASK_CLAIMS_OID_ARCS,
            claims.to_der(),
        );
        ext.set_criticality(false);
        params.custom_extensions.push(ext);
    }

    let cert = params.signed_by(key, &ca.issuer)?;
    let leaf = cert.der().to_vec();
    // Parse back what we made: nothing that fails the profile leaves the authority.
    let checked = tessera_identity::check_leaf_svid(&leaf)?;
    if spec.claims.is_some() && checked.claims.is_none() {
        return Err(AuthorityError::InvalidRequest(
            "claims extension did not survive encoding".into(),
        ));
    }

    let mut chain_der = Vec::with_capacity(1 + ca.chain_after_leaf.len());
    chain_der.push(leaf);
    chain_der.extend(ca.chain_after_leaf.iter().cloned());
    Ok(SignedSvid {
        spiffe_id: spec.spiffe_id.to_owned(),
        chain_der,
        serial_hex: checked.serial_hex,
        not_before_unix: checked.not_before_unix,
        not_after_unix: checked.not_after_unix,
        issuer_node: None,
    })
}

//! Keys that come from elsewhere: a public key the authority signs a certificate for
//! (a node's CA key, an MCP server's or a node's SVID key, sent to the server), and a
//! node CA's private key, made and kept on its node.

use rcgen::{KeyPair, PublicKeyData, SignatureAlgorithm};
use zeroize::Zeroizing;

use crate::AuthorityError;

/// Largest SubjectPublicKeyInfo accepted, in bytes, checked before parsing. A P-256 one
/// is 91 bytes.
const MAX_SPKI_LEN: usize = 1024;

/// Length of an uncompressed P-256 point (`0x04 ‖ X ‖ Y`).
const P256_POINT_LEN: usize = 65;

/// A public key the authority certifies without holding its private half: ECDSA P-256,
/// the only kind Tessera issues for (DESIGN: ECDSA P-256 by default).
pub(crate) struct ForeignKey {
    point: Vec<u8>,
}

impl ForeignKey {
    /// Parses a DER SubjectPublicKeyInfo, refusing anything but an uncompressed P-256 key.
    pub(crate) fn from_spki_der(der: &[u8]) -> Result<ForeignKey, AuthorityError> {
        let unsupported = |reason: String| AuthorityError::UnsupportedPublicKey(reason);
        if der.len() > MAX_SPKI_LEN {
            return Err(unsupported(format!(
                "{} bytes, more than the {MAX_SPKI_LEN} a public key may take",
                der.len()
            )));
        }
        let spki = rcgen::SubjectPublicKeyInfo::from_der(der)
            .map_err(|e| unsupported(format!("not a SubjectPublicKeyInfo: {e}")))?;
        if spki.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(unsupported("only ECDSA P-256 keys are certified".into()));
        }
        let point = spki.der_bytes();
        if point.len() != P256_POINT_LEN || point[0] != 0x04 {
            return Err(unsupported(
                "not an uncompressed P-256 point (65 bytes, 0x04 first)".into(),
            ));
        }
        Ok(ForeignKey {
            point: point.to_vec(),
        })
    }
}

impl PublicKeyData for ForeignKey {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// The private key of a node CA: made on the node (ECDSA P-256), never sent anywhere;
/// its public half ([`NodeCaKey::public_key_der`]) goes to the server, which signs the
/// node CA certificate for it ([`crate::Authority::sign_node_ca`]). `Debug` never
/// prints the key.
pub struct NodeCaKey {
    pub(crate) key: KeyPair,
}

impl std::fmt::Debug for NodeCaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCaKey").finish_non_exhaustive()
    }
}

impl NodeCaKey {
    /// A fresh P-256 key.
    ///
    /// # Errors
    /// [`AuthorityError::Rcgen`] if the system RNG fails.
    pub fn generate() -> Result<NodeCaKey, AuthorityError> {
        Ok(NodeCaKey {
            key: KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
        })
    }

    /// A key saved with [`NodeCaKey::to_pkcs8_der`].
    ///
    /// # Errors
    /// [`AuthorityError::UnsupportedPublicKey`] for anything but a P-256 PKCS#8 key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<NodeCaKey, AuthorityError> {
        let key = KeyPair::try_from(der)
            .map_err(|e| AuthorityError::UnsupportedPublicKey(format!("node CA key: {e}")))?;
        if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(AuthorityError::UnsupportedPublicKey(
                "node CA key: only ECDSA P-256".into(),
            ));
        }
        Ok(NodeCaKey { key })
    }

    /// The public key, a DER SubjectPublicKeyInfo: what the node sends the server.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.key.subject_public_key_info()
    }

    /// The private key as PKCS#8 DER, to keep on the node (mode 0600); zeroed on drop.
    pub fn to_pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.key.serialize_der())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_ca_key_round_trips_and_its_public_half_is_accepted() {
        let key = NodeCaKey::generate().unwrap();
        let again = NodeCaKey::from_pkcs8_der(&key.to_pkcs8_der()).unwrap();
        assert_eq!(again.public_key_der(), key.public_key_der());
        let foreign = ForeignKey::from_spki_der(&key.public_key_der()).unwrap();
        assert_eq!(foreign.der_bytes(), key.key.public_key_raw());
        assert!(!format!("{key:?}").contains("key:"));
    }

    #[test]
    fn other_public_keys_are_refused() {
        let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let ed25519 = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let p256 = KeyPair::generate().unwrap().subject_public_key_info();
        let mut trailing = p256.clone();
        trailing.push(0);
        let mut compressed = p256.clone();
        // Flip the point's 0x04 prefix to 0x02 (a compressed-form marker) in place.
        let at = compressed.len() - P256_POINT_LEN;
        compressed[at] = 0x02;
        for (case, der) in [
            ("P-384", p384.subject_public_key_info()),
            ("Ed25519", ed25519.subject_public_key_info()),
            ("trailing byte", trailing),
            ("not uncompressed", compressed),
            ("garbage", vec![0x30, 0x03, 0x02, 0x01, 0x01]),
            ("too large", vec![0x30; MAX_SPKI_LEN + 1]),
        ] {
            assert!(
                matches!(
                    ForeignKey::from_spki_der(&der),
                    Err(AuthorityError::UnsupportedPublicKey(_))
                ),
                "{case}"
            );
        }
        let p384_pkcs8 = p384.serialize_der();
        assert!(NodeCaKey::from_pkcs8_der(&p384_pkcs8).is_err());
    }
}

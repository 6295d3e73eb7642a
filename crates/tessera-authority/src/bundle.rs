//! The trust bundle: every CA certificate a verifier must accept right now.

use tessera_identity::TrustDomain;

/// The CA certificates of one trust domain, in the order active, prepared, retiring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustBundle {
    /// The trust domain the bundle is for.
    pub trust_domain: TrustDomain,
    /// DER certificates.
    pub certs: Vec<Vec<u8>>,
}

impl TrustBundle {
    /// Concatenated DER, the Workload API's `bundle` field.
    pub fn concat_der(&self) -> Vec<u8> {
        self.certs.concat()
    }

    /// PEM text of every certificate.
    pub fn to_pem(&self) -> String {
        crate::pem::certs_to_pem(&self.certs)
    }
}

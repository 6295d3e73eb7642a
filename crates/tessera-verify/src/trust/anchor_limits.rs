//! Trust anchors' `pathLenConstraint`, which webpki does not apply.
//!
//! To webpki a trust anchor is a name and a key, not a certificate, so the anchor's
//! BasicConstraints never count: a root that says "I sign leaves only" (the agent's
//! self-signed root has pathLen 0) would still accept a leaf under an intermediate it
//! signed. [`AnchorLimits`] keeps each constrained anchor's limit and re-checks a chain
//! that brought intermediates along: a path is accepted only if its intermediates fit
//! the limit of the anchor it ends at. A leaf signed directly by an anchor (the usual
//! SVID) needs no second look.
//!
//! A node CA (cluster mode) is never an anchor: it may sign clients and tasks only, a
//! rule checked on the intermediates a peer sends (`tls::check_intermediates`), which a
//! node CA placed in a bundle would skip. [`AnchorLimits::of`] refuses such a bundle.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{EndEntityCert, KeyUsage, VerifiedPath};

/// The constrained anchors of one bundle: (subject, SPKI, pathLen), both DER as webpki
/// holds them.
#[derive(Clone, Debug, Default)]
pub(crate) struct AnchorLimits {
    constrained: Vec<(Vec<u8>, Vec<u8>, u32)>,
}

impl AnchorLimits {
    /// The limits of the CA certificates `bundle` (the ones the root store was built
    /// from).
    ///
    /// # Errors
    /// A certificate that is not one parseable certificate, whose BasicConstraints is
    /// malformed, or that is a node CA.
    pub(crate) fn of<'a>(
        bundle: impl IntoIterator<Item = &'a CertificateDer<'a>>,
    ) -> Result<Self, String> {
        let mut constrained = Vec::new();
        for cert in bundle {
            if tessera_identity::has_node_ca_extension(cert.as_ref()).map_err(|e| e.to_string())? {
                return Err("a node CA is not a trust anchor; the bundle holds roots".into());
            }
            let Some(limit) =
                tessera_identity::ca_path_len(cert.as_ref()).map_err(|e| e.to_string())?
            else {
                continue;
            };
            let anchor = webpki::anchor_from_trusted_cert(cert).map_err(|e| e.to_string())?;
            constrained.push((
                anchor.subject.as_ref().to_vec(),
                anchor.subject_public_key_info.as_ref().to_vec(),
                limit,
            ));
        }
        Ok(Self { constrained })
    }

    /// Whether any anchor sets a limit.
    pub(crate) fn any(&self) -> bool {
        !self.constrained.is_empty()
    }

    fn limit_of(&self, path: &VerifiedPath<'_>) -> Option<u32> {
        let anchor = path.anchor();
        self.constrained
            .iter()
            .find(|(subject, spki, _)| {
                subject.as_slice() == anchor.subject.as_ref()
                    && spki.as_slice() == anchor.subject_public_key_info.as_ref()
            })
            .map(|(_, _, limit)| *limit)
    }

    /// Checks that `end_entity` has a path to `roots` through `intermediates` whose
    /// length its anchor allows. Call it after the normal verification succeeded.
    ///
    /// # Errors
    /// webpki's error for the best path it found, `PathLenConstraintViolated` when
    /// every path was too long for its anchor.
    pub(crate) fn check(
        &self,
        roots: &RootCertStore,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: KeyUsage,
        provider: &Arc<CryptoProvider>,
    ) -> Result<(), webpki::Error> {
        if intermediates.is_empty() || !self.any() {
            return Ok(());
        }
        let leaf = EndEntityCert::try_from(end_entity)?;
        let within = |path: &VerifiedPath<'_>| match self.limit_of(path) {
            Some(limit) if path.intermediate_certificates().count() > limit as usize => {
                Err(webpki::Error::PathLenConstraintViolated)
            }
            _ => Ok(()),
        };
        leaf.verify_for_usage(
            provider.signature_verification_algorithms.all,
            &roots.roots,
            intermediates,
            now,
            usage,
            None,
            Some(&within),
        )
        .map(|_| ())
    }
}

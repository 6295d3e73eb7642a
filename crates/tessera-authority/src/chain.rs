//! Checks on a CA chain the authority is handed (an upstream intermediate, a node CA from
//! the server) before it signs with it: every certificate verifies under the next and the
//! last under a root, and the path lengths leave room for what it will sign. Done at
//! load, so a mixed-up file or a misfit chain fails the start rather than every handshake.

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::AuthorityError;

/// Parses one DER certificate.
fn parse(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| e.to_string())
}

/// Verifies `chain` (closest to the leaf first) link by link, the last under one of
/// `roots`, and returns that root.
pub(crate) fn verify_to_roots<'r>(
    chain: &[Vec<u8>],
    roots: &'r [Vec<u8>],
) -> Result<&'r [u8], String> {
    for (i, der) in chain.iter().enumerate() {
        let child = parse(der)?;
        let signed_by = |issuer_der: &[u8]| {
            parse(issuer_der)
                .map(|issuer| child.verify_signature(Some(issuer.public_key())).is_ok())
                .unwrap_or(false)
        };
        match chain.get(i + 1) {
            Some(next) if signed_by(next) => {}
            Some(_) => {
                return Err(format!(
                    "certificate '{}' does not verify under the next chain certificate",
                    child.subject()
                ));
            }
            None => {
                return roots
                    .iter()
                    .map(Vec::as_slice)
                    .find(|root| signed_by(root))
                    .ok_or_else(|| {
                        format!(
                            "certificate '{}' does not verify under any bundle root",
                            child.subject()
                        )
                    });
            }
        }
    }
    Err("the CA chain is empty".into())
}

/// Requires every CA of the path `chain` → `root` to allow the CAs below it: `below`
/// more under `chain[0]` (1 when `chain[0]` will sign node CAs, 0 when it signs leaves
/// only), then each certificate one more than the one under it. Verifiers apply these
/// constraints (webpki to intermediates, `AnchorLimits` to roots); checking them here
/// turns a chain that could only produce refused certificates into an error at load.
pub(crate) fn check_path_lens(
    chain: &[Vec<u8>],
    root: &[u8],
    below: u32,
) -> Result<(), AuthorityError> {
    for (needed, der) in (below..).zip(chain.iter().map(Vec::as_slice).chain([root])) {
        let path_len = tessera_identity::ca_path_len(der)
            .map_err(|e| AuthorityError::CaChain(e.to_string()))?;
        if let Some(path_len) = path_len
            && path_len < needed
        {
            let subject = X509Certificate::from_der(der)
                .map(|(_, c)| c.subject().to_string())
                .unwrap_or_default();
            return Err(AuthorityError::PathLenTooShort {
                subject,
                path_len,
                needed,
            });
        }
    }
    Ok(())
}

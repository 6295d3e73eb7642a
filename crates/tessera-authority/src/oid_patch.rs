//! Writing the task-claims extension under its real OID.
//!
//! The claims OID lives under the UUID arc `2.25`, whose second arc is a 128-bit
//! integer. rcgen (through yasna) encodes OID arcs as `u64`, so it cannot write
//! that OID. Rather than hand-assembling certificates, we let rcgen write the
//! extension under a *placeholder* OID whose DER encoding has exactly the same
//! length, and swap the bytes in two places that must agree:
//!
//! 1. in the TBSCertificate handed to the signing key (so the signature covers
//!    the real OID), done by [`PatchingKey::sign`], and
//! 2. in the finished certificate DER, done by [`patch_certificate`].
//!
//! Because both are the same length, no DER length changes, and the result is a
//! certificate whose signature verifies over the bytes it contains. The placeholder
//! must occur exactly once in a TBSCertificate; anything else is refused. Issued
//! certificates are then parsed back and profile-checked by the caller, so a
//! broken patch can never leave the authority.

use rcgen::{KeyPair, PublicKeyData, SignatureAlgorithm, SigningKey};

/// The claims extension OID, as it appears on the wire (tag, length, content).
pub(crate) struct ClaimsOid {
    /// Arcs rcgen is asked to write: `2.25.<fillers>`.
    pub(crate) placeholder_arcs: Vec<u64>,
    placeholder_tlv: Vec<u8>,
    real_tlv: Vec<u8>,
}

impl ClaimsOid {
    /// Builds the placeholder for the real OID content bytes (no tag or length).
    pub(crate) fn new(real_content: &[u8]) -> Self {
        // First content byte encodes "2.25" (2*40 + 25 = 105).
        assert_eq!(
            real_content.first(),
            Some(&105),
            "claims OID must be under 2.25"
        );
        let mut remaining = real_content.len() - 1;
        let mut arcs = vec![2u64, 25];
        let mut content = vec![105u8];
        // Fill with arcs of at most 9 base-128 bytes each; each value has the
        // exact encoded length we ask for and a recognisable bit pattern.
        while remaining > 0 {
            let n = remaining.min(9);
            let value: u64 = if n == 1 {
                0x54 // 'T'
            } else {
                // Smallest value with n base-128 digits, plus a marker below it.
                (1u64 << (7 * (n - 1))) | (0x5445_5353_4552_4121 & ((1u64 << (7 * (n - 1))) - 1))
            };
            content.extend(base128(value));
            arcs.push(value);
            remaining -= n;
        }
        debug_assert_eq!(content.len(), real_content.len());
        ClaimsOid {
            placeholder_arcs: arcs,
            placeholder_tlv: tlv(&content),
            real_tlv: tlv(real_content),
        }
    }

    /// Replaces the single placeholder occurrence in `bytes`; errors unless exactly one.
    fn patch(&self, bytes: &mut [u8]) -> Result<bool, rcgen::Error> {
        let needle = &self.placeholder_tlv;
        let mut positions = bytes
            .windows(needle.len())
            .enumerate()
            .filter(|(_, w)| w == needle)
            .map(|(i, _)| i);
        let Some(first) = positions.next() else {
            return Ok(false);
        };
        if positions.next().is_some() {
            return Err(rcgen::Error::RemoteKeyError);
        }
        bytes[first..first + needle.len()].copy_from_slice(&self.real_tlv);
        Ok(true)
    }
}

fn base128(mut v: u64) -> Vec<u8> {
    let mut out = vec![(v & 0x7f) as u8];
    v >>= 7;
    while v > 0 {
        out.push(((v & 0x7f) as u8) | 0x80);
        v >>= 7;
    }
    out.reverse();
    out
}

fn tlv(content: &[u8]) -> Vec<u8> {
    assert!(content.len() < 128, "OID too long for short-form length");
    let mut out = vec![0x06, content.len() as u8];
    out.extend_from_slice(content);
    out
}

/// A CA key that patches the claims OID into what it signs.
pub(crate) struct PatchingKey {
    key: KeyPair,
    oid: std::sync::Arc<ClaimsOid>,
}

impl PatchingKey {
    pub(crate) fn new(key: KeyPair, oid: std::sync::Arc<ClaimsOid>) -> Self {
        PatchingKey { key, oid }
    }
}

impl PublicKeyData for PatchingKey {
    fn der_bytes(&self) -> &[u8] {
        self.key.der_bytes()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.key.algorithm()
    }
}

impl SigningKey for PatchingKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let mut tbs = msg.to_vec();
        self.oid.patch(&mut tbs)?;
        self.key.sign(&tbs)
    }
}

/// Applies the same patch to a finished certificate; see the module docs.
pub(crate) fn patch_certificate(oid: &ClaimsOid, der: &mut [u8]) -> Result<bool, rcgen::Error> {
    oid.patch(der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_has_the_real_oids_length_for_every_size() {
        for len in 2..40 {
            let mut real = vec![105u8];
            real.extend(std::iter::repeat_n(0x81, len - 2));
            real.push(0x01);
            let oid = ClaimsOid::new(&real);
            assert_eq!(oid.placeholder_tlv.len(), oid.real_tlv.len(), "len {len}");
        }
    }

    #[test]
    fn patch_refuses_two_occurrences() {
        let oid = ClaimsOid::new(tessera_identity::task_claims_oid_der());
        let mut twice = oid.placeholder_tlv.clone();
        twice.extend(oid.placeholder_tlv.clone());
        assert!(oid.patch(&mut twice).is_err());
        let mut once = oid.placeholder_tlv.clone();
        assert!(oid.patch(&mut once).unwrap());
        assert_eq!(once, oid.real_tlv);
    }
}

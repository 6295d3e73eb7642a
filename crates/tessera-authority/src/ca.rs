//! One signing CA: its certificate, key and the chain it contributes to SVIDs.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::AuthorityError;
use crate::pem;

/// A CA able to sign SVIDs.
pub(crate) struct SigningCa {
    /// File stem in the CA directory (self-signed) or "upstream".
    pub(crate) name: String,
    /// The CA certificate (DER).
    pub(crate) cert_der: Vec<u8>,
    /// Certificates that follow the leaf in an SVID chain (empty for a root).
    pub(crate) chain_after_leaf: Vec<Vec<u8>>,
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
    pub(crate) issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for SigningCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("SigningCa")
            .field("name", &self.name)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A fresh, positive, minimally encoded 128-bit serial number: the issuing time in
/// unix milliseconds (48 bits, big-endian) followed by 80 random bits.
///
/// Why time first: the store indexes every task SVID by serial, and random serials
/// scatter those inserts over the whole index, so each durable BeginTask commit wrote
/// one more index page to the WAL and fsynced it (~30 µs per page here). Time-ordered
/// serials append to the index's last page, which a group commit shares. The 80 random
/// bits keep serials unguessable and unique (CA/Browser Forum BR 7.1 asks for at
/// least 64 bits from a CSPRNG); the time adds nothing an attacker does not already
/// read in `notBefore`.
pub(crate) fn random_serial() -> SerialNumber {
    serial_at(
        OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000,
        rand::random(),
    )
}

fn serial_at(unix_ms: i128, random: [u8; 10]) -> SerialNumber {
    let mut bytes = [0u8; 16];
    // 48 bits of milliseconds last until the year 10889; clamping keeps the first
    // byte in 0x01..=0x7f (a positive, minimal DER INTEGER) whatever the clock says.
    let ms = u64::try_from(unix_ms)
        .unwrap_or(0)
        .clamp(1 << 40, (1 << 47) - 1);
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6..].copy_from_slice(&random);
    SerialNumber::from_slice(&bytes)
}

/// Validity of a DER certificate, unix seconds.
pub(crate) fn validity(der: &[u8]) -> Result<(i64, i64), String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    Ok((
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    ))
}

impl SigningCa {
    /// Creates a new self-signed root CA for `trust_domain`, valid from `now` for `ttl`,
    /// allowing `path_len` CAs below it (0 standalone, 1 for a cluster's node CAs).
    pub(crate) fn generate_root(
        trust_domain: &tessera_identity::TrustDomain,
        now: OffsetDateTime,
        ttl: time::Duration,
        path_len: u8,
    ) -> Result<(SigningCa, String), AuthorityError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Tessera");
        dn.push(
            DnType::CommonName,
            format!("Tessera CA {}", trust_domain.as_str()),
        );
        params.distinguished_name = dn;
        // A signing certificate may carry the trust domain's ID, without a path.
        params.subject_alt_names =
            vec![SanType::URI(trust_domain.id_string().try_into().map_err(
                |_| AuthorityError::InvalidRequest("trust domain not IA5".into()),
            )?)];
        // pathLen 0: a standalone root signs leaves only; 1: a cluster's, node CAs too.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial());
        params.not_before = now - time::Duration::seconds(10);
        params.not_after = now + ttl;
        let cert = params.self_signed(&key)?;
        let cert_der = cert.der().to_vec();
        let key_pem = key.serialize_pem();
        let name = format!("ca-{}", hex_serial(&cert_der));
        let ca = SigningCa::from_parts(name, cert_der, Vec::new(), key)?;
        Ok((ca, key_pem))
    }

    /// Assembles a CA from a certificate and its key; checks they belong together.
    pub(crate) fn from_parts(
        name: String,
        cert_der: Vec<u8>,
        chain_after_leaf: Vec<Vec<u8>>,
        key: KeyPair,
    ) -> Result<SigningCa, AuthorityError> {
        tessera_identity::check_signing_cert(&cert_der)
            .map_err(|e| AuthorityError::UpstreamCa(e.to_string()))?;
        let (_, parsed) = X509Certificate::from_der(&cert_der)
            .map_err(|e| AuthorityError::UpstreamCa(e.to_string()))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(AuthorityError::UpstreamKeyMismatch);
        }
        let not_before = parsed.validity().not_before.timestamp();
        let not_after = parsed.validity().not_after.timestamp();
        let issuer = Issuer::from_ca_cert_der(&cert_der.as_slice().into(), key)?;
        Ok(SigningCa {
            name,
            cert_der,
            chain_after_leaf,
            not_before,
            not_after,
            issuer,
        })
    }

    /// Loads a CA written by [`SigningCa::save`].
    pub(crate) fn load(dir: &Path, name: &str) -> Result<SigningCa, AuthorityError> {
        let cert_path = dir.join(format!("{name}.crt.pem"));
        let key_path = dir.join(format!("{name}.key.pem"));
        let mut certs = pem::read_certs(&cert_path)?;
        let key_pem = pem::read_key(&key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| AuthorityError::BadPem {
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
        let cert_der = certs.remove(0);
        SigningCa::from_parts(name.to_owned(), cert_der, Vec::new(), key)
    }

    /// Writes the key (0600) then the certificate into `dir`.
    pub(crate) fn save(&self, dir: &Path, key_pem: &str) -> Result<(), AuthorityError> {
        pem::write_atomic(
            &dir.join(format!("{}.key.pem", self.name)),
            key_pem.as_bytes(),
            0o600,
        )?;
        pem::write_atomic(
            &dir.join(format!("{}.crt.pem", self.name)),
            pem::certs_to_pem(std::slice::from_ref(&self.cert_der)).as_bytes(),
            0o644,
        )
    }
}

/// Lower-case hex of a certificate's serial number.
pub(crate) fn hex_serial(der: &[u8]) -> String {
    match X509Certificate::from_der(der) {
        Ok((_, c)) => c.raw_serial().iter().map(|b| format!("{b:02x}")).collect(),
        Err(_) => "unknown".into(),
    }
}

#[cfg(test)]
mod serial_tests {
    use super::serial_at;

    fn hex(ms: i128, random: [u8; 10]) -> String {
        serial_at(ms, random)
            .to_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn serials_sort_by_issuing_time_as_hex_text() {
        // The store compares serials as lowercase hex text.
        let earlier = hex(1_764_190_000_000, [0xff; 10]);
        let later = hex(1_764_190_000_001, [0x00; 10]);
        assert_eq!(earlier.len(), 32);
        assert!(earlier < later, "{earlier} !< {later}");
    }

    #[test]
    fn serials_stay_positive_and_minimal_whatever_the_clock() {
        for ms in [-5, 0, 1_764_190_000_000, i128::MAX] {
            let bytes = serial_at(ms, [0xff; 10]).to_bytes();
            assert_eq!(bytes.len(), 16);
            assert!((0x01..=0x7f).contains(&bytes[0]), "{ms}: {bytes:02x?}");
        }
        assert_ne!(
            super::random_serial().to_bytes(),
            super::random_serial().to_bytes()
        );
    }
}

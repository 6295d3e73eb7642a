//! Certificates for tests, built with rcgen.

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// A CA certificate with its key.
pub struct Ca {
    /// The certificate.
    pub cert: rcgen::Certificate,
    /// Its issuer, to sign leaves.
    pub issuer: Issuer<'static, KeyPair>,
}

/// A self-signed CA `CN=Test CA`.
pub fn ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "Test CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(1);
    let cert = params.self_signed(&key).unwrap();
    Ca {
        cert,
        issuer: Issuer::new(params, key),
    }
}

/// A leaf in the SVID profile, with these URI SANs, an optional extension, and a
/// validity ending `ttl` from now.
pub fn leaf(
    ca: &Ca,
    uris: &[&str],
    extension: Option<CustomExtension>,
    ttl: Duration,
) -> rcgen::Certificate {
    let key = KeyPair::generate().unwrap();
    build_leaf(ca, &key, uris, extension, ttl)
}

/// Like [`leaf`], for a given key.
pub fn leaf_with_key(ca: &Ca, key: &KeyPair, uris: &[&str], ttl: Duration) -> rcgen::Certificate {
    build_leaf(ca, key, uris, None, ttl)
}

fn build_leaf(
    ca: &Ca,
    key: &KeyPair,
    uris: &[&str],
    extension: Option<CustomExtension>,
    ttl: Duration,
) -> rcgen::Certificate {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::ExplicitNoCa;
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().unwrap()))
        .collect();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + ttl;
    params.custom_extensions.extend(extension);
    params.signed_by(key, &ca.issuer).unwrap()
}

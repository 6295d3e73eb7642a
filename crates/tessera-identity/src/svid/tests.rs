//! One certificate per profile rule, built with rcgen.

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber, date_time_ymd,
};

use super::*;
use crate::claims::TASK_CLAIMS_OID_ARCS;
use crate::claims::tests::sample_claims;

const TASK_ID: &str = "spiffe://acme.corp/client/code-reviewer/task/01ARZ3NDEKTSV4RRFFQ69G5FAV";
const CLIENT_ID: &str = "spiffe://acme.corp/client/code-reviewer";
const KEY_USAGE: &[u64] = &[2, 5, 29, 15];
const SUBJECT_ALT_NAME: &[u64] = &[2, 5, 29, 17];

pub(super) fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

/// A leaf that passes every check: empty subject (so a critical SAN), one URI SAN,
/// cA=false, critical KeyUsage digitalSignature, EKU serverAuth+clientAuth.
pub(super) fn leaf(spiffe_id: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = vec![uri(spiffe_id)];
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.serial_number = Some(SerialNumber::from(vec![0x00, 0x8a, 0x01]));
    p.not_before = date_time_ymd(2030, 1, 1);
    p.not_after = date_time_ymd(2030, 1, 2);
    p
}

/// A task leaf carrying `claims` in a non-critical extension.
fn task_leaf(claims: &[u8]) -> CertificateParams {
    let mut p = leaf(TASK_ID);
    p.custom_extensions = vec![CustomExtension::from_oid_content(
        TASK_CLAIMS_OID_ARCS,
        claims.to_vec(),
    )];
    p
}

/// A signing certificate that passes every check.
pub(super) fn ca() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, "Tessera CA");
    p.subject_alt_names = vec![uri("spiffe://acme.corp")];
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

pub(super) fn der(params: &CertificateParams) -> Vec<u8> {
    let key = KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().der().to_vec()
}

/// A custom non-critical KeyUsage with only digitalSignature (BIT STRING 07 80).
fn non_critical_key_usage() -> CustomExtension {
    CustomExtension::from_oid_content(KEY_USAGE, vec![0x03, 0x02, 0x07, 0x80])
}

#[test]
fn good_client_leaf_passes() {
    let svid = check_leaf_svid(&der(&leaf(CLIENT_ID))).unwrap();
    assert_eq!(svid.spiffe_id, CLIENT_ID);
    assert_eq!(svid.trust_domain.as_str(), "acme.corp");
    assert_eq!(svid.serial_hex, "8a01");
    assert_eq!(svid.not_before_unix, 1_893_456_000);
    assert_eq!(svid.not_after_unix, 1_893_456_000 + 86_400);
    assert_eq!(svid.claims, None);
    assert_eq!(svid.tessera_id, Some(CLIENT_ID.parse().unwrap()));
}

#[test]
fn good_task_leaf_with_claims_passes() {
    let claims = sample_claims();
    let svid = check_leaf_svid(&der(&task_leaf(&claims.to_der()))).unwrap();
    assert_eq!(svid.claims, Some(claims));
    assert!(matches!(svid.tessera_id, Some(TesseraId::Task(_))));
}

#[test]
fn task_leaf_without_claims_passes() {
    let svid = check_leaf_svid(&der(&leaf(TASK_ID))).unwrap();
    assert_eq!(svid.claims, None);
    assert_eq!(svid.tessera_id, Some(TASK_ID.parse().unwrap()));
}

#[test]
fn non_tessera_spiffe_leaf_passes_without_tessera_id() {
    let mut p = leaf("spiffe://acme.corp/ns/default/sa/web");
    p.subject_alt_names
        .push(SanType::DnsName("web.local".try_into().unwrap()));
    p.extended_key_usages.clear();
    p.key_usages.push(KeyUsagePurpose::KeyAgreement);
    let svid = check_leaf_svid(&der(&p)).unwrap();
    assert_eq!(svid.tessera_id, None);
    assert_eq!(svid.spiffe_id, "spiffe://acme.corp/ns/default/sa/web");
}

#[test]
fn leaf_with_subject_and_non_critical_san_passes() {
    let mut p = leaf(CLIENT_ID);
    p.distinguished_name
        .push(DnType::CommonName, "code-reviewer");
    assert!(check_leaf_svid(&der(&p)).is_ok());
}

#[test]
fn hostile_leaf_certificates_are_rejected() {
    type Mutate = Box<dyn Fn(&mut CertificateParams)>;
    let claims = sample_claims();
    let other_task = {
        let mut c = claims.clone();
        c.task_id = "01BX5ZZKBKACTAV9WEVGEMMVRZ".parse().unwrap();
        c.to_der()
    };
    let other_client = {
        let mut c = claims.clone();
        c.client_id = "spiffe://acme.corp/client/other".parse().unwrap();
        c.to_der()
    };
    let mut corrupted = claims.to_der();
    let last = corrupted.len() - 1;
    corrupted.truncate(last);
    let good_claims = claims.to_der();
    let cases: Vec<(&str, Mutate, ProfileError)> = vec![
        (
            "two URI SANs",
            Box::new(|p| p.subject_alt_names.push(uri("spiffe://acme.corp/client/b"))),
            ProfileError::UriSanCount { found: 2 },
        ),
        (
            "no URI SAN, only DNS",
            Box::new(|p| {
                p.subject_alt_names = vec![SanType::DnsName("x.test".try_into().unwrap())];
            }),
            ProfileError::UriSanCount { found: 0 },
        ),
        (
            "no SAN extension",
            Box::new(|p| {
                p.subject_alt_names.clear();
                p.distinguished_name.push(DnType::CommonName, "x");
            }),
            ProfileError::UriSanCount { found: 0 },
        ),
        (
            "non-SPIFFE URI SAN",
            Box::new(|p| p.subject_alt_names = vec![uri("https://acme.corp/client/a")]),
            ProfileError::InvalidSpiffeId {
                uri: "https://acme.corp/client/a".into(),
                source: IdError::WrongScheme {
                    scheme: "https".into(),
                },
            },
        ),
        (
            "malformed SPIFFE ID",
            Box::new(|p| p.subject_alt_names = vec![uri("spiffe://acme.corp/a/../b")]),
            ProfileError::InvalidSpiffeId {
                uri: "spiffe://acme.corp/a/../b".into(),
                source: IdError::DotSegment {
                    segment: "..".into(),
                },
            },
        ),
        (
            "root-path SPIFFE ID",
            Box::new(|p| p.subject_alt_names = vec![uri("spiffe://acme.corp")]),
            ProfileError::LeafRootPath {
                spiffe_id: "spiffe://acme.corp".into(),
            },
        ),
        (
            "empty subject with non-critical SAN",
            Box::new(|p| {
                p.subject_alt_names.clear();
                let uri = CLIENT_ID.as_bytes();
                let mut san = vec![0x30, u8::try_from(uri.len() + 2).unwrap(), 0x86];
                san.push(u8::try_from(uri.len()).unwrap());
                san.extend_from_slice(uri);
                p.custom_extensions
                    .push(CustomExtension::from_oid_content(SUBJECT_ALT_NAME, san));
            }),
            ProfileError::SanNotCritical,
        ),
        (
            "CA leaf",
            Box::new(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)),
            ProfileError::LeafIsCa,
        ),
        (
            "no BasicConstraints (IsCa::NoCa)",
            Box::new(|p| p.is_ca = IsCa::NoCa),
            ProfileError::MissingBasicConstraints,
        ),
        (
            "no KeyUsage",
            Box::new(|p| p.key_usages.clear()),
            ProfileError::MissingKeyUsage,
        ),
        (
            "non-critical KeyUsage",
            Box::new(|p| {
                p.key_usages.clear();
                p.custom_extensions.push(non_critical_key_usage());
            }),
            ProfileError::KeyUsageNotCritical,
        ),
        (
            "keyCertSign set",
            Box::new(|p| p.key_usages.push(KeyUsagePurpose::KeyCertSign)),
            ProfileError::LeafKeyCertSign,
        ),
        (
            "cRLSign set",
            Box::new(|p| p.key_usages.push(KeyUsagePurpose::CrlSign)),
            ProfileError::LeafCrlSign,
        ),
        (
            "missing digitalSignature",
            Box::new(|p| p.key_usages = vec![KeyUsagePurpose::KeyEncipherment]),
            ProfileError::MissingDigitalSignature,
        ),
        (
            "EKU with only serverAuth",
            Box::new(|p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]),
            ProfileError::ExtendedKeyUsage {
                server_auth: true,
                client_auth: false,
            },
        ),
        (
            "EKU with only clientAuth",
            Box::new(|p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth]),
            ProfileError::ExtendedKeyUsage {
                server_auth: false,
                client_auth: true,
            },
        ),
        (
            "EKU with neither",
            Box::new(|p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning]),
            ProfileError::ExtendedKeyUsage {
                server_auth: false,
                client_auth: false,
            },
        ),
        (
            "claims with another task id",
            {
                let c = other_task.clone();
                Box::new(move |p| *p = task_leaf(&c))
            },
            ProfileError::ClaimsTaskMismatch {
                san: "01ARZ3NDEKTSV4RRFFQ69G5FAV".parse().unwrap(),
                claims: "01BX5ZZKBKACTAV9WEVGEMMVRZ".parse().unwrap(),
            },
        ),
        (
            "claims with another client id",
            {
                let c = other_client.clone();
                Box::new(move |p| *p = task_leaf(&c))
            },
            ProfileError::ClaimsClientMismatch {
                san: CLIENT_ID.parse().unwrap(),
                claims: "spiffe://acme.corp/client/other".parse().unwrap(),
            },
        ),
        (
            "claims on a client SVID",
            {
                let c = good_claims.clone();
                Box::new(move |p| {
                    *p = task_leaf(&c);
                    p.subject_alt_names = vec![uri(CLIENT_ID)];
                })
            },
            ProfileError::ClaimsWithoutTaskId {
                spiffe_id: CLIENT_ID.into(),
            },
        ),
        (
            "critical claims extension",
            {
                let c = good_claims.clone();
                Box::new(move |p| {
                    *p = task_leaf(&c);
                    p.custom_extensions[0].set_criticality(true);
                })
            },
            ProfileError::ClaimsCritical,
        ),
        (
            "claims extension twice",
            {
                let c = good_claims.clone();
                Box::new(move |p| {
                    *p = task_leaf(&c);
                    p.custom_extensions.push(CustomExtension::from_oid_content(
                        TASK_CLAIMS_OID_ARCS,
                        c.clone(),
                    ));
                })
            },
            ProfileError::DuplicateExtension {
                oid: crate::TASK_CLAIMS_OID.into(),
            },
        ),
        (
            "duplicate KeyUsage",
            Box::new(|p| p.custom_extensions.push(non_critical_key_usage())),
            ProfileError::DuplicateExtension {
                oid: "2.5.29.15".into(),
            },
        ),
        (
            "malformed KeyUsage contents",
            Box::new(|p| {
                p.key_usages.clear();
                p.custom_extensions.push(CustomExtension::from_oid_content(
                    KEY_USAGE,
                    vec![0x05, 0x00],
                ));
            }),
            ProfileError::MalformedExtension {
                oid: "2.5.29.15".into(),
            },
        ),
    ];
    for (case, mutate, want) in cases {
        let mut p = leaf(CLIENT_ID);
        mutate(&mut p);
        assert_eq!(check_leaf_svid(&der(&p)).unwrap_err(), want, "case: {case}");
    }

    // Corrupted claims: the error carries the DER decoder's message, so match the shape.
    let err = check_leaf_svid(&der(&task_leaf(&corrupted))).unwrap_err();
    assert!(
        matches!(err, ProfileError::InvalidClaims(ClaimsError::Der(_))),
        "corrupted claims: {err:?}"
    );
    let mut bad_version = sample_claims();
    bad_version.version = 2;
    assert_eq!(
        check_leaf_svid(&der(&task_leaf(&bad_version.to_der()))).unwrap_err(),
        ProfileError::InvalidClaims(ClaimsError::UnsupportedVersion { version: 2 })
    );
}

#[test]
fn non_certificates_are_rejected() {
    assert!(matches!(
        check_leaf_svid(b"not a certificate"),
        Err(ProfileError::Malformed { .. })
    ));
    assert!(matches!(
        check_leaf_svid(&[]),
        Err(ProfileError::Malformed { .. })
    ));
    let mut with_trailing = der(&leaf(CLIENT_ID));
    with_trailing.extend_from_slice(&[0, 0, 0]);
    assert_eq!(
        check_leaf_svid(&with_trailing).unwrap_err(),
        ProfileError::TrailingData { len: 3 }
    );
    let mut truncated = der(&leaf(CLIENT_ID));
    truncated.pop();
    assert!(matches!(
        check_leaf_svid(&truncated),
        Err(ProfileError::Malformed { .. })
    ));
}

#[test]
fn good_signing_certs_pass() {
    check_signing_cert(&der(&ca())).unwrap();
    let mut no_san = ca();
    no_san.subject_alt_names.clear();
    check_signing_cert(&der(&no_san)).unwrap();
    let mut constrained = ca();
    constrained.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    constrained.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    constrained
        .subject_alt_names
        .push(SanType::DnsName("ca.acme.corp".try_into().unwrap()));
    check_signing_cert(&der(&constrained)).unwrap();
}

#[test]
fn hostile_signing_certs_are_rejected() {
    type Mutate = fn(&mut CertificateParams);
    let cases: Vec<(&str, Mutate, ProfileError)> = vec![
        (
            "cA=false",
            |p| p.is_ca = IsCa::ExplicitNoCa,
            ProfileError::SigningCertNotCa,
        ),
        (
            "no BasicConstraints",
            |p| p.is_ca = IsCa::NoCa,
            ProfileError::MissingBasicConstraints,
        ),
        (
            "no keyCertSign",
            |p| p.key_usages = vec![KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature],
            ProfileError::MissingKeyCertSign,
        ),
        (
            "no KeyUsage",
            |p| p.key_usages.clear(),
            ProfileError::MissingKeyUsage,
        ),
        (
            "non-critical KeyUsage",
            |p| {
                p.key_usages.clear();
                p.custom_extensions.push(CustomExtension::from_oid_content(
                    KEY_USAGE,
                    vec![0x03, 0x02, 0x02, 0x04],
                ));
            },
            ProfileError::KeyUsageNotCritical,
        ),
        (
            "SPIFFE ID with a path",
            |p| p.subject_alt_names = vec![uri("spiffe://acme.corp/ca")],
            ProfileError::SigningCertPath {
                spiffe_id: "spiffe://acme.corp/ca".into(),
            },
        ),
        (
            "invalid SPIFFE ID",
            |p| p.subject_alt_names = vec![uri("spiffe://Acme.corp")],
            ProfileError::InvalidSpiffeId {
                uri: "spiffe://Acme.corp".into(),
                source: IdError::TrustDomainUppercase { index: 9, ch: 'A' },
            },
        ),
        (
            "uppercase scheme is still checked",
            |p| p.subject_alt_names = vec![uri("SPIFFE://acme.corp/ca")],
            ProfileError::InvalidSpiffeId {
                uri: "SPIFFE://acme.corp/ca".into(),
                source: IdError::WrongScheme {
                    scheme: "SPIFFE".into(),
                },
            },
        ),
    ];
    for (case, mutate, want) in cases {
        let mut p = ca();
        mutate(&mut p);
        assert_eq!(
            check_signing_cert(&der(&p)).unwrap_err(),
            want,
            "case: {case}"
        );
    }
}

/// Issue 13: an intermediate is bound to the trust domain its chain is verified for by
/// the SPIFFE IDs it carries; one naming another trust domain is refused.
#[test]
fn intermediates_name_the_trust_domain_or_none() {
    let td: TrustDomain = "acme.corp".parse().unwrap();
    let binding = |der: &[u8]| check_intermediate(der, &td).map(|ca| ca.binding);
    assert_eq!(binding(&der(&ca())), Ok(CaBinding::Named));
    let mut corporate = ca();
    corporate.subject_alt_names = vec![
        uri("https://pki.example.com/ca"),
        SanType::DnsName("ca.example.com".try_into().unwrap()),
    ];
    assert_eq!(binding(&der(&corporate)), Ok(CaBinding::Unnamed));
    let mut no_san = ca();
    no_san.subject_alt_names.clear();
    assert_eq!(binding(&der(&no_san)), Ok(CaBinding::Unnamed));

    type Mutate = fn(&mut CertificateParams);
    let cases: Vec<(&str, Mutate, ProfileError)> = vec![
        (
            "another trust domain",
            |p| p.subject_alt_names = vec![uri("spiffe://evil.example")],
            ProfileError::IntermediateForeignTrustDomain {
                expected: "acme.corp".into(),
                found: "spiffe://evil.example".into(),
            },
        ),
        (
            "the own and another trust domain",
            |p| p.subject_alt_names = vec![uri("spiffe://acme.corp"), uri("spiffe://evil.example")],
            ProfileError::IntermediateForeignTrustDomain {
                expected: "acme.corp".into(),
                found: "spiffe://evil.example".into(),
            },
        ),
        (
            "a parent domain's name",
            |p| p.subject_alt_names = vec![uri("spiffe://corp")],
            ProfileError::IntermediateForeignTrustDomain {
                expected: "acme.corp".into(),
                found: "spiffe://corp".into(),
            },
        ),
        (
            "a SPIFFE ID with a path",
            |p| p.subject_alt_names = vec![uri("spiffe://acme.corp/node/a")],
            ProfileError::SigningCertPath {
                spiffe_id: "spiffe://acme.corp/node/a".into(),
            },
        ),
        (
            // The first rule broken in SAN order is the one reported.
            "another trust domain, then a path",
            |p| {
                p.subject_alt_names = vec![
                    uri("spiffe://evil.example"),
                    uri("spiffe://acme.corp/node/a"),
                ]
            },
            ProfileError::IntermediateForeignTrustDomain {
                expected: "acme.corp".into(),
                found: "spiffe://evil.example".into(),
            },
        ),
        (
            "an uppercase scheme",
            |p| p.subject_alt_names = vec![uri("SPIFFE://evil.example")],
            ProfileError::InvalidSpiffeId {
                uri: "SPIFFE://evil.example".into(),
                source: IdError::WrongScheme {
                    scheme: "SPIFFE".into(),
                },
            },
        ),
    ];
    for (case, mutate, want) in cases {
        let mut p = ca();
        mutate(&mut p);
        assert_eq!(
            check_intermediate(&der(&p), &td).unwrap_err(),
            want,
            "case: {case}"
        );
    }
    assert!(matches!(
        check_intermediate(b"not a certificate", &td),
        Err(ProfileError::Malformed { .. })
    ));
}

#[test]
fn leaf_and_signing_checks_do_not_accept_each_other() {
    assert_eq!(
        check_leaf_svid(&der(&ca())).unwrap_err(),
        ProfileError::LeafRootPath {
            spiffe_id: "spiffe://acme.corp".into()
        }
    );
    assert_eq!(
        check_signing_cert(&der(&leaf(CLIENT_ID))).unwrap_err(),
        ProfileError::SigningCertPath {
            spiffe_id: CLIENT_ID.into()
        }
    );
}

#[test]
fn serial_hex_strips_sign_padding() {
    assert_eq!(serial_hex(&[0x00, 0x8a, 0x01]), "8a01");
    assert_eq!(serial_hex(&[0x01]), "01");
    assert_eq!(serial_hex(&[0x00]), "00");
    assert_eq!(serial_hex(&[]), "");
}

#[test]
fn ca_path_len_reads_the_constraint() {
    let mut unconstrained = ca();
    unconstrained.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    assert_eq!(ca_path_len(&der(&unconstrained)).unwrap(), None);
    let mut zero = ca();
    zero.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    assert_eq!(ca_path_len(&der(&zero)).unwrap(), Some(0));
    let mut two = ca();
    two.is_ca = IsCa::Ca(BasicConstraints::Constrained(2));
    assert_eq!(ca_path_len(&der(&two)).unwrap(), Some(2));
    assert!(ca_path_len(b"not a certificate").is_err());
}

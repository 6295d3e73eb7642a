//! Test fixtures: a CA per trust domain and SVIDs built with rcgen.

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tessera_identity::{TASK_CLAIMS_OID_ARCS, TaskClaims};
use time::{Duration, OffsetDateTime};

use crate::peer::Peer;

pub(crate) const TD: &str = "acme.corp";
pub(crate) const TASK_ULID: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
pub(crate) const SERVER: &str = "spiffe://acme.corp/mcp/github";

pub(crate) fn task_id_str(td: &str) -> String {
    format!("spiffe://{td}/client/code-reviewer/task/{TASK_ULID}")
}

/// A certificate authority for one trust domain: a root, or an intermediate under one.
pub(crate) struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub(crate) cert: CertificateDer<'static>,
    /// What a leaf it signs is sent with: the intermediates up to the root.
    chain: Vec<CertificateDer<'static>>,
}

/// Knobs for a leaf.
pub(crate) struct LeafOpts {
    pub(crate) uris: Vec<String>,
    pub(crate) claims: Option<TaskClaims>,
    pub(crate) ca: bool,
    pub(crate) not_before: OffsetDateTime,
    pub(crate) not_after: OffsetDateTime,
    pub(crate) serial: u8,
}

impl LeafOpts {
    pub(crate) fn id(id: &str) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            uris: vec![id.to_owned()],
            claims: None,
            ca: false,
            not_before: now - Duration::minutes(5),
            not_after: now + Duration::hours(1),
            serial: 0x42,
        }
    }
}

impl Ca {
    pub(crate) fn new(td: &str) -> Self {
        Self::root(
            &format!("{td} CA"),
            vec![SanType::URI(format!("spiffe://{td}").try_into().unwrap())],
        )
    }

    /// A root of a corporate PKI: no SPIFFE ID, signs intermediates for trust domains.
    pub(crate) fn upstream_root() -> Self {
        Self::root("corporate root", Vec::new())
    }

    fn root(cn: &str, sans: Vec<SanType>) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.subject_alt_names = sans;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = p.self_signed(&key).unwrap().der().clone();
        Self {
            issuer: Issuer::new(p, key),
            cert,
            chain: Vec::new(),
        }
    }

    /// An intermediate CA signed by this one, with `uris` as its URI SANs.
    pub(crate) fn intermediate(&self, uris: &[&str]) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, format!("intermediate {uris:?}"));
        p.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, &self.issuer).unwrap().der().clone();
        let chain = std::iter::once(cert.clone())
            .chain(self.chain.iter().cloned())
            .collect();
        Self {
            issuer: Issuer::new(p, key),
            cert,
            chain,
        }
    }

    pub(crate) fn leaf(
        &self,
        o: LeafOpts,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = o
            .uris
            .iter()
            .map(|u| SanType::URI(u.as_str().try_into().unwrap()))
            .collect();
        p.is_ca = if o.ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.serial_number = Some(SerialNumber::from(vec![o.serial]));
        p.not_before = o.not_before;
        p.not_after = o.not_after;
        if let Some(c) = &o.claims {
            p.custom_extensions = vec![CustomExtension::from_oid_content(
                TASK_CLAIMS_OID_ARCS,
                c.to_der(),
            )];
        }
        let cert = p.signed_by(&key, &self.issuer).unwrap().der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let chain = std::iter::once(cert).chain(self.chain.iter().cloned());
        (chain.collect(), key)
    }
}

/// Claims for the sample task of `td` on server github, with `scopes`.
pub(crate) fn claims(td: &str, scopes: &[&str], deadline_unix: i64) -> TaskClaims {
    TaskClaims {
        version: tessera_identity::TASK_CLAIMS_VERSION,
        task_id: TASK_ULID.parse().unwrap(),
        client_id: format!("spiffe://{td}/client/code-reviewer")
            .parse()
            .unwrap(),
        subject: "alice@acme.corp".into(),
        purpose: "review PR 42".into(),
        server: format!("spiffe://{td}/mcp/github").parse().unwrap(),
        scopes: scopes.iter().map(|s| s.parse().unwrap()).collect(),
        consent_id: "consent-1".into(),
        deadline_unix,
    }
}

/// A task peer built directly (no certificate), valid for an hour.
pub(crate) fn task_peer(scopes: &[&str]) -> Peer {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let c = claims(TD, scopes, now + 3600);
    Peer::Task {
        client: c.client_id.clone(),
        task: c.client_id.task(c.task_id),
        claims: c,
        serial_hex: "42".into(),
        not_after_unix: now + 3600,
    }
}

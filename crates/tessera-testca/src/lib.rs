//! # tessera-testca
//!
//! Test-only certificate authorities and X.509-SVIDs, the one home of the test suites'
//! certificates (tessera-verify's unit tests, the CLI's, the end-to-end tests): a
//! [`Ca`] (a trust domain's root, a cluster's root, a corporate root without a SPIFFE ID,
//! an intermediate, a node CA with the node-CA extension, or a CA read from PEM such as an
//! agent's), and a [`Leaf`] whose every field a
//! hostile-certificate case may bend (several URI SANs, a CA leaf, no BasicConstraints,
//! wrong key usages, a validity in the past, raw claims DER, one CA link too many).
//!
//! [`Leaf::new`] fits the X.509-SVID profile Tessera issues: exactly one URI SAN,
//! BasicConstraints cA=false, KeyUsage digitalSignature, EKU serverAuth+clientAuth,
//! ECDSA P-256, valid from five minutes ago for an hour. Everything panics on rcgen
//! errors except [`mint`]: these are fixtures, and a fixture that cannot be built is a
//! broken test.
//!
//! Never a dependency of anything but tests (`publish = false`, dev-dependencies only).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

pub use rcgen;

/// A certificate authority: a root, an intermediate under one, or a CA read from PEM.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
    /// What a leaf it signs is sent with after itself: the intermediates up to the root.
    chain: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// The node-CA extension naming `node` (`spiffe://<td>/node/<name>`), non-critical as
/// Tessera writes it; set its criticality or replace its bytes for a hostile case.
pub fn node_ca_extension(node: &str) -> CustomExtension {
    let node: tessera_identity::NodeId = node.parse().expect("a node SPIFFE ID");
    let mut ext = CustomExtension::from_oid_content(
        tessera_identity::NODE_CA_OID_ARCS,
        tessera_identity::NodeCaExtension::new(node).to_der(),
    );
    ext.set_criticality(false);
    ext
}

/// A CA's parameters: `cn`, `uris` as URI SANs, a path length, valid an hour back and a
/// day ahead.
fn ca_params(cn: &str, uris: &[&str], path_len: Option<u8>) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().expect("a valid URI")))
        .collect();
    p.is_ca = IsCa::Ca(path_len.map_or(BasicConstraints::Unconstrained, |n| {
        BasicConstraints::Constrained(n)
    }));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(1);
    p
}

impl Ca {
    /// The root of trust domain `td`: `CN=<td> CA`, URI SAN `spiffe://<td>`, no path
    /// length limit.
    pub fn root(td: &str) -> Self {
        Self::self_signed(ca_params(
            &format!("{td} CA"),
            &[&format!("spiffe://{td}")],
            None,
        ))
    }

    /// The root of a cluster's trust domain `td`, as `tessera-server` makes it: URI SAN
    /// `spiffe://<td>`, pathLen 1 (it signs node CAs and leaves).
    pub fn cluster_root(td: &str) -> Self {
        Self::self_signed(ca_params(
            &format!("{td} cluster CA"),
            &[&format!("spiffe://{td}")],
            Some(1),
        ))
    }

    /// A root without a SPIFFE ID, `CN=<cn>`: a corporate PKI's root that signs
    /// intermediates for trust domains.
    pub fn unnamed_root(cn: &str) -> Self {
        Self::self_signed(ca_params(cn, &[], None))
    }

    fn self_signed(params: CertificateParams) -> Self {
        let key = KeyPair::generate().expect("a P-256 key");
        let cert = params.self_signed(&key).expect("a self-signed CA");
        Self {
            cert: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
            chain: Vec::new(),
        }
    }

    /// A CA from its certificate and key in PEM, e.g. an agent's, to mint certificates
    /// the agent never issued.
    ///
    /// # Errors
    /// rcgen's, for PEM that does not parse or a key that does not fit.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, rcgen::Error> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        let der = pem_certs(cert_pem)
            .into_iter()
            .next()
            .ok_or(rcgen::Error::CouldNotParseCertificate)?;
        Ok(Self {
            issuer,
            cert: der,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            chain: Vec::new(),
        })
    }

    /// An intermediate CA signed by this one, with `uris` as its URI SANs (none for an
    /// unnamed one) and no path length limit.
    pub fn intermediate(&self, uris: &[&str]) -> Self {
        self.signed_ca(&format!("intermediate {uris:?}"), uris, None)
    }

    /// An intermediate CA signed by this one, `CN=<cn>`, with `uris` as its URI SANs and
    /// BasicConstraints pathLen `path_len`.
    pub fn constrained_intermediate(&self, cn: &str, uris: &[&str], path_len: u8) -> Self {
        self.signed_ca(cn, uris, Some(path_len))
    }

    /// The node CA of `node` (`spiffe://<td>/node/<name>`) signed by this CA, as the
    /// cluster's root signs it: URI SAN `spiffe://<td>`, pathLen 0, the node-CA extension.
    pub fn node_ca(&self, node: &str) -> Self {
        let td = node
            .strip_prefix("spiffe://")
            .and_then(|rest| rest.split('/').next())
            .expect("a node SPIFFE ID");
        self.ca_with(
            &format!("node CA {node}"),
            &[&format!("spiffe://{td}")],
            Some(0),
            vec![node_ca_extension(node)],
        )
    }

    /// A CA signed by this one with any `extensions` besides the usual (a node CA breaking
    /// a rule, a plain intermediate shaped like a node CA): `CN=<cn>`, `uris` as URI
    /// SANs, pathLen `path_len` (`None`: unconstrained).
    pub fn ca_with(
        &self,
        cn: &str,
        uris: &[&str],
        path_len: Option<u8>,
        extensions: Vec<CustomExtension>,
    ) -> Self {
        let mut params = ca_params(cn, uris, path_len);
        params.custom_extensions = extensions;
        self.signed_by_self(params)
    }

    fn signed_ca(&self, cn: &str, uris: &[&str], path_len: Option<u8>) -> Self {
        self.signed_by_self(ca_params(cn, uris, path_len))
    }

    fn signed_by_self(&self, params: CertificateParams) -> Self {
        let key = KeyPair::generate().expect("a P-256 key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("an intermediate CA");
        let der = cert.der().clone();
        Self {
            chain: std::iter::once(der.clone())
                .chain(self.chain.iter().cloned())
                .collect(),
            cert: der,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA's certificate (DER): what a bundle holds for a root.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The CA's certificate in PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key in PEM (PKCS#8).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// What a leaf this CA signs is sent with after itself: this CA and the
    /// intermediates above it, without the root (empty for a root).
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// A leaf for `uri` fitting the SVID profile, to be signed by this CA.
    pub fn leaf(&self, uri: &str) -> Leaf<'_> {
        Leaf::new(uri, self)
    }
}

/// The certificates of a PEM text, in order.
pub fn pem_certs(pem_text: &str) -> Vec<CertificateDer<'static>> {
    rustls_pki_types::pem::PemObject::pem_slice_iter(pem_text.as_bytes())
        .filter_map(Result::ok)
        .collect()
}

/// What to put in a leaf, and who signs it. Every field may break the SVID profile.
pub struct Leaf<'a> {
    /// The URI SANs (the profile wants exactly one SPIFFE ID).
    pub uris: Vec<String>,
    /// The task-claims extension's DER (any bytes), as a non-critical extension.
    pub claims_der: Option<Vec<u8>>,
    /// Other extensions, as given.
    pub extensions: Vec<CustomExtension>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// The signing CA.
    pub issuer: &'a Ca,
    /// `ExplicitNoCa` fits the profile; `NoCa` omits BasicConstraints.
    pub is_ca: IsCa,
    /// The key usages (the profile wants digitalSignature).
    pub key_usages: Vec<KeyUsagePurpose>,
    /// The serial number's bytes; `None` for 17 random bytes, positive.
    pub serial: Option<Vec<u8>>,
    /// The leaf's key; `None` for a fresh P-256 key.
    pub key: Option<&'a KeyPair>,
    /// Signs the leaf with a fresh intermediate CA (pathLen 0, named after the trust
    /// domain of the first URI), itself signed by `issuer`, and sends both: one link
    /// more than a pathLen-0 root allows.
    pub via_intermediate: bool,
}

impl std::fmt::Debug for Leaf<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaf")
            .field("uris", &self.uris)
            .finish_non_exhaustive()
    }
}

impl<'a> Leaf<'a> {
    /// A leaf for `uri` fitting the SVID profile, signed by `issuer`, valid from five
    /// minutes ago for an hour.
    pub fn new(uri: &str, issuer: &'a Ca) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            uris: vec![uri.to_owned()],
            claims_der: None,
            extensions: Vec::new(),
            not_before: now - Duration::minutes(5),
            not_after: now + Duration::hours(1),
            issuer,
            is_ca: IsCa::ExplicitNoCa,
            key_usages: vec![KeyUsagePurpose::DigitalSignature],
            serial: None,
            key: None,
            via_intermediate: false,
        }
    }

    /// Signs the leaf; panics where [`mint`] errs.
    pub fn mint(&self) -> Minted {
        mint(self).expect("a test leaf")
    }
}

/// A minted leaf: the DER chain it is sent with (leaf first), its key, and PEM forms.
pub struct Minted {
    /// The leaf, then the intermediates up to (without) the root.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key (PKCS#8).
    pub key: PrivateKeyDer<'static>,
    /// The leaf alone, PEM.
    pub cert_pem: String,
    /// The key, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minted")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Minted {
    /// The leaf certificate (DER).
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// The chain and the key, for a rustls config.
    pub fn into_parts(self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (self.chain, self.key)
    }
}

/// Signs `leaf` with its issuer (through a fresh intermediate when asked).
///
/// # Errors
/// rcgen's, for a field it cannot encode (e.g. a URI SAN that is not an IA5 string).
pub fn mint(leaf: &Leaf<'_>) -> Result<Minted, rcgen::Error> {
    let fresh;
    let key = match leaf.key {
        Some(key) => key,
        None => {
            fresh = KeyPair::generate()?;
            &fresh
        }
    };
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = leaf
        .uris
        .iter()
        .map(|u| Ok(SanType::URI(u.as_str().try_into()?)))
        .collect::<Result<_, rcgen::Error>>()?;
    params.is_ca = leaf.is_ca;
    params.key_usages = leaf.key_usages.clone();
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(match &leaf.serial {
        Some(bytes) => SerialNumber::from_slice(bytes),
        None => {
            let random: [u8; 16] = rand::random();
            SerialNumber::from_slice(&[&[0x01u8][..], &random].concat())
        }
    });
    params.not_before = leaf.not_before;
    params.not_after = leaf.not_after;
    if let Some(der) = &leaf.claims_der {
        let mut ext =
            CustomExtension::from_oid_content(tessera_identity::TASK_CLAIMS_OID_ARCS, der.clone());
        ext.set_criticality(false);
        params.custom_extensions.push(ext);
    }
    params
        .custom_extensions
        .extend(leaf.extensions.iter().cloned());
    let intermediate = leaf.via_intermediate.then(|| {
        let named = leaf
            .uris
            .first()
            .and_then(|u| u.strip_prefix("spiffe://"))
            .map(|rest| format!("spiffe://{}", rest.split('/').next().unwrap_or(rest)));
        let uris: Vec<&str> = named.iter().map(String::as_str).collect();
        leaf.issuer
            .constrained_intermediate("test intermediate", &uris, 0)
    });
    let signer = intermediate.as_ref().unwrap_or(leaf.issuer);
    let cert = params.signed_by(key, &signer.issuer)?;
    Ok(Minted {
        chain: std::iter::once(cert.der().clone())
            .chain(signer.chain.iter().cloned())
            .collect(),
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

//! Fixtures of the OAuth tests: a real CA, the server's real SVID (with its key at hand
//! to sign hostile tokens exactly as the minter would), and a JWS signer for any header.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey};
use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};
use tessera_identity::ServerId;
use tessera_testca::rcgen::KeyPair;
use tessera_testca::{Ca, Leaf};

use crate::testutil::{SERVER, TD};
use crate::trust::{TrustMaterial, TrustPublisher, TrustSource};

pub(crate) const ISSUER: &str = "https://127.0.0.1:8443";
pub(crate) const RESOURCE: &str = "https://127.0.0.1:8443/mcp";

/// A server SVID of `uri` under `ca`, with its key.
pub(crate) struct Signer {
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: KeyPair,
}

impl Signer {
    pub(crate) fn new(ca: &Ca, uri: &str) -> Signer {
        let key = KeyPair::generate().unwrap();
        let minted = Leaf {
            key: Some(&key),
            ..Leaf::new(uri, ca)
        }
        .mint();
        Signer {
            chain: minted.chain,
            key,
        }
    }

    pub(crate) fn x5c(&self) -> Vec<String> {
        self.chain
            .iter()
            .map(|c| STANDARD.encode(c.as_ref()))
            .collect()
    }

    /// A compact JWS of exactly `header` and `claims`, ES256 with this key.
    pub(crate) fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64(header), b64(claims));
        let key = EncodingKey::from_ec_der(&self.key.serialize_der());
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::ES256).unwrap();
        format!("{input}.{sig}")
    }

    /// The header the minter writes.
    pub(crate) fn header(&self) -> Value {
        json!({"alg": "ES256", "typ": "at+jwt", "x5c": self.x5c()})
    }
}

pub(crate) fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

pub(crate) fn unix_now() -> i64 {
    crate::oauth::access_token::unix(SystemTime::now())
}

/// The sample server's trust: a root of `acme.corp` and the server's SVID under it.
pub(crate) struct Server {
    pub(crate) ca: Ca,
    pub(crate) signer: Signer,
    pub(crate) publisher: TrustPublisher,
    pub(crate) trust: TrustSource,
}

impl Server {
    pub(crate) fn new() -> Server {
        let ca = Ca::root(TD);
        let signer = Signer::new(&ca, SERVER);
        let (publisher, trust) = TrustSource::channel();
        publisher.publish(material(&ca, &signer));
        Server {
            ca,
            signer,
            publisher,
            trust,
        }
    }
}

pub(crate) fn own_id() -> ServerId {
    SERVER.parse().unwrap()
}

/// Validated material for `signer` under `ca`.
pub(crate) fn material(ca: &Ca, signer: &Signer) -> TrustMaterial {
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(signer.key.serialize_der().into());
    TrustMaterial::new(
        own_id(),
        signer.chain.clone(),
        key,
        BTreeMap::from([(TD.parse().unwrap(), vec![ca.cert().clone()])]),
        unix_now(),
    )
    .unwrap()
}

pub(crate) fn at(unix: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(unix as u64)
}

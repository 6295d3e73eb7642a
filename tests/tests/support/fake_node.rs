//! A node without an agent: attested with a join token like any other, then speaking the
//! Node API over mTLS with its own node SVID. What a compromised node could send, for
//! tests of what the server does with it.

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, SignatureScheme};
use tessera_authority::NodeCaKey;
use tessera_e2e::TRUST_DOMAIN;
use tessera_proto::tessera::v1 as pb;
use tessera_proto::tessera::v1::node_client::NodeClient;
use tonic::transport::{Channel, Endpoint};

/// A node attested at a replica's node listener `address` (`host:port`) with `token`
/// under `name`, pinning the cluster root(s) `bundle` (DER): a Node API client presenting
/// its node SVID.
pub async fn attest(
    address: &str,
    bundle: &[Vec<u8>],
    token: &str,
    name: &str,
) -> NodeClient<Channel> {
    let svid_key = NodeCaKey::generate().unwrap();
    let ca_key = NodeCaKey::generate().unwrap();
    let mut anonymous = client(address, bundle, None).await;
    let credentials = anonymous
        .attest(pb::AttestRequest {
            proof: Some(pb::attest_request::Proof::JoinToken(token.to_owned())),
            node_name: name.to_owned(),
            node_svid_public_key: svid_key.public_key_der(),
            node_ca_public_key: ca_key.public_key_der(),
        })
        .await
        .expect("a fake node attests with a join token")
        .into_inner()
        .credentials
        .expect("credentials");
    client(
        address,
        bundle,
        Some((
            credentials.node_svid_chain,
            svid_key.to_pkcs8_der().to_vec(),
        )),
    )
    .await
}

/// The root certificates (DER) of a PEM file.
pub fn bundle_of(pem_file: &std::path::Path) -> Vec<Vec<u8>> {
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::pem_file_iter(pem_file)
        .unwrap()
        .map(|c| c.unwrap().to_vec())
        .collect()
}

async fn client(
    address: &str,
    bundle: &[Vec<u8>],
    cert: Option<(Vec<Vec<u8>>, Vec<u8>)>,
) -> NodeClient<Channel> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for der in bundle {
        roots.add(CertificateDer::from(der.clone())).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServer {
            roots: Arc::new(roots),
            provider,
        }));
    let mut config = match cert {
        Some((chain, key)) => builder
            .with_client_auth_cert(
                chain.into_iter().map(CertificateDer::from).collect(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let address = address.to_owned();
    let channel = Endpoint::from_static("http://tessera-server.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let connector = connector.clone();
            let address = address.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(address).await?;
                let name = ServerName::try_from("tessera-server").unwrap();
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .expect("connect to the Node API");
    NodeClient::new(channel)
}

/// Verifies the server as an agent does: chained to the cluster root, and the server's
/// own SPIFFE ID (its certificate has no DNS name to check).
#[derive(Debug)]
struct PinnedServer {
    roots: Arc<rustls::RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let leaf = tessera_identity::check_leaf_svid(end_entity)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        if leaf.spiffe_id != format!("spiffe://{TRUST_DOMAIN}/tessera/server") {
            return Err(rustls::Error::General(format!(
                "unexpected server {}",
                leaf.spiffe_id
            )));
        }
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

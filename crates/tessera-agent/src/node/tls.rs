//! mTLS to the server: the server must present exactly `server_id` under the pinned
//! roots; the agent presents its node SVID (none for `Attest`, the one RPC that needs
//! none). The agent does not link tessera-verify (it would bring Cedar), so the small
//! server check lives here.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tessera_authority::NodeCaKey;
use tonic::transport::{Channel, Endpoint};

use super::failover::Replicas;

/// Deadline for a whole connection attempt (every replica tried once, each bounded by
/// its own deadline in `failover`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a TLS setup for the server was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsSetupError {
    /// The roots to pin are unusable.
    #[error("the cluster bundle: {0}")]
    Bundle(String),
    /// The node SVID or its key is unusable.
    #[error("the node SVID: {0}")]
    Identity(#[from] rustls::Error),
    /// The address does not make an endpoint.
    #[error("the server address: {0}")]
    Address(String),
}

/// Accepts the server's certificate when it chains to the pinned roots and names
/// exactly the configured SPIFFE ID (its only URI SAN); the DNS name is ignored, as
/// SPIFFE does.
#[derive(Debug)]
struct PinnedServer {
    server_id: String,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = svid_spiffe_id(end_entity.as_ref())
            .map_err(|e| rustls::Error::General(format!("server certificate: {e}")))?;
        if presented != self.server_id {
            return Err(rustls::Error::General(format!(
                "the server presented {presented:?}, expected {:?}",
                self.server_id
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

/// The SPIFFE ID of an X.509-SVID leaf, after the project's profile checks (exactly one
/// URI SAN, a valid SPIFFE ID, leaf constraints): the server's certificate and the
/// certificates it signs for this node are held to the same rules as every other SVID.
pub(super) fn svid_spiffe_id(der: &[u8]) -> Result<String, String> {
    tessera_identity::check_leaf_svid(der)
        .map(|leaf| leaf.spiffe_id)
        .map_err(|e| e.to_string())
}

/// The client TLS configuration for the server: `roots` pinned, `server_id` expected,
/// and the node SVID (`chain`, `key`) presented when given.
pub(crate) fn client_config(
    server_id: &str,
    roots: &[Vec<u8>],
    identity: Option<(&[Vec<u8>], &NodeCaKey)>,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut store = RootCertStore::empty();
    for der in roots {
        store
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| TlsSetupError::Bundle(e.to_string()))?;
    }
    if store.is_empty() {
        return Err(TlsSetupError::Bundle("no root certificate".into()));
    }
    let verifier = Arc::new(PinnedServer {
        server_id: server_id.to_owned(),
        roots: Arc::new(store),
        provider: Arc::clone(&provider),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some((chain, key)) => {
            let certs = chain.iter().cloned().map(CertificateDer::from).collect();
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                key.to_pkcs8_der().as_slice().to_vec(),
            ));
            builder.with_client_auth_cert(certs, key)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A lazily connecting gRPC channel to the server over `tls`: each connection it makes
/// goes to a replica [`Replicas::connect`] picks, so a broken connection is replaced by
/// one to a live replica at the next call.
pub(crate) fn channel(
    replicas: &Arc<Replicas>,
    tls: Arc<ClientConfig>,
) -> Result<Channel, TlsSetupError> {
    // The URI only fills the :authority header; where to dial is the connector's choice.
    let endpoint = Endpoint::from_shared(format!("http://{}", replicas.current()))
        .map_err(|e| TlsSetupError::Address(e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    let replicas = Arc::clone(replicas);
    let connector = tower::service_fn(move |_: http::Uri| {
        let tls = Arc::clone(&tls);
        let replicas = Arc::clone(&replicas);
        async move { Ok::<_, std::io::Error>(TokioIo::new(replicas.connect(tls).await?)) }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}

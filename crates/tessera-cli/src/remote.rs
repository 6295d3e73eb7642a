//! The Admin API of a tessera-server over the network: mTLS with an administrator's SVID
//! (`spiffe://<td>/admin/<name>`, from `tessera-server admin-svid issue`), the server
//! pinned to the cluster bundle (`--ca`) and to its SPIFFE ID
//! (`spiffe://<td>/tessera/server`, the trust domain read from the admin SVID). Host
//! names are not checked: SPIFFE identities are, as every Tessera hop does.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tonic::transport::{Channel, Endpoint};

use crate::transport::{CONNECT_TIMEOUT, REQUEST_TIMEOUT};

/// Largest PEM file read (a chain, a key or a bundle is a few KiB).
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Path of the server's SPIFFE ID under the trust domain (tessera-server's `SERVER_ID_PATH`).
const SERVER_ID_PATH: &str = "/tessera/server";

/// Where and as whom to reach a server's Admin API.
#[derive(Clone, Debug)]
pub struct RemoteServer {
    /// `https://host:port` of the server's TLS listener (`listen.node`).
    pub url: String,
    /// The admin SVID (PEM chain).
    pub cert: PathBuf,
    /// Its key (PEM, PKCS#8).
    pub key: PathBuf,
    /// The cluster's root(s) (PEM).
    pub ca: PathBuf,
}

impl fmt::Display for RemoteServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl RemoteServer {
    /// An mTLS channel to the server, connected now (a wrong address or credential is
    /// an error here, not at the first call).
    pub async fn connect(&self) -> anyhow::Result<Channel> {
        let authority = authority(&self.url)?;
        let certs = read_certs(&self.cert, "--cert")?;
        let leaf = certs
            .first()
            .ok_or_else(|| anyhow!("{}: no certificate", self.cert.display()))?;
        // Whether this identity may administer is the server's decision (it refuses
        // anything but an admin SVID signed by the root); here it only names the trust
        // domain whose server to expect.
        let admin = tessera_identity::check_leaf_svid(leaf)
            .map_err(|e| anyhow!("{} is not an SVID: {e}", self.cert.display()))?;
        let server_id = format!("{}{SERVER_ID_PATH}", admin.trust_domain.id_string());
        let key = read_key(&self.key)?;
        let roots = read_certs(&self.ca, "--ca")?;
        let tls = client_config(server_id, &roots, certs, key)?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let server_name =
            ServerName::try_from(host).map_err(|e| anyhow!("--server-url {}: {e}", self.url))?;
        let target = authority.as_str().to_owned();
        let connector = tower::service_fn(move |_: http::Uri| {
            let tls = Arc::clone(&tls);
            let target = target.clone();
            let server_name = server_name.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(target.as_str()).await?;
                tcp.set_nodelay(true)?;
                let stream = tokio_rustls::TlsConnector::from(tls)
                    .connect(server_name, tcp)
                    .await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        });
        Endpoint::from_shared(format!("http://{authority}"))
            .map_err(|e| anyhow!("--server-url {}: {e}", self.url))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .connect_with_connector(connector)
            .await
            .map_err(|e| connect_error(self, &e))
    }
}

/// `host:port` of an `https://host:port` URL (a path or another scheme is refused).
fn authority(url: &str) -> anyhow::Result<http::uri::Authority> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| anyhow!("--server-url {url:?}: {e}"))?;
    if uri.scheme_str() != Some("https") {
        bail!("--server-url {url:?} must be https://host:port (the server's TLS listener)");
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        bail!("--server-url {url:?} must be https://host:port, without a path");
    }
    match uri.authority() {
        Some(a) if a.port_u16().is_some() => Ok(a.clone()),
        _ => bail!("--server-url {url:?} must name a port: https://host:port"),
    }
}

fn read_bounded(path: &Path, flag: &str) -> anyhow::Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("{flag} {}", path.display()))?
        .len();
    if len > MAX_PEM_BYTES {
        bail!(
            "{flag} {}: larger than {MAX_PEM_BYTES} bytes",
            path.display()
        );
    }
    std::fs::read(path).with_context(|| format!("{flag} {}", path.display()))
}

fn read_certs(path: &Path, flag: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = read_bounded(path, flag)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{flag} {}: {e}", path.display()))?;
    if certs.is_empty() {
        bail!("{flag} {}: no certificate", path.display());
    }
    Ok(certs)
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("--key {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "--key {} has mode {:o}: an admin key must be readable by its owner only (chmod 600)",
            path.display(),
            mode & 0o777
        );
    }
    let pem = zeroize::Zeroizing::new(read_bounded(path, "--key")?);
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| anyhow!("--key {}: {e}", path.display()))
}

fn client_config(
    server_id: String,
    roots: &[CertificateDer<'static>],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).map_err(|e| anyhow!("--ca: {e}"))?;
    }
    let verifier = Arc::new(PinnedServer {
        server_id,
        roots: Arc::new(store),
        provider: Arc::clone(&provider),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|e| anyhow!("--cert/--key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts the server's certificate when it chains to `--ca` and names exactly the
/// server's SPIFFE ID (the agent's node link checks the server the same way).
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
        let presented = tessera_identity::check_leaf_svid(end_entity.as_ref())
            .map_err(|e| rustls::Error::General(format!("server certificate: {e}")))?
            .spiffe_id;
        if presented != self.server_id {
            return Err(rustls::Error::General(format!(
                "the server presented {presented:?}, expected {:?}",
                self.server_id
            )));
        }
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
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

/// A connection failure as a sentence.
fn connect_error(server: &RemoteServer, err: &tonic::transport::Error) -> anyhow::Error {
    let mut detail = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    anyhow!("cannot reach tessera-server at {server} over mTLS: {detail}")
}

/// A gRPC status from the server as a sentence.
pub fn status_error(status: &tonic::Status, server: &RemoteServer) -> anyhow::Error {
    use tonic::Code;
    let message = status.message();
    let detail = if message.is_empty() {
        String::new()
    } else {
        format!(" ({message})")
    };
    match status.code() {
        Code::PermissionDenied | Code::Unauthenticated => anyhow!(
            "tessera-server at {server} refused the admin SVID {}{detail}",
            server.cert.display()
        ),
        Code::Unavailable => anyhow!("cannot reach tessera-server at {server}{detail}"),
        Code::DeadlineExceeded => {
            anyhow!("tessera-server at {server} did not answer in time{detail}")
        }
        Code::InvalidArgument => anyhow!("tessera-server rejected the request: {message}"),
        Code::AlreadyExists => anyhow!("already exists: {message}"),
        Code::NotFound => anyhow!("not found: {message}"),
        Code::FailedPrecondition => anyhow!("tessera-server refused: {message}"),
        Code::Unimplemented => anyhow!(
            "tessera-server at {server} does not implement this call; are the CLI and server the same version?{detail}"
        ),
        other => anyhow!("tessera-server at {server} failed: {other:?}{detail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_https_host_and_port_is_a_server_url() {
        assert_eq!(
            authority("https://tessera-server:8081").unwrap().as_str(),
            "tessera-server:8081"
        );
        assert!(authority("https://[::1]:8081/").is_ok());
        for bad in [
            "http://tessera-server:8081",
            "https://tessera-server",
            "https://tessera-server:8081/admin",
            "tessera-server:8081",
        ] {
            assert!(authority(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_key_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("admin.key");
        std::fs::write(&key, "not read").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_key(&key).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}

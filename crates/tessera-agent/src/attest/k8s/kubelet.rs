//! A minimal client for the kubelet's `GET /pods` on its secure port.
//!
//! One request, made rarely (on a cache miss, rate-limited), so a fresh
//! connection each time: no pool, no API-server client. The kubelet
//! authenticates the service-account token (TokenReview) and authorizes
//! `get` on `nodes/pods` (Kubernetes ≥ 1.33, fine-grained kubelet authz) or,
//! on older clusters, `nodes/proxy`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;

/// Largest pod list accepted (a full node of 110 pods is a few MiB).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// How the agent reaches and trusts the kubelet.
#[derive(Clone, Debug)]
pub struct KubeletSettings {
    /// Base URL of the kubelet's secure port, e.g. `https://127.0.0.1:10250`.
    pub url: http::Uri,
    /// Name (DNS or IP) the kubelet's serving certificate must carry; the URL's host if `None`.
    pub server_name: Option<String>,
    /// How the kubelet's certificate is checked.
    pub trust: KubeletTrust,
    /// The service-account token, re-read on every request (projected tokens rotate).
    pub token_file: PathBuf,
    /// Whole-request deadline: connect, TLS, response and body.
    pub timeout: Duration,
}

/// How the kubelet's serving certificate is checked.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum KubeletTrust {
    /// Against the CA certificates in this PEM file (e.g. the cluster CA when
    /// kubelets use `serverTLSBootstrap`).
    CaBundle(PathBuf),
    /// Not at all: any certificate is accepted (handshake signatures are still
    /// checked). Anyone who can intercept traffic to the kubelet URL could then
    /// feed the agent pod metadata, i.e. choose identities. Only for clusters
    /// whose kubelets serve self-signed certificates, with the kubelet on loopback.
    DangerousAcceptAnyCertificate,
}

/// Why the pod list could not be fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeletError {
    /// The token file could not be read or is empty.
    #[error("reading the service-account token {path}: {reason}")]
    Token {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The CA bundle could not be read or holds no certificate.
    #[error("kubelet CA bundle {path}: {reason}")]
    CaBundle {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Connecting, the TLS handshake or the HTTP exchange failed.
    #[error("kubelet {url}: {reason}")]
    Transport {
        /// The kubelet URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The kubelet refused the token (401) or its authorization (403).
    #[error(
        "kubelet {url} answered {status}: the agent's service account needs `get` on `nodes/pods` (or `nodes/proxy` before Kubernetes 1.33)"
    )]
    Unauthorized {
        /// The kubelet URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// Any other non-200 status.
    #[error("kubelet {url} answered {status}")]
    Status {
        /// The kubelet URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The body is not a `PodList`.
    #[error("kubelet {url}: the body is not a PodList: {reason}")]
    Body {
        /// The kubelet URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// No answer within the deadline.
    #[error("kubelet {url}: no answer within {timeout:?}")]
    Timeout {
        /// The kubelet URL.
        url: String,
        /// The deadline.
        timeout: Duration,
    },
}

/// Fetches the pods the kubelet runs.
#[derive(Clone)]
pub struct KubeletClient {
    settings: KubeletSettings,
    host: String,
    port: u16,
    authority: String,
    server_name: ServerName<'static>,
    tls: TlsConnector,
}

impl std::fmt::Debug for KubeletClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletClient")
            .field("url", &self.settings.url)
            .field("server_name", &self.server_name)
            .field("trust", &self.settings.trust)
            .finish_non_exhaustive()
    }
}

impl KubeletClient {
    /// A client for `settings`; reads the CA bundle now.
    pub fn new(settings: KubeletSettings) -> Result<KubeletClient, KubeletError> {
        let url = settings.url.to_string();
        let transport = |reason: String| KubeletError::Transport {
            url: url.clone(),
            reason,
        };
        if settings.url.scheme_str() != Some("https") {
            return Err(transport("the kubelet URL must be https".into()));
        }
        let host = settings
            .url
            .host()
            .ok_or_else(|| transport("the kubelet URL has no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = settings.url.port_u16().unwrap_or(10250);
        let authority = settings
            .url
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_else(|| host.clone());
        let name = settings.server_name.clone().unwrap_or_else(|| host.clone());
        let server_name = ServerName::try_from(name.clone())
            .map_err(|e| transport(format!("server name {name:?}: {e}")))?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| transport(e.to_string()))?;
        let config = match &settings.trust {
            KubeletTrust::CaBundle(path) => {
                let ca_err = |reason: String| KubeletError::CaBundle {
                    path: path.clone(),
                    reason,
                };
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .map_err(|e| ca_err(e.to_string()))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| ca_err(e.to_string()))?;
                let mut roots = rustls::RootCertStore::empty();
                for cert in certs {
                    roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(ca_err("no certificate in the file".into()));
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            KubeletTrust::DangerousAcceptAnyCertificate => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServerCertificate(provider)))
                .with_no_client_auth(),
        };
        Ok(KubeletClient {
            settings,
            host,
            port,
            authority,
            server_name,
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    /// `GET /pods`: every pod the kubelet runs, with statuses.
    pub async fn pods(&self) -> Result<Vec<Pod>, KubeletError> {
        let url = self.settings.url.to_string();
        let token = std::fs::read_to_string(&self.settings.token_file)
            .map_err(|e| e.to_string())
            .and_then(|t| {
                let t = t.trim().to_owned();
                if t.is_empty() {
                    Err("the file is empty".to_string())
                } else {
                    Ok(t)
                }
            })
            .map_err(|reason| KubeletError::Token {
                path: self.settings.token_file.clone(),
                reason,
            })?;
        let timeout = self.settings.timeout;
        match tokio::time::timeout(timeout, self.get_pods(&token)).await {
            Ok(r) => r,
            Err(_) => Err(KubeletError::Timeout { url, timeout }),
        }
    }

    async fn get_pods(&self, token: &str) -> Result<Vec<Pod>, KubeletError> {
        let url = self.settings.url.to_string();
        let transport = |reason: String| KubeletError::Transport {
            url: url.clone(),
            reason,
        };
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| transport(format!("connect: {e}")))?;
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| transport(format!("TLS: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| transport(format!("HTTP: {e}")))?;
        let conn = tokio::spawn(conn);
        let req = http::Request::get("/pods")
            .header(http::header::HOST, &self.authority)
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| transport(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| transport(format!("HTTP: {e}")))?;
        let status = resp.status().as_u16();
        let result = match status {
            200 => {
                let body = Limited::new(resp.into_body(), MAX_BODY)
                    .collect()
                    .await
                    .map_err(|e| transport(format!("reading the body: {e}")))?
                    .to_bytes();
                serde_json::from_slice::<k8s_openapi::List<Pod>>(&body)
                    .map(|list| list.items)
                    .map_err(|e| KubeletError::Body {
                        url: url.clone(),
                        reason: e.to_string(),
                    })
            }
            401 | 403 => Err(KubeletError::Unauthorized {
                url: url.clone(),
                status,
            }),
            _ => Err(KubeletError::Status {
                url: url.clone(),
                status,
            }),
        };
        conn.abort();
        result
    }
}

/// Accepts any server certificate but still checks that the server holds its
/// key (the handshake signature). See [`KubeletTrust::DangerousAcceptAnyCertificate`].
#[derive(Debug)]
struct AnyServerCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

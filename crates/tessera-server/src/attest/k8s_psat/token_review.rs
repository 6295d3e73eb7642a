//! One `POST /apis/authentication.k8s.io/v1/tokenreviews` to the API server over HTTPS,
//! with the server's own service-account token.
//!
//! Attestations are rare (a node's first contact, or after its credentials are lost), so
//! a fresh connection each time: no pool to go stale across API-server restarts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;

/// The resource path of TokenReviews.
pub(super) const TOKEN_REVIEWS_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// Largest response read: a TokenReview is well under a KiB of user info.
const MAX_RESPONSE: usize = 64 * 1024;

/// Largest own token file read (the server's service-account token, 1–2 KiB).
const MAX_OWN_TOKEN: u64 = 64 * 1024;

/// Why a TokenReview could not be made or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenReviewError {
    /// The API server URL is not `https://host[:port]`.
    #[error("API server URL {url}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The CA bundle could not be read or holds no certificate.
    #[error("API server CA bundle {path}: {reason}")]
    CaBundle {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The server's own service-account token could not be read.
    #[error("reading the server's service-account token {path}: {reason}")]
    OwnToken {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Connecting, the TLS handshake or the HTTP exchange failed.
    #[error("API server {url}: {reason}")]
    Transport {
        /// The API server URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// No answer within the deadline.
    #[error("API server {url}: no answer within {timeout:?}")]
    Timeout {
        /// The API server URL.
        url: String,
        /// The deadline.
        timeout: Duration,
    },
    /// A status other than 200/201.
    #[error("API server {url} answered {status} to the TokenReview{hint}")]
    Status {
        /// The API server URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// What to do about it, for the statuses an operator fixes.
        hint: &'static str,
    },
    /// The body is not a TokenReview with a status.
    #[error("API server {url}: the answer is not a TokenReview: {reason}")]
    Body {
        /// The API server URL.
        url: String,
        /// Why.
        reason: String,
    },
}

impl TokenReviewError {
    /// Whether the API server could not be asked now (the same review may succeed later),
    /// as opposed to answering something the server cannot use.
    pub fn is_unavailable(&self) -> bool {
        match self {
            TokenReviewError::Transport { .. }
            | TokenReviewError::Timeout { .. }
            | TokenReviewError::OwnToken { .. } => true,
            // 429: API priority and fairness shed the request; 5xx: the API server or
            // its etcd is in trouble.
            TokenReviewError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// What an authenticated review says about the token's user.
#[derive(Debug)]
pub(super) struct ReviewedUser {
    pub(super) username: String,
    pub(super) audiences: Vec<String>,
    pub(super) extra: BTreeMap<String, Vec<String>>,
}

/// Sends TokenReviews to one API server.
pub(super) struct TokenReviewClient {
    url: String,
    host: String,
    port: u16,
    authority: String,
    server_name: ServerName<'static>,
    tls: TlsConnector,
    token_file: PathBuf,
    timeout: Duration,
}

impl std::fmt::Debug for TokenReviewClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewClient")
            .field("url", &self.url)
            .field("token_file", &self.token_file)
            .finish_non_exhaustive()
    }
}

impl TokenReviewClient {
    pub(super) fn new(
        api_server: http::Uri,
        ca_file: &Path,
        token_file: PathBuf,
        timeout: Duration,
    ) -> Result<TokenReviewClient, TokenReviewError> {
        let url = api_server.to_string();
        let bad_url = |reason: &str| TokenReviewError::Url {
            url: url.clone(),
            reason: reason.to_owned(),
        };
        if api_server.scheme_str() != Some("https") {
            return Err(bad_url("must be https"));
        }
        let host = api_server
            .host()
            .ok_or_else(|| bad_url("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = api_server.port_u16().unwrap_or(443);
        let authority = api_server
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_else(|| host.clone());
        let server_name =
            ServerName::try_from(host.clone()).map_err(|e| bad_url(&e.to_string()))?;

        let ca_err = |reason: String| TokenReviewError::CaBundle {
            path: ca_file.to_owned(),
            reason,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca_file)
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
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ca_err(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(TokenReviewClient {
            url,
            host,
            port,
            authority,
            server_name,
            tls: TlsConnector::from(Arc::new(config)),
            token_file,
            timeout,
        })
    }

    /// Reviews `token` for `audience`: `Ok(Ok(user))` if the API server authenticates
    /// it, `Ok(Err(reason))` if it does not.
    pub(super) async fn review(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<Result<ReviewedUser, String>, TokenReviewError> {
        let own_token = self.own_token()?;
        let body = serde_json::to_vec(&TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![audience.to_owned()]),
            },
            ..TokenReview::default()
        })
        .map_err(|e| self.transport(format!("encoding the review: {e}")))?;
        let (status, body) =
            match tokio::time::timeout(self.timeout, self.post(&own_token, body)).await {
                Ok(result) => result?,
                Err(_) => {
                    return Err(TokenReviewError::Timeout {
                        url: self.url.clone(),
                        timeout: self.timeout,
                    });
                }
            };
        if status != 200 && status != 201 {
            let hint = match status {
                401 => ": the server's own service-account token was refused",
                403 => {
                    ": the server's service account needs `create` on tokenreviews.authentication.k8s.io"
                }
                _ => "",
            };
            return Err(TokenReviewError::Status {
                url: self.url.clone(),
                status,
                hint,
            });
        }
        let bad_body = |reason: String| TokenReviewError::Body {
            url: self.url.clone(),
            reason,
        };
        let review: TokenReview =
            serde_json::from_slice(&body).map_err(|e| bad_body(e.to_string()))?;
        let status = review.status.ok_or_else(|| bad_body("no status".into()))?;
        if status.authenticated != Some(true) {
            return Ok(Err(status
                .error
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "not authenticated".into())));
        }
        let user = status.user.unwrap_or_default();
        Ok(Ok(ReviewedUser {
            username: user.username.unwrap_or_default(),
            audiences: status.audiences.unwrap_or_default(),
            extra: user.extra.unwrap_or_default(),
        }))
    }

    fn own_token(&self) -> Result<String, TokenReviewError> {
        use std::io::Read;
        let err = |reason: String| TokenReviewError::OwnToken {
            path: self.token_file.clone(),
            reason,
        };
        let mut text = String::new();
        std::fs::File::open(&self.token_file)
            .map_err(|e| err(e.to_string()))?
            .take(MAX_OWN_TOKEN)
            .read_to_string(&mut text)
            .map_err(|e| err(e.to_string()))?;
        let text = text.trim();
        if text.is_empty() {
            return Err(err("the file is empty".into()));
        }
        Ok(text.to_owned())
    }

    fn transport(&self, reason: String) -> TokenReviewError {
        TokenReviewError::Transport {
            url: self.url.clone(),
            reason,
        }
    }

    async fn post(&self, own_token: &str, body: Vec<u8>) -> Result<(u16, Bytes), TokenReviewError> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| self.transport(format!("connect: {e}")))?;
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| self.transport(format!("TLS: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| self.transport(format!("HTTP: {e}")))?;
        let conn = tokio::spawn(conn);
        let request = http::Request::post(TOKEN_REVIEWS_PATH)
            .header(http::header::HOST, &self.authority)
            .header(http::header::AUTHORIZATION, format!("Bearer {own_token}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| self.transport(e.to_string()))?;
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| self.transport(format!("HTTP: {e}")))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        TokenReviewError::Body {
                            url: self.url.clone(),
                            reason: format!("longer than {MAX_RESPONSE} bytes"),
                        }
                    } else {
                        self.transport(format!("reading the answer: {e}"))
                    }
                })?
                .to_bytes();
            Ok((status, body))
        }
        .await;
        conn.abort();
        result
    }
}

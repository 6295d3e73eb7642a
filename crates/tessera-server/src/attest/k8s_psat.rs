//! Kubernetes projected service-account token (PSAT) node attestation, as SPIRE's
//! `k8s_psat` does it: the agent's pod presents a token minted for audience
//! `tessera-server`; the server asks the API server about it (TokenReview, with the
//! server's own service account) and learns, from the API server and nothing the caller
//! says, the pod's namespace, service account, pod and node.
//!
//! The node name comes from the review's `extra["authentication.kubernetes.io/node-name"]`
//! (Kubernetes ≥ 1.30 puts it in pod-bound tokens), so a token of a pod on node X attests
//! node X, whatever name the agent asks for: a compromised pod cannot claim another node.
//! Only pod-bound tokens attest (a token without a pod and a node is refused), only of
//! the allow-listed service accounts, and only if the API server confirms the audience
//! (an empty `status.audiences` means the token is valid for the API server itself, not
//! for us).
//!
//! A PSAT is a bearer token: whoever holds a live one of an allow-listed pod can attest
//! that pod's node until the token expires or the pod is deleted (the API server then
//! refuses it). Keep the projected token's `expirationSeconds` short (the deploy files use
//! 600, the minimum) and its volume readable by the agent alone.

mod token_review;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};
use tessera_identity::{MAX_NAME_LEN, NodeName};

use crate::attest::{AttestError, NodeAttestor};
use crate::{AttestationKind, NewNode, Node, PgStore, ServerStoreError, Written};
pub use token_review::TokenReviewError;
use token_review::{ReviewedUser, TokenReviewClient};

/// The audience the agents' projected tokens are minted for, and the one the server asks
/// the API server to check.
pub const DEFAULT_AUDIENCE: &str = "tessera-server";

/// Largest PSAT looked at. Service-account JWTs are 1–2 KiB; the bound keeps a hostile
/// caller from making the server forward megabytes to the API server.
pub const MAX_PSAT_LEN: usize = 8 * 1024;

/// Where the API server says which pod a token is bound to.
const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
/// Where the API server says which node that pod runs on (Kubernetes ≥ 1.30).
pub const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";
const EXTRA_NODE_UID: &str = "authentication.kubernetes.io/node-uid";

/// The prefix of a service account's user name in a TokenReview.
const SERVICE_ACCOUNT_USER: &str = "system:serviceaccount:";

/// A service account allowed to attest nodes: `namespace:name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceAccountRef {
    /// The namespace.
    pub namespace: String,
    /// The service account's name.
    pub name: String,
}

impl FromStr for ServiceAccountRef {
    type Err = String;

    /// `namespace:name`, each a Kubernetes DNS label/subdomain (lowercase alphanumerics,
    /// `-` and `.`).
    fn from_str(s: &str) -> Result<ServiceAccountRef, String> {
        let (namespace, name) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: expected namespace:service-account"))?;
        for part in [namespace, name] {
            let valid = !part.is_empty()
                && part.len() <= 253
                && part.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                });
            if !valid {
                return Err(format!(
                    "{s:?}: {part:?} is not a Kubernetes name (lowercase letters, digits, '-', '.')"
                ));
            }
        }
        Ok(ServiceAccountRef {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for ServiceAccountRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.namespace, self.name)
    }
}

/// How the server reaches the API server and which pods may attest.
#[derive(Clone, Debug)]
pub struct K8sPsatSettings {
    /// The API server's base URL, e.g. `https://10.96.0.1:443`; in a pod,
    /// [`K8sPsatSettings::in_cluster_url`] of `KUBERNETES_SERVICE_HOST`/`_PORT`.
    pub api_server: http::Uri,
    /// PEM CA bundle the API server's certificate must chain to (in a pod:
    /// `/var/run/secrets/kubernetes.io/serviceaccount/ca.crt`).
    pub ca_file: PathBuf,
    /// The server's own service-account token, re-read on every review (it rotates; in a
    /// pod: `/var/run/secrets/kubernetes.io/serviceaccount/token`). Its account needs
    /// `create` on `tokenreviews.authentication.k8s.io`.
    pub token_file: PathBuf,
    /// The audience agents' tokens must carry ([`DEFAULT_AUDIENCE`]).
    pub audience: String,
    /// The service accounts whose pods may attest their node. Empty refuses every token.
    pub allowed_service_accounts: Vec<ServiceAccountRef>,
    /// Whole-review deadline: connect, TLS, request and response.
    pub timeout: Duration,
}

impl K8sPsatSettings {
    /// The in-cluster API server URL from `KUBERNETES_SERVICE_HOST` and
    /// `KUBERNETES_SERVICE_PORT` (443 when unset), as client-go's in-cluster config builds
    /// it. `None` without a host: not running in a pod.
    pub fn in_cluster_url(
        host: Option<&str>,
        port: Option<&str>,
    ) -> Option<Result<http::Uri, String>> {
        let host = host?.trim();
        if host.is_empty() {
            return None;
        }
        let port = port
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .unwrap_or("443");
        // An IPv6 service address needs brackets in a URL.
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        Some(
            format!("https://{host}:{port}")
                .parse::<http::Uri>()
                .map_err(|e| format!("KUBERNETES_SERVICE_HOST/PORT {host}:{port}: {e}")),
        )
    }
}

/// Why a PSAT did not attest a node. Every variant but [`K8sPsatError::Unavailable`] and
/// [`K8sPsatError::ApiServer`] is the caller's: the token proves nothing, and the same token
/// will fail the same way.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum K8sPsatError {
    /// Not a token of the shape the API server issues (too long, not three base64url
    /// segments); it was not sent anywhere.
    #[error("malformed service-account token: {reason}")]
    Malformed {
        /// What is wrong (never the token).
        reason: &'static str,
    },
    /// The API server does not authenticate the token (expired, its pod deleted, forged).
    #[error("the API server does not authenticate the token: {reason}")]
    Unauthenticated {
        /// The API server's `status.error`, truncated.
        reason: String,
    },
    /// The token is valid, but not for the audience the server requires.
    #[error("the token is not for audience {required:?} (the API server confirmed {confirmed:?})")]
    WrongAudience {
        /// The audience required.
        required: String,
        /// The audiences the API server confirmed (empty: the API server's own).
        confirmed: Vec<String>,
    },
    /// The token is not a service account's.
    #[error("the token is not a service account's (user {username:?})")]
    NotServiceAccount {
        /// The user name the API server reported, truncated.
        username: String,
    },
    /// The service account is not on the allow-list.
    #[error("service account {namespace}:{service_account} may not attest nodes")]
    NotAllowed {
        /// Its namespace.
        namespace: String,
        /// Its name.
        service_account: String,
    },
    /// The review does not bind the token to a pod on a node (a token not bound to a pod,
    /// or a Kubernetes older than 1.30 that does not report the node).
    #[error("the token review has no single {key:?}: only pod-bound tokens attest a node")]
    MissingExtra {
        /// The `extra` key missing, or present with other than one value.
        key: &'static str,
    },
    /// The pod's node name cannot be a Tessera node name.
    #[error("Kubernetes node name {name:?} cannot be a Tessera node name: {reason}")]
    NodeName {
        /// The name, truncated.
        name: String,
        /// Why.
        reason: String,
    },
    /// The API server could not be asked (down, unreachable, timed out, 5xx): the token
    /// may be fine; the agent retries.
    #[error("the Kubernetes API server is unavailable: {0}")]
    Unavailable(#[source] TokenReviewError),
    /// The API server answered, but not with a review (the server's own service account
    /// lacks `create` on `tokenreviews`, or a body that is not a TokenReview): an operator
    /// must act.
    #[error("TokenReview failed: {0}")]
    ApiServer(#[source] TokenReviewError),
}

/// Reviews agents' projected service-account tokens with the API server and applies the
/// allow-list: what a PSAT proves, before anything is registered.
#[derive(Debug)]
pub struct K8sPsatReviewer {
    client: TokenReviewClient,
    audience: String,
    allowed: Vec<ServiceAccountRef>,
}

impl K8sPsatReviewer {
    /// A reviewer for `settings`; reads the CA bundle now (the token on every review).
    pub fn new(settings: K8sPsatSettings) -> Result<K8sPsatReviewer, TokenReviewError> {
        let client = TokenReviewClient::new(
            settings.api_server,
            &settings.ca_file,
            settings.token_file,
            settings.timeout,
        )?;
        Ok(K8sPsatReviewer {
            client,
            audience: settings.audience,
            allowed: settings.allowed_service_accounts,
        })
    }

    /// Reviews `token` and returns the node it proves: named after the pod's node, never
    /// after anything the caller asked for. The summary and selectors name the service
    /// account, pod and node, never the token.
    pub async fn review(&self, token: &str) -> Result<NewNode, K8sPsatError> {
        check_shape(token)?;
        // Deny before asking: nobody may attest, so nothing to ask the API server.
        if self.allowed.is_empty() {
            return Err(K8sPsatError::NotAllowed {
                namespace: String::new(),
                service_account: String::new(),
            });
        }
        let review = self
            .client
            .review(token, &self.audience)
            .await
            .map_err(|e| {
                if e.is_unavailable() {
                    K8sPsatError::Unavailable(e)
                } else {
                    K8sPsatError::ApiServer(e)
                }
            })?;
        let user = match review {
            Ok(user) => user,
            Err(reason) => {
                return Err(K8sPsatError::Unauthenticated {
                    reason: truncate(&reason, 256),
                });
            }
        };
        self.node_of(user)
    }

    /// The policy, applied to what the API server confirmed.
    fn node_of(&self, user: ReviewedUser) -> Result<NewNode, K8sPsatError> {
        if !user.audiences.contains(&self.audience) {
            return Err(K8sPsatError::WrongAudience {
                required: self.audience.clone(),
                confirmed: user
                    .audiences
                    .iter()
                    .take(8)
                    .map(|a| truncate(a, 128))
                    .collect(),
            });
        }
        let account = user
            .username
            .strip_prefix(SERVICE_ACCOUNT_USER)
            .and_then(|rest| rest.parse::<ServiceAccountRef>().ok())
            .ok_or_else(|| K8sPsatError::NotServiceAccount {
                username: truncate(&user.username, 256),
            })?;
        if !self.allowed.contains(&account) {
            return Err(K8sPsatError::NotAllowed {
                namespace: account.namespace,
                service_account: account.name,
            });
        }
        let pod_name = single(&user.extra, EXTRA_POD_NAME)?;
        let pod_uid = single(&user.extra, EXTRA_POD_UID)?;
        let k8s_node = single(&user.extra, EXTRA_NODE_NAME)?;
        // Reported since 1.32; recorded when present, not required.
        let node_uid = single(&user.extra, EXTRA_NODE_UID).ok();
        let name = tessera_node_name(k8s_node)?;

        let mut selectors = vec![
            format!("k8s_psat:ns:{}", account.namespace),
            format!("k8s_psat:sa:{}", account.name),
            format!("k8s_psat:pod-name:{pod_name}"),
            format!("k8s_psat:pod-uid:{pod_uid}"),
            format!("k8s_psat:node-name:{k8s_node}"),
        ];
        if let Some(uid) = node_uid {
            selectors.push(format!("k8s_psat:node-uid:{uid}"));
        }
        Ok(NewNode {
            name,
            attested_by: AttestationKind::K8sPsat,
            selectors,
            attestation: json!({
                "namespace": account.namespace,
                "service_account": account.name,
                "pod_name": pod_name,
                "pod_uid": pod_uid,
                "node_name": k8s_node,
                "node_uid": node_uid,
                "audience": self.audience,
            }),
        })
    }
}

/// The [`NodeAttestor`] for `k8s_psat` proofs: reviews the token, then registers the node
/// the review names.
#[derive(Debug)]
pub struct K8sPsatAttestor {
    reviewer: K8sPsatReviewer,
    store: PgStore,
}

impl K8sPsatAttestor {
    /// An attestor reviewing with `reviewer` and registering through `store`.
    pub fn new(reviewer: K8sPsatReviewer, store: PgStore) -> K8sPsatAttestor {
        K8sPsatAttestor { reviewer, store }
    }
}

#[tonic::async_trait]
impl NodeAttestor for K8sPsatAttestor {
    fn kind(&self) -> AttestationKind {
        AttestationKind::K8sPsat
    }

    async fn attest(
        &self,
        evidence: &str,
        requested_name: &str,
    ) -> Result<Written<Node>, AttestError> {
        let node = match self.reviewer.review(evidence).await {
            Ok(node) => node,
            Err(e) => {
                // The error names the service account, pod and node, never the token.
                tracing::warn!(requested = requested_name, error = %e, "k8s_psat attestation refused");
                return Err(match e {
                    K8sPsatError::Unavailable(_) | K8sPsatError::ApiServer(_) => {
                        AttestError::Unavailable(e.to_string())
                    }
                    _ => AttestError::Refused(e.to_string()),
                });
            }
        };
        // The node is the pod's, whatever name the agent asked for: a token from a pod on
        // node X attests X.
        if node.name != requested_name {
            tracing::info!(
                requested = requested_name,
                node = node.name,
                "k8s_psat attests the pod's node, not the name asked for"
            );
        }
        let actor = format!("node:{}", node.name);
        match self.store.register_node(node, &actor).await {
            Ok(written) => Ok(written),
            Err(ServerStoreError::Unavailable(e)) => Err(AttestError::Unavailable(e.to_string())),
            Err(e) => Err(AttestError::Store(e)),
        }
    }
}

/// Refuses what cannot be a service-account JWT before it leaves the server: over
/// [`MAX_PSAT_LEN`], or not three non-empty base64url segments.
fn check_shape(token: &str) -> Result<(), K8sPsatError> {
    let malformed = |reason| Err(K8sPsatError::Malformed { reason });
    if token.is_empty() {
        return malformed("empty");
    }
    if token.len() > MAX_PSAT_LEN {
        return malformed("longer than 8 KiB");
    }
    let segments: Vec<&str> = token.split('.').collect();
    if segments.len() != 3 || segments.iter().any(|s| s.is_empty()) {
        return malformed("not three dot-separated segments");
    }
    let base64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    if !segments.iter().all(|s| s.bytes().all(base64url)) {
        return malformed("a segment is not base64url");
    }
    Ok(())
}

/// The value of `key` in `extra`, if it holds exactly one, non-empty.
fn single<'a>(
    extra: &'a BTreeMap<String, Vec<String>>,
    key: &'static str,
) -> Result<&'a str, K8sPsatError> {
    match extra.get(key).map(Vec::as_slice) {
        Some([value]) if !value.is_empty() => Ok(value),
        _ => Err(K8sPsatError::MissingExtra { key }),
    }
}

/// The Tessera node name of Kubernetes node `k8s`: the same name when it is one (every
/// RFC 1123 name of up to 128 bytes is); a longer one keeps its first bytes and ends in
/// 16 hex digits of its SHA-256, so distinct nodes keep distinct names.
pub fn tessera_node_name(k8s: &str) -> Result<String, K8sPsatError> {
    let refuse = |reason: String| K8sPsatError::NodeName {
        name: truncate(k8s, 128),
        reason,
    };
    let name = if k8s.len() > MAX_NAME_LEN && k8s.is_ascii() {
        let digest = hex::encode(&Sha256::digest(k8s.as_bytes())[..8]);
        format!("{}-{digest}", &k8s[..MAX_NAME_LEN - 1 - digest.len()])
    } else {
        k8s.to_owned()
    };
    name.parse::<NodeName>()
        .map(|n| n.as_str().to_owned())
        .map_err(|e| refuse(e.to_string()))
}

/// At most `max` bytes of `s`, on a character boundary: API-server text goes into errors
/// and logs, bounded.
fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

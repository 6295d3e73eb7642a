//! The PSAT reviewer against a stand-in API server: no Kubernetes API server runs here,
//! so a real HTTPS server on loopback (an rcgen CA, rustls) answers
//! `POST /apis/authentication.k8s.io/v1/tokenreviews` with TokenReview responses written
//! in the API server's response shape (`authentication.k8s.io/v1`, as documented in the
//! API reference; not captured from a live cluster), and records each request it gets so
//! the tests check what the server sends: method, path, its own bearer token, the
//! reviewed token and the audience.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};

use super::*;

/// The server's own service-account token (what it authenticates to the API server with).
const OWN_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.server-own-token.c2ln";

/// Agents' projected tokens, one per recorded answer.
const TOKEN_OK: &str =
    "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.eyJhdWQiOlsidGVzc2VyYS1zZXJ2ZXIiXX0.c2lnbmF0dXJl";
const TOKEN_EXPIRED: &str = "eyJhbGciOiJSUzI1NiJ9.expired.c2ln";
const TOKEN_API_AUDIENCE: &str = "eyJhbGciOiJSUzI1NiJ9.api-audience.c2ln";
const TOKEN_NO_AUDIENCE: &str = "eyJhbGciOiJSUzI1NiJ9.no-audience.c2ln";
const TOKEN_OTHER_NS: &str = "eyJhbGciOiJSUzI1NiJ9.other-namespace.c2ln";
const TOKEN_OTHER_SA: &str = "eyJhbGciOiJSUzI1NiJ9.other-sa.c2ln";
const TOKEN_USER: &str = "eyJhbGciOiJSUzI1NiJ9.a-user.c2ln";
const TOKEN_NO_NODE: &str = "eyJhbGciOiJSUzI1NiJ9.no-node.c2ln";
const TOKEN_NOT_POD_BOUND: &str = "eyJhbGciOiJSUzI1NiJ9.not-pod-bound.c2ln";
const TOKEN_FORBIDDEN: &str = "eyJhbGciOiJSUzI1NiJ9.forbidden.c2ln";
const TOKEN_OVERLOADED: &str = "eyJhbGciOiJSUzI1NiJ9.overloaded.c2ln";
const TOKEN_GARBAGE: &str = "eyJhbGciOiJSUzI1NiJ9.garbage.c2ln";
const TOKEN_STALL: &str = "eyJhbGciOiJSUzI1NiJ9.stall.c2ln";

/// The extra a pod-bound token of pod `tessera-agent-7xk2p` on `node` carries.
fn pod_extra(node: Option<&str>) -> Value {
    let mut extra = json!({
        "authentication.kubernetes.io/credential-id": ["JTI=2f9c6d0e-5a7b-4c1d-8e3f-0a1b2c3d4e5f"],
        "authentication.kubernetes.io/pod-name": ["tessera-agent-7xk2p"],
        "authentication.kubernetes.io/pod-uid": ["b1a7c3e2-4d5f-4a6b-8c9d-0e1f2a3b4c5d"],
    });
    if let Some(node) = node {
        extra["authentication.kubernetes.io/node-name"] = json!([node]);
        extra["authentication.kubernetes.io/node-uid"] =
            json!(["5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9"]);
    }
    extra
}

/// A TokenReview answer as the API server writes it: the request's spec echoed, a status.
fn review(token: &str, status: Value) -> Value {
    json!({
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": {"token": token, "audiences": ["tessera-server"]},
        "status": status,
    })
}

fn authenticated(token: &str, username: &str, audiences: Value, extra: Value) -> Value {
    review(
        token,
        json!({
            "authenticated": true,
            "user": {
                "username": username,
                "uid": "0d4c7a3e-8f2b-4e6a-9c1d-7b5e3f2a1c0d",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:tessera", "system:authenticated"],
                "extra": extra,
            },
            "audiences": audiences,
        }),
    )
}

/// The answer for each token: HTTP status and body.
fn recorded() -> HashMap<&'static str, (u16, Value)> {
    let agent = "system:serviceaccount:tessera:tessera-agent";
    HashMap::from([
        (
            TOKEN_OK,
            (
                201,
                authenticated(
                    TOKEN_OK,
                    agent,
                    json!(["tessera-server"]),
                    pod_extra(Some("worker-1")),
                ),
            ),
        ),
        (
            TOKEN_EXPIRED,
            (
                201,
                review(
                    TOKEN_EXPIRED,
                    json!({
                        "user": {},
                        "error": "[invalid bearer token, service account token has expired]",
                    }),
                ),
            ),
        ),
        (
            TOKEN_API_AUDIENCE,
            (
                201,
                authenticated(
                    TOKEN_API_AUDIENCE,
                    agent,
                    json!(["https://kubernetes.default.svc.cluster.local"]),
                    pod_extra(Some("worker-1")),
                ),
            ),
        ),
        // An authenticator that ignores spec.audiences answers none: valid for the API server.
        (
            TOKEN_NO_AUDIENCE,
            (
                201,
                authenticated(
                    TOKEN_NO_AUDIENCE,
                    agent,
                    Value::Null,
                    pod_extra(Some("worker-1")),
                ),
            ),
        ),
        (
            TOKEN_OTHER_NS,
            (
                201,
                authenticated(
                    TOKEN_OTHER_NS,
                    "system:serviceaccount:default:tessera-agent",
                    json!(["tessera-server"]),
                    pod_extra(Some("worker-1")),
                ),
            ),
        ),
        (
            TOKEN_OTHER_SA,
            (
                201,
                authenticated(
                    TOKEN_OTHER_SA,
                    "system:serviceaccount:tessera:default",
                    json!(["tessera-server"]),
                    pod_extra(Some("worker-1")),
                ),
            ),
        ),
        (
            TOKEN_USER,
            (
                201,
                authenticated(
                    TOKEN_USER,
                    "alice@example.com",
                    json!(["tessera-server"]),
                    json!({}),
                ),
            ),
        ),
        (
            TOKEN_NO_NODE,
            (
                201,
                authenticated(
                    TOKEN_NO_NODE,
                    agent,
                    json!(["tessera-server"]),
                    pod_extra(None),
                ),
            ),
        ),
        (
            TOKEN_NOT_POD_BOUND,
            (
                201,
                authenticated(
                    TOKEN_NOT_POD_BOUND,
                    agent,
                    json!(["tessera-server"]),
                    json!({}),
                ),
            ),
        ),
        (
            TOKEN_FORBIDDEN,
            (
                403,
                json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "tokenreviews.authentication.k8s.io is forbidden: User \"system:serviceaccount:tessera:tessera-server\" cannot create resource \"tokenreviews\" in API group \"authentication.k8s.io\" at the cluster scope",
                    "reason": "Forbidden", "details": {"group": "authentication.k8s.io", "kind": "tokenreviews"}, "code": 403,
                }),
            ),
        ),
        (
            TOKEN_OVERLOADED,
            (
                503,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "etcdserver: request timed out", "code": 503}),
            ),
        ),
        (
            TOKEN_GARBAGE,
            (
                201,
                json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "metadata": {}}),
            ),
        ),
    ])
}

/// One request the stand-in API server got.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    authorization: String,
    content_type: String,
    body: Value,
}

struct ApiServer {
    url: http::Uri,
    ca_file: tempfile::NamedTempFile,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A CA, and a serving certificate from it for `127.0.0.1`; the CA as PEM.
fn pki() -> (String, CertificateDer<'static>, PrivateKeyDer<'static>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (
        ca_cert.pem(),
        leaf.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

fn pem_file(pem: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), pem).unwrap();
    file
}

async fn start_api_server() -> ApiServer {
    let (ca_pem, cert, key) = pki();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url: http::Uri = format!("https://{}", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let answers = Arc::new(recorded());
    let log = Arc::clone(&seen);
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, log, answers) =
                (acceptor.clone(), Arc::clone(&log), Arc::clone(&answers));
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| {
                        let (log, answers) = (Arc::clone(&log), Arc::clone(&answers));
                        async move {
                            let header = |name: http::header::HeaderName| {
                                req.headers()
                                    .get(name)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_owned()
                            };
                            let mut seen = Seen {
                                method: req.method().to_string(),
                                path: req.uri().path().to_owned(),
                                authorization: header(http::header::AUTHORIZATION),
                                content_type: header(http::header::CONTENT_TYPE),
                                body: Value::Null,
                            };
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            seen.body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            let token = seen.body["spec"]["token"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned();
                            log.lock().unwrap().push(seen);
                            if token == TOKEN_STALL {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                            }
                            let (status, answer) = answers.get(token.as_str()).cloned().unwrap_or((
                            201,
                            review(&token, json!({"user": {}, "error": "[invalid bearer token, square/go-jose: error in cryptographic primitive]"})),
                        ));
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .header(http::header::CONTENT_TYPE, "application/json")
                                    .body(Full::new(Bytes::from(answer.to_string())))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    ApiServer {
        url,
        ca_file: pem_file(&ca_pem),
        seen,
        task,
    }
}

struct Fixture {
    api: ApiServer,
    reviewer: K8sPsatReviewer,
    _own_token: tempfile::NamedTempFile,
}

fn settings(api_server: http::Uri, ca_file: &Path, own_token: &Path) -> K8sPsatSettings {
    K8sPsatSettings {
        api_server,
        ca_file: ca_file.to_owned(),
        token_file: own_token.to_owned(),
        audience: DEFAULT_AUDIENCE.to_owned(),
        allowed_service_accounts: vec!["tessera:tessera-agent".parse().unwrap()],
        timeout: Duration::from_secs(10),
    }
}

async fn fixture() -> Fixture {
    let api = start_api_server().await;
    let own_token = pem_file(&format!("{OWN_TOKEN}\n"));
    let reviewer = K8sPsatReviewer::new(settings(
        api.url.clone(),
        api.ca_file.path(),
        own_token.path(),
    ))
    .unwrap();
    Fixture {
        api,
        reviewer,
        _own_token: own_token,
    }
}

impl Fixture {
    fn seen(&self) -> Vec<Seen> {
        self.api.seen.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn authenticated_token_attests_the_pods_node_from_the_review() {
    let f = fixture().await;
    let node = f.reviewer.review(TOKEN_OK).await.unwrap();

    assert_eq!(node.name, "worker-1");
    assert_eq!(node.attested_by, AttestationKind::K8sPsat);
    assert_eq!(
        node.selectors,
        [
            "k8s_psat:ns:tessera",
            "k8s_psat:sa:tessera-agent",
            "k8s_psat:pod-name:tessera-agent-7xk2p",
            "k8s_psat:pod-uid:b1a7c3e2-4d5f-4a6b-8c9d-0e1f2a3b4c5d",
            "k8s_psat:node-name:worker-1",
            "k8s_psat:node-uid:5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9",
        ]
    );
    assert_eq!(node.attestation["pod_name"], "tessera-agent-7xk2p");
    assert_eq!(node.attestation["service_account"], "tessera-agent");
    // The audit summary never holds the token.
    let summary = node.attestation.to_string() + &node.selectors.join(" ");
    assert!(!summary.contains("c2lnbmF0dXJl"), "{summary}");

    // What went to the API server: one TokenReview, with the server's own token, for the
    // agent's token and the audience tessera-server.
    let seen = f.seen();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/apis/authentication.k8s.io/v1/tokenreviews");
    assert_eq!(request.authorization, format!("Bearer {OWN_TOKEN}"));
    assert_eq!(request.content_type, "application/json");
    assert_eq!(request.body["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(request.body["kind"], "TokenReview");
    assert_eq!(request.body["spec"]["token"], TOKEN_OK);
    assert_eq!(request.body["spec"]["audiences"], json!(["tessera-server"]));
}

#[tokio::test]
async fn token_the_api_server_does_not_authenticate_is_refused() {
    let f = fixture().await;
    let err = f.reviewer.review(TOKEN_EXPIRED).await.unwrap_err();
    let K8sPsatError::Unauthenticated { reason } = &err else {
        panic!("{err:?}");
    };
    assert!(
        reason.contains("service account token has expired"),
        "{reason}"
    );

    // A token the stand-in has no answer for gets the API server's answer for a forgery.
    let forged = "eyJhbGciOiJSUzI1NiJ9.forged.c2ln";
    let err = f.reviewer.review(forged).await.unwrap_err();
    assert!(
        matches!(err, K8sPsatError::Unauthenticated { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn token_for_another_audience_is_refused() {
    let f = fixture().await;
    for token in [TOKEN_API_AUDIENCE, TOKEN_NO_AUDIENCE] {
        let err = f.reviewer.review(token).await.unwrap_err();
        let K8sPsatError::WrongAudience { required, .. } = &err else {
            panic!("{token}: {err:?}");
        };
        assert_eq!(required, "tessera-server");
    }
}

#[tokio::test]
async fn namespace_or_service_account_not_allowed_is_refused() {
    let f = fixture().await;
    for (token, namespace, service_account) in [
        (TOKEN_OTHER_NS, "default", "tessera-agent"),
        (TOKEN_OTHER_SA, "tessera", "default"),
    ] {
        match f.reviewer.review(token).await {
            Err(K8sPsatError::NotAllowed {
                namespace: ns,
                service_account: sa,
            }) => assert_eq!((ns.as_str(), sa.as_str()), (namespace, service_account)),
            other => panic!("{token}: {other:?}"),
        }
    }
    let err = f.reviewer.review(TOKEN_USER).await.unwrap_err();
    assert!(
        matches!(err, K8sPsatError::NotServiceAccount { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn empty_allow_list_refuses_without_asking() {
    let f = fixture().await;
    let own_token = pem_file(OWN_TOKEN);
    let mut s = settings(f.api.url.clone(), f.api.ca_file.path(), own_token.path());
    s.allowed_service_accounts.clear();
    let reviewer = K8sPsatReviewer::new(s).unwrap();
    let err = reviewer.review(TOKEN_OK).await.unwrap_err();
    assert!(matches!(err, K8sPsatError::NotAllowed { .. }), "{err:?}");
    assert!(f.seen().is_empty());
}

#[tokio::test]
async fn review_without_the_node_name_extra_is_refused() {
    let f = fixture().await;
    let err = f.reviewer.review(TOKEN_NO_NODE).await.unwrap_err();
    assert!(
        matches!(
            err,
            K8sPsatError::MissingExtra {
                key: EXTRA_NODE_NAME
            }
        ),
        "{err:?}"
    );
    // A token not bound to a pod at all (`kubectl create token` without a bound object).
    let err = f.reviewer.review(TOKEN_NOT_POD_BOUND).await.unwrap_err();
    assert!(
        matches!(
            err,
            K8sPsatError::MissingExtra {
                key: EXTRA_POD_NAME
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn api_server_down_is_unavailable() {
    // A port that was just free: nothing listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let api = start_api_server().await;
    let own_token = pem_file(OWN_TOKEN);
    let down: http::Uri = format!("https://127.0.0.1:{port}").parse().unwrap();
    let reviewer =
        K8sPsatReviewer::new(settings(down, api.ca_file.path(), own_token.path())).unwrap();
    let err = reviewer.review(TOKEN_OK).await.unwrap_err();
    assert!(matches!(err, K8sPsatError::Unavailable(_)), "{err:?}");
}

#[tokio::test]
async fn api_server_overloaded_or_stalled_is_unavailable() {
    let f = fixture().await;
    let err = f.reviewer.review(TOKEN_OVERLOADED).await.unwrap_err();
    assert!(
        matches!(
            err,
            K8sPsatError::Unavailable(TokenReviewError::Status { status: 503, .. })
        ),
        "{err:?}"
    );

    let own_token = pem_file(OWN_TOKEN);
    let mut s = settings(f.api.url.clone(), f.api.ca_file.path(), own_token.path());
    s.timeout = Duration::from_millis(300);
    let reviewer = K8sPsatReviewer::new(s).unwrap();
    let err = reviewer.review(TOKEN_STALL).await.unwrap_err();
    assert!(
        matches!(
            err,
            K8sPsatError::Unavailable(TokenReviewError::Timeout { .. })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn api_server_refusing_the_server_or_answering_garbage_is_an_operator_error() {
    let f = fixture().await;
    let err = f.reviewer.review(TOKEN_FORBIDDEN).await.unwrap_err();
    assert!(
        matches!(
            err,
            K8sPsatError::ApiServer(TokenReviewError::Status { status: 403, .. })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("create"), "{err}");
    let err = f.reviewer.review(TOKEN_GARBAGE).await.unwrap_err();
    assert!(
        matches!(err, K8sPsatError::ApiServer(TokenReviewError::Body { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn api_server_with_a_certificate_of_another_ca_is_not_asked() {
    let f = fixture().await;
    let (other_ca, _, _) = pki();
    let other_ca = pem_file(&other_ca);
    let own_token = pem_file(OWN_TOKEN);
    let reviewer = K8sPsatReviewer::new(settings(
        f.api.url.clone(),
        other_ca.path(),
        own_token.path(),
    ))
    .unwrap();
    let err = reviewer.review(TOKEN_OK).await.unwrap_err();
    assert!(
        matches!(&err, K8sPsatError::Unavailable(TokenReviewError::Transport { reason, .. }) if reason.starts_with("TLS")),
        "{err:?}"
    );
    assert!(
        f.seen().is_empty(),
        "the tokens went to an unauthenticated server"
    );
}

#[tokio::test]
async fn oversize_or_malformed_token_is_refused_before_any_request() {
    let f = fixture().await;
    let oversize = format!("eyJhbGciOiJSUzI1NiJ9.{}.c2ln", "A".repeat(MAX_PSAT_LEN));
    for token in [
        oversize.as_str(),
        "",
        "not-a-jwt",
        "a.b",
        "a..c",
        "a.b.c.d",
        "a.b c.d",
        "eyJhbGciOiJSUzI1NiJ9.e30=.c2ln",
    ] {
        let err = f.reviewer.review(token).await.unwrap_err();
        assert!(
            matches!(err, K8sPsatError::Malformed { .. }),
            "{token:.40}: {err:?}"
        );
    }
    assert!(f.seen().is_empty());
}

#[test]
fn kubernetes_node_names_map_to_tessera_node_names() {
    assert_eq!(tessera_node_name("worker-1").unwrap(), "worker-1");
    assert_eq!(
        tessera_node_name("ip-10-0-1-23.eu-west-1.compute.internal").unwrap(),
        "ip-10-0-1-23.eu-west-1.compute.internal"
    );
    let long_a = format!("{}a", "n".repeat(200));
    let long_b = format!("{}b", "n".repeat(200));
    let (a, b) = (
        tessera_node_name(&long_a).unwrap(),
        tessera_node_name(&long_b).unwrap(),
    );
    assert_eq!(a.len(), MAX_NAME_LEN);
    assert_ne!(a, b, "distinct long names stay distinct");
    assert!(a.parse::<NodeName>().is_ok());
    for bad in ["", "worker/1", "wörker"] {
        assert!(
            matches!(tessera_node_name(bad), Err(K8sPsatError::NodeName { .. })),
            "{bad:?}"
        );
    }
}

#[test]
fn service_account_refs_parse_namespace_and_name() {
    let sa: ServiceAccountRef = "tessera:tessera-agent".parse().unwrap();
    assert_eq!(
        (sa.namespace.as_str(), sa.name.as_str()),
        ("tessera", "tessera-agent")
    );
    assert_eq!(sa.to_string(), "tessera:tessera-agent");
    for bad in [
        "tessera",
        ":agent",
        "tessera:",
        "Tessera:agent",
        "a:b:c",
        "ns:sa*",
    ] {
        assert!(bad.parse::<ServiceAccountRef>().is_err(), "{bad}");
    }
}

#[test]
fn in_cluster_url_comes_from_the_service_environment() {
    assert_eq!(K8sPsatSettings::in_cluster_url(None, Some("443")), None);
    assert_eq!(
        K8sPsatSettings::in_cluster_url(Some("10.96.0.1"), None)
            .unwrap()
            .unwrap()
            .to_string(),
        "https://10.96.0.1:443/"
    );
    assert_eq!(
        K8sPsatSettings::in_cluster_url(Some("fd00::1"), Some("6443"))
            .unwrap()
            .unwrap()
            .to_string(),
        "https://[fd00::1]:6443/"
    );
}

/// The attestor end to end on a real PostgreSQL: a token of a pod on `worker-1`
/// registers `worker-1`, whatever the agent asked for, and the audit names the node and
/// never the token.
#[tokio::test]
async fn psat_attests_the_pods_node_never_the_name_asked_for() {
    let Some((_pg, store)) = crate::testing::store("k8s_psat attestor").await else {
        return;
    };
    let f = fixture().await;
    let own_token = pem_file(OWN_TOKEN);
    let reviewer = K8sPsatReviewer::new(settings(
        f.api.url.clone(),
        f.api.ca_file.path(),
        own_token.path(),
    ))
    .unwrap();
    let attestor = K8sPsatAttestor::new(reviewer, store.clone());
    assert_eq!(attestor.kind(), AttestationKind::K8sPsat);

    let written = attestor.attest(TOKEN_OK, "node-y").await.unwrap();
    assert_eq!(written.value.name, "worker-1");
    assert_eq!(written.value.attested_by, AttestationKind::K8sPsat);
    assert!(store.get_node("node-y").await.unwrap().is_none());
    assert!(
        written
            .value
            .selectors
            .contains(&"k8s_psat:pod-name:tessera-agent-7xk2p".to_owned())
    );
    let audit = serde_json::to_string(&store.list_audit(0, 100).await.unwrap()).unwrap();
    assert!(audit.contains("node:worker-1"), "{audit}");
    assert!(
        !audit.contains("c2lnbmF0dXJl"),
        "the token is not in the audit log"
    );

    // A refused token registers nothing.
    let err = attestor
        .attest(TOKEN_OTHER_NS, "worker-2")
        .await
        .unwrap_err();
    assert!(matches!(err, AttestError::Refused(_)), "{err:?}");
    assert!(store.get_node("worker-2").await.unwrap().is_none());

    // An evicted node stays out, whatever token its pods present.
    store.evict_node("worker-1", "uid:0").await.unwrap();
    let err = attestor.attest(TOKEN_OK, "worker-1").await.unwrap_err();
    assert!(
        matches!(
            err,
            AttestError::Store(ServerStoreError::Conflict(
                crate::Conflict::NodeEvicted { .. }
            ))
        ),
        "{err:?}"
    );
}

//! The token endpoint driven through its tower `Service` with real `http::Request`s,
//! real ES256 JWT-SVIDs from `tessera_authority::JwtAuthority` (and, for hostile
//! assertions that need a valid signature, a real key published in the same JWKS),
//! the server's real X.509-SVID, and a real `RevocationWatcher`.

use std::collections::BTreeMap;
use std::convert::Infallible;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use tessera_authority::{JwtAuthority, JwtKeyPolicy, JwtSvidSpec};
use tessera_identity::{JwtBundle, JwtKey, TASK_CLAIM, TaskClaims, TrustDomain};
use tessera_proto::tessera::v1::{RevocationSet, RevokedTask};
use tessera_testca::rcgen::KeyPair;
use time::OffsetDateTime;
use tower::ServiceExt as _;

use super::*;
use crate::oauth::access_token::AccessTokenVerifier;
use crate::oauth::testkit::{ISSUER, RESOURCE, Server, b64, unix_now};
use crate::peer::Peer;
use crate::testutil::logs::captured;
use crate::testutil::{TASK_ULID, TD, claims, task_id_str};

const SCOPES: &[&str] = &["github/tool/*", "github/resource/repo://*"];
const CLIENT: &str = "spiffe://acme.corp/client/code-reviewer";
const CC: &str = "client_credentials";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A key of our own in the trust domain's JWKS, to sign assertions that break one rule
/// each with a signature that verifies.
struct RawKey {
    kid: String,
    key: KeyPair,
}

impl RawKey {
    fn new(kid: &str) -> RawKey {
        RawKey {
            kid: kid.into(),
            key: KeyPair::generate().unwrap(),
        }
    }

    fn public(&self) -> JwtKey {
        JwtKey::from_sec1(&self.kid, self.key.public_key_raw()).unwrap()
    }

    fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64(header), b64(claims));
        let key = EncodingKey::from_ec_der(&self.key.serialize_der());
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::ES256).unwrap();
        format!("{input}.{sig}")
    }

    fn token(&self, claims: &Value) -> String {
        self.sign(
            &json!({"alg": "ES256", "kid": self.kid, "typ": "JWT"}),
            claims,
        )
    }
}

/// The service behind the endpoint: answers "inner".
#[derive(Clone)]
struct Inner;

impl tower::Service<Request<Full<Bytes>>> for Inner {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
        std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"inner")))))
    }
}

struct Fixture {
    server: Server,
    authority: JwtAuthority,
    raw: RawKey,
    feed: RevocationWatcher,
    _dir: tempfile::TempDir,
}

fn td() -> TrustDomain {
    TD.parse().unwrap()
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let authority =
            JwtAuthority::open(td(), dir.path().join("authority"), JwtKeyPolicy::default())
                .unwrap();
        let server = Server::new();
        let raw = RawKey::new("raw-test-key");
        let feed = RevocationWatcher::detached(Duration::from_secs(30));
        feed.apply(&RevocationSet::default());
        let f = Fixture {
            server,
            authority,
            raw,
            feed,
            _dir: dir,
        };
        f.publish_jwt_bundle();
        f
    }

    /// Publishes the server's material with the authority's current JWKS plus the raw
    /// key.
    fn publish_jwt_bundle(&self) {
        let mut keys = self.authority.bundle().keys().to_vec();
        keys.push(self.raw.public());
        let bundle = JwtBundle::new(td(), keys, None).unwrap();
        let material = self.server.trust.current().unwrap().as_ref().clone();
        self.server.publisher.publish(
            material
                .with_jwt_bundles(BTreeMap::from([(td(), Arc::new(bundle))]))
                .unwrap(),
        );
    }

    fn config(&self) -> TokenEndpointConfig {
        TokenEndpointConfig::new(RESOURCE).unwrap()
    }

    fn service(&self, config: TokenEndpointConfig) -> TokenEndpointService<Inner> {
        tower::Layer::layer(
            &TokenEndpointLayer::new(config, self.server.trust.clone(), self.feed.clone()),
            Inner,
        )
    }

    /// A task JWT-SVID from the authority, for `audience`.
    fn task_assertion(&self, audience: &str, task: &TaskClaims) -> String {
        self.authority
            .sign(
                &JwtSvidSpec {
                    spiffe_id: &task_id_str(TD),
                    audience: &[audience.to_owned()],
                    ttl: Duration::from_secs(120),
                    not_after_cap: None,
                    task: Some(task),
                },
                OffsetDateTime::now_utc(),
            )
            .unwrap()
            .token
    }

    fn client_assertion(&self) -> String {
        self.authority
            .sign(
                &JwtSvidSpec {
                    spiffe_id: CLIENT,
                    audience: &[ISSUER.to_owned()],
                    ttl: Duration::from_secs(120),
                    not_after_cap: None,
                    task: None,
                },
                OffsetDateTime::now_utc(),
            )
            .unwrap()
            .token
    }

    fn verifier(&self) -> AccessTokenVerifier {
        AccessTokenVerifier::new(self.server.trust.clone(), ISSUER, RESOURCE)
    }
}

fn task() -> TaskClaims {
    claims(TD, SCOPES, unix_now() + 3600)
}

fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn cc_form(assertion: &str) -> Vec<(&'static str, String)> {
    vec![
        ("grant_type", CC.into()),
        ("client_assertion_type", ASSERTION_TYPE.into()),
        ("client_assertion", assertion.into()),
        ("resource", RESOURCE.into()),
    ]
}

fn post(body: String) -> Request<Full<Bytes>> {
    Request::post("/oauth/token")
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn post_pairs(pairs: &[(&str, String)]) -> Request<Full<Bytes>> {
    let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    post(form(&borrowed))
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    json: Value,
}

async fn call<S, RB>(svc: S, req: Request<Full<Bytes>>) -> Answer
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<RB>>,
    S::Error: std::fmt::Debug,
    RB: Body,
    RB::Error: std::fmt::Debug,
{
    let resp = svc.oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

fn assert_refused(a: &Answer, status: StatusCode, error: &str) {
    assert_eq!(a.status, status, "{}", a.json);
    assert_eq!(a.json["error"], error, "{}", a.json);
    assert!(a.json["error_description"].is_string(), "{}", a.json);
    assert_eq!(a.headers[CACHE_CONTROL], "no-store");
}

// === issuance ===

#[tokio::test]
async fn client_credentials_with_a_task_jwt_svid_gets_a_token_the_resource_accepts() {
    let f = Fixture::new();
    let assertion = f.task_assertion(ISSUER, &task());
    let a = call(f.service(f.config()), post_pairs(&cc_form(&assertion))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(a.headers[CACHE_CONTROL], "no-store");
    assert_eq!(a.headers[CONTENT_TYPE], "application/json");
    assert_eq!(a.json["token_type"], "Bearer");
    assert_eq!(
        a.json["scope"],
        SCOPES.join(" "),
        "no scope asked: all of the task's"
    );
    let expires_in = a.json["expires_in"].as_i64().unwrap();
    assert!(
        (100..=120).contains(&expires_in),
        "capped by the assertion's 120 s: {expires_in}"
    );
    let token = a.json["access_token"].as_str().unwrap();
    let v = f.verifier().verify(token, SystemTime::now()).unwrap();
    assert!(
        matches!(v.peer().as_ref(), Peer::Task { task, .. } if task.to_string() == task_id_str(TD))
    );
    assert_eq!(v.cnf(), None);
}

#[tokio::test]
async fn jwt_bearer_grant_with_a_narrower_scope() {
    let f = Fixture::new();
    let assertion = f.task_assertion(ISSUER, &task());
    let a = call(
        f.service(f.config()),
        post_pairs(&[
            ("grant_type", JWT_BEARER_GRANT.into()),
            ("assertion", assertion),
            ("resource", RESOURCE.into()),
            ("scope", "github/tool/get_pull_request".into()),
        ]),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(a.json["scope"], "github/tool/get_pull_request");
    let v = f
        .verifier()
        .verify(a.json["access_token"].as_str().unwrap(), SystemTime::now())
        .unwrap();
    assert_eq!(v.scopes().len(), 1);
    assert_eq!(v.task_scopes().len(), 2);
}

#[tokio::test]
async fn the_token_endpoint_url_and_a_trailing_slash_issuer_are_audiences_too() {
    let f = Fixture::new();
    for aud in [format!("{ISSUER}/oauth/token"), format!("{ISSUER}/")] {
        let a = call(
            f.service(f.config()),
            post_pairs(&cc_form(&f.task_assertion(&aud, &task()))),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{aud}: {}", a.json);
    }
    let a = call(
        f.service(f.config()),
        post_pairs(&cc_form(&f.task_assertion(RESOURCE, &task()))),
    )
    .await;
    assert_refused(&a, StatusCode::UNAUTHORIZED, "invalid_client");
}

#[tokio::test]
async fn a_request_over_mtls_gets_a_certificate_bound_token() {
    let f = Fixture::new();
    let thumb = CertThumbprint::of_der(b"the client's leaf");
    let mut req = post_pairs(&cc_form(&f.task_assertion(ISSUER, &task())));
    req.extensions_mut().insert(thumb);
    let a = call(f.service(f.config()), req).await;
    let v = f
        .verifier()
        .verify(a.json["access_token"].as_str().unwrap(), SystemTime::now())
        .unwrap();
    assert_eq!(v.cnf(), Some(&thumb));
}

#[tokio::test]
async fn the_configured_ttl_bounds_the_token() {
    let f = Fixture::new();
    let config = f.config().with_token_ttl(Duration::from_secs(30)).unwrap();
    let a = call(
        f.service(config),
        post_pairs(&cc_form(&f.task_assertion(ISSUER, &task()))),
    )
    .await;
    assert!(a.json["expires_in"].as_i64().unwrap() <= 30, "{}", a.json);
    assert!(f.config().with_token_ttl(Duration::from_secs(9)).is_err());
    assert!(
        f.config()
            .with_token_ttl(Duration::from_secs(3601))
            .is_err()
    );
    assert_eq!(f.config().token_ttl(), Duration::from_secs(300));
}

#[tokio::test]
async fn issuance_and_refusal_are_audited_without_token_text() {
    let f = Fixture::new();
    let captured = captured();
    let me = std::thread::current().id();
    let assertion = f.task_assertion(ISSUER, &task());
    let ok = call(f.service(f.config()), post_pairs(&cc_form(&assertion))).await;
    let token = ok.json["access_token"].as_str().unwrap().to_owned();
    let mut bad = cc_form(&assertion);
    bad[3].1 = "https://elsewhere/mcp".into();
    call(f.service(f.config()), post_pairs(&bad)).await;
    let events: Vec<BTreeMap<String, String>> = captured
        .lock()
        .unwrap()
        .iter()
        .filter(|(thread, fields)| {
            *thread == me && fields.get("event").is_some_and(|e| e == "token")
        })
        .map(|(_, fields)| fields.clone())
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0]["decision"], "allow");
    assert_eq!(events[0]["task"], TASK_ULID);
    assert_eq!(events[1]["decision"], "deny");
    assert_eq!(events[1]["error"], "invalid_target");
    let all = format!("{events:?}");
    assert!(
        !all.contains(&token) && !all.contains(&assertion),
        "a credential was logged"
    );
}

// === the other paths ===

#[tokio::test]
async fn metadata_is_served_and_other_paths_reach_the_inner_service() {
    let f = Fixture::new();
    let get = |path: &str| Request::get(path).body(Full::new(Bytes::new())).unwrap();
    let a = call(
        f.service(f.config()),
        get("/.well-known/oauth-authorization-server"),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json["issuer"], ISSUER);
    assert_eq!(a.json["token_endpoint"], format!("{ISSUER}/oauth/token"));
    assert_eq!(
        a.json["grant_types_supported"],
        json!([CC, JWT_BEARER_GRANT])
    );
    assert_eq!(
        a.json["token_endpoint_auth_methods_supported"],
        json!(["private_key_jwt"])
    );
    let resp = f.service(f.config()).oneshot(get("/mcp")).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"inner");
    let a = call(f.service(f.config()), get("/oauth/token")).await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    let a = call(
        f.service(f.config()),
        get("/oauth/authorize?response_type=code"),
    )
    .await;
    assert_refused(&a, StatusCode::BAD_REQUEST, "unsupported_response_type");
}

#[tokio::test]
async fn an_issuer_with_a_path_moves_every_endpoint() {
    let f = Fixture::new();
    let config = f
        .config()
        .with_issuer("https://gw.acme.corp/github/")
        .unwrap();
    assert_eq!(config.issuer(), "https://gw.acme.corp/github");
    let get = Request::get("/.well-known/oauth-authorization-server/github")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let a = call(f.service(config.clone()), get).await;
    assert_eq!(
        a.json["token_endpoint"],
        "https://gw.acme.corp/github/oauth/token"
    );
    let assertion = f.task_assertion("https://gw.acme.corp/github", &task());
    let mut req = post_pairs(&cc_form(&assertion));
    *req.uri_mut() = "/github/oauth/token".parse().unwrap();
    let a = call(f.service(config), req).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert!(TokenEndpointConfig::new("ftp://x/mcp").is_err());
    assert!(TokenEndpointConfig::new("https://x/mcp#f").is_err());
    assert!(f.config().with_issuer("https://x?q=1").is_err());
}

// === request refusals ===

#[tokio::test]
async fn resource_is_required_and_must_be_this_one() {
    let f = Fixture::new();
    let assertion = f.task_assertion(ISSUER, &task());
    let mut pairs = cc_form(&assertion);
    pairs.pop();
    let a = call(f.service(f.config()), post_pairs(&pairs)).await;
    assert_refused(&a, StatusCode::BAD_REQUEST, "invalid_target");
    for other in [
        "https://127.0.0.1:8443/other",
        "https://127.0.0.1:8443/mcp/",
        "https://127.0.0.1:9443/mcp",
        ISSUER,
    ] {
        let mut pairs = cc_form(&assertion);
        pairs[3].1 = other.into();
        let a = call(f.service(f.config()), post_pairs(&pairs)).await;
        assert_refused(&a, StatusCode::BAD_REQUEST, "invalid_target");
    }
    let mut pairs = cc_form(&assertion);
    pairs.push(("resource", "https://127.0.0.1:8443/other".into()));
    let a = call(f.service(f.config()), post_pairs(&pairs)).await;
    assert_refused(&a, StatusCode::BAD_REQUEST, "invalid_target");
}

#[tokio::test]
async fn scopes_beyond_the_task_are_invalid_scope_naming_them() {
    let f = Fixture::new();
    let mut pairs = cc_form(&f.task_assertion(ISSUER, &task()));
    pairs.push((
        "scope",
        "github/tool/get_pull_request github/prompt/review docs/tool/x".into(),
    ));
    let a = call(f.service(f.config()), post_pairs(&pairs)).await;
    assert_refused(&a, StatusCode::BAD_REQUEST, "invalid_scope");
    let d = a.json["error_description"].as_str().unwrap();
    assert!(
        d.contains("github/prompt/review") && d.contains("docs/tool/x"),
        "{d}"
    );
    assert!(!d.contains("get_pull_request"), "{d}");
    pairs.last_mut().unwrap().1 = "not a scope".into();
    let a = call(f.service(f.config()), post_pairs(&pairs)).await;
    assert_refused(&a, StatusCode::BAD_REQUEST, "invalid_scope");
}

#[tokio::test]
async fn client_id_must_be_the_assertion_subject() {
    let f = Fixture::new();
    let mut pairs = cc_form(&f.task_assertion(ISSUER, &task()));
    pairs.push(("client_id", CLIENT.into()));
    let a = call(f.service(f.config()), post_pairs(&pairs)).await;
    assert_refused(&a, StatusCode::UNAUTHORIZED, "invalid_client");
    pairs.last_mut().unwrap().1 = task_id_str(TD);
    let a = call(f.service(f.config()), post_pairs(&pairs)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
}

#[tokio::test]
async fn repeated_parameters_are_refused() {
    let f = Fixture::new();
    let assertion = f.task_assertion(ISSUER, &task());
    for name in [
        "grant_type",
        "client_assertion",
        "client_assertion_type",
        "scope",
        "client_id",
    ] {
        let mut pairs = cc_form(&assertion);
        pairs.push((name, task_id_str(TD)));
        pairs.push((name, task_id_str(TD)));
        let a = call(f.service(f.config()), post_pairs(&pairs)).await;
        assert_refused(&a, StatusCode::BAD_REQUEST, "invalid_request");
    }
}

#[tokio::test]
async fn wrong_content_type_and_oversize_bodies_are_refused() {
    let f = Fixture::new();
    let body = form(&[("grant_type", CC)]);
    for ct in ["application/json", "text/plain", "multipart/form-data"] {
        let req = Request::post("/oauth/token")
            .header(CONTENT_TYPE, ct)
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        let a = call(f.service(f.config()), req).await;
        assert_refused(&a, StatusCode::BAD_REQUEST, "invalid_request");
    }
    let req = Request::post("/oauth/token")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let a = call(f.service(f.config()), req).await;
    assert_refused(&a, StatusCode::BAD_REQUEST, "invalid_request");

    // Over the bound, declared or not (Full sets no Content-Length header).
    let huge = format!(
        "grant_type=client_credentials&pad={}",
        "a".repeat(70 * 1024)
    );
    let a = call(f.service(f.config()), post(huge.clone())).await;
    assert_refused(&a, StatusCode::PAYLOAD_TOO_LARGE, "invalid_request");
    let mut req = post("grant_type=x".into());
    req.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(1u64 << 40));
    let a = call(f.service(f.config()), req).await;
    assert_refused(&a, StatusCode::PAYLOAD_TOO_LARGE, "invalid_request");
    // Many tiny parameters.
    let many: String = (0..40).map(|i| format!("p{i}=1&")).collect();
    let a = call(f.service(f.config()), post(many)).await;
    assert_refused(&a, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn grant_types_and_client_authentication() {
    let f = Fixture::new();
    let assertion = f.task_assertion(ISSUER, &task());
    let a = call(f.service(f.config()), post(form(&[("resource", RESOURCE)]))).await;
    assert_refused(&a, StatusCode::BAD_REQUEST, "invalid_request");
    let a = call(
        f.service(f.config()),
        post(form(&[("grant_type", "password"), ("resource", RESOURCE)])),
    )
    .await;
    assert_refused(&a, StatusCode::BAD_REQUEST, "unsupported_grant_type");
    // client_credentials without the assertion, or with another assertion type.
    let mut pairs = cc_form(&assertion);
    pairs.remove(2);
    let a = call(f.service(f.config()), post_pairs(&pairs)).await;
    assert_refused(&a, StatusCode::UNAUTHORIZED, "invalid_client");
    let mut pairs = cc_form(&assertion);
    pairs[1].1 = "urn:ietf:params:oauth:client-assertion-type:saml2-bearer".into();
    let a = call(f.service(f.config()), post_pairs(&pairs)).await;
    assert_refused(&a, StatusCode::UNAUTHORIZED, "invalid_client");
    // A client secret or an Authorization header beside the assertion.
    let mut pairs = cc_form(&assertion);
    pairs.push(("client_secret", "hunter2".into()));
    let a = call(f.service(f.config()), post_pairs(&pairs)).await;
    assert_refused(&a, StatusCode::UNAUTHORIZED, "invalid_client");
    let mut req = post_pairs(&cc_form(&assertion));
    req.headers_mut().insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("Basic eDp5"),
    );
    let a = call(f.service(f.config()), req).await;
    assert_refused(&a, StatusCode::UNAUTHORIZED, "invalid_client");
    // The jwt-bearer grant without its assertion.
    let a = call(
        f.service(f.config()),
        post(form(&[
            ("grant_type", JWT_BEARER_GRANT),
            ("resource", RESOURCE),
        ])),
    )
    .await;
    assert_refused(&a, StatusCode::BAD_REQUEST, "invalid_request");
}

// === assertion refusals ===

/// Valid JWT-SVID claims for the sample task, to break one at a time.
fn task_claims_json() -> Value {
    let now = unix_now();
    json!({
        "sub": task_id_str(TD), "aud": [ISSUER], "exp": now + 120, "iat": now,
        TASK_CLAIM: URL_SAFE_NO_PAD.encode(task().to_der()),
    })
}

async fn both_grants_refuse(f: &Fixture, assertion: &str, why: &str, expect: &str) {
    let a = call(f.service(f.config()), post_pairs(&cc_form(assertion))).await;
    assert_refused(&a, StatusCode::UNAUTHORIZED, "invalid_client");
    let a = call(
        f.service(f.config()),
        post_pairs(&[
            ("grant_type", JWT_BEARER_GRANT.into()),
            ("assertion", assertion.into()),
            ("resource", RESOURCE.into()),
        ]),
    )
    .await;
    assert_refused(&a, StatusCode::BAD_REQUEST, "invalid_grant");
    let d = a.json["error_description"].as_str().unwrap();
    assert!(d.contains(expect), "{why}: {d}");
    assert!(
        a.json["error_description"].as_str().unwrap().len() < 300,
        "{why}: description too long"
    );
}

#[tokio::test]
async fn the_raw_key_fixture_signs_an_accepted_assertion() {
    let f = Fixture::new();
    let a = call(
        f.service(f.config()),
        post_pairs(&cc_form(&f.raw.token(&task_claims_json()))),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
}

#[tokio::test]
async fn hostile_assertions_are_refused() {
    let f = Fixture::new();
    let good = task_claims_json();
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let raw = &f.raw;
    let hs256 = {
        let header = json!({"alg": "HS256", "kid": raw.kid, "typ": "JWT"});
        let input = format!("{}.{}", b64(&header), b64(&good));
        // HMAC keyed with the public key the verifier holds.
        let secret = raw.key.public_key_raw().to_vec();
        let sig = jsonwebtoken::crypto::sign(
            input.as_bytes(),
            &EncodingKey::from_secret(&secret),
            Algorithm::HS256,
        )
        .unwrap();
        format!("{input}.{sig}")
    };
    let thief = RawKey::new("raw-test-key");
    let cases: Vec<(&str, &str, String)> = vec![
        (
            "alg none",
            "algorithm",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "kid": raw.kid})),
                b64(&good)
            ),
        ),
        ("HS256 keyed with the public key", "algorithm", hs256),
        (
            "wrong kid",
            "no trusted key",
            raw.sign(
                &json!({"alg": "ES256", "kid": "nobody", "typ": "JWT"}),
                &good,
            ),
        ),
        ("another key under our kid", "signature", thief.token(&good)),
        (
            "aud list without the issuer",
            "audience",
            raw.token(&with("aud", json!(["https://evil", RESOURCE]))),
        ),
        (
            "aud prefix trick",
            "audience",
            raw.token(&with("aud", json!([format!("{ISSUER}.evil.com")]))),
        ),
        (
            "aud empty list",
            "audience",
            raw.token(&with("aud", json!([]))),
        ),
        (
            "aud nested list",
            "invalid type",
            raw.token(&with("aud", json!([[ISSUER]]))),
        ),
        ("exp missing", "missing field `exp`", raw.token(&no_exp)),
        (
            "expired",
            "expired",
            raw.token(&with("exp", json!(unix_now() - 60))),
        ),
        (
            "nested claims too large",
            "task claim is",
            raw.token(&with(TASK_CLAIM, json!("A".repeat(30 * 1024)))),
        ),
        (
            "unknown claim",
            "unknown field",
            raw.token(&with("admin", json!(true))),
        ),
        (
            "sub of another task",
            "do not match",
            raw.token(&with(
                "sub",
                json!(format!(
                    "spiffe://{TD}/client/code-reviewer/task/01BX5ZZKBKACTAV9WEVGEMMVRZ"
                )),
            )),
        ),
        (
            "sub in another trust domain",
            "trust domain evil.corp",
            raw.token(&with(
                "sub",
                json!("spiffe://evil.corp/client/code-reviewer"),
            )),
        ),
        ("oversize", "longer than", "a".repeat(64 * 1024 - 200)),
        ("garbage", "compact JWS", "not.a.jwt".into()),
    ];
    for (why, expect, assertion) in cases {
        both_grants_refuse(&f, &assertion, why, expect).await;
    }
}

#[tokio::test]
async fn an_assertion_for_a_task_of_another_server_is_refused() {
    let f = Fixture::new();
    let mut other = task();
    other.server = format!("spiffe://{TD}/mcp/docs").parse().unwrap();
    other.scopes = vec!["docs/tool/*".parse().unwrap()];
    both_grants_refuse(
        &f,
        &f.task_assertion(ISSUER, &other),
        "other server",
        "docs",
    )
    .await;
}

#[tokio::test]
async fn a_revoked_task_or_a_stale_feed_gets_no_token() {
    let f = Fixture::new();
    let assertion = f.task_assertion(ISSUER, &task());
    f.feed.apply(&RevocationSet {
        version: 2,
        revoked: vec![RevokedTask {
            task_id: TASK_ULID.into(),
            reason: "ended".into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    let a = call(f.service(f.config()), post_pairs(&cc_form(&assertion))).await;
    assert_refused(&a, StatusCode::UNAUTHORIZED, "invalid_client");
    assert!(
        a.json["error_description"]
            .as_str()
            .unwrap()
            .contains("revoked")
    );

    let stale = RevocationWatcher::detached(Duration::from_secs(30));
    let svc = tower::Layer::layer(
        &TokenEndpointLayer::new(f.config(), f.server.trust.clone(), stale),
        Inner,
    );
    let a = call(svc, post_pairs(&cc_form(&assertion))).await;
    assert_refused(&a, StatusCode::UNAUTHORIZED, "invalid_client");
    assert!(
        a.json["error_description"]
            .as_str()
            .unwrap()
            .contains("stale")
    );
}

#[tokio::test]
async fn client_identities_get_tokens_only_when_enabled() {
    let f = Fixture::new();
    let assertion = f.client_assertion();
    let a = call(f.service(f.config()), post_pairs(&cc_form(&assertion))).await;
    assert_refused(&a, StatusCode::BAD_REQUEST, "unauthorized_client");
    let config = f.config().accept_client_identities(true);
    let a = call(f.service(config.clone()), post_pairs(&cc_form(&assertion))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    let v = f
        .verifier()
        .verify(a.json["access_token"].as_str().unwrap(), SystemTime::now())
        .unwrap();
    assert!(matches!(v.peer().as_ref(), Peer::Client { .. }));
    let mut pairs = cc_form(&assertion);
    pairs.push(("scope", "github/tool/*".into()));
    let a = call(f.service(config), post_pairs(&pairs)).await;
    assert_refused(&a, StatusCode::BAD_REQUEST, "invalid_scope");
}

#[tokio::test]
async fn a_rotated_jwt_key_is_accepted_once_published() {
    let f = Fixture::new();
    let now = OffsetDateTime::now_utc();
    f.authority.prepare_next(now).unwrap();
    f.authority.activate_prepared(now).unwrap();
    let assertion = f.task_assertion(ISSUER, &task());
    // Signed with a key the server has not seen yet.
    let svc = f.service(f.config());
    let a = call(svc.clone(), post_pairs(&cc_form(&assertion))).await;
    assert_refused(&a, StatusCode::UNAUTHORIZED, "invalid_client");
    // The bundle reaches the trust seam: the same service accepts it.
    f.publish_jwt_bundle();
    let a = call(svc, post_pairs(&cc_form(&assertion))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
}

#[tokio::test]
async fn without_a_jwt_bundle_the_endpoint_is_unavailable() {
    let f = Fixture::new();
    let material = f.server.trust.current().unwrap().as_ref().clone();
    f.server
        .publisher
        .publish(material.with_jwt_bundles(BTreeMap::new()).unwrap());
    let a = call(
        f.service(f.config()),
        post_pairs(&cc_form(&f.task_assertion(ISSUER, &task()))),
    )
    .await;
    assert_refused(&a, StatusCode::SERVICE_UNAVAILABLE, "server_error");
}

#[tokio::test]
async fn a_task_past_its_deadline_gets_no_token_even_within_the_jwt_leeway() {
    let f = Fixture::new();
    // The JWT-SVID rules allow a few seconds of clock skew on `exp`; the task's
    // deadline is the task's, and it has passed.
    let now = unix_now();
    let mut ended = task();
    ended.deadline_unix = now - 2;
    let claims = json!({
        "sub": task_id_str(TD), "aud": ISSUER, "exp": now - 2, "iat": now - 60,
        TASK_CLAIM: URL_SAFE_NO_PAD.encode(ended.to_der()),
    });
    both_grants_refuse(&f, &f.raw.token(&claims), "deadline", "deadline").await;
}

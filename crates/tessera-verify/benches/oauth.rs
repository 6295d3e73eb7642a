//! OAuth costs per request: access-token verification cold (header, x5c chain to the
//! bundle, ES256 signature, claims) and from the cache (hash + lookup + live checks),
//! and token-endpoint issuance end to end in-process (form parsing, JWT-SVID
//! validation, minting, JSON), beside raw ES256 sign (ring, as the minter signs) and
//! verify (p256, as access tokens and JWT-SVIDs are verified) in the same run.
//! Prints p50/p99 per operation, then runs criterion.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt as _, Full};
use rustls::SignatureScheme;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tessera_authority::{JwtAuthority, JwtKeyPolicy, JwtSvidSpec};
use tessera_identity::{ServerId, TaskClaims};
use tessera_testca::rcgen::KeyPair;
use tessera_testca::{Ca, Leaf};
use tessera_verify::RevocationWatcher;
use tessera_verify::oauth::{
    AccessTokenGrant, AccessTokenMinter, AccessTokenVerifier, GrantSubject, TokenEndpointConfig,
    TokenEndpointLayer,
};
use tessera_verify::trust::{TrustMaterial, TrustSource};
use time::OffsetDateTime;
use tower::ServiceExt as _;

const TD: &str = "acme.corp";
const SERVER: &str = "spiffe://acme.corp/mcp/github";
const TASK: &str = "spiffe://acme.corp/client/code-reviewer/task/01ARZ3NDEKTSV4RRFFQ69G5FAV";
const ISSUER: &str = "https://127.0.0.1:8443";
const RESOURCE: &str = "https://127.0.0.1:8443/mcp";

struct World {
    trust: TrustSource,
    authority: JwtAuthority,
    key: KeyPair,
    claims: TaskClaims,
    _dir: tempfile::TempDir,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let authority = JwtAuthority::open(
        TD.parse().unwrap(),
        dir.path().join("authority"),
        JwtKeyPolicy::default(),
    )
    .unwrap();
    let ca = Ca::root(TD);
    let key = KeyPair::generate().unwrap();
    let leaf = Leaf {
        key: Some(&key),
        ..Leaf::new(SERVER, &ca)
    }
    .mint();
    let own: ServerId = SERVER.parse().unwrap();
    let material = TrustMaterial::new(
        own,
        leaf.chain,
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        BTreeMap::from([(TD.parse().unwrap(), vec![ca.cert().clone()])]),
        OffsetDateTime::now_utc().unix_timestamp(),
    )
    .unwrap()
    .with_jwt_bundles(BTreeMap::from([(TD.parse().unwrap(), authority.bundle())]))
    .unwrap();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let claims = TaskClaims {
        version: tessera_identity::TASK_CLAIMS_VERSION,
        task_id: "01ARZ3NDEKTSV4RRFFQ69G5FAV".parse().unwrap(),
        client_id: "spiffe://acme.corp/client/code-reviewer".parse().unwrap(),
        subject: "alice@acme.corp".into(),
        purpose: "review PR 42".into(),
        server: SERVER.parse().unwrap(),
        scopes: vec![
            "github/tool/*".parse().unwrap(),
            "github/resource/repo://*".parse().unwrap(),
        ],
        consent_id: "consent-1".into(),
        deadline_unix: now + 3600,
    };
    World {
        trust: TrustSource::from_static(material),
        authority,
        key,
        claims,
        _dir: dir,
    }
}

fn access_token(w: &World) -> String {
    AccessTokenMinter::new(w.trust.clone(), ISSUER, RESOURCE)
        .mint(
            &AccessTokenGrant {
                subject: GrantSubject::Task(w.claims.clone()),
                scopes: vec!["github/tool/get_pull_request".parse().unwrap()],
                not_after_unix: None,
                ttl: Duration::from_secs(300),
                cnf: None,
            },
            SystemTime::now(),
        )
        .unwrap()
        .token
}

fn assertion(w: &World) -> String {
    w.authority
        .sign(
            &JwtSvidSpec {
                spiffe_id: TASK,
                audience: &[ISSUER.to_owned()],
                ttl: Duration::from_secs(600),
                not_after_cap: None,
                task: Some(&w.claims),
            },
            OffsetDateTime::now_utc(),
        )
        .unwrap()
        .token
}

fn token_request(assertion: &str) -> http::Request<Full<Bytes>> {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion),
            ("resource", RESOURCE),
        ])
        .finish();
    http::Request::post("/oauth/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

type Inner = tower::util::BoxCloneService<
    http::Request<Full<Bytes>>,
    http::Response<Full<Bytes>>,
    std::convert::Infallible,
>;

fn endpoint(w: &World) -> tessera_verify::oauth::TokenEndpointService<Inner> {
    let inner: Inner = tower::util::BoxCloneService::new(tower::service_fn(|_| async {
        Ok(http::Response::new(Full::new(Bytes::new())))
    }));
    tower::Layer::layer(
        &TokenEndpointLayer::new(
            TokenEndpointConfig::new(RESOURCE).unwrap(),
            w.trust.clone(),
            RevocationWatcher::from_static([], []),
        ),
        inner,
    )
}

fn pct(samples: &mut [u64], q: f64) -> f64 {
    samples.sort_unstable();
    samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)] as f64 / 1000.0
}

fn report(name: &str, samples: &mut [u64]) {
    println!(
        "{name}: p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs ({} samples)",
        pct(samples, 0.50),
        pct(samples, 0.90),
        pct(samples, 0.99),
        samples.len()
    );
}

/// `n` timings of `f`, after `n / 10` unmeasured calls.
fn measure(n: usize, mut f: impl FnMut()) -> Vec<u64> {
    for _ in 0..(n / 10).max(1) {
        f();
    }
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos() as u64
        })
        .collect()
}

/// Samples per operation; `TESSERA_OAUTH_SAMPLES` overrides it.
fn samples() -> usize {
    std::env::var("TESSERA_OAUTH_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000)
}

fn percentiles(w: &World) {
    let n = samples();
    let token = access_token(w);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();

    let verifier = AccessTokenVerifier::new(w.trust.clone(), ISSUER, RESOURCE);
    verifier.verify(&token, SystemTime::now()).unwrap();
    report(
        "access token verify, cached",
        &mut measure(n, || {
            black_box(
                verifier
                    .verify(black_box(&token), SystemTime::now())
                    .unwrap(),
            );
        }),
    );
    report(
        "access token verify, cold (chain + signature + claims)",
        &mut measure(n / 10, || {
            let v = AccessTokenVerifier::new(w.trust.clone(), ISSUER, RESOURCE);
            black_box(v.verify(black_box(&token), SystemTime::now()).unwrap());
        }),
    );
    let svc = endpoint(w);
    let assertion = assertion(w);
    report(
        "token endpoint issuance, in-process",
        &mut measure(n / 10, || {
            let resp = rt
                .block_on(svc.clone().oneshot(token_request(&assertion)))
                .unwrap();
            assert_eq!(resp.status(), http::StatusCode::OK);
            black_box(rt.block_on(resp.into_body().collect()).unwrap());
        }),
    );
    let material = w.trust.current().unwrap();
    let signer = material
        .certified_key()
        .key
        .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
        .unwrap();
    let msg = token.rsplit_once('.').unwrap().0.to_owned();
    report(
        "raw ES256 sign (ring)",
        &mut measure(n / 10, || {
            black_box(signer.sign(black_box(msg.as_bytes())).unwrap());
        }),
    );
    let point = w.key.public_key_raw();
    let key = jsonwebtoken::DecodingKey::from_ec_components(
        &URL_SAFE_NO_PAD.encode(&point[1..33]),
        &URL_SAFE_NO_PAD.encode(&point[33..]),
    )
    .unwrap();
    let sig = token.rsplit_once('.').unwrap().1.to_owned();
    report(
        "raw ES256 verify (p256, as access tokens)",
        &mut measure(n / 10, || {
            assert!(
                jsonwebtoken::crypto::verify(
                    &sig,
                    msg.as_bytes(),
                    &key,
                    jsonwebtoken::Algorithm::ES256
                )
                .unwrap()
            );
        }),
    );
}

fn bench(c: &mut Criterion) {
    let w = world();
    percentiles(&w);
    let token = access_token(&w);
    let verifier = AccessTokenVerifier::new(w.trust.clone(), ISSUER, RESOURCE);
    c.bench_function("access_token/verify_cached", |b| {
        b.iter(|| black_box(verifier.verify(&token, SystemTime::now()).unwrap()))
    });
    c.bench_function("access_token/verify_cold", |b| {
        b.iter_batched(
            || AccessTokenVerifier::new(w.trust.clone(), ISSUER, RESOURCE),
            |v| black_box(v.verify(&token, SystemTime::now()).unwrap()),
            BatchSize::SmallInput,
        )
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let svc = endpoint(&w);
    let assertion = assertion(&w);
    c.bench_function("token_endpoint/issue", |b| {
        b.iter(|| {
            let resp = rt
                .block_on(svc.clone().oneshot(token_request(&assertion)))
                .unwrap();
            black_box(rt.block_on(resp.into_body().collect()).unwrap())
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);

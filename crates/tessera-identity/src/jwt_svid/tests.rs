//! One test per rule of the JWT-SVID profile: each hostile token is a real token,
//! signed where a signature matters, that breaks exactly that rule.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use serde_json::{Value, json};

use super::*;
use crate::claims::tests::sample_claims;

const NOW: i64 = 1_800_000_000;
const TASK_SUB: &str = "spiffe://acme.corp/client/code-reviewer/task/01ARZ3NDEKTSV4RRFFQ69G5FAV";
const CLIENT_SUB: &str = "spiffe://acme.corp/client/code-reviewer";
const AUD: &str = "https://mcp.acme.corp/github";

struct Signer {
    kid: String,
    encoding: EncodingKey,
    public: JwtKey,
    point: Vec<u8>,
}

impl Signer {
    fn new(kid: &str) -> Signer {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let point = key.public_key_raw().to_vec();
        Signer {
            kid: kid.into(),
            encoding: EncodingKey::from_ec_der(&key.serialize_der()),
            public: JwtKey::from_sec1(kid, &point).unwrap(),
            point,
        }
    }

    /// A compact JWS of exactly `header` and `claims`, ES256-signed with this key.
    fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64(header), b64(claims));
        let sig =
            jsonwebtoken::crypto::sign(input.as_bytes(), &self.encoding, Algorithm::ES256).unwrap();
        format!("{input}.{sig}")
    }

    fn header(&self) -> Value {
        json!({"alg": "ES256", "kid": self.kid, "typ": "JWT"})
    }

    fn token(&self, claims: &Value) -> String {
        self.sign(&self.header(), claims)
    }
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

fn acme(signers: &[&Signer]) -> JwtBundle {
    JwtBundle::new(
        "acme.corp".parse().unwrap(),
        signers.iter().map(|s| s.public.clone()).collect(),
        None,
    )
    .unwrap()
}

fn client_claims() -> Value {
    json!({"sub": CLIENT_SUB, "aud": AUD, "exp": NOW + 300, "iat": NOW, "jti": "j1"})
}

fn task_claims_json(claims: &TaskClaims, exp: i64) -> Value {
    json!({
        "sub": TASK_SUB, "aud": [AUD], "exp": exp, "iat": NOW,
        TASK_CLAIM: URL_SAFE_NO_PAD.encode(claims.to_der()),
    })
}

fn task() -> TaskClaims {
    let mut c = sample_claims();
    c.deadline_unix = NOW + 600;
    c
}

fn check(token: &str, bundle: &JwtBundle) -> Result<ValidJwtSvid, JwtSvidError> {
    validate_jwt_svid(token, [bundle], AUD, NOW)
}

#[test]
fn a_client_token_is_accepted() {
    let s = Signer::new("k1");
    let v = check(&s.token(&client_claims()), &acme(&[&s])).unwrap();
    assert_eq!(v.subject.to_string(), CLIENT_SUB);
    assert_eq!(v.kid, "k1");
    assert_eq!(v.task, None);
}

#[test]
fn a_task_token_is_accepted_with_its_claims() {
    let s = Signer::new("k1");
    let v = check(
        &s.token(&task_claims_json(&task(), NOW + 300)),
        &acme(&[&s]),
    )
    .unwrap();
    assert_eq!(v.subject.to_string(), TASK_SUB);
    assert_eq!(v.task, Some(task()));
}

#[test]
fn alg_none_is_refused() {
    let s = Signer::new("k1");
    let token = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": "k1"})),
        b64(&client_claims())
    );
    let err = check(&token, &acme(&[&s])).unwrap_err();
    assert!(
        matches!(err, JwtSvidError::DisallowedAlgorithm { ref alg } if alg == "none"),
        "{err}"
    );
}

#[test]
fn hs256_signed_with_the_public_key_as_secret_is_refused() {
    let s = Signer::new("k1");
    // The classic confusion: HMAC keyed with the verifier's public key, in each form an
    // implementation might feed an HMAC (the SEC1 point, the JWK text).
    for secret in [
        s.point.clone(),
        serde_json::to_vec(&s.public.to_jwk()).unwrap(),
    ] {
        let header = json!({"alg": "HS256", "kid": "k1", "typ": "JWT"});
        let input = format!("{}.{}", b64(&header), b64(&client_claims()));
        let sig = jsonwebtoken::crypto::sign(
            input.as_bytes(),
            &EncodingKey::from_secret(&secret),
            Algorithm::HS256,
        )
        .unwrap();
        let err = check(&format!("{input}.{sig}"), &acme(&[&s])).unwrap_err();
        assert!(
            matches!(err, JwtSvidError::DisallowedAlgorithm { .. }),
            "{err}"
        );
    }
}

#[test]
fn rs256_and_other_algorithms_are_refused() {
    let s = Signer::new("k1");
    for alg in ["RS256", "ES384", "PS256", "EdDSA", "es256", "ES256 "] {
        let token = s.sign(&json!({"alg": alg, "kid": "k1"}), &client_claims());
        let err = check(&token, &acme(&[&s])).unwrap_err();
        assert!(
            matches!(err, JwtSvidError::DisallowedAlgorithm { .. }),
            "{alg}: {err}"
        );
    }
}

#[test]
fn a_missing_kid_is_refused() {
    let s = Signer::new("k1");
    let token = s.sign(&json!({"alg": "ES256"}), &client_claims());
    assert_eq!(
        check(&token, &acme(&[&s])).unwrap_err(),
        JwtSvidError::MissingKeyId
    );
}

#[test]
fn an_unknown_kid_is_refused() {
    let s = Signer::new("k1");
    let other = Signer::new("k2");
    let err = check(&other.token(&client_claims()), &acme(&[&s])).unwrap_err();
    assert!(
        matches!(err, JwtSvidError::UnknownKeyId { ref kid } if kid == "k2"),
        "{err}"
    );
}

#[test]
fn a_key_claiming_a_trusted_kid_does_not_verify() {
    let trusted = Signer::new("k1");
    let forger = Signer::new("k1");
    assert_eq!(
        check(&forger.token(&client_claims()), &acme(&[&trusted])).unwrap_err(),
        JwtSvidError::BadSignature
    );
}

#[test]
fn a_header_bringing_its_own_key_or_extensions_is_refused() {
    let s = Signer::new("k1");
    for extra in [
        json!({"jwk": s.public.to_jwk()}),
        json!({"jku": "https://evil.example/jwks"}),
        json!({"crit": ["exp"]}),
        json!({"x5c": []}),
    ] {
        let mut header = s.header();
        header
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let err = check(&s.sign(&header, &client_claims()), &acme(&[&s])).unwrap_err();
        assert!(matches!(err, JwtSvidError::Malformed(_)), "{extra}: {err}");
    }
}

#[test]
fn a_type_other_than_jwt_or_jose_is_refused() {
    let s = Signer::new("k1");
    let token = s.sign(
        &json!({"alg": "ES256", "kid": "k1", "typ": "at+jwt"}),
        &client_claims(),
    );
    assert!(matches!(
        check(&token, &acme(&[&s])).unwrap_err(),
        JwtSvidError::BadType { .. }
    ));
    let jose = s.sign(
        &json!({"alg": "ES256", "kid": "k1", "typ": "JOSE"}),
        &client_claims(),
    );
    check(&jose, &acme(&[&s])).unwrap();
}

#[test]
fn audience_tricks_are_refused() {
    let s = Signer::new("k1");
    let bundle = acme(&[&s]);
    let with_aud = |aud: Value| {
        let mut c = client_claims();
        c["aud"] = aud;
        check(&s.token(&c), &bundle)
    };
    // Accepted shapes: the string, or an array holding it among others.
    with_aud(json!(AUD)).unwrap();
    with_aud(json!(["other", AUD])).unwrap();
    // Shapes that must never match.
    assert_eq!(
        with_aud(json!([])).unwrap_err(),
        JwtSvidError::BadAudience("no audience")
    );
    for nested in [
        json!([[AUD]]),
        json!([{"aud": AUD}]),
        json!([AUD, 1]),
        json!(null),
    ] {
        let err = with_aud(nested.clone()).unwrap_err();
        assert!(matches!(err, JwtSvidError::BadClaims(_)), "{nested}: {err}");
    }
    assert_eq!(
        with_aud(json!(["other"])).unwrap_err(),
        JwtSvidError::AudienceMismatch
    );
    // A prefix, a case change, a trailing slash: exact match only.
    for near in [
        "https://mcp.acme.corp/git",
        "HTTPS://mcp.acme.corp/github",
        "https://mcp.acme.corp/github/",
    ] {
        assert_eq!(
            with_aud(json!(near)).unwrap_err(),
            JwtSvidError::AudienceMismatch
        );
    }
    let many: Vec<String> = (0..=MAX_AUDIENCES).map(|i| format!("a{i}")).collect();
    assert!(matches!(
        with_aud(json!(many)).unwrap_err(),
        JwtSvidError::BadClaims(_)
    ));
    assert!(matches!(
        with_aud(json!([""])).unwrap_err(),
        JwtSvidError::BadAudience(_)
    ));
}

#[test]
fn a_missing_or_ill_typed_exp_is_refused() {
    let s = Signer::new("k1");
    let mut c = client_claims();
    c.as_object_mut().unwrap().remove("exp");
    assert!(matches!(
        check(&s.token(&c), &acme(&[&s])).unwrap_err(),
        JwtSvidError::BadClaims(_)
    ));
    for bad in [json!("1900000000"), json!(1.9e9), json!(null)] {
        let mut c = client_claims();
        c["exp"] = bad.clone();
        let err = check(&s.token(&c), &acme(&[&s])).unwrap_err();
        assert!(matches!(err, JwtSvidError::BadClaims(_)), "{bad}: {err}");
    }
}

#[test]
fn an_expired_token_is_refused_past_the_leeway_only() {
    let s = Signer::new("k1");
    let at = |exp: i64| {
        let mut c = client_claims();
        c["exp"] = exp.into();
        c["iat"] = (exp - 300).into();
        check(&s.token(&c), &acme(&[&s]))
    };
    at(NOW - JWT_LEEWAY_SECS + 1).unwrap();
    assert!(matches!(
        at(NOW - JWT_LEEWAY_SECS).unwrap_err(),
        JwtSvidError::Expired { .. }
    ));
    assert!(matches!(
        at(NOW - 3600).unwrap_err(),
        JwtSvidError::Expired { .. }
    ));
}

#[test]
fn a_token_from_the_future_is_refused() {
    let s = Signer::new("k1");
    for claim in ["nbf", "iat"] {
        let mut c = client_claims();
        c["exp"] = (NOW + 3600).into();
        c[claim] = (NOW + JWT_LEEWAY_SECS + 1).into();
        let err = check(&s.token(&c), &acme(&[&s])).unwrap_err();
        assert!(
            matches!(err, JwtSvidError::NotYetValid { .. }),
            "{claim}: {err}"
        );
    }
}

#[test]
fn a_subject_that_is_not_a_tessera_spiffe_id_is_refused() {
    let s = Signer::new("k1");
    for sub in [
        "alice",
        "https://acme.corp/client/code-reviewer",
        "spiffe://acme.corp",
        "spiffe://acme.corp/ns/default/sa/x",
        "spiffe://acme.corp/client/../admin",
    ] {
        let mut c = client_claims();
        c["sub"] = sub.into();
        let err = check(&s.token(&c), &acme(&[&s])).unwrap_err();
        assert!(matches!(err, JwtSvidError::BadSubject(_)), "{sub}: {err}");
    }
}

#[test]
fn a_subject_of_another_trust_domain_is_refused() {
    let s = Signer::new("k1");
    let mut c = client_claims();
    c["sub"] = "spiffe://evil.corp/client/code-reviewer".into();
    assert!(matches!(
        check(&s.token(&c), &acme(&[&s])).unwrap_err(),
        JwtSvidError::SubjectDomainMismatch { .. }
    ));
    // A federated domain's key, even one reusing our kid, vouches only for its own IDs.
    let evil_key = Signer::new("k1");
    let evil = JwtBundle::new(
        "evil.corp".parse().unwrap(),
        vec![evil_key.public.clone()],
        None,
    )
    .unwrap();
    let ours = acme(&[&s]);
    let err =
        validate_jwt_svid(&evil_key.token(&client_claims()), [&ours, &evil], AUD, NOW).unwrap_err();
    assert!(
        matches!(err, JwtSvidError::SubjectDomainMismatch { .. }),
        "{err}"
    );
    let mut theirs = client_claims();
    theirs["sub"] = "spiffe://evil.corp/client/x".into();
    validate_jwt_svid(&evil_key.token(&theirs), [&ours, &evil], AUD, NOW).unwrap();
}

#[test]
fn an_oversize_token_is_refused_before_decoding() {
    let s = Signer::new("k1");
    let token = format!("{}.{}.sig", "e".repeat(10), "A".repeat(MAX_JWT_SVID_LEN));
    assert!(matches!(
        check(&token, &acme(&[&s])).unwrap_err(),
        JwtSvidError::TooLarge { .. }
    ));
}

#[test]
fn oversize_task_claims_are_refused_before_decoding() {
    let s = Signer::new("k1");
    let mut c = task_claims_json(&task(), NOW + 300);
    // Not even base64url: the length alone refuses it.
    c[TASK_CLAIM] = "!".repeat(MAX_TASK_CLAIM_B64_LEN + 1).into();
    assert!(matches!(
        check(&s.token(&c), &acme(&[&s])).unwrap_err(),
        JwtSvidError::TaskClaimTooLarge { .. }
    ));
}

#[test]
fn unknown_or_repeated_claims_are_refused() {
    let s = Signer::new("k1");
    // A large nested private claim: refused by the schema, whatever it holds.
    let mut c = client_claims();
    c["extra"] = json!({"a": {"b": {"c": ["x".repeat(4096)]}}});
    assert!(matches!(
        check(&s.token(&c), &acme(&[&s])).unwrap_err(),
        JwtSvidError::BadClaims(_)
    ));
    // Two `sub` members: a parser keeping the first and one keeping the last would disagree.
    let header = b64(&s.header());
    let payload = URL_SAFE_NO_PAD.encode(format!(
        r#"{{"sub":"{CLIENT_SUB}","sub":"spiffe://acme.corp/client/admin","aud":"{AUD}","exp":{}}}"#,
        NOW + 300
    ));
    let input = format!("{header}.{payload}");
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &s.encoding, Algorithm::ES256).unwrap();
    assert!(matches!(
        check(&format!("{input}.{sig}"), &acme(&[&s])).unwrap_err(),
        JwtSvidError::BadClaims(_)
    ));
}

#[test]
fn task_claims_must_match_the_subject() {
    let s = Signer::new("k1");
    let bundle = acme(&[&s]);
    // Claims of another task under this task's subject.
    let mut other = task();
    other.task_id = "01ARZ3NDEKTSV4RRFFQ69G5FAW".parse().unwrap();
    assert_eq!(
        check(&s.token(&task_claims_json(&other, NOW + 300)), &bundle).unwrap_err(),
        JwtSvidError::TaskClaimsMismatch
    );
    // Another client's claims.
    let mut other = task();
    other.client_id = "spiffe://acme.corp/client/intruder".parse().unwrap();
    assert_eq!(
        check(&s.token(&task_claims_json(&other, NOW + 300)), &bundle).unwrap_err(),
        JwtSvidError::TaskClaimsMismatch
    );
    // A task subject without claims, claims on a client subject.
    let mut c = task_claims_json(&task(), NOW + 300);
    c.as_object_mut().unwrap().remove(TASK_CLAIM);
    assert_eq!(
        check(&s.token(&c), &bundle).unwrap_err(),
        JwtSvidError::MissingTaskClaims
    );
    let mut c = task_claims_json(&task(), NOW + 300);
    c["sub"] = CLIENT_SUB.into();
    assert_eq!(
        check(&s.token(&c), &bundle).unwrap_err(),
        JwtSvidError::UnexpectedTaskClaims
    );
    // Not DER of task claims.
    let mut c = task_claims_json(&task(), NOW + 300);
    c[TASK_CLAIM] = URL_SAFE_NO_PAD.encode(b"\x30\x03\x02\x01\x01").into();
    assert!(matches!(
        check(&s.token(&c), &bundle).unwrap_err(),
        JwtSvidError::BadTaskClaim(_)
    ));
}

#[test]
fn a_task_token_outliving_its_task_is_refused() {
    let s = Signer::new("k1");
    let err = check(
        &s.token(&task_claims_json(&task(), task().deadline_unix + 1)),
        &acme(&[&s]),
    )
    .unwrap_err();
    assert!(matches!(err, JwtSvidError::OutlivesTask { .. }), "{err}");
}

#[test]
fn a_tampered_payload_does_not_verify() {
    let s = Signer::new("k1");
    let token = s.token(&client_claims());
    let mut parts: Vec<&str> = token.split('.').collect();
    let mut forged = client_claims();
    forged["sub"] = "spiffe://acme.corp/client/admin".into();
    let forged = b64(&forged);
    parts[1] = &forged;
    assert_eq!(
        check(&parts.join("."), &acme(&[&s])).unwrap_err(),
        JwtSvidError::BadSignature
    );
}

#[test]
fn jwks_round_trips_and_skips_x509_keys() {
    let (a, b) = (Signer::new("k1"), Signer::new("k2"));
    let bundle = JwtBundle::new(
        "acme.corp".parse().unwrap(),
        vec![a.public.clone(), b.public.clone()],
        Some(60),
    )
    .unwrap();
    let doc: Value = serde_json::from_slice(&bundle.to_jwks()).unwrap();
    assert_eq!(doc["spiffe_refresh_hint"], 60);
    assert_eq!(doc["keys"][0]["use"], "jwt-svid");
    assert_eq!(doc["keys"][0]["kty"], "EC");
    assert_eq!(doc["keys"][0]["crv"], "P-256");
    let mut with_x509 = doc.clone();
    with_x509["keys"]
        .as_array_mut()
        .unwrap()
        .push(json!({"kty": "EC", "use": "x509-svid", "x5c": ["MIIB"]}));
    let parsed = JwtBundle::from_jwks(
        "acme.corp".parse().unwrap(),
        &serde_json::to_vec(&with_x509).unwrap(),
    )
    .unwrap();
    assert_eq!(parsed, bundle);
}

#[test]
fn jwks_with_a_private_key_a_duplicate_kid_or_another_curve_is_refused() {
    let a = Signer::new("k1");
    let jwk = a.public.to_jwk();
    let doc = |keys: Vec<Value>| serde_json::to_vec(&json!({ "keys": keys })).unwrap();
    let td: TrustDomain = "acme.corp".parse().unwrap();
    let mut private = jwk.clone();
    private["d"] = "AAAA".into();
    let mut p384 = jwk.clone();
    p384["crv"] = "P-384".into();
    let mut rsa = jwk.clone();
    rsa["alg"] = "RS256".into();
    for keys in [vec![private], vec![p384], vec![rsa]] {
        assert!(matches!(
            JwtBundle::from_jwks(td.clone(), &doc(keys)).unwrap_err(),
            JwksError::BadKey { .. }
        ));
    }
    assert!(matches!(
        JwtBundle::from_jwks(td.clone(), &doc(vec![jwk.clone(), jwk])).unwrap_err(),
        JwksError::DuplicateKeyId { .. }
    ));
}

// === the issuance split: a node's key signs clients and tasks only ===

const SERVER_SUB: &str = "spiffe://acme.corp/mcp/github";

fn server_claims() -> Value {
    json!({"sub": SERVER_SUB, "aud": AUD, "exp": NOW + 300, "iat": NOW})
}

#[test]
fn a_node_key_validates_client_and_task_tokens() {
    let node = Signer::new("node-0123456789abcdef0123456789abcdef");
    let bundle = acme(&[&node]);
    assert_eq!(
        check(&node.token(&client_claims()), &bundle)
            .unwrap()
            .subject
            .to_string(),
        CLIENT_SUB
    );
    let v = check(&node.token(&task_claims_json(&task(), NOW + 300)), &bundle).unwrap();
    assert_eq!(v.subject.to_string(), TASK_SUB);
}

#[test]
fn a_node_key_forging_an_mcp_server_subject_is_refused() {
    let node = Signer::new("node-0123456789abcdef0123456789abcdef");
    let err = check(&node.token(&server_claims()), &acme(&[&node])).unwrap_err();
    assert_eq!(err.reason(), "jwt_node_key_may_not_sign");
    assert!(err.to_string().contains(SERVER_SUB), "{err}");
}

#[test]
fn the_trust_domains_own_key_still_signs_mcp_servers() {
    // A standalone agent's keys (32 hex digits) are the trust domain's: unchanged.
    let own = Signer::new("0123456789abcdef0123456789abcdef");
    let v = check(&own.token(&server_claims()), &acme(&[&own])).unwrap();
    assert_eq!(v.subject.to_string(), SERVER_SUB);
}

#[test]
fn the_node_mark_survives_the_jwks() {
    let node = Signer::new("node-0123456789abcdef0123456789abcdef");
    let own = Signer::new("0123456789abcdef0123456789abcdef");
    let served = acme(&[&own, &node]).to_jwks();
    // What a verifier parses from the Workload API: standard members only.
    let doc: Value = serde_json::from_slice(&served).unwrap();
    for jwk in doc["keys"].as_array().unwrap() {
        let mut members: Vec<&str> = jwk
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        members.sort_unstable();
        assert_eq!(members, ["crv", "kid", "kty", "use", "x", "y"]);
    }
    let parsed = JwtBundle::from_jwks("acme.corp".parse().unwrap(), &served).unwrap();
    let err = check(&node.token(&server_claims()), &parsed).unwrap_err();
    assert_eq!(err.reason(), "jwt_node_key_may_not_sign");
    check(&own.token(&server_claims()), &parsed).unwrap();
}

#[test]
fn a_cluster_sized_jwks_parses() {
    // Hundreds of nodes' keys in one trust domain's JWKS.
    let keys: Vec<JwtKey> = (0..1500)
        .map(|i| {
            let s = Signer::new(&format!("node-{i:032x}"));
            s.public
        })
        .collect();
    let bundle = JwtBundle::new("acme.corp".parse().unwrap(), keys, Some(7200)).unwrap();
    let jwks = bundle.to_jwks();
    assert!(jwks.len() <= MAX_JWKS_LEN, "{} bytes", jwks.len());
    let parsed = JwtBundle::from_jwks("acme.corp".parse().unwrap(), &jwks).unwrap();
    assert_eq!(parsed.keys().len(), 1500);
}

#[test]
fn a_point_off_the_curve_is_not_a_key() {
    let s = Signer::new("k1");
    let (x, y) = s.point[1..].split_at(32);
    assert!(JwtKey::from_xy("k1", x, y).is_ok());
    let mut bad_y = y.to_vec();
    bad_y[31] ^= 1;
    assert!(JwtKey::from_xy("k1", x, &bad_y).is_err());
    assert!(JwtKey::from_xy("k1", &x[..31], y).is_err());
    assert!(JwtKey::from_xy("", x, y).is_err());
}

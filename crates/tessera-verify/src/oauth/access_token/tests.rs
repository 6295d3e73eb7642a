//! Access tokens against real SVIDs: the round trip, the cache, and one hostile token per
//! rule, each signed by a real key where a signature matters.

use jsonwebtoken::EncodingKey;
use serde_json::{Value, json};
use tessera_proto::tessera::v1::{RevocationSet, RevokedTask};
use tessera_testca::Ca;

use super::*;
use crate::oauth::testkit::{ISSUER, RESOURCE, Server, Signer, at, b64, material, unix_now};
use crate::testutil::{SERVER, TASK_ULID, TD, claims, task_id_str};

const SCOPES: &[&str] = &["github/tool/*", "github/resource/repo://*"];

fn task(deadline: i64) -> TaskClaims {
    claims(TD, SCOPES, deadline)
}

fn grant(scopes: &[&str]) -> AccessTokenGrant {
    AccessTokenGrant {
        subject: GrantSubject::Task(task(unix_now() + 3600)),
        scopes: scopes.iter().map(|s| s.parse().unwrap()).collect(),
        not_after_unix: None,
        ttl: Duration::from_secs(300),
        cnf: None,
    }
}

fn minter(s: &Server) -> AccessTokenMinter {
    AccessTokenMinter::new(s.trust.clone(), ISSUER, RESOURCE)
}

fn verifier(s: &Server) -> AccessTokenVerifier {
    AccessTokenVerifier::new(s.trust.clone(), ISSUER, RESOURCE)
}

/// The claims the minter would write for the sample task, as JSON to break.
fn good_claims() -> Value {
    let now = unix_now();
    json!({
        "iss": ISSUER, "sub": task_id_str(TD), "aud": RESOURCE,
        "exp": now + 300, "iat": now, "jti": "AAAAAAAAAAAAAAAAAAAAAA",
        "client_id": format!("spiffe://{TD}/client/code-reviewer"),
        "scope": "github/tool/get_pull_request",
        "tessera_task": URL_SAFE_NO_PAD.encode(task(now + 3600).to_der()),
    })
}

fn refused(s: &Server, token: &str) -> AccessTokenError {
    verifier(s)
        .verify(token, SystemTime::now())
        .expect_err("a hostile token must be refused")
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

#[test]
fn minted_token_verifies_as_the_task_with_the_token_scopes() {
    let s = Server::new();
    let cert = CertThumbprint::of_der(b"client leaf");
    let mut g = grant(&["github/tool/get_pull_request"]);
    g.cnf = Some(cert);
    let minted = minter(&s).mint(&g, SystemTime::now()).unwrap();
    assert!(
        !format!("{minted:?}").contains(&minted.token),
        "Debug leaks the token"
    );
    let v = verifier(&s)
        .verify(&minted.token, SystemTime::now())
        .unwrap();
    let Peer::Task {
        task,
        claims,
        credential,
        ..
    } = v.peer().as_ref()
    else {
        panic!("not a task peer: {:?}", v.peer());
    };
    assert_eq!(task.to_string(), task_id_str(TD));
    assert_eq!(
        claims.scopes, g.scopes,
        "the peer carries the token's scopes"
    );
    assert_eq!(
        v.task_scopes().len(),
        2,
        "the task's own scopes are kept for step-up"
    );
    assert_eq!(v.cnf(), Some(&cert));
    assert_eq!(credential.not_after_unix(), minted.exp_unix);
    assert_eq!(
        v.peer().serial_hex(),
        None,
        "no serial: revoked by task id only"
    );
    assert_eq!(v.peer().auth_method().as_str(), "bearer+cnf");
    assert_eq!(v.jti(), minted.jti);
    assert_eq!(minted.scope, "github/tool/get_pull_request");
}

#[test]
fn exp_is_the_earliest_of_ttl_assertion_deadline_and_own_svid() {
    let s = Server::new();
    let now = unix_now();
    let m = minter(&s);
    let mut g = grant(&[]);
    assert_eq!(m.mint(&g, at(now)).unwrap().exp_unix, now + 300);
    g.not_after_unix = Some(now + 100);
    assert_eq!(m.mint(&g, at(now)).unwrap().exp_unix, now + 100);
    g.subject = GrantSubject::Task(task(now + 50));
    assert_eq!(m.mint(&g, at(now)).unwrap().exp_unix, now + 50);
    // The own SVID (testca: an hour) caps a long TTL.
    let g = AccessTokenGrant {
        ttl: Duration::from_secs(7200),
        ..grant(&[])
    };
    let material = s.trust.current().unwrap();
    assert_eq!(
        m.mint(&g, at(now)).unwrap().exp_unix,
        material.not_after_unix()
    );
    let g = AccessTokenGrant {
        not_after_unix: Some(now),
        ..grant(&[])
    };
    assert_eq!(m.mint(&g, at(now)).unwrap_err(), MintError::NoLifetime);
}

#[test]
fn minter_refuses_scopes_beyond_the_task_and_tasks_for_another_server() {
    let s = Server::new();
    let err = minter(&s)
        .mint(&grant(&["github/prompt/review"]), SystemTime::now())
        .unwrap_err();
    assert_eq!(
        err,
        MintError::ScopeNotGranted("github/prompt/review".into())
    );
    let mut other = task(unix_now() + 3600);
    other.server = format!("spiffe://{TD}/mcp/docs").parse().unwrap();
    other.scopes = vec!["docs/tool/*".parse().unwrap()];
    let g = AccessTokenGrant {
        subject: GrantSubject::Task(other),
        scopes: vec![],
        ..grant(&[])
    };
    assert_eq!(
        minter(&s).mint(&g, SystemTime::now()).unwrap_err(),
        MintError::TaskForAnotherServer
    );
}

#[test]
fn a_replica_with_its_own_key_accepts_the_token() {
    let s = Server::new();
    let token = minter(&s)
        .mint(&grant(&[]), SystemTime::now())
        .unwrap()
        .token;
    // Another replica: the same identity and bundle, another key and certificate.
    let replica = Signer::new(&s.ca, SERVER);
    let trust = TrustSource::from_static(material(&s.ca, &replica));
    let v = AccessTokenVerifier::new(trust, ISSUER, RESOURCE);
    assert!(v.verify(&token, SystemTime::now()).is_ok());
}

#[test]
fn client_token_verifies_as_the_client() {
    let s = Server::new();
    let client: ClientId = format!("spiffe://{TD}/client/code-reviewer")
        .parse()
        .unwrap();
    let g = AccessTokenGrant {
        subject: GrantSubject::Client(client.clone()),
        scopes: vec![],
        ..grant(&[])
    };
    let token = minter(&s).mint(&g, SystemTime::now()).unwrap().token;
    let v = verifier(&s).verify(&token, SystemTime::now()).unwrap();
    assert!(matches!(v.peer().as_ref(), Peer::Client { client: c, .. } if *c == client));
}

// === the cache ===

#[test]
fn a_cached_token_is_a_hit_without_a_second_verification() {
    let s = Server::new();
    let v = verifier(&s);
    let token = minter(&s)
        .mint(&grant(&[]), SystemTime::now())
        .unwrap()
        .token;
    let first = v.verify(&token, SystemTime::now()).unwrap();
    assert_eq!(v.cached(), 1);
    let second = v.verify(&token, SystemTime::now()).unwrap();
    assert!(
        Arc::ptr_eq(&first, &second),
        "the second call was verified again"
    );
    // A clone shares the cache.
    assert!(Arc::ptr_eq(
        &first,
        &v.clone().verify(&token, SystemTime::now()).unwrap()
    ));
}

#[test]
fn a_cached_token_still_expires() {
    let s = Server::new();
    let v = verifier(&s);
    let minted = minter(&s).mint(&grant(&[]), SystemTime::now()).unwrap();
    v.verify(&minted.token, SystemTime::now()).unwrap();
    let err = v.verify(&minted.token, at(minted.exp_unix)).unwrap_err();
    assert_eq!(err.reason(), "at_expired");
}

#[test]
fn a_cached_token_is_checked_again_under_new_trust_material() {
    let s = Server::new();
    let v = verifier(&s);
    let token = minter(&s)
        .mint(&grant(&[]), SystemTime::now())
        .unwrap()
        .token;
    v.verify(&token, SystemTime::now()).unwrap();
    // The trust domain moves to a new CA (the old one evicted): the signer's chain no
    // longer verifies, cached or not.
    let ca = Ca::root(TD);
    s.publisher
        .publish(material(&ca, &Signer::new(&ca, SERVER)));
    let err = v.verify(&token, SystemTime::now()).unwrap_err();
    assert_eq!(err.reason(), "at_chain", "{err}");
}

#[test]
fn a_cached_token_of_a_revoked_task_is_refused() {
    let s = Server::new();
    let feed = RevocationWatcher::detached(Duration::from_secs(30));
    feed.apply(&RevocationSet::default());
    let v = verifier(&s).with_revocations(feed.clone());
    let token = minter(&s)
        .mint(&grant(&[]), SystemTime::now())
        .unwrap()
        .token;
    v.verify(&token, SystemTime::now()).unwrap();
    feed.apply(&RevocationSet {
        version: 2,
        revoked: vec![RevokedTask {
            task_id: TASK_ULID.into(),
            reason: "ended".into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    assert_eq!(v.cached(), 1);
    let err = v.verify(&token, SystemTime::now()).unwrap_err();
    assert_eq!(
        err,
        AccessTokenError::Revoked {
            reason: "ended".into()
        }
    );
}

#[test]
fn a_task_token_is_refused_while_the_feed_is_stale() {
    let s = Server::new();
    let v = verifier(&s).with_revocations(RevocationWatcher::detached(Duration::from_secs(30)));
    let token = minter(&s)
        .mint(&grant(&[]), SystemTime::now())
        .unwrap()
        .token;
    assert_eq!(
        v.verify(&token, SystemTime::now()).unwrap_err(),
        AccessTokenError::RevocationStale
    );
}

#[test]
fn the_cache_stays_within_its_capacity() {
    let s = Server::new();
    let v = verifier(&s).with_cache_capacity(3);
    let m = minter(&s);
    let tokens: Vec<_> = (0..5)
        .map(|_| m.mint(&grant(&[]), SystemTime::now()).unwrap().token)
        .collect();
    for t in &tokens {
        v.verify(t, SystemTime::now()).unwrap();
    }
    assert_eq!(v.cached(), 3);
    // Evicted ones still verify (in full).
    for t in &tokens {
        v.verify(t, SystemTime::now()).unwrap();
    }
}

// === hostile tokens: header and signer ===

#[test]
fn alg_none_is_refused() {
    let s = Server::new();
    let header = json!({"alg": "none", "typ": "at+jwt", "x5c": s.signer.x5c()});
    let token = format!("{}.{}.", b64(&header), b64(&good_claims()));
    assert_eq!(refused(&s, &token).reason(), "at_algorithm");
}

#[test]
fn hs256_keyed_with_the_servers_public_key_is_refused() {
    let s = Server::new();
    let header = json!({"alg": "HS256", "typ": "at+jwt", "x5c": s.signer.x5c()});
    let input = format!("{}.{}", b64(&header), b64(&good_claims()));
    // The classic confusion: HMAC keyed with the public key a verifier would use.
    let public = s.signer.key.public_key_raw().to_vec();
    let sig = jsonwebtoken::crypto::sign(
        input.as_bytes(),
        &EncodingKey::from_secret(&public),
        Algorithm::HS256,
    )
    .unwrap();
    assert_eq!(
        refused(&s, &format!("{input}.{sig}")).reason(),
        "at_algorithm"
    );
}

#[test]
fn rs256_is_refused() {
    let s = Server::new();
    let header = json!({"alg": "RS256", "typ": "at+jwt", "x5c": s.signer.x5c()});
    let token = s.signer.sign(&header, &good_claims());
    assert_eq!(refused(&s, &token).reason(), "at_algorithm");
}

#[test]
fn a_jwt_svid_typ_is_not_an_access_token() {
    let s = Server::new();
    for typ in [json!("JWT"), json!("at+JWT"), Value::Null] {
        let mut header = s.signer.header();
        header["typ"] = typ.clone();
        if typ.is_null() {
            header.as_object_mut().unwrap().remove("typ");
        }
        let token = s.signer.sign(&header, &good_claims());
        assert_eq!(refused(&s, &token).reason(), "at_type", "typ {typ}");
    }
}

#[test]
fn header_members_beyond_alg_typ_x5c_are_refused() {
    let s = Server::new();
    for (name, value) in [
        ("kid", json!("k1")),
        ("jwk", json!({"kty": "EC"})),
        ("jku", json!("https://evil")),
        ("crit", json!(["exp"])),
    ] {
        let mut header = s.signer.header();
        header[name] = value;
        let token = s.signer.sign(&header, &good_claims());
        assert_eq!(refused(&s, &token).reason(), "at_malformed", "{name}");
    }
}

#[test]
fn missing_or_garbage_x5c_is_refused() {
    let s = Server::new();
    let token = s
        .signer
        .sign(&json!({"alg": "ES256", "typ": "at+jwt"}), &good_claims());
    assert_eq!(refused(&s, &token).reason(), "at_x5c_missing");
    let token = s.signer.sign(
        &json!({"alg": "ES256", "typ": "at+jwt", "x5c": ["!!"]}),
        &good_claims(),
    );
    assert_eq!(refused(&s, &token).reason(), "at_x5c_invalid");
    let five = vec![s.signer.x5c()[0].clone(); 5];
    let token = s.signer.sign(
        &json!({"alg": "ES256", "typ": "at+jwt", "x5c": five}),
        &good_claims(),
    );
    assert_eq!(refused(&s, &token).reason(), "at_x5c_invalid");
}

#[test]
fn x5c_of_another_server_is_refused() {
    let s = Server::new();
    // A real server of the same trust domain, signing with its own real key.
    let other = Signer::new(&s.ca, &format!("spiffe://{TD}/mcp/docs"));
    let token = other.sign(&other.header(), &good_claims());
    assert_eq!(refused(&s, &token).reason(), "at_signer_not_this_server");
    // A task's SVID is not a signer either.
    let task = Signer::new(&s.ca, &task_id_str(TD));
    let token = task.sign(&task.header(), &good_claims());
    assert!(matches!(
        refused(&s, &token),
        AccessTokenError::NotThisServer(_)
    ));
}

#[test]
fn x5c_chaining_to_another_trust_domain_is_refused() {
    let s = Server::new();
    // The right SPIFFE ID, issued by a CA the bundle does not hold.
    let evil = Ca::root("evil.corp");
    let forged = Signer::new(&evil, SERVER);
    let token = forged.sign(&forged.header(), &good_claims());
    assert_eq!(refused(&s, &token).reason(), "at_chain");
}

#[test]
fn x5c_must_carry_the_intermediates_its_leaf_needs() {
    let s = Server::new();
    let forged = {
        let mut leaf = tessera_testca::Leaf::new(SERVER, &s.ca);
        leaf.via_intermediate = true;
        let key = tessera_testca::rcgen::KeyPair::generate().unwrap();
        leaf.key = Some(&key);
        let m = leaf.mint();
        Signer {
            chain: m.chain,
            key,
        }
    };
    // Root with no pathLen limit (testca): the chain through an intermediate is fine ...
    let token = forged.sign(&forged.header(), &good_claims());
    assert!(verifier(&s).verify(&token, SystemTime::now()).is_ok());
    // ... and without the intermediate it does not verify.
    let header = json!({"alg": "ES256", "typ": "at+jwt", "x5c": [forged.x5c()[0].clone()]});
    let token = forged.sign(&header, &good_claims());
    assert_eq!(refused(&s, &token).reason(), "at_chain");
}

#[test]
fn a_signature_by_another_key_under_our_x5c_is_refused() {
    let s = Server::new();
    let thief = Signer::new(&s.ca, SERVER);
    // Our real chain in the header, the thief's key signing.
    let token = thief.sign(&s.signer.header(), &good_claims());
    assert_eq!(refused(&s, &token).reason(), "at_signature");
    // A token whose claims were changed after signing.
    let token = s.signer.sign(&s.signer.header(), &good_claims());
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged = b64(&with(good_claims(), "scope", json!("github/tool/*")));
    parts[1] = &forged;
    assert_eq!(refused(&s, &parts.join(".")).reason(), "at_signature");
}

#[test]
fn oversize_token_is_refused_before_decoding() {
    let s = Server::new();
    let token = "a".repeat(MAX_ACCESS_TOKEN_LEN + 1);
    assert_eq!(refused(&s, &token).reason(), "at_too_large");
    assert_eq!(refused(&s, "a.b").reason(), "at_malformed");
}

// === hostile tokens: claims, each signed by this server's real key ===

fn signed(s: &Server, claims: &Value) -> String {
    s.signer.sign(&s.signer.header(), claims)
}

#[test]
fn the_good_claims_fixture_verifies() {
    let s = Server::new();
    assert!(
        verifier(&s)
            .verify(&signed(&s, &good_claims()), SystemTime::now())
            .is_ok()
    );
}

#[test]
fn aud_list_tricks_are_refused() {
    let s = Server::new();
    for aud in [
        json!([RESOURCE]),
        json!([RESOURCE, "https://other"]),
        json!(["https://other", RESOURCE]),
        json!([]),
    ] {
        let token = signed(&s, &with(good_claims(), "aud", aud.clone()));
        assert_eq!(refused(&s, &token).reason(), "at_audience_list", "{aud}");
    }
    for aud in [
        json!("https://127.0.0.1:8443/other"),
        json!("https://127.0.0.1:8443/mcp/"),
        json!(ISSUER),
        json!(null),
        json!({"0": RESOURCE}),
    ] {
        let token = signed(&s, &with(good_claims(), "aud", aud.clone()));
        assert_eq!(refused(&s, &token).reason(), "at_audience", "{aud}");
    }
}

#[test]
fn a_token_for_another_resource_or_issuer_is_refused() {
    let s = Server::new();
    let token = minter(&s)
        .mint(&grant(&[]), SystemTime::now())
        .unwrap()
        .token;
    let other = AccessTokenVerifier::new(s.trust.clone(), ISSUER, "https://127.0.0.1:9443/mcp");
    assert_eq!(
        other
            .verify(&token, SystemTime::now())
            .unwrap_err()
            .reason(),
        "at_audience"
    );
    let token = signed(&s, &with(good_claims(), "iss", json!("https://evil")));
    assert_eq!(refused(&s, &token).reason(), "at_issuer");
}

#[test]
fn missing_exp_and_expired_are_refused() {
    let s = Server::new();
    let token = signed(&s, &without(good_claims(), "exp"));
    assert_eq!(refused(&s, &token).reason(), "at_exp_missing");
    let token = signed(&s, &with(good_claims(), "exp", json!(unix_now() - 1)));
    assert_eq!(refused(&s, &token).reason(), "at_expired");
    let token = signed(&s, &with(good_claims(), "exp", json!("soon")));
    assert_eq!(refused(&s, &token).reason(), "at_claims");
    let token = signed(&s, &with(good_claims(), "iat", json!(unix_now() + 60)));
    assert_eq!(refused(&s, &token).reason(), "at_not_yet_valid");
}

#[test]
fn unknown_and_repeated_claims_are_refused() {
    let s = Server::new();
    let token = signed(&s, &with(good_claims(), "admin", json!(true)));
    assert_eq!(refused(&s, &token).reason(), "at_claims");
    // A JSON object with `scope` twice: which one a verifier reads must not matter.
    let text = serde_json::to_string(&good_claims()).unwrap();
    let twice = text.replacen('{', "{\"scope\":\"github/tool/*\",", 1);
    let input = format!(
        "{}.{}",
        b64(&s.signer.header()),
        URL_SAFE_NO_PAD.encode(twice.as_bytes())
    );
    let key = EncodingKey::from_ec_der(&s.signer.key.serialize_der());
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::ES256).unwrap();
    assert_eq!(refused(&s, &format!("{input}.{sig}")).reason(), "at_claims");
}

#[test]
fn nested_claims_too_large_are_refused() {
    let s = Server::new();
    let huge = "A".repeat(MAX_TASK_CLAIM_B64_LEN + 4);
    let token = signed(&s, &with(good_claims(), "tessera_task", json!(huge)));
    assert_eq!(refused(&s, &token).reason(), "at_task_claim_invalid");
    // Deep nesting where a string is expected never reaches a recursion limit.
    let mut deep = json!("x");
    for _ in 0..200 {
        deep = json!([deep]);
    }
    let token = signed(&s, &with(good_claims(), "cnf", deep));
    assert!(matches!(
        refused(&s, &token),
        AccessTokenError::BadClaims(_) | AccessTokenError::Malformed(_)
    ));
}

#[test]
fn task_claim_rules() {
    let s = Server::new();
    let now = unix_now();
    // Missing on a task subject.
    let token = signed(&s, &without(good_claims(), "tessera_task"));
    assert_eq!(refused(&s, &token).reason(), "at_task_claim_invalid");
    // Not DER.
    let token = signed(&s, &with(good_claims(), "tessera_task", json!("AAAA")));
    assert_eq!(refused(&s, &token).reason(), "at_task_claim_invalid");
    // Another task's claims under this sub.
    let mut other = task(now + 3600);
    other.task_id = "01BX5ZZKBKACTAV9WEVGEMMVRZ".parse().unwrap();
    let token = signed(
        &s,
        &with(
            good_claims(),
            "tessera_task",
            json!(URL_SAFE_NO_PAD.encode(other.to_der())),
        ),
    );
    assert_eq!(refused(&s, &token).reason(), "at_subject_mismatch");
    // client_id of another client.
    let token = signed(
        &s,
        &with(
            good_claims(),
            "client_id",
            json!(format!("spiffe://{TD}/client/other")),
        ),
    );
    assert_eq!(refused(&s, &token).reason(), "at_subject_mismatch");
    // A task for another server.
    let mut other = task(now + 3600);
    other.server = format!("spiffe://{TD}/mcp/docs").parse().unwrap();
    other.scopes = vec!["docs/tool/*".parse().unwrap()];
    let token = signed(
        &s,
        &with(
            good_claims(),
            "tessera_task",
            json!(URL_SAFE_NO_PAD.encode(other.to_der())),
        ),
    );
    assert_eq!(refused(&s, &token).reason(), "at_task_server");
    // Outliving the task.
    let short = task(now + 10);
    let token = signed(
        &s,
        &with(
            good_claims(),
            "tessera_task",
            json!(URL_SAFE_NO_PAD.encode(short.to_der())),
        ),
    );
    assert_eq!(refused(&s, &token).reason(), "at_outlives_task");
    // A client subject with task claims.
    let token = signed(
        &s,
        &with(
            good_claims(),
            "sub",
            json!(format!("spiffe://{TD}/client/code-reviewer")),
        ),
    );
    assert_eq!(refused(&s, &token).reason(), "at_task_claim_invalid");
    // A server subject.
    let token = signed(&s, &with(good_claims(), "sub", json!(SERVER)));
    assert_eq!(refused(&s, &token).reason(), "at_subject");
}

#[test]
fn scopes_beyond_the_task_are_refused() {
    let s = Server::new();
    let token = signed(
        &s,
        &with(good_claims(), "scope", json!("github/prompt/review")),
    );
    assert_eq!(refused(&s, &token).reason(), "at_scope");
    let token = signed(
        &s,
        &with(
            good_claims(),
            "scope",
            json!("github/tool/a  github/tool/b"),
        ),
    );
    assert_eq!(refused(&s, &token).reason(), "at_scope");
}

#[test]
fn a_bad_cnf_is_refused() {
    let s = Server::new();
    for cnf in [
        json!({"x5t#S256": "short"}),
        json!({"x5t": "AAAA"}),
        json!("x"),
    ] {
        let token = signed(&s, &with(good_claims(), "cnf", cnf.clone()));
        let err = refused(&s, &token);
        assert!(
            matches!(
                err,
                AccessTokenError::BadConfirmation | AccessTokenError::BadClaims(_)
            ),
            "{cnf}: {err}"
        );
    }
}

#[test]
fn no_trust_material_refuses_everything() {
    let (_publisher, trust) = TrustSource::channel();
    let v = AccessTokenVerifier::new(trust, ISSUER, RESOURCE);
    assert_eq!(
        v.verify("a.b.c", SystemTime::now()).unwrap_err(),
        AccessTokenError::NoTrustMaterial
    );
}

#[test]
fn new_jwt_bundles_keep_cached_tokens() {
    let s = Server::new();
    let v = verifier(&s);
    let token = minter(&s)
        .mint(&grant(&[]), SystemTime::now())
        .unwrap()
        .token;
    let first = v.verify(&token, SystemTime::now()).unwrap();
    // The same X.509 material with other JWT bundles: the chain check still holds.
    let same = s.trust.current().unwrap().as_ref().clone();
    s.publisher
        .publish(same.with_jwt_bundles(Default::default()).unwrap());
    assert!(Arc::ptr_eq(
        &first,
        &v.verify(&token, SystemTime::now()).unwrap()
    ));
}

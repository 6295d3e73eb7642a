//! Signing, persistence and rotation of JWT-SVID keys.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use tessera_identity::{JwtSvidError, TaskClaims, TrustDomain, validate_jwt_svid};
use time::OffsetDateTime;

use super::*;

const CLIENT: &str = "spiffe://acme.corp/client/code-reviewer";
const AUD: &str = "https://mcp.acme.corp/github";

fn td() -> TrustDomain {
    "acme.corp".parse().unwrap()
}

fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

fn policy() -> JwtKeyPolicy {
    JwtKeyPolicy {
        key_ttl: Duration::from_secs(24 * 3600),
        max_token_ttl: Duration::from_secs(300),
        owner: JwtKeyOwner::TrustDomain,
    }
}

fn open(dir: &Path, now: OffsetDateTime) -> JwtAuthority {
    JwtAuthority::open_at(td(), dir.join("ca"), policy(), now).unwrap()
}

fn aud() -> Vec<String> {
    vec![AUD.to_owned()]
}

fn sign(auth: &JwtAuthority, now: OffsetDateTime) -> IssuedJwtSvid {
    auth.sign(
        &JwtSvidSpec {
            spiffe_id: CLIENT,
            audience: &aud(),
            ttl: Duration::from_secs(300),
            not_after_cap: None,
            task: None,
        },
        now,
    )
    .unwrap()
}

fn valid(auth: &JwtAuthority, token: &str, now: OffsetDateTime) -> Result<(), JwtSvidError> {
    validate_jwt_svid(token, [&*auth.bundle()], AUD, now.unix_timestamp()).map(|_| ())
}

fn task_claims(deadline: i64) -> (String, TaskClaims) {
    let client: tessera_identity::ClientId = CLIENT.parse().unwrap();
    let task = tessera_identity::TaskId::new();
    let claims = TaskClaims {
        version: tessera_identity::TASK_CLAIMS_VERSION,
        task_id: task,
        client_id: client.clone(),
        subject: "alice@acme.corp".into(),
        purpose: "review".into(),
        server: "spiffe://acme.corp/mcp/github".parse().unwrap(),
        scopes: vec!["github/tool/get_pull_request".parse().unwrap()],
        consent_id: "c1".into(),
        deadline_unix: deadline,
    };
    (client.task(task).to_string(), claims)
}

#[test]
fn a_signed_token_validates_against_the_published_bundle_and_the_spiffe_crate() {
    let dir = tempfile::tempdir().unwrap();
    let auth = open(dir.path(), t0());
    let now = OffsetDateTime::now_utc();
    let issued = sign(&auth, now);
    assert_eq!(issued.expires_unix, now.unix_timestamp() + 300);
    valid(&auth, &issued.token, now).unwrap();

    // The Rust `spiffe` crate's own validation, fed our JWKS as the Workload API sends it.
    let bundle = spiffe::JwtBundle::from_jwt_authorities(
        spiffe::TrustDomain::new("acme.corp").unwrap(),
        &auth.bundle().to_jwks(),
    )
    .unwrap();
    let mut set = spiffe::JwtBundleSet::new();
    set.add_bundle(bundle);
    let svid = spiffe::JwtSvid::parse_and_validate(&issued.token, &set, &[AUD]).unwrap();
    assert_eq!(svid.spiffe_id().to_string(), CLIENT);
    assert!(spiffe::JwtSvid::parse_and_validate(&issued.token, &set, &["other"]).is_err());
}

#[test]
fn a_task_token_carries_its_claims_and_never_outlives_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let auth = open(dir.path(), t0());
    let now = t0();
    let (spiffe_id, claims) = task_claims(now.unix_timestamp() + 60);
    let issued = auth
        .sign(
            &JwtSvidSpec {
                spiffe_id: &spiffe_id,
                audience: &aud(),
                ttl: Duration::from_secs(300),
                not_after_cap: None,
                task: Some(&claims),
            },
            now,
        )
        .unwrap();
    assert_eq!(issued.expires_unix, claims.deadline_unix);
    let v = validate_jwt_svid(&issued.token, [&*auth.bundle()], AUD, now.unix_timestamp()).unwrap();
    assert_eq!(v.task, Some(claims.clone()));

    // Another task's claims, none at all, or a deadline already passed: nothing is signed.
    let (other_id, _) = task_claims(now.unix_timestamp() + 60);
    let (_, expired) = task_claims(now.unix_timestamp());
    for (id, task) in [
        (other_id.as_str(), Some(&claims)),
        (spiffe_id.as_str(), None),
        (CLIENT, Some(&claims)),
    ] {
        let spec = JwtSvidSpec {
            spiffe_id: id,
            audience: &aud(),
            ttl: Duration::from_secs(300),
            not_after_cap: None,
            task,
        };
        assert!(matches!(
            auth.sign(&spec, now),
            Err(AuthorityError::InvalidRequest(_))
        ));
    }
    let expired_id = expired.client_id.task(expired.task_id).to_string();
    let spec = JwtSvidSpec {
        spiffe_id: &expired_id,
        audience: &aud(),
        ttl: Duration::from_secs(300),
        not_after_cap: None,
        task: Some(&expired),
    };
    assert!(auth.sign(&spec, now).is_err());
}

#[test]
fn subjects_and_audiences_outside_the_profile_are_not_signed() {
    let dir = tempfile::tempdir().unwrap();
    let auth = open(dir.path(), t0());
    let many: Vec<String> = (0..17).map(|i| format!("a{i}")).collect();
    for (id, audience) in [
        ("spiffe://evil.corp/client/x", aud()),
        ("spiffe://acme.corp/ns/x", aud()),
        (CLIENT, vec![]),
        (CLIENT, vec![String::new()]),
        (CLIENT, many),
    ] {
        let spec = JwtSvidSpec {
            spiffe_id: id,
            audience: &audience,
            ttl: Duration::from_secs(60),
            not_after_cap: None,
            task: None,
        };
        assert!(auth.sign(&spec, t0()).is_err(), "{id} {audience:?}");
    }
}

#[test]
fn keys_persist_with_private_modes_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let auth = open(dir.path(), t0());
    let issued = sign(&auth, t0());
    let key_file = dir
        .path()
        .join("ca")
        .join(format!("jwt-{}.key.pem", issued.kid));
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let state = std::fs::metadata(dir.path().join("ca/jwt-state.json")).unwrap();
    assert_eq!(state.permissions().mode() & 0o777, 0o600);
    drop(auth);

    let reopened = open(dir.path(), t0());
    assert_eq!(sign(&reopened, t0()).kid, issued.kid);
    valid(&reopened, &issued.token, t0()).unwrap();

    // A key file others can read is refused, as for the CA.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        JwtAuthority::open_at(td(), dir.path().join("ca"), policy(), t0()),
        Err(AuthorityError::InsecureKeyFile { .. })
    ));
}

#[test]
fn rotation_publishes_the_next_key_before_it_signs_and_keeps_the_old_one_until_its_tokens_expire() {
    let dir = tempfile::tempdir().unwrap();
    let auth = open(dir.path(), t0());
    let day = time::Duration::days(1);
    let first = sign(&auth, t0());
    assert!(!auth.tick(t0() + day / 4).unwrap());
    assert_eq!(auth.bundle().keys().len(), 1);

    // Half life: the next key is published, the first still signs.
    let half = t0() + day / 2;
    assert!(auth.tick(half).unwrap());
    let bundle = auth.bundle();
    assert_eq!(bundle.keys().len(), 2);
    let next_kid = bundle.keys()[1].kid().to_owned();
    assert_eq!(sign(&auth, half).kid, first.kid);

    // Two thirds: the next key signs; a token of the first, signed just before, still
    // validates against the bundle of the moment.
    let two_thirds = t0() + day * 2 / 3;
    let last_of_first = sign(&auth, two_thirds - time::Duration::seconds(1));
    assert!(auth.tick(two_thirds).unwrap());
    let second = sign(&auth, two_thirds);
    assert_eq!(second.kid, next_kid);
    valid(&auth, &last_of_first.token, two_thirds).unwrap();
    valid(&auth, &second.token, two_thirds).unwrap();
    assert!(
        !dir.path()
            .join(format!("ca/jwt-{}.key.pem", first.kid))
            .exists(),
        "a retired key's private half is destroyed"
    );

    // A restart keeps the retiring key published.
    drop(auth);
    let auth = open(dir.path(), two_thirds);
    assert_eq!(auth.bundle().keys().len(), 2);

    // Once every token of the first key has expired, it leaves the bundle.
    let gone = two_thirds + time::Duration::seconds(300 + JWT_LEEWAY_SECS);
    assert!(auth.tick(gone).unwrap());
    assert_eq!(auth.bundle().keys().len(), 1);
    assert!(matches!(
        validate_jwt_svid(
            &last_of_first.token,
            [&*auth.bundle()],
            AUD,
            two_thirds.unix_timestamp()
        ),
        Err(JwtSvidError::UnknownKeyId { .. })
    ));
}

#[test]
fn the_jwks_is_the_spiffe_bundle_shape() {
    let dir = tempfile::tempdir().unwrap();
    let auth = open(dir.path(), t0());
    let doc: serde_json::Value = serde_json::from_slice(&auth.bundle().to_jwks()).unwrap();
    let key = &doc["keys"][0];
    assert_eq!(key["use"], "jwt-svid");
    assert_eq!(key["kty"], "EC");
    assert_eq!(key["crv"], "P-256");
    assert_eq!(key["kid"].as_str().unwrap().len(), 32);
    assert!(key.get("d").is_none());
    assert_eq!(doc["spiffe_refresh_hint"], 2 * 3600);
}

// === a node's keys (cluster mode) ===

fn node_policy() -> JwtKeyPolicy {
    JwtKeyPolicy {
        owner: JwtKeyOwner::Node,
        ..policy()
    }
}

#[test]
fn a_nodes_keys_are_marked_and_sign_clients_and_tasks_only() {
    let dir = tempfile::tempdir().unwrap();
    let auth = JwtAuthority::open_at(td(), dir.path().join("ca"), node_policy(), t0()).unwrap();
    let issued = sign(&auth, t0());
    assert!(
        issued.kid.starts_with(tessera_identity::NODE_KEY_ID_PREFIX),
        "{}",
        issued.kid
    );
    valid(&auth, &issued.token, t0()).unwrap();
    let err = auth
        .sign(
            &JwtSvidSpec {
                spiffe_id: "spiffe://acme.corp/mcp/github",
                audience: &aud(),
                ttl: Duration::from_secs(300),
                not_after_cap: None,
                task: None,
            },
            t0(),
        )
        .unwrap_err();
    assert!(
        matches!(err, AuthorityError::NodeJwtKeyMayNotSign { .. }),
        "{err}"
    );
    // Rotation keeps the mark.
    auth.prepare_next(t0()).unwrap();
    assert!(
        auth.bundle()
            .keys()
            .iter()
            .all(|k| tessera_identity::is_node_key_id(k.kid()))
    );
}

#[test]
fn published_keys_say_when_their_last_token_expires() {
    let dir = tempfile::tempdir().unwrap();
    let auth = JwtAuthority::open_at(td(), dir.path().join("ca"), node_policy(), t0()).unwrap();
    let t = t0().unix_timestamp();
    let published = auth.published_keys();
    assert_eq!(published.len(), 1);
    assert_eq!(
        published[0].not_after_unix,
        t + 24 * 3600 + 300 + JWT_LEEWAY_SECS
    );
    let later = t0() + time::Duration::hours(16);
    auth.prepare_next(later).unwrap();
    auth.activate_prepared(later).unwrap();
    let published = auth.published_keys();
    assert_eq!(published.len(), 2);
    // The retired key: until its last token (300 s) has expired.
    assert_eq!(
        published[1].not_after_unix,
        later.unix_timestamp() + 300 + JWT_LEEWAY_SECS
    );
}

#[test]
fn a_standalone_key_is_retired_when_the_agent_joins_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let standalone = open(dir.path(), t0());
    let old = sign(&standalone, t0());
    drop(standalone);
    let node = JwtAuthority::open_at(td(), dir.path().join("ca"), node_policy(), t0()).unwrap();
    let new = sign(&node, t0());
    assert!(tessera_identity::is_node_key_id(&new.kid));
    assert_ne!(new.kid, old.kid);
    // Tokens of the old key stay valid here until they expire; it no longer signs.
    valid(&node, &old.token, t0()).unwrap();
    assert!(!key_path(&dir.path().join("ca"), &old.kid).exists());
    let after = t0() + time::Duration::seconds(300 + JWT_LEEWAY_SECS + 1);
    node.prune(after).unwrap();
    assert!(node.bundle().key(&old.kid).is_none());
    // And back: a node key does not sign standalone.
    drop(node);
    let again = open(dir.path(), after);
    assert!(!tessera_identity::is_node_key_id(&sign(&again, after).kid));
}

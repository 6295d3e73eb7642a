//! JWT-SVIDs on the Workload API of a real tessera-agent: the Rust `spiffe` crate's and
//! py-spiffe's JWT clients, task tokens dying with their task, and signing-key rotation.

use std::time::{Duration, Instant};

use futures::StreamExt;
use tessera_e2e::interop::{python, run_python};
use tessera_e2e::{TRUST_DOMAIN, TestAgent};
use tessera_identity::{JwtBundle, TASK_CLAIM, TesseraId, validate_jwt_svid};
use tessera_proto::tessera::v1::revocations_client::RevocationsClient;
use tessera_proto::tessera::v1::tasks_client::TasksClient;
use tessera_proto::tessera::v1::{BeginTaskRequest, EndTaskRequest, Task, WatchRevocationsRequest};
use tessera_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tessera_proto::workload::{JwtsvidRequest, ValidateJwtsvidRequest};
use tonic::transport::Channel;

const AUD: &str = "https://mcp.e2e.test/github";
const SUBJECT: &str = "alice@acme.corp";

fn client_id(client: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/client/{client}")
}

async fn raw(agent: &TestAgent) -> SpiffeWorkloadApiClient<Channel> {
    SpiffeWorkloadApiClient::new(TestAgent::channel(&agent.workload).await.unwrap())
}

fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    req
}

async fn fetch(agent: &TestAgent, spiffe_id: &str) -> Result<Vec<(String, String)>, tonic::Status> {
    let resp = raw(agent)
        .await
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec![AUD.into()],
            spiffe_id: spiffe_id.into(),
        }))
        .await?;
    Ok(resp
        .into_inner()
        .svids
        .into_iter()
        .map(|s| (s.spiffe_id, s.svid))
        .collect())
}

async fn validate(agent: &TestAgent, token: &str) -> Result<String, tonic::Status> {
    let resp = raw(agent)
        .await
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: AUD.into(),
            svid: token.into(),
        }))
        .await?;
    Ok(resp.into_inner().spiffe_id)
}

async fn begin_task(agent: &TestAgent) -> Task {
    agent
        .grant("code-reviewer", SUBJECT, "github", &["github/tool/get_*"])
        .await
        .unwrap();
    TasksClient::new(TestAgent::channel(&agent.workload).await.unwrap())
        .begin_task(BeginTaskRequest {
            purpose: "review PR 42".into(),
            subject: SUBJECT.into(),
            server: "github".into(),
            scopes: vec!["github/tool/get_pull_request".into()],
            lifetime_secs: 600,
            client: String::new(),
            bind_to_parent: false,
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap()
}

/// The agent's JWT bundle for our trust domain, as FetchJWTBundles sends it.
async fn jwt_bundle(client: &spiffe::WorkloadApiClient) -> JwtBundle {
    let set = client.fetch_jwt_bundles().await.unwrap();
    let td = spiffe::TrustDomain::new(TRUST_DOMAIN).unwrap();
    let bundle = set.get(&td).expect("own trust domain's JWT bundle");
    let keys: Vec<serde_json::Value> = bundle
        .jwt_authorities()
        .map(|a| serde_json::from_slice(a.jwk_json()).unwrap())
        .collect();
    JwtBundle::from_jwks(
        TRUST_DOMAIN.parse().unwrap(),
        &serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap(),
    )
    .unwrap()
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[tokio::test]
async fn the_spiffe_crate_fetches_a_client_jwt_svid_that_validates_against_the_fetched_bundle() {
    let agent = TestAgent::start("").await.unwrap();
    agent.register_self("code-reviewer").await.unwrap();
    let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();

    let svid = client.fetch_jwt_svid([AUD], None).await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), client_id("code-reviewer"));
    assert_eq!(svid.audience(), [AUD.to_owned()]);
    assert_eq!(svid.hint(), Some("code-reviewer"));
    let ttl = svid.expiry().unix_timestamp() - now_unix();
    assert!(
        (250..=300).contains(&ttl),
        "default TTL is 5 min, got {ttl}s"
    );

    // The crate's own offline validation against the bundle it fetched.
    let bundles = client.fetch_jwt_bundles().await.unwrap();
    let checked = spiffe::JwtSvid::parse_and_validate(svid.token(), &bundles, &[AUD]).unwrap();
    assert_eq!(checked.spiffe_id(), svid.spiffe_id());
    assert!(
        spiffe::JwtSvid::parse_and_validate(svid.token(), &bundles, &["https://elsewhere"])
            .is_err()
    );
    // And the agent's, through the crate.
    let remote = client.validate_jwt_token(AUD, svid.token()).await.unwrap();
    assert_eq!(remote.spiffe_id(), svid.spiffe_id());
    assert!(
        client
            .validate_jwt_token("https://elsewhere", svid.token())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_task_jwt_svid_carries_its_claims_and_is_refused_once_the_task_ends() {
    let agent = TestAgent::start("").await.unwrap();
    agent.register_self("code-reviewer").await.unwrap();
    let task = begin_task(&agent).await;
    let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let task_sid = spiffe::SpiffeId::new(&task.spiffe_id).unwrap();

    let svid = client.fetch_jwt_svid([AUD], Some(&task_sid)).await.unwrap();
    assert_eq!(svid.spiffe_id(), &task_sid);
    assert_eq!(svid.hint(), Some(task.id.as_str()));
    assert!(svid.expiry().unix_timestamp() <= task.deadline_unix);

    // The claims are the task's, signed: checked with the validation every verifier shares.
    let valid =
        validate_jwt_svid(svid.token(), [&jwt_bundle(&client).await], AUD, now_unix()).unwrap();
    assert!(matches!(valid.subject, TesseraId::Task(_)));
    let claims = valid.task.expect("task claims");
    assert_eq!(claims.task_id.to_string(), task.id);
    assert_eq!(claims.subject, SUBJECT);
    assert_eq!(claims.consent_id, task.consent_id);
    assert_eq!(claims.deadline_unix, task.deadline_unix);
    assert_eq!(
        claims
            .scopes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["github/tool/get_pull_request"]
    );

    // The agent validates it, and says which claims it carries.
    let resp = raw(&agent)
        .await
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: AUD.into(),
            svid: svid.token().into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.spiffe_id, task.spiffe_id);
    assert!(resp.claims.unwrap().fields.contains_key(TASK_CLAIM));

    TasksClient::new(TestAgent::channel(&agent.workload).await.unwrap())
        .end_task(EndTaskRequest {
            task_id: task.id.clone(),
        })
        .await
        .unwrap();

    // Still unexpired and well signed, but its task has ended: refused.
    let err = validate(&agent, svid.token()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("jwt_task_ended"),
        "{}",
        err.message()
    );
    // No new token for it either.
    let err = fetch(&agent, &task.spiffe_id).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    // Verifiers reading the feed keep the task revoked at least as long as the token lives.
    let set = RevocationsClient::new(TestAgent::channel(&agent.workload).await.unwrap())
        .watch(WatchRevocationsRequest {})
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap();
    let entry = set
        .revoked
        .iter()
        .find(|r| r.task_id == task.id)
        .expect("the ended task is on the feed");
    assert!(
        entry.until_unix >= svid.expiry().unix_timestamp(),
        "revocation kept until {}, token valid until {}",
        entry.until_unix,
        svid.expiry().unix_timestamp()
    );
}

#[tokio::test]
async fn identities_that_are_not_the_callers_get_permission_denied_without_detail() {
    let agent = TestAgent::start("").await.unwrap();
    agent.register_self("code-reviewer").await.unwrap();
    let task = begin_task(&agent).await;
    let unknown_task = format!(
        "{}/task/01ARZ3NDEKTSV4RRFFQ69G5FAV",
        client_id("code-reviewer")
    );
    let other_clients_task = task.spiffe_id.replace("code-reviewer", "intruder");
    for spiffe_id in [
        client_id("intruder").as_str(),
        &unknown_task,
        &other_clients_task,
        "spiffe://elsewhere.test/client/code-reviewer",
        "not a spiffe id",
    ] {
        let err = fetch(&agent, spiffe_id).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{spiffe_id}");
        assert_eq!(err.message(), "no identity issued", "{spiffe_id}");
    }
    // The caller's own, by ID, works; with no ID, it gets its client identity only.
    assert_eq!(fetch(&agent, &task.spiffe_id).await.unwrap().len(), 1);
    let all = fetch(&agent, "").await.unwrap();
    assert_eq!(
        all.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
        [client_id("code-reviewer")]
    );
}

#[tokio::test]
async fn malformed_requests_and_unregistered_callers_are_refused() {
    let agent = TestAgent::start("").await.unwrap();
    // Not registered yet.
    let err = fetch(&agent, "").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    agent.register_self("code-reviewer").await.unwrap();

    let mut c = raw(&agent).await;
    let no_header = c
        .fetch_jwtsvid(JwtsvidRequest {
            audience: vec![AUD.into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(no_header.code(), tonic::Code::InvalidArgument);
    for audience in [
        vec![],
        vec![String::new()],
        (0..17).map(|i| format!("a{i}")).collect(),
        vec!["x".repeat(513)],
    ] {
        let err = c
            .fetch_jwtsvid(with_header(JwtsvidRequest {
                audience: audience.clone(),
                spiffe_id: String::new(),
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{audience:?}");
    }
    let err = c
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: AUD.into(),
            svid: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // A forged token: alg none, claiming our identity.
    let forged = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","kid":"x"}"#),
        b64(format!(
            r#"{{"sub":"{}","aud":"{AUD}","exp":9999999999}}"#,
            client_id("admin")
        )
        .as_bytes())
    );
    let err = validate(&agent, &forged).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("jwt_algorithm"), "{}", err.message());
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn signing_key_rotation_streams_the_new_bundle_and_old_tokens_validate_during_the_overlap() {
    // A 12 s key: the next is published at 6 s and signs from 8 s; 30 s tokens.
    let agent = TestAgent::start("jwt_svid_ttl = \"30s\"\n[ca]\njwt_key_ttl = \"12s\"")
        .await
        .unwrap();
    agent.register_self("code-reviewer").await.unwrap();
    let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let first = client.fetch_jwt_svid([AUD], None).await.unwrap();
    let first_kid = first.key_id().to_owned();

    // The stream sends the next key before anything is signed with it.
    let mut stream = client.stream_jwt_bundles().await.unwrap();
    let td = spiffe::TrustDomain::new(TRUST_DOMAIN).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let kids = |set: &spiffe::JwtBundleSet| -> Vec<String> {
        set.get(&td)
            .unwrap()
            .jwt_authorities()
            .map(|a| a.key_id().to_owned())
            .collect()
    };
    let next_kid = loop {
        let set = tokio::time::timeout_at(deadline.into(), stream.next())
            .await
            .expect("a bundle with the next key within 30 s")
            .unwrap()
            .unwrap();
        if let Some(k) = kids(&set).into_iter().find(|k| *k != first_kid) {
            break k;
        }
    };
    assert_eq!(
        client.fetch_jwt_svid([AUD], None).await.unwrap().key_id(),
        first_kid,
        "a published next key must not sign before its time"
    );

    // Then the next key signs; tokens of the first still validate, offline and at the agent.
    let second = loop {
        let svid = client.fetch_jwt_svid([AUD], None).await.unwrap();
        if svid.key_id() != first_kid {
            break svid;
        }
        assert!(Instant::now() < deadline, "the next key never signed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(second.key_id(), next_kid);
    let bundles = client.fetch_jwt_bundles().await.unwrap();
    assert!(kids(&bundles).contains(&first_kid));
    spiffe::JwtSvid::parse_and_validate(first.token(), &bundles, &[AUD]).unwrap();
    spiffe::JwtSvid::parse_and_validate(second.token(), &bundles, &[AUD]).unwrap();
    assert_eq!(
        validate(&agent, first.token()).await.unwrap(),
        client_id("code-reviewer")
    );
}

#[tokio::test]
async fn py_spiffe_fetches_and_validates_jwt_svids_and_is_refused_a_foreign_identity() {
    let Some(python) = python() else { return };
    let agent = TestAgent::with_client("py-runtime", &python)
        .await
        .expect("agent");
    // A task of this test process (registered as code-reviewer), not of the Python one.
    agent.register_self("code-reviewer").await.unwrap();
    let task = begin_task(&agent).await;
    let r = run_python(
        &python,
        &["jwt", &agent.workload_path(), AUD, &task.spiffe_id],
    )
    .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log_text()));
    let me = client_id("py-runtime");
    assert_eq!(r["spiffe_id"], me);
    assert_eq!(r["audience"], serde_json::json!([AUD]));
    assert_eq!(r["local_spiffe_id"], me, "{r}");
    assert_eq!(r["remote_spiffe_id"], me, "{r}");
    assert_eq!(r["source_spiffe_id"], me, "{r}");
    assert_eq!(r["source_bundle_keys"], 1, "{r}");
    assert!(r["wrong_audience"].is_string(), "{r}");
    assert!(r["remote_wrong_audience"].is_string(), "{r}");
    let foreign = r["foreign_error"]
        .as_str()
        .expect("the foreign task is refused");
    assert!(
        foreign.contains("PERMISSION_DENIED") || foreign.contains("no identity"),
        "{foreign}"
    );
}

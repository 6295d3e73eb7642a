//! Cluster-wide JWT-SVIDs across processes: a real PostgreSQL, two `tessera-server`
//! replicas, cluster-mode agents on "nodes" A and C (A follows replica 1, C replica 2),
//! and the example MCP server fed by C. A task's JWT-SVID fetched on A (with the `spiffe`
//! crate, as any SPIFFE client would) is validated by C's `ValidateJWTSVID` and by C's
//! JWKS; the example runtime's bearer path on A gets an access token from C's MCP server
//! and calls with it; EndTask on A, and A's eviction, are refused at C; and A's node key
//! cannot pass for an MCP server.
//!
//! Needs the binaries: `cargo build --bins -p tessera-agent -p tessera-cli -p
//! tessera-server -p tessera-example-mcp-server -p tessera-example-agent-runtime`.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/mcp.rs"]
mod mcp;

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cluster::{Cluster, RunningTask, call, until, until_refused};
use mcp::{McpServer, Trust};
use tessera_e2e::{TRUST_DOMAIN, TestAgent};
use tessera_example_agent_runtime::bearer::connect_task_bearer;
use tessera_identity::{JwtBundle, NODE_KEY_ID_PREFIX, TesseraId, validate_jwt_svid};
use tessera_proto::tessera::v1::EvictNodeRequest;
use tessera_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tessera_proto::workload::{JwtBundlesRequest, ValidateJwtsvidRequest};

const AUD: &str = "https://mcp.e2e.test/github";
const GENEROUS: Duration = Duration::from_secs(30);

fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    req
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// `agent`'s `ValidateJWTSVID` for [`AUD`]: the SPIFFE ID, or the refusal's message.
async fn validate_at(agent: &TestAgent, token: &str) -> Result<String, String> {
    let mut client =
        SpiffeWorkloadApiClient::new(TestAgent::channel(&agent.workload).await.unwrap());
    client
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: AUD.into(),
            svid: token.into(),
        }))
        .await
        .map(|r| r.into_inner().spiffe_id)
        .map_err(|s| {
            assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
            s.message().to_owned()
        })
}

/// `agent`'s JWT bundle, the first message of its `FetchJWTBundles` stream, parsed as
/// tessera-verify parses it.
async fn jwks_of(agent: &TestAgent) -> JwtBundle {
    let mut client =
        SpiffeWorkloadApiClient::new(TestAgent::channel(&agent.workload).await.unwrap());
    let mut stream = client
        .fetch_jwt_bundles(with_header(JwtBundlesRequest {}))
        .await
        .unwrap_or_else(|s| panic!("FetchJWTBundles: {s:?}"))
        .into_inner();
    let msg = stream.message().await.unwrap().expect("a first message");
    let jwks = msg
        .bundles
        .get(&format!("spiffe://{TRUST_DOMAIN}"))
        .expect("the trust domain's JWKS");
    JwtBundle::from_jwks(TRUST_DOMAIN.parse().unwrap(), jwks).unwrap()
}

/// The `kid` of a compact JWS.
fn kid_of(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    json["kid"].as_str().unwrap().to_owned()
}

/// A task JWT-SVID for `task` from its agent, through the `spiffe` crate's client.
async fn task_jwt(agent: &TestAgent, task_spiffe_id: &str, audience: &str) -> String {
    let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let sid = spiffe::SpiffeId::new(task_spiffe_id).unwrap();
    client
        .fetch_jwt_svid([audience], Some(&sid))
        .await
        .unwrap_or_else(|e| panic!("FetchJWTSVID: {e}\n{}", agent.log_text()))
        .token()
        .to_owned()
}

/// Waits until `agent`'s JWKS holds (or, `false`, no longer holds) key `kid`.
async fn until_jwks_holds(agent: &TestAgent, kid: &str, holds: bool) -> Duration {
    until(
        if holds {
            "the key reaches the agent's JWKS"
        } else {
            "the key leaves the agent's JWKS"
        },
        GENEROUS,
        || async { jwks_of(agent).await.key(kid).is_some() == holds },
    )
    .await
}

#[tokio::test]
async fn a_task_jwt_svid_from_node_a_is_accepted_at_node_c_until_its_task_ends_or_a_is_evicted() {
    let Some(cl) = Cluster::start("cluster_jwt").await else {
        return;
    };
    let a = cl.agent("node-a", &cl.r1().node, "").await;
    let c = cl.agent("node-c", &cl.r2().node, "").await;
    cl.register(&[&a, &c]).await;

    let task = RunningTask::begin(&a).await;
    let token = task_jwt(&a, &task.task.spiffe_id, AUD).await;
    let kid = kid_of(&token);
    assert!(
        kid.starts_with(NODE_KEY_ID_PREFIX),
        "A's key is a node's: {kid}"
    );
    let arrived = until_jwks_holds(&c, &kid, true).await;
    eprintln!("A's JWT key reached C's JWKS {arrived:?} after A's token was minted");

    // C's ValidateJWTSVID accepts A's task token ...
    assert_eq!(
        validate_at(&c, &token).await,
        Ok(task.task.spiffe_id.clone()),
        "A: {}\nC: {}",
        a.log_text(),
        c.log_text()
    );
    // ... and so does C's JWKS, with the validation every verifier shares.
    let valid = validate_jwt_svid(&token, [&jwks_of(&c).await], AUD, now_unix()).unwrap();
    assert!(matches!(valid.subject, TesseraId::Task(_)));
    assert_eq!(valid.task.unwrap().task_id.to_string(), task.task.id);
    // A stock SPIFFE client fed by C (the `spiffe` crate) parses C's JWKS, node-marked
    // kids and all, and validates A's token offline and through C.
    let stock = spiffe::WorkloadApiClient::connect_to(c.endpoint())
        .await
        .unwrap();
    let bundles = stock.fetch_jwt_bundles().await.unwrap();
    let checked = spiffe::JwtSvid::parse_and_validate(&token, &bundles, &[AUD]).unwrap();
    assert_eq!(checked.spiffe_id().to_string(), task.task.spiffe_id);
    assert_eq!(
        stock
            .validate_jwt_token(AUD, &token)
            .await
            .unwrap()
            .spiffe_id()
            .to_string(),
        task.task.spiffe_id
    );
    // C's own keys are still there, and A's JWKS holds C's key too.
    let c_token_kid = jwks_of(&c)
        .await
        .keys()
        .iter()
        .find(|k| k.kid() != kid)
        .map(|k| k.kid().to_owned())
        .expect("C's own key");
    until_jwks_holds(&a, &c_token_kid, true).await;

    // A's node key forging an MCP server's identity: refused at C (and everywhere).
    let forged = forge_server_token(&a, &kid);
    let refused = validate_at(&c, &forged).await.unwrap_err();
    assert!(refused.contains("jwt_node_key_may_not_sign"), "{refused}");

    // EndTask on A: C refuses the token once the cluster's revocation reaches it.
    task.end().await;
    let start = Instant::now();
    loop {
        match validate_at(&c, &token).await {
            Err(m) if m.contains("jwt_task_ended") => break,
            other => assert!(
                start.elapsed() < GENEROUS,
                "C still answers {other:?} {GENEROUS:?} after EndTask on A"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "EndTask on A -> refused by C's ValidateJWTSVID after {:?}",
        start.elapsed()
    );

    // Evicting A withdraws its keys at once: C's JWKS drops them, and a fresh token of A
    // (A's agent still signs locally) is refused at C.
    let fresh = RunningTask::begin(&a).await;
    let fresh_token = task_jwt(&a, &fresh.task.spiffe_id, AUD).await;
    assert!(validate_at(&c, &fresh_token).await.is_ok());
    let start = Instant::now();
    cl.r1()
        .cluster_admin()
        .await
        .unwrap()
        .evict_node(EvictNodeRequest {
            name: "node-a".into(),
        })
        .await
        .unwrap();
    until_jwks_holds(&c, &kid, false).await;
    eprintln!(
        "eviction of A -> its key left C's JWKS after {:?}",
        start.elapsed()
    );
    let refused = validate_at(&c, &fresh_token).await.unwrap_err();
    assert!(refused.contains("jwt_unknown_kid"), "{refused}");
}

/// A token signed with A's node key (read from A's data directory, as a thief on A would)
/// whose subject is the MCP server `github`.
fn forge_server_token(a: &TestAgent, kid: &str) -> String {
    let pem = std::fs::read(
        a.dir
            .path()
            .join("data/ca")
            .join(format!("jwt-{kid}.key.pem")),
    )
    .expect("A's active JWT key");
    let der = pem::parse(&pem).unwrap().into_contents();
    let key = jsonwebtoken::EncodingKey::from_ec_der(&der);
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    let now = now_unix();
    jsonwebtoken::encode(
        &header,
        &serde_json::json!({
            "sub": format!("spiffe://{TRUST_DOMAIN}/mcp/github"),
            "aud": AUD, "iat": now, "exp": now + 60, "jti": "forged",
        }),
        &key,
    )
    .unwrap()
}

#[tokio::test]
async fn the_runtimes_bearer_path_on_node_a_is_served_by_an_mcp_server_fed_by_node_c() {
    let Some(cl) = Cluster::start("cluster_jwt_bearer").await else {
        return;
    };
    let a = cl.agent("node-a", &cl.r1().node, "").await;
    let c = cl.agent("node-c", &cl.r2().node, "").await;
    cl.register(&[&a, &c]).await;
    let server = McpServer::start(&c, "c", Trust::Workload, &["--accept", "bearer"])
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nC: {}", c.log_text()));

    let task = RunningTask::begin(&a).await;
    // Wait for A's keys at C (a new node's tokens are accepted elsewhere once its keys
    // arrived), then the runtime's whole bearer flow: discovery, A's task JWT-SVID as the
    // client assertion at C's server's token endpoint, an access token, a call.
    let kid = kid_of(&task_jwt(&a, &task.task.spiffe_id, AUD).await);
    until_jwks_holds(&c, &kid, true).await;
    let (conn, token, _) = connect_task_bearer(
        &task.workload,
        &server.url,
        &task.task.spiffe_id,
        "github",
        None,
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}\nserver: {}\nA: {}\nC: {}",
            server.log_text(),
            a.log_text(),
            c.log_text()
        )
    });
    assert_eq!(token.scope, "github/tool/get_pull_request");
    let out = call(&conn).await;
    assert!(out.is_ok(), "{out:?}\n{}", server.log_text());

    // EndTask on A: the next calls with the access token are refused at C's server.
    task.end().await;
    let (out, after) = until_refused(&conn, GENEROUS).await;
    eprintln!("EndTask on A -> bearer call refused at C's server after {after:?}: {out:?}");
    // The first refusal may be another one under load (a verifier whose feed went stale
    // for a moment refuses every task credential); the revocation must show in the end.
    until(
        "C's server refuses the token as revoked",
        GENEROUS,
        || async {
            let _ = call(&conn).await;
            server.log_text().contains("at_revoked")
        },
    )
    .await;

    // A node joining now: how long until its tokens are accepted at C, from the start of
    // its agent (join token, process start, Attest) and from when it first answers.
    let before = jwks_of(&c).await;
    let started = Instant::now();
    let b = cl.agent("node-b", &cl.r1().node, "").await;
    // B learns the registrations from the server's stream after it answers; until then
    // this process has no identity there and FetchJWTBundles is refused.
    until("B knows this process", GENEROUS, || async {
        let Ok(channel) = TestAgent::channel(&b.workload).await else {
            return false;
        };
        SpiffeWorkloadApiClient::new(channel)
            .fetch_jwt_bundles(with_header(JwtBundlesRequest {}))
            .await
            .is_ok()
    })
    .await;
    let serving = Instant::now();
    let own_b = jwks_of(&b)
        .await
        .keys()
        .iter()
        .find(|k| before.key(k.kid()).is_none())
        .map(|k| k.kid().to_owned())
        .expect("B's own key");
    until_jwks_holds(&c, &own_b, true).await;
    eprintln!(
        "new node B: its JWT key in C's JWKS {:?} after its agent started, {:?} after it first answered",
        started.elapsed(),
        serving.elapsed()
    );

    // A node's key signs no MCP server: this process registered as server `self-mcp` too
    // gets its X.509-SVID on C (signed by the root) but no JWT-SVID for it.
    let uid = nix::unistd::geteuid();
    let exe = std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
    let entry = cl
        .r1()
        .admin()
        .await
        .create_entry(tessera_proto::tessera::v1::CreateEntryRequest {
            client: String::new(),
            selectors: vec![
                format!("unix:uid:{uid}"),
                format!("unix:path:{}", exe.display()),
            ],
            svid_ttl_secs: 0,
            server: "self-mcp".into(),
        })
        .await
        .unwrap()
        .into_inner();
    until("the server entry reaches C", GENEROUS, || {
        cluster::has_entry(&c, &entry.id)
    })
    .await;
    let server_id = format!("spiffe://{TRUST_DOMAIN}/mcp/self-mcp");
    let start = Instant::now();
    loop {
        let mut raw = SpiffeWorkloadApiClient::new(TestAgent::channel(&c.workload).await.unwrap());
        let refused = raw
            .fetch_jwtsvid(with_header(tessera_proto::workload::JwtsvidRequest {
                audience: vec![AUD.into()],
                spiffe_id: server_id.clone(),
            }))
            .await
            .expect_err("a node key signs no MCP server");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        // Until C holds the server's X.509-SVID the identity is simply not the caller's.
        if refused.message().contains("jwt_node_key_may_not_sign") {
            break;
        }
        assert!(
            start.elapsed() < GENEROUS,
            "{refused:?}\nC: {}",
            c.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

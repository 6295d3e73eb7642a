//! Stock grpc-java (Debian's libgrpc-java 1.41) against a real agent, with
//! grpc-java's default authority for a unix socket: the socket's path, which
//! the agent's HTTP/2 server refused before `h2_authority` (every call failed
//! with INTERNAL, "RST_STREAM ... PROTOCOL_ERROR"). What the Java program does
//! and its one departure from stock (no Netty epoll JNI library in Debian) are
//! in `tests/interop/java/StockGrpcJava.java`.

use tessera_e2e::interop::{grpc_java, run_java};
use tessera_e2e::{TRUST_DOMAIN, TestAgent};

const CLIENT: &str = "java-runtime";

#[tokio::test]
async fn grpc_java_with_its_default_authority_fetches_the_callers_svid() {
    let Some(java) = grpc_java() else { return };
    let agent = TestAgent::with_client(CLIENT, &java.java)
        .await
        .expect("agent");
    let r = run_java(&java, &["x509", &agent.workload_path()])
        .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log_text()));
    // The point of the test: grpc-java sent the path, not something h2 accepts.
    assert_eq!(r["authority"], agent.workload_path(), "{r}");
    assert_eq!(
        r["svids"],
        serde_json::json!([format!("spiffe://{TRUST_DOMAIN}/client/{CLIENT}")])
    );
    assert_eq!(r["hints"], serde_json::json!([CLIENT]));
    assert!(r["chain_der_len"].as_u64().unwrap() > 300, "{r}");
    assert_eq!(r["has_key"], true, "{r}");
    assert!(r["bundle_der_len"].as_u64().unwrap() > 300, "{r}");
}

#[tokio::test]
async fn grpc_java_begins_lists_and_ends_a_task_whose_svid_is_on_the_stream() {
    let Some(java) = grpc_java() else { return };
    let agent = TestAgent::with_client(CLIENT, &java.java)
        .await
        .expect("agent");
    let scope = "github/tool/get_pull_request";
    agent
        .grant(CLIENT, "alice@example.com", "github", &[scope])
        .await
        .expect("grant");
    let r = run_java(
        &java,
        &[
            "tasks",
            &agent.workload_path(),
            "github",
            "alice@example.com",
            scope,
        ],
    )
    .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log_text()));
    assert_eq!(r["authority"], agent.workload_path(), "{r}");
    let task_id = r["task_id"].as_str().unwrap();
    assert_eq!(
        r["spiffe_id"],
        format!("spiffe://{TRUST_DOMAIN}/client/{CLIENT}/task/{task_id}")
    );
    assert_eq!(r["svid_hint"], task_id);
    assert!(r["svid_der_len"].as_u64().unwrap() > 300, "{r}");
    assert_eq!(r["listed"], serde_json::json!([task_id]));
    // Client SVID first, then the live task's, picked by hint.
    assert_eq!(r["stream_hints"], serde_json::json!([CLIENT, task_id]));
    assert_eq!(r["end_reason"], "ended", "{r}");
}

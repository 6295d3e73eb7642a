//! Stock Node gRPC (@grpc/grpc-js, from npm) against a real agent, loading the
//! repository's proto files with @grpc/proto-loader. By default grpc-js sends
//! `:authority: localhost` on a unix socket, which the agent always accepted;
//! the same calls with the socket path as authority (what gRPC C-core and
//! grpc-java send by default) go through nghttp2's HPACK encoder into the
//! agent's authority rewrite, and failed before it with INTERNAL
//! ("Received RST_STREAM with code 1").

use tessera_e2e::interop::{grpc_js, proto_dir, run_node};
use tessera_e2e::{TRUST_DOMAIN, TestAgent};

const CLIENT: &str = "node-runtime";

async fn fetch_x509(authority: Authority) {
    let Some(node) = grpc_js() else { return };
    let agent = TestAgent::with_client(CLIENT, &node.node)
        .await
        .expect("agent");
    let proto = proto_dir();
    let r = run_node(
        &node,
        &[
            "x509",
            &agent.workload_path(),
            proto.to_str().unwrap(),
            &authority.arg(&agent),
        ],
    )
    .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log_text()));
    assert_eq!(
        r["svids"],
        serde_json::json!([format!("spiffe://{TRUST_DOMAIN}/client/{CLIENT}")])
    );
    assert_eq!(r["hints"], serde_json::json!([CLIENT]));
    assert!(r["chain_der_len"].as_u64().unwrap() > 300, "{r}");
    assert_eq!(r["has_key"], true, "{r}");
    assert!(r["bundle_der_len"].as_u64().unwrap() > 300, "{r}");
}

async fn task_round_trip(authority: Authority) {
    let Some(node) = grpc_js() else { return };
    let agent = TestAgent::with_client(CLIENT, &node.node)
        .await
        .expect("agent");
    let scope = "github/tool/get_pull_request";
    agent
        .grant(CLIENT, "alice@example.com", "github", &[scope])
        .await
        .expect("grant");
    let proto = proto_dir();
    let r = run_node(
        &node,
        &[
            "tasks",
            &agent.workload_path(),
            proto.to_str().unwrap(),
            &authority.arg(&agent),
            "github",
            "alice@example.com",
            scope,
        ],
    )
    .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log_text()));
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

/// Which `:authority` grpc-js sends.
#[derive(Clone, Copy)]
enum Authority {
    /// grpc-js's own default.
    Default,
    /// The socket's path, as gRPC C-core and grpc-java send it.
    SocketPath,
}

impl Authority {
    fn arg(self, agent: &TestAgent) -> String {
        match self {
            Authority::Default => "-".into(),
            Authority::SocketPath => agent.workload_path(),
        }
    }
}

#[tokio::test]
async fn grpc_js_with_default_options_fetches_the_callers_svid() {
    fetch_x509(Authority::Default).await;
}

#[tokio::test]
async fn grpc_js_with_default_options_begins_lists_and_ends_a_task() {
    task_round_trip(Authority::Default).await;
}

#[tokio::test]
async fn grpc_js_sending_the_socket_path_as_authority_fetches_the_callers_svid() {
    fetch_x509(Authority::SocketPath).await;
}

#[tokio::test]
async fn grpc_js_sending_the_socket_path_as_authority_begins_lists_and_ends_a_task() {
    task_round_trip(Authority::SocketPath).await;
}

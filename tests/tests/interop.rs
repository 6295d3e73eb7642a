//! Stock clients that no one here wrote, against a real agent: py-spiffe and
//! plain grpcio (gRPC C-core) with default channel options. C-core sends the
//! unix socket's path as the HTTP/2 `:authority`; these tests are what caught
//! that the agent's HTTP/2 server refused every such request.

use tessera_e2e::interop::{proto_dir, python, run_python};
use tessera_e2e::{TRUST_DOMAIN, TestAgent};

const CLIENT: &str = "py-runtime";

#[tokio::test]
async fn py_spiffe_fetch_x509_context_gets_the_callers_svid_and_bundle() {
    let Some(python) = python() else { return };
    let agent = TestAgent::with_client(CLIENT, &python)
        .await
        .expect("agent");
    let ctx = run_python(&python, &["x509-context", &agent.workload_path()])
        .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log_text()));
    assert_eq!(
        ctx["default_svid"],
        format!("spiffe://{TRUST_DOMAIN}/client/{CLIENT}")
    );
    assert_eq!(ctx["svids"].as_array().unwrap().len(), 1);
    assert_eq!(ctx["bundles"], serde_json::json!([TRUST_DOMAIN]));
}

#[tokio::test]
async fn py_spiffe_x509_source_becomes_ready() {
    let Some(python) = python() else { return };
    let agent = TestAgent::with_client(CLIENT, &python)
        .await
        .expect("agent");
    let src = run_python(&python, &["x509-source", &agent.workload_path()])
        .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log_text()));
    assert_eq!(
        src["svid"],
        format!("spiffe://{TRUST_DOMAIN}/client/{CLIENT}")
    );
    assert!(src["bundle_authorities"].as_u64().unwrap() >= 1, "{src}");
}

#[tokio::test]
async fn grpcio_with_default_options_begins_lists_and_ends_a_task_seen_on_the_feed() {
    let Some(python) = python() else { return };
    let agent = TestAgent::with_client(CLIENT, &python)
        .await
        .expect("agent");
    let scope = "github/tool/get_pull_request";
    agent
        .grant(CLIENT, "alice@example.com", "github", &[scope])
        .await
        .expect("grant");
    let proto = proto_dir();
    let r = run_python(
        &python,
        &[
            "tasks",
            &agent.workload_path(),
            proto.to_str().unwrap(),
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
    assert_eq!(r["watch_error"], serde_json::json!([]));
    assert_eq!(
        r["on_feed"], true,
        "the ended task never reached Revocations.Watch: {r}"
    );
}

#[tokio::test]
async fn grpcio_reaches_the_admin_api() {
    let Some(python) = python() else { return };
    let agent = TestAgent::with_client(CLIENT, &python)
        .await
        .expect("agent");
    let proto = proto_dir();
    let status = run_python(
        &python,
        &[
            "admin",
            &agent.admin.display().to_string(),
            proto.to_str().unwrap(),
        ],
    )
    .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log_text()));
    assert_eq!(status["trust_domain"], TRUST_DOMAIN);
}

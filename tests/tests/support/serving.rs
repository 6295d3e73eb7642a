//! "The agent survived": the check every hostile and attestation test ends with.

use tessera_e2e::TestAgent;

/// The agent still serves a real SPIFFE client (this process, registered) and its
/// admin API, and its process has not exited.
pub async fn still_serves(agent: &mut TestAgent) {
    let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    client
        .fetch_x509_svid()
        .await
        .expect("agent still serves a registered caller");
    agent
        .admin_client()
        .await
        .unwrap()
        .list_entries(tessera_proto::tessera::v1::ListEntriesRequest {})
        .await
        .expect("admin API still answers");
    let status = agent.child.as_mut().unwrap().try_wait().unwrap();
    assert!(status.is_none(), "agent exited: {status:?}");
}

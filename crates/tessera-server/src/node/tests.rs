use super::*;
use crate::testing::store;

fn psat(name: &str) -> NewNode {
    NewNode {
        name: name.to_owned(),
        attested_by: AttestationKind::K8sPsat,
        selectors: vec![
            format!("k8s:node-name:{name}"),
            "k8s:sa:tessera-agent".into(),
        ],
        attestation: json!({ "service_account": "tessera-system/tessera-agent" }),
    }
}

#[tokio::test]
async fn nodes_register_reattest_get_a_ca_and_are_evicted_for_good() {
    let Some((_pg, store)) = store("nodes").await else {
        return;
    };
    let registered = store
        .register_node(psat("worker-1"), "server")
        .await
        .unwrap();
    let node = &registered.value;
    assert_eq!(node.status, NodeStatus::Active);
    assert_eq!(node.attested_by, AttestationKind::K8sPsat);
    assert_eq!(
        node.selectors,
        ["k8s:node-name:worker-1", "k8s:sa:tessera-agent"]
    );
    assert_eq!((node.ca_serial.as_deref(), node.evicted_at), (None, None));

    // A node restarting attests again under its proved name.
    let again = store
        .register_node(psat("worker-1"), "server")
        .await
        .unwrap();
    assert!(again.version > registered.version);
    assert_eq!(again.value.registered_at, node.registered_at);

    let renewed = store
        .record_node_ca("worker-1", "0A1B", node.registered_at + 86_400, "server")
        .await
        .unwrap();
    assert_eq!(renewed.value.ca_serial.as_deref(), Some("0a1b"));
    assert_eq!(
        renewed.value.ca_not_after,
        Some(node.registered_at + 86_400)
    );
    let bad = store
        .record_node_ca("worker-1", "xyz", 0, "server")
        .await
        .unwrap_err();
    assert!(matches!(bad, ServerStoreError::Invalid(_)), "{bad:?}");

    let evicted = store.evict_node("worker-1", "uid:0").await.unwrap();
    assert_eq!(evicted.value.status, NodeStatus::Evicted);
    assert_eq!(
        evicted.value.ca_serial.as_deref(),
        Some("0a1b"),
        "the CA to revoke"
    );
    assert!(evicted.value.evicted_at.is_some());

    // Evicted stays evicted: no renewal, no re-attestation, no second eviction.
    for error in [
        store
            .record_node_ca("worker-1", "0c", 1, "server")
            .await
            .unwrap_err(),
        store
            .register_node(psat("worker-1"), "server")
            .await
            .unwrap_err(),
        store.evict_node("worker-1", "uid:0").await.unwrap_err(),
    ] {
        assert!(
            matches!(
                error,
                ServerStoreError::Conflict(Conflict::NodeEvicted { .. })
            ),
            "{error:?}"
        );
    }
    let missing = store.evict_node("worker-9", "uid:0").await.unwrap_err();
    assert!(
        matches!(missing, ServerStoreError::NotFound(NotFound::Node { .. })),
        "{missing:?}"
    );

    store
        .register_node(psat("worker-0"), "server")
        .await
        .unwrap();
    let names: Vec<String> = store
        .list_nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["worker-0", "worker-1"]);
    assert_eq!(
        store.get_node("worker-1").await.unwrap(),
        Some(evicted.value)
    );
    let kinds: Vec<String> = store
        .list_audit(0, 20)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "node.attest",
            "node.attest",
            "node.ca",
            "node.evict",
            "node.attest"
        ]
    );
}

#[tokio::test]
async fn node_names_and_attestations_out_of_limits_are_refused() {
    let Some((_pg, store)) = store("nodes").await else {
        return;
    };
    for name in ["", ".", "..", "a/b", "a b", &"n".repeat(129)] {
        let error = store.register_node(psat(name), "server").await.unwrap_err();
        assert!(
            matches!(
                error,
                ServerStoreError::Invalid(InvalidInput::NodeName { .. })
            ),
            "{name:?}: {error:?}"
        );
    }
    let mut big = psat("n");
    big.attestation = json!({ "x": "y".repeat(MAX_ATTESTATION_LEN) });
    let error = store.register_node(big, "server").await.unwrap_err();
    assert!(matches!(
        error,
        ServerStoreError::Invalid(InvalidInput::Attestation { .. })
    ));
    let mut many = psat("n");
    many.selectors = (0..=MAX_SELECTORS).map(|i| i.to_string()).collect();
    let error = store.register_node(many, "server").await.unwrap_err();
    assert!(matches!(
        error,
        ServerStoreError::Invalid(InvalidInput::Attestation { .. })
    ));
    assert_eq!(store.current_version().await.unwrap(), 0);
}

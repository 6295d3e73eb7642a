use serde_json::json;

use crate::ServerStoreError;
use crate::testing::store;

#[tokio::test]
async fn audit_records_page_in_order_and_are_pruned_by_age() {
    let Some((_pg, store)) = store("audit").await else {
        return;
    };
    let mut seqs = Vec::new();
    for i in 0..5 {
        seqs.push(
            store
                .append_audit("task.begin", "spiffe://td/node/n", &json!({ "i": i }))
                .await
                .unwrap(),
        );
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    let first = store.list_audit(0, 2).await.unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!(first[0].detail, json!({ "i": 0 }));
    assert_eq!(first[0].actor, "spiffe://td/node/n");
    let rest = store.list_audit(first[1].seq, 100).await.unwrap();
    assert_eq!(
        rest.iter()
            .map(|r| r.detail["i"].clone())
            .collect::<Vec<_>>(),
        [json!(2), json!(3), json!(4)]
    );
    assert_eq!(store.list_audit(0, u32::MAX).await.unwrap().len(), 5);

    let error = store.append_audit("", "a", &json!({})).await.unwrap_err();
    assert!(matches!(error, ServerStoreError::Invalid(_)), "{error:?}");

    sqlx::query("UPDATE audit SET at_ms = 100 WHERE seq <= $1")
        .bind(seqs[2])
        .execute(&store.pool)
        .await
        .unwrap();
    assert_eq!(store.prune_audit(500).await.unwrap(), 3);
    assert_eq!(store.list_audit(0, 100).await.unwrap()[0].seq, seqs[3]);
}

use std::collections::HashSet;

use crate::error::{Conflict, InvalidInput, NotFound};
use crate::testing::{second_store, store};
use crate::{NewJoinToken, NodeStatus, ServerStoreError};

fn token(ttl_secs: i64, node: Option<&str>) -> NewJoinToken {
    NewJoinToken {
        ttl_secs,
        node: node.map(str::to_owned),
    }
}

/// The token is returned once; the database holds its SHA-256 only, and neither the
/// audit log nor `Debug` shows it.
#[tokio::test]
async fn only_the_tokens_hash_is_stored_and_it_is_never_shown() {
    let Some((_pg, store)) = store("join tokens").await else {
        return;
    };
    let issued = store
        .create_join_token(token(3600, None), "uid:0")
        .await
        .unwrap();
    assert!(issued.token.starts_with(crate::JOIN_TOKEN_PREFIX));
    assert_eq!(issued.token.len(), crate::JOIN_TOKEN_PREFIX.len() + 64);
    assert!(!format!("{issued:?}").contains(&issued.token));
    assert!(issued.record.expires_at - issued.record.created_at == 3600);

    let stored: Vec<u8> = sqlx::query_scalar("SELECT token_sha256 FROM join_tokens")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(stored, super::digest(&issued.token));
    let dump: String = sqlx::query_scalar(
        "SELECT string_agg(j::text, ' ') FROM (SELECT row_to_json(t) AS j FROM join_tokens t
         UNION ALL SELECT row_to_json(a) FROM audit a) rows",
    )
    .fetch_one(&store.pool)
    .await
    .unwrap();
    let secret = &issued.token[crate::JOIN_TOKEN_PREFIX.len()..];
    assert!(!dump.contains(secret), "{dump}");
    assert!(dump.contains(&issued.record.id));

    let distinct: HashSet<String> = [
        issued.token,
        store
            .create_join_token(token(60, None), "uid:0")
            .await
            .unwrap()
            .token,
    ]
    .into();
    assert_eq!(distinct.len(), 2);
}

/// Two replicas racing to attest with one token, many times over: exactly one attempt
/// wins, the rest are told the token was used; the winner's node is registered.
#[tokio::test]
async fn two_replicas_racing_on_one_token_exactly_one_wins() {
    let Some((pg, one)) = store("join tokens").await else {
        return;
    };
    let two = second_store(&pg, &one.connect).await;
    for round in 0..5 {
        let issued = one
            .create_join_token(token(600, None), "uid:0")
            .await
            .unwrap();
        let mut attempts = Vec::new();
        for i in 0..8 {
            let store = if i % 2 == 0 { one.clone() } else { two.clone() };
            let token = issued.token.clone();
            let name = format!("node-{round}-{i}");
            attempts.push(tokio::spawn(async move {
                (
                    name.clone(),
                    store.attest_node_with_join_token(&token, &name).await,
                )
            }));
        }
        let mut winners = Vec::new();
        for attempt in attempts {
            match attempt.await.unwrap() {
                (name, Ok(node)) => {
                    assert_eq!(node.value.name, name);
                    winners.push(name);
                }
                (_, Err(ServerStoreError::Conflict(Conflict::JoinTokenUsed { id }))) => {
                    assert_eq!(id, issued.record.id)
                }
                (_, Err(other)) => panic!("{other:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        let node = two.get_node(&winners[0]).await.unwrap().unwrap();
        assert_eq!(node.status, NodeStatus::Active);
        assert_eq!(node.selectors, [format!("join_token:{}", issued.record.id)]);
    }
    assert_eq!(one.list_nodes().await.unwrap().len(), 5);
}

#[tokio::test]
async fn expired_unknown_malformed_and_misbound_tokens_are_refused_without_being_spent() {
    let Some((_pg, store)) = store("join tokens").await else {
        return;
    };
    let expired = store
        .create_join_token(token(60, None), "uid:0")
        .await
        .unwrap();
    sqlx::query("UPDATE join_tokens SET expires_at = $1 WHERE id = $2")
        .bind(crate::clock::unix_secs() - 1)
        .bind(&expired.record.id)
        .execute(&store.pool)
        .await
        .unwrap();
    let error = store
        .attest_node_with_join_token(&expired.token, "n1")
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ServerStoreError::Conflict(Conflict::JoinTokenExpired { .. })
        ),
        "{error:?}"
    );

    let unknown = format!("{}{}", crate::JOIN_TOKEN_PREFIX, "ab".repeat(32));
    let error = store
        .attest_node_with_join_token(&unknown, "n1")
        .await
        .unwrap_err();
    assert!(
        matches!(error, ServerStoreError::NotFound(NotFound::JoinToken)),
        "{error:?}"
    );
    for malformed in [
        "",
        "tessera-join-",
        &unknown[..unknown.len() - 1],
        &unknown.replace("ab", "zz"),
        &format!("{unknown}00"),
    ] {
        let error = store
            .attest_node_with_join_token(malformed, "n1")
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                ServerStoreError::Invalid(InvalidInput::JoinTokenMalformed)
            ),
            "{malformed:?}: {error:?}"
        );
    }

    let bound = store
        .create_join_token(token(60, Some("n2")), "uid:0")
        .await
        .unwrap();
    let error = store
        .attest_node_with_join_token(&bound.token, "n1")
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ServerStoreError::Conflict(Conflict::JoinTokenForOtherNode { .. })
        ),
        "{error:?}"
    );
    // Not spent by the refusal: it still attests the node it names, once.
    store
        .attest_node_with_join_token(&bound.token, "n2")
        .await
        .unwrap();
    let error = store
        .attest_node_with_join_token(&bound.token, "n2")
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ServerStoreError::Conflict(Conflict::JoinTokenUsed { .. })
        ),
        "{error:?}"
    );
    assert!(store.get_node("n1").await.unwrap().is_none());

    for ttl in [0, -1, crate::MAX_JOIN_TOKEN_TTL_SECS + 1] {
        let error = store
            .create_join_token(token(ttl, None), "uid:0")
            .await
            .unwrap_err();
        assert!(matches!(
            error,
            ServerStoreError::Invalid(InvalidInput::JoinTokenTtl { .. })
        ));
    }
}

/// An unbound token cannot take over a registered node's name (and is not spent trying);
/// a token made for that name re-attests it.
#[tokio::test]
async fn only_a_token_bound_to_a_name_reattests_that_node() {
    let Some((_pg, store)) = store("join tokens").await else {
        return;
    };
    let first = store
        .create_join_token(token(60, None), "uid:0")
        .await
        .unwrap();
    store
        .attest_node_with_join_token(&first.token, "worker")
        .await
        .unwrap();

    let unbound = store
        .create_join_token(token(60, None), "uid:0")
        .await
        .unwrap();
    let error = store
        .attest_node_with_join_token(&unbound.token, "worker")
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ServerStoreError::Conflict(Conflict::NodeExists { .. })
        ),
        "{error:?}"
    );
    store
        .attest_node_with_join_token(&unbound.token, "worker-b")
        .await
        .unwrap();

    let bound = store
        .create_join_token(token(60, Some("worker")), "uid:0")
        .await
        .unwrap();
    let again = store
        .attest_node_with_join_token(&bound.token, "worker")
        .await
        .unwrap();
    assert_eq!(
        again.value.selectors,
        [format!("join_token:{}", bound.record.id)]
    );

    store.evict_node("worker", "uid:0").await.unwrap();
    let after = store
        .create_join_token(token(60, Some("worker")), "uid:0")
        .await
        .unwrap();
    let error = store
        .attest_node_with_join_token(&after.token, "worker")
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ServerStoreError::Conflict(Conflict::NodeEvicted { .. })
        ),
        "{error:?}"
    );

    let pruned = store
        .prune_join_tokens(crate::clock::unix_secs() + 61)
        .await
        .unwrap();
    assert_eq!(pruned, 4);
}

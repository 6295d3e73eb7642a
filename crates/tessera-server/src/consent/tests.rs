use tessera_store::{ConsentFilter, NewConsent};

use super::*;
use crate::testing::{new_consent, second_store, store};

#[tokio::test]
async fn consents_are_granted_listed_and_withdrawn_once() {
    let Some((_pg, store)) = store("consents").await else {
        return;
    };
    let mut new = new_consent("reviewer");
    new.scopes = vec![
        "github/tool/b".into(),
        "github/tool/a".into(),
        "github/tool/a".into(),
    ];
    let a = store.grant_consent(new, "admin").await.unwrap();
    assert_eq!(a.value.scopes, ["github/tool/a", "github/tool/b"]);
    assert_eq!(a.value.granted_by, "admin");
    let b = store
        .grant_consent(new_consent("other"), "admin")
        .await
        .unwrap();
    assert!(b.version > a.version);

    let all = ConsentFilter::default();
    assert_eq!(
        store.list_consents(&all).await.unwrap(),
        [a.value.clone(), b.value.clone()]
    );
    let only = ConsentFilter {
        client: Some("other".into()),
        include_withdrawn: false,
    };
    assert_eq!(
        store.list_consents(&only).await.unwrap(),
        std::slice::from_ref(&b.value)
    );

    let withdrawn = store.withdraw_consent(&a.value.id, "alice").await.unwrap();
    assert!(withdrawn.value.consent.withdrawn_at.is_some());
    assert!(withdrawn.value.ended_tasks.is_empty());
    assert!(withdrawn.version > b.version);
    assert_eq!(
        store.list_consents(&all).await.unwrap(),
        std::slice::from_ref(&b.value)
    );
    let with_withdrawn = ConsentFilter {
        client: None,
        include_withdrawn: true,
    };
    assert_eq!(store.list_consents(&with_withdrawn).await.unwrap().len(), 2);
    assert_eq!(
        store.get_consent(&a.value.id).await.unwrap(),
        Some(withdrawn.value.consent.clone())
    );

    let again = store
        .withdraw_consent(&a.value.id, "alice")
        .await
        .unwrap_err();
    assert!(
        matches!(
            again,
            ServerStoreError::Conflict(Conflict::ConsentWithdrawn { .. })
        ),
        "{again:?}"
    );
    let missing = store.withdraw_consent("nope", "alice").await.unwrap_err();
    assert!(
        matches!(
            missing,
            ServerStoreError::NotFound(NotFound::Consent { .. })
        ),
        "{missing:?}"
    );
    let kinds: Vec<String> = store
        .list_audit(0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.kind)
        .collect();
    assert_eq!(
        kinds,
        ["consent.grant", "consent.grant", "consent.withdraw"]
    );
}

/// Two replicas withdrawing one consent at once: exactly one succeeds.
#[tokio::test]
async fn of_concurrent_withdrawals_on_two_replicas_exactly_one_succeeds() {
    let Some((pg, one)) = store("consents").await else {
        return;
    };
    let two = second_store(&pg, &one.connect).await;
    let granted = one
        .grant_consent(new_consent("reviewer"), "admin")
        .await
        .unwrap();
    let mut attempts = Vec::new();
    for i in 0..8 {
        let store = if i % 2 == 0 { one.clone() } else { two.clone() };
        let id = granted.value.id.clone();
        attempts.push(tokio::spawn(async move {
            store.withdraw_consent(&id, "admin").await
        }));
    }
    let mut won = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(_) => won += 1,
            Err(ServerStoreError::Conflict(Conflict::ConsentWithdrawn { .. })) => {}
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(one.current_version().await.unwrap(), granted.version + 1);
}

#[tokio::test]
async fn consents_out_of_limits_or_already_expired_are_refused() {
    let Some((_pg, store)) = store("consents").await else {
        return;
    };
    let cases: Vec<NewConsent> = vec![
        NewConsent {
            client: String::new(),
            ..new_consent("c")
        },
        NewConsent {
            subject: String::new(),
            ..new_consent("c")
        },
        NewConsent {
            server: "s".repeat(MAX_SERVER_LEN + 1),
            ..new_consent("c")
        },
        NewConsent {
            scopes: vec![],
            ..new_consent("c")
        },
        NewConsent {
            scopes: vec!["x".repeat(MAX_SCOPE_LEN + 1)],
            ..new_consent("c")
        },
        NewConsent {
            scopes: vec!["a".into(); MAX_SCOPES + 1],
            ..new_consent("c")
        },
        NewConsent {
            expires_at: crate::clock::unix_secs(),
            ..new_consent("c")
        },
    ];
    for case in cases {
        let error = store
            .grant_consent(case.clone(), "admin")
            .await
            .unwrap_err();
        assert!(
            matches!(error, ServerStoreError::Invalid(_)),
            "{case:?}: {error:?}"
        );
    }
    assert_eq!(store.current_version().await.unwrap(), 0);
}

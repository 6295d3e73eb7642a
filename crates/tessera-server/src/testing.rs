//! Helpers shared by the unit tests: a real PostgreSQL per test (tessera-pgtest).

use tessera_pgtest::PgServer;
use tessera_store::{EntryKind, NewConsent, NewEntry};

use crate::{PgStore, PgStoreOptions};

/// A running PostgreSQL and a store on a fresh database of it, or `None` (the test
/// returns) on a machine without PostgreSQL; keep the server alive.
pub(crate) async fn store(test: &str) -> Option<(PgServer, PgStore)> {
    let pg = PgServer::start_or_skip(test).await?;
    let store = second_store(&pg, &pg.create_database().await.expect("create database")).await;
    Some((pg, store))
}

/// Another store (another replica) on the same database.
pub(crate) async fn second_store(
    _pg: &PgServer,
    options: &sqlx::postgres::PgConnectOptions,
) -> PgStore {
    PgStore::connect(
        options.clone(),
        &PgStoreOptions::default().acquire_timeout(std::time::Duration::from_millis(500)),
    )
    .await
    .expect("connect")
}

/// A valid new client entry.
pub(crate) fn new_entry(client: &str, selectors: &[&str]) -> NewEntry {
    NewEntry {
        kind: EntryKind::Client,
        client: client.to_owned(),
        selectors: selectors.iter().map(|s| (*s).to_owned()).collect(),
        svid_ttl_secs: None,
    }
}

/// A valid consent for `client` / `alice` / `github`, expiring in an hour.
pub(crate) fn new_consent(client: &str) -> NewConsent {
    NewConsent {
        client: client.to_owned(),
        subject: "alice".to_owned(),
        server: "github".to_owned(),
        scopes: vec!["github/tool/*".to_owned()],
        expires_at: crate::clock::unix_secs() + 3600,
    }
}

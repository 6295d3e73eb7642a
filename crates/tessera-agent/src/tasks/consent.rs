//! Consent checks for BeginTask, against an in-memory copy of the live consents.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tessera_identity::{Scope, ScopeSet};
use tessera_store::{Consent, ConsentFilter, Store};

/// Live consents, reloaded whenever the store reports a consent change.
#[derive(Debug)]
pub(crate) struct ConsentCache {
    store: Store,
    consents: RwLock<Arc<Vec<ParsedConsent>>>,
    /// The store's consent revision the cache reflects.
    loaded: AtomicU64,
    revision: tokio::sync::watch::Receiver<u64>,
}

/// A consent with its scopes parsed once.
#[derive(Debug)]
pub(super) struct ParsedConsent {
    /// The stored record.
    pub consent: Consent,
    /// Its scopes.
    pub scopes: ScopeSet,
}

/// Why a consent check failed. The message names what is missing.
#[derive(Debug, thiserror::Error)]
pub enum ConsentDenied {
    /// No consent at all for this client, subject and server.
    #[error("no live consent lets client {client:?} act for {subject:?} on server {server:?}")]
    NoConsent {
        /// Client name.
        client: String,
        /// Subject.
        subject: String,
        /// Server name.
        server: String,
    },
    /// Consents exist, but none covers every requested scope.
    #[error(
        "no live consent for client {client:?}, subject {subject:?}, server {server:?} covers {missing}"
    )]
    ScopesNotCovered {
        /// Client name.
        client: String,
        /// Subject.
        subject: String,
        /// Server name.
        server: String,
        /// The requested scopes left uncovered by the closest consent, comma-separated.
        missing: String,
    },
}

impl ConsentCache {
    /// Loads the live consents.
    pub(crate) async fn load(store: Store) -> Result<Arc<ConsentCache>, tessera_store::StoreError> {
        let revision = store.watch_consents();
        let cache = Arc::new(ConsentCache {
            store,
            consents: RwLock::new(Arc::new(Vec::new())),
            loaded: AtomicU64::new(u64::MAX),
            revision,
        });
        cache.reload().await?;
        Ok(cache)
    }

    /// Re-reads the live consents from the store.
    pub(crate) async fn reload(&self) -> Result<(), tessera_store::StoreError> {
        // Read the revision first: a change committed during the read makes the
        // next `ensure_fresh` reload again rather than be missed.
        let revision = *self.revision.borrow();
        let all = self.store.list_consents(&ConsentFilter::default()).await?;
        let parsed = all
            .into_iter()
            .filter_map(|consent| {
                let scopes: Result<ScopeSet, _> = consent.scopes.iter().map(|s| s.parse::<Scope>()).collect();
                match scopes {
                    Ok(scopes) => Some(ParsedConsent { consent, scopes }),
                    Err(e) => {
                        // Stored scopes were validated on grant; refuse to use one that no longer parses.
                        tracing::error!(consent = %consent.id, error = %e, "consent has an invalid scope; ignoring it");
                        None
                    }
                }
            })
            .collect();
        *self.consents.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(parsed);
        self.loaded.store(revision, Ordering::SeqCst);
        Ok(())
    }

    /// Reloads if the store has committed a consent change the cache has not
    /// seen, so a grant is usable by the very next BeginTask.
    pub(crate) async fn ensure_fresh(&self) -> Result<(), tessera_store::StoreError> {
        if *self.revision.borrow() != self.loaded.load(Ordering::SeqCst) {
            self.reload().await?;
        }
        Ok(())
    }

    /// Finds a live consent covering every requested scope.
    pub(crate) fn check(
        &self,
        client: &str,
        subject: &str,
        server: &str,
        requested: &[Scope],
        now: i64,
    ) -> Result<Consent, ConsentDenied> {
        let consents = self
            .consents
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let candidates: Vec<&ParsedConsent> = consents
            .iter()
            .filter(|c| {
                c.consent.client == client
                    && c.consent.subject == subject
                    && c.consent.server == server
                    && c.consent.withdrawn_at.is_none()
                    && c.consent.expires_at > now
            })
            .collect();
        if candidates.is_empty() {
            return Err(ConsentDenied::NoConsent {
                client: client.into(),
                subject: subject.into(),
                server: server.into(),
            });
        }
        let mut best: Option<Vec<&Scope>> = None;
        for c in &candidates {
            let missing = c.scopes.uncovered(requested);
            if missing.is_empty() {
                return Ok(c.consent.clone());
            }
            if best.as_ref().is_none_or(|b| missing.len() < b.len()) {
                best = Some(missing);
            }
        }
        let missing = best
            .unwrap_or_default()
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        Err(ConsentDenied::ScopesNotCovered {
            client: client.into(),
            subject: subject.into(),
            server: server.into(),
            missing,
        })
    }
}

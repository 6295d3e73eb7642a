//! The agent's SVID cache: one client SVID per registration entry, rotated at
//! half life with jitter, republished whenever entries, SVIDs or the bundle change.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tessera_authority::{Authority, IssuedSvid, SvidSpec, TrustBundle};
use tessera_identity::{ClientId, ClientName, ServerId, ServerName};
use tessera_store::{Entry, EntryKind, Store};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::attest::Needs;
use crate::drain;
use crate::metrics::Metrics;

/// A registration entry with the client SVID it grants.
#[derive(Debug)]
pub(crate) struct EntrySvid {
    /// The stored entry.
    pub entry: Entry,
    /// The SPIFFE ID the entry grants.
    pub spiffe_id: String,
    /// `spiffe://<td>/client/<client>` for client entries; `None` for server entries.
    pub client_id: Option<ClientId>,
    /// The current SVID.
    pub svid: Arc<IssuedSvid>,
    /// When to replace it (unix seconds): half life minus jitter.
    rotate_at: i64,
}

/// Everything a Workload API stream needs to answer, as one immutable value.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// Entries with their SVIDs, in store order.
    pub entries: Vec<Arc<EntrySvid>>,
    /// The trust bundle.
    pub bundle: Arc<TrustBundle>,
    /// The costly selectors some entry uses (attestation computes only those).
    pub needs: Needs,
}

impl Snapshot {
    /// The entries whose selectors `att` satisfies, one per SPIFFE ID, in store order.
    pub(crate) fn identities_for(&self, att: &crate::attest::Attestation) -> Vec<&Arc<EntrySvid>> {
        let mut seen = std::collections::HashSet::new();
        self.entries
            .iter()
            .filter(|e| att.satisfies(e.entry.selectors.iter().map(String::as_str)))
            .filter(|e| seen.insert(e.spiffe_id.as_str()))
            .collect()
    }

    /// The client identities `att` has (server entries excluded).
    pub(crate) fn clients_for(&self, att: &crate::attest::Attestation) -> Vec<ClientId> {
        self.identities_for(att)
            .into_iter()
            .filter_map(|e| e.client_id.clone())
            .collect()
    }
}

/// Signs MCP server SVIDs somewhere else than this agent's authority: in cluster mode
/// the cluster's root does, through the node's link to the server (a node CA may not).
/// A trait so the cache does not depend on how the node reaches its server.
pub(crate) trait ServerSvidSigner: Send + Sync + std::fmt::Debug {
    /// An SVID (and its key, made here) for `spiffe://<td>/mcp/<server>`, living `ttl`.
    fn sign<'a>(
        &'a self,
        server: &'a str,
        ttl: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<IssuedSvid>> + Send + 'a>>;
}

/// Keeps [`Snapshot`] current. Streams subscribe with [`SvidCache::subscribe`].
#[derive(Debug)]
pub(crate) struct SvidCache {
    authority: Arc<Authority>,
    store: Store,
    client_ttl: Duration,
    metrics: Arc<Metrics>,
    tx: watch::Sender<Arc<Snapshot>>,
    /// The store's entries revision the published snapshot reflects.
    applied: watch::Sender<u64>,
    /// Cluster mode: MCP server SVIDs come from the server (`SignServerSvid`), since a
    /// node CA may not sign them; the key stays here.
    server_signer: Option<Arc<dyn ServerSvidSigner>>,
}

impl SvidCache {
    /// Loads entries and issues their SVIDs.
    #[cfg(test)]
    pub(crate) async fn new(
        authority: Arc<Authority>,
        store: Store,
        client_ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<SvidCache>> {
        Self::with_server_signer(authority, store, client_ttl, metrics, None).await
    }

    /// [`SvidCache::new`], with server SVIDs signed by the cluster's server through
    /// `server_signer` when given.
    pub(crate) async fn with_server_signer(
        authority: Arc<Authority>,
        store: Store,
        client_ttl: Duration,
        metrics: Arc<Metrics>,
        server_signer: Option<Arc<dyn ServerSvidSigner>>,
    ) -> anyhow::Result<Arc<SvidCache>> {
        let (tx, _) = watch::channel(Arc::new(Snapshot {
            entries: Vec::new(),
            bundle: authority.bundle(),
            needs: Needs::default(),
        }));
        let cache = Arc::new(SvidCache {
            authority,
            store,
            client_ttl,
            metrics,
            tx,
            applied: watch::channel(0).0,
            server_signer,
        });
        cache.reconcile(OffsetDateTime::now_utc()).await?;
        Ok(cache)
    }

    /// The current snapshot and every later one.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// The current snapshot.
    pub(crate) fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// Runs until the drain starts: reacts to entry and bundle changes, rotates
    /// SVIDs when due and drives the CA rotation schedule.
    pub(crate) async fn run(self: Arc<Self>, drain: drain::Watch) {
        let mut entries_rx = self.store.watch_entries();
        let mut bundle_rx = self.authority.subscribe_bundle();
        let mut ca_tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            let next = self.next_rotation();
            let wait = (next - OffsetDateTime::now_utc().unix_timestamp()).clamp(0, 3600);
            tokio::select! {
                _ = drain.signaled() => return,
                r = entries_rx.changed() => if r.is_err() { return },
                r = bundle_rx.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(Duration::from_secs(wait as u64)) => {}
                _ = ca_tick.tick() => {
                    if let Err(e) = self.authority.tick(OffsetDateTime::now_utc()) {
                        tracing::error!(error = %e, "CA rotation failed; will retry");
                    }
                    self.metrics.ca_not_after.set(self.authority.active_ca_not_after());
                }
            }
            // A failed reconcile keeps the last good snapshot (still-valid SVIDs)
            // and retries soon; it never publishes a partial state.
            if let Err(e) = self.reconcile(OffsetDateTime::now_utc()).await {
                tracing::error!(error = %e, "refreshing SVIDs failed; retrying in 1s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    fn next_rotation(&self) -> i64 {
        self.current()
            .entries
            .iter()
            .map(|e| e.rotate_at)
            .min()
            .unwrap_or(i64::MAX)
    }

    /// Brings the snapshot in line with the store, the bundle and the clock.
    async fn reconcile(&self, now: OffsetDateTime) -> anyhow::Result<()> {
        // Read the revision first: a change committed during the listing is then
        // reconciled again on the next round instead of being marked applied.
        let revision = self.store.entries_revision();
        let entries = self.store.list_entries().await?;
        let old = self.current();
        let by_id: HashMap<&str, &Arc<EntrySvid>> = old
            .entries
            .iter()
            .map(|e| (e.entry.id.as_str(), e))
            .collect();
        let bundle = self.authority.bundle();
        let ca_changed =
            !Arc::ptr_eq(&bundle, &old.bundle) && bundle.certs.first() != old.bundle.certs.first();
        let t = now.unix_timestamp();
        let mut next = Vec::with_capacity(entries.len());
        let mut changed = entries.len() != old.entries.len() || !Arc::ptr_eq(&bundle, &old.bundle);
        for entry in entries {
            match by_id.get(entry.id.as_str()) {
                // Keep a current SVID unless it is due or the signing CA changed.
                Some(e) if e.rotate_at > t && !ca_changed => next.push(Arc::clone(e)),
                _ => {
                    next.push(Arc::new(self.issue(entry, now).await?));
                    changed = true;
                }
            }
        }
        if changed {
            self.metrics.entries.set(next.len() as i64);
            let needs = Needs::of(
                next.iter()
                    .flat_map(|e| e.entry.selectors.iter().map(String::as_str)),
            );
            self.tx.send_replace(Arc::new(Snapshot {
                entries: next,
                bundle,
                needs,
            }));
        }
        self.applied.send_if_modified(|a| {
            let newer = revision > *a;
            *a = (*a).max(revision);
            newer
        });
        Ok(())
    }

    /// Waits until the served snapshot reflects every entry change committed so
    /// far, so an entry an administrator just created (or deleted) takes effect
    /// for the very next call. Gives up after `timeout`.
    pub(crate) async fn wait_applied(&self, timeout: Duration) -> bool {
        let target = self.store.entries_revision();
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|a| *a >= target))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    async fn issue(&self, entry: Entry, now: OffsetDateTime) -> anyhow::Result<EntrySvid> {
        let td = self.authority.trust_domain().clone();
        let (spiffe_id, client_id) = match entry.kind {
            EntryKind::Client => {
                let id = ClientId::new(td, entry.client.parse::<ClientName>()?);
                (id.to_string(), Some(id))
            }
            EntryKind::Server => (
                ServerId::new(td, entry.client.parse::<ServerName>()?).to_string(),
                None,
            ),
        };
        let ttl = entry
            .svid_ttl_secs
            .map(|s| Duration::from_secs(s.into()))
            .unwrap_or(self.client_ttl);
        let id = spiffe_id.clone();
        let svid = match (&self.server_signer, entry.kind) {
            (Some(signer), EntryKind::Server) => signer.sign(&entry.client, ttl).await?,
            _ => self.authority.issue_at(
                &SvidSpec {
                    spiffe_id: &id,
                    ttl,
                    not_after_cap: None,
                    claims: None,
                },
                now,
            )?,
        };
        let kind = match entry.kind {
            EntryKind::Client => "client",
            EntryKind::Server => "server",
        };
        self.metrics
            .svids_issued
            .get_or_create(&crate::metrics::KindLabel { kind })
            .inc();
        tracing::info!(spiffe_id = %id, serial = %svid.serial_hex, not_after = svid.not_after_unix, entry = %entry.id, kind, "issued SVID");
        let rotate_at = rotation_time(&svid);
        Ok(EntrySvid {
            entry,
            spiffe_id,
            client_id,
            svid: Arc::new(svid),
            rotate_at,
        })
    }
}

/// Half life, brought forward by up to a tenth of the lifetime at random so
/// that SVIDs issued together do not all renew in the same instant.
pub(crate) fn rotation_time(svid: &IssuedSvid) -> i64 {
    let life = (svid.not_after_unix - svid.not_before_unix).max(1);
    let jitter = rand::random_range(0..=life / 10);
    svid.half_life_unix() - jitter
}

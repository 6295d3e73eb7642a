//! The node's copy of the cluster's registrations: `Sync` from the server (a snapshot,
//! or the changes since the copy's version, then live changes and heartbeats) applied to
//! the local store. The Workload and Tasks APIs read only the store, so the agent keeps
//! serving from its copy while the server is away, and resumes by version when it is back.
//!
//! What ends tasks goes through the same paths as the standalone agent's Admin API: a
//! withdrawn consent through [`TaskManager::withdraw_consent`], a deleted client entry
//! through [`TaskManager::end_client_tasks`]; only then is the change's version recorded,
//! so a crash in between replays the change.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tessera_identity::{ClientName, ServerName};
use tessera_proto::tessera::v1::{
    Change, Consent as ProtoConsent, Entry as ProtoEntry, Snapshot, SyncMessage, SyncRequest,
    change, sync_message,
};
use tessera_store::{Consent, ConsentFilter, Entry, EntryKind, Store, StoreError, SyncBatch};

use super::{Backoff, ClusterJwtKeys, NodeLink};
use crate::attest::Selector;
use crate::drain;
use crate::svids::SvidCache;
use crate::tasks::{EndReason, TaskManager};

/// The actor named in the task ends and audit records sync causes.
const ACTOR: &str = "tessera-server";

/// Most entries and consents a snapshot may gather over its pages: memory the server's
/// stream can make the agent hold before anything is applied.
const MAX_SNAPSHOT_ITEMS: usize = 2_000_000;

/// A stream that says nothing (not even a heartbeat) for this long is presumed dead and
/// reopened: well above any heartbeat interval a server would choose.
const SILENCE_LIMIT: Duration = Duration::from_secs(45);

/// Why a message could not be applied (the stream is then reopened from the copy's
/// version, which was left where it was).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SyncError {
    #[error("the store: {0}")]
    Store(#[from] StoreError),
    #[error("ending tasks: {0}")]
    Tasks(String),
    #[error("the server sent {0}")]
    Invalid(String),
    #[error("saving the other nodes' JWT keys: {0}")]
    JwtKeys(String),
}

/// Keeps the store's copy in step with the server.
#[derive(Debug)]
pub(crate) struct Syncer {
    link: Arc<NodeLink>,
    store: Store,
    cache: Arc<SvidCache>,
    tasks: Arc<TaskManager>,
    jwt_keys: Arc<ClusterJwtKeys>,
}

impl Syncer {
    pub(crate) fn new(
        link: Arc<NodeLink>,
        store: Store,
        cache: Arc<SvidCache>,
        tasks: Arc<TaskManager>,
        jwt_keys: Arc<ClusterJwtKeys>,
    ) -> Arc<Syncer> {
        Arc::new(Syncer {
            link,
            store,
            cache,
            tasks,
            jwt_keys,
        })
    }

    /// Streams from the server until `drain` starts, reconnecting with backoff and
    /// resuming from the copy's version.
    pub(crate) async fn run(self: Arc<Self>, drain: drain::Watch) {
        let mut backoff = Backoff::default();
        loop {
            let result = tokio::select! {
                () = drain.signaled() => return,
                r = self.follow(&mut backoff) => r,
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, server = %self.link.server_address(), "sync with the server interrupted; serving from the local copy");
            }
            tokio::select! {
                () = drain.signaled() => return,
                () = tokio::time::sleep(backoff.next()) => {}
            }
        }
    }

    /// One stream: open it from the copy's version and apply what arrives.
    async fn follow(&self, backoff: &mut Backoff) -> Result<(), SyncError> {
        // The other nodes' JWT keys live beside the store; without their saved copy (first
        // start, an upgrade, a lost file) only a snapshot fills it.
        let since = if self.jwt_keys.needs_snapshot() {
            0
        } else {
            self.store.sync_version().await?
        };
        let mut stream = self
            .link
            .client()
            .sync(SyncRequest {
                since_version: since,
            })
            .await
            .map_err(|s| SyncError::Invalid(format!("an error opening Sync: {s}")))?
            .into_inner();
        tracing::info!(since, "syncing registrations from the server");
        // Pages of a snapshot gathered so far; applied once the last arrives.
        let mut pending: Option<Snapshot> = None;
        loop {
            let message = tokio::time::timeout(SILENCE_LIMIT, stream.message())
                .await
                .map_err(|_| SyncError::Invalid(format!("nothing for {SILENCE_LIMIT:?}")))?
                .map_err(|s| SyncError::Invalid(format!("an error on Sync: {s}")))?;
            let Some(message) = message else {
                return Ok(());
            };
            self.apply(message, &mut pending).await?;
            // A stream that delivers is a healthy one: the next break retries quickly.
            backoff.reset();
        }
    }

    /// Applies one message of the stream; snapshot pages wait in `pending` for the last.
    pub(crate) async fn apply(
        &self,
        message: SyncMessage,
        pending: &mut Option<Snapshot>,
    ) -> Result<(), SyncError> {
        match message.message {
            Some(sync_message::Message::Snapshot(page)) => {
                let more = page.more;
                let s = match pending.take() {
                    None => page,
                    Some(mut s) if s.version == page.version => {
                        s.entries.extend(page.entries);
                        s.consents.extend(page.consents);
                        s.nodes.extend(page.nodes);
                        s.jwt_keys.extend(page.jwt_keys);
                        s
                    }
                    Some(s) => {
                        return Err(SyncError::Invalid(format!(
                            "a snapshot page of version {} within one of version {}",
                            page.version, s.version
                        )));
                    }
                };
                if s.entries.len() + s.consents.len() + s.jwt_keys.len() > MAX_SNAPSHOT_ITEMS {
                    return Err(SyncError::Invalid(format!(
                        "a snapshot of more than {MAX_SNAPSHOT_ITEMS} entries and consents"
                    )));
                }
                if more {
                    *pending = Some(s);
                    return Ok(());
                }
                let entries = s
                    .entries
                    .into_iter()
                    .map(entry_from_proto)
                    .collect::<Result<Vec<_>, _>>()?;
                let consents = s
                    .consents
                    .into_iter()
                    .map(consent_from_proto)
                    .collect::<Result<Vec<_>, _>>()?;
                let evicted: Vec<&str> = s
                    .nodes
                    .iter()
                    .filter(|n| n.status != "active")
                    .map(|n| n.name.as_str())
                    .collect();
                // Before the store records the snapshot's version (a crash in between
                // replays it).
                self.jwt_keys
                    .replace_all(s.jwt_keys, &evicted)
                    .map_err(|e| SyncError::JwtKeys(e.to_string()))?;
                self.apply_snapshot(s.version, entries, consents).await?;
            }
            Some(sync_message::Message::Changes(c)) => {
                if pending.is_some() {
                    return Err(SyncError::Invalid("changes inside a paged snapshot".into()));
                }
                for change in c.changes {
                    self.apply_change(change).await?;
                }
            }
            Some(sync_message::Message::Heartbeat(_)) | None => {}
        }
        Ok(())
    }

    async fn apply_snapshot(
        &self,
        version: i64,
        entries: Vec<Entry>,
        consents: Vec<Consent>,
    ) -> Result<(), SyncError> {
        // Destructive first, through the task paths; the batch then makes the copy exact.
        let in_force: HashSet<&str> = consents
            .iter()
            .filter(|c| c.withdrawn_at.is_none())
            .map(|c| c.id.as_str())
            .collect();
        let live_here = self
            .store
            .list_consents(&ConsentFilter {
                client: None,
                include_withdrawn: false,
            })
            .await?;
        for c in live_here {
            if !in_force.contains(c.id.as_str()) {
                self.withdraw(&c.id).await?;
            }
        }
        let wanted: HashSet<(EntryKind, &str, &[String])> = entries
            .iter()
            .map(|e| (e.kind, e.client.as_str(), e.selectors.as_slice()))
            .collect();
        let ids: HashSet<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        for e in self.store.list_entries().await? {
            // A local row the server has under another id is replaced, not deleted: the
            // identity it grants stays.
            let same = wanted.contains(&(e.kind, e.client.as_str(), e.selectors.as_slice()));
            if !ids.contains(e.id.as_str()) && !same {
                self.delete_entry(e).await?;
            }
        }
        self.store
            .apply_sync(SyncBatch {
                version,
                entries,
                consents,
                replace_entries: true,
            })
            .await?;
        self.cache.wait_applied(Duration::from_secs(5)).await;
        tracing::info!(version, "applied a snapshot of the registrations");
        Ok(())
    }

    async fn apply_change(&self, c: Change) -> Result<(), SyncError> {
        let mut batch = SyncBatch {
            version: c.version,
            ..SyncBatch::default()
        };
        match c.change {
            Some(change::Change::EntryPut(e)) => batch.entries.push(entry_from_proto(e)?),
            Some(change::Change::EntryDeleted(id)) => {
                if let Some(e) = self.store.get_entry(&id).await? {
                    self.delete_entry(e).await?;
                }
            }
            Some(change::Change::ConsentPut(c)) => {
                let c = consent_from_proto(c)?;
                if c.withdrawn_at.is_some() {
                    self.withdraw(&c.id).await?;
                }
                batch.consents.push(c);
            }
            // An evicted node's JWT keys go at once (the server withdraws them too);
            // its CAs reach verifiers through the revocation feed.
            Some(change::Change::NodePut(n)) if n.status != "active" => {
                self.jwt_keys
                    .drop_node(&n.name)
                    .map_err(|e| SyncError::JwtKeys(e.to_string()))?;
            }
            Some(change::Change::JwtKeysPut(k)) => {
                self.jwt_keys
                    .put(k)
                    .map_err(|e| SyncError::JwtKeys(e.to_string()))?;
            }
            Some(change::Change::NodePut(_)) | None => {}
        }
        let touched_entries = !batch.entries.is_empty();
        self.store.apply_sync(batch).await?;
        if touched_entries {
            self.cache.wait_applied(Duration::from_secs(5)).await;
        }
        Ok(())
    }

    /// Withdraws a consent here as a local withdrawal does (ending its tasks), unless
    /// the copy has it withdrawn already or never had it.
    async fn withdraw(&self, id: &str) -> Result<(), SyncError> {
        match self.store.get_consent(id).await? {
            Some(c) if c.withdrawn_at.is_none() => {}
            _ => return Ok(()),
        }
        let ended = self
            .tasks
            .withdraw_consent(id, ACTOR)
            .await
            .map_err(|e| SyncError::Tasks(e.to_string()))?;
        if let Some((_, ended)) = ended {
            tracing::info!(
                consent = id,
                ended_tasks = ended.len(),
                "consent withdrawn at the server"
            );
        }
        Ok(())
    }

    /// Deletes an entry here as a local deletion does: for a client entry, every live
    /// task of the client ends once the Workload API no longer serves the entry.
    async fn delete_entry(&self, e: Entry) -> Result<(), SyncError> {
        if !self.store.delete_entry(&e.id, ACTOR).await? {
            return Ok(());
        }
        self.cache.wait_applied(Duration::from_secs(5)).await;
        if e.kind == EntryKind::Client {
            let ended = self
                .tasks
                .end_client_tasks(&e.client, EndReason::EntryDeleted, ACTOR)
                .await
                .map_err(|e| SyncError::Tasks(e.to_string()))?;
            tracing::info!(entry = %e.id, client = %e.client, ended_tasks = ended.len(), "entry deleted at the server");
        }
        Ok(())
    }
}

/// An entry as the server sent it, parsed as the Admin API parses one.
fn entry_from_proto(e: ProtoEntry) -> Result<Entry, SyncError> {
    let invalid = |what: String| SyncError::Invalid(format!("entry {:?}: {what}", e.id));
    let (kind, name) = match (e.client.is_empty(), e.server.is_empty()) {
        (false, true) => {
            e.client
                .parse::<ClientName>()
                .map_err(|x| invalid(format!("client: {x}")))?;
            (EntryKind::Client, e.client.clone())
        }
        (true, false) => {
            e.server
                .parse::<ServerName>()
                .map_err(|x| invalid(format!("server: {x}")))?;
            (EntryKind::Server, e.server.clone())
        }
        _ => return Err(invalid("not exactly one of client and server".into())),
    };
    let selectors = e
        .selectors
        .iter()
        .map(|s| s.parse::<Selector>().map(|s| s.to_string()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|x| invalid(format!("selector: {x}")))?;
    Ok(Entry {
        id: e.id,
        kind,
        client: name,
        selectors,
        svid_ttl_secs: (e.svid_ttl_secs > 0).then_some(e.svid_ttl_secs),
        created_at: e.created_at_unix,
    })
}

/// A consent as the server sent it (the store checks its limits).
fn consent_from_proto(c: ProtoConsent) -> Result<Consent, SyncError> {
    c.client
        .parse::<ClientName>()
        .map_err(|x| SyncError::Invalid(format!("consent {:?}: client: {x}", c.id)))?;
    Ok(Consent {
        id: c.id,
        client: c.client,
        subject: c.subject,
        server: c.server,
        scopes: c.scopes,
        expires_at: c.expires_at_unix,
        granted_by: c.granted_by,
        granted_at: c.granted_at_unix,
        withdrawn_at: (c.withdrawn_at_unix != 0).then_some(c.withdrawn_at_unix),
    })
}

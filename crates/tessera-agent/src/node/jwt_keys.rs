//! Cluster-wide JWT-SVIDs: this node's JWT signing keys published to the server, and
//! every other node's learnt through `Sync`, so a token fetched on one node validates on
//! all of them.
//!
//! - [`run_publisher`] sends the public halves of this node's keys (`PublishJwtKeys`) at
//!   start, whenever its JWT bundle changes (a key prepared, activated, retired: the
//!   rotation publishes a key a sixth of its life before it signs), after every renewal
//!   of the node CA (a key's `not_after` is capped at the CA's), and every
//!   [`REPUBLISH_INTERVAL`] (the server ignores an unchanged set).
//! - [`ClusterJwtKeys`] is the copy of the other nodes' keys the `Sync` applier keeps:
//!   replaced by a snapshot, a node's set replaced by a `jwt_keys_put`, dropped when its
//!   node is evicted; each key drops out by itself at its `not_after`. It is saved in the
//!   node directory before the change's version is, so a restarted agent resumes `Sync`
//!   by version; without the file it asks for a snapshot.
//!
//! Every key taken from the server must carry the node mark
//! ([`tessera_identity::NODE_KEY_ID_PREFIX`]): it
//! is what makes verifiers refuse a node key signing an MCP server's token. A key
//! without it, or not on P-256, is skipped (and logged), never trusted.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tessera_authority::JwtAuthority;
use tessera_identity::{JwtKey, MAX_JWKS_KEYS, MAX_NODE_JWT_KEYS, is_node_key_id};
use tessera_proto::tessera::v1::{JwtSigningKey, NodeJwtKeys, PublishJwtKeysRequest};
use tokio::sync::watch;

use super::{Backoff, NodeLink};
use crate::drain;

/// How often the node's keys are sent again even when nothing changed here: a server
/// that lost them (restored from a backup) has them back within this.
const REPUBLISH_INTERVAL: Duration = Duration::from_secs(300);

/// Largest saved copy read back: every key the JWKS bound allows, generously encoded.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// The file the copy is saved in, in the node directory.
const FILE_NAME: &str = "jwt-keys.json";

/// Another node's JWT signing key, as this agent trusts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NodeKey {
    /// The public key.
    pub(crate) key: JwtKey,
    /// Unix seconds after which it is dropped.
    pub(crate) not_after: i64,
}

/// The other nodes' keys, by node name.
pub(crate) type OtherNodesKeys = BTreeMap<String, Vec<NodeKey>>;

/// The copy of the other nodes' JWT keys (see the module's comment).
#[derive(Debug)]
pub(crate) struct ClusterJwtKeys {
    own_node: String,
    path: PathBuf,
    /// Whether the copy holds a snapshot's worth (loaded from the file or set by one).
    complete: AtomicBool,
    keys: watch::Sender<Arc<OtherNodesKeys>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedKey {
    kid: String,
    x: String,
    y: String,
    not_after: i64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    version: u32,
    nodes: BTreeMap<String, Vec<SavedKey>>,
}

impl ClusterJwtKeys {
    /// The copy saved in `node_dir` (empty and incomplete without one, or with one that
    /// does not read back: `Sync` then starts with a snapshot). `own_node` is this node's
    /// name: its own keys come from its authority, not from the server.
    pub(crate) fn load(node_dir: &Path, own_node: &str) -> Arc<ClusterJwtKeys> {
        let path = node_dir.join(FILE_NAME);
        let loaded = match read(&path) {
            Ok(Some(keys)) => Some(keys),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "saved JWT keys of the other nodes unusable; syncing a snapshot");
                None
            }
        };
        let complete = loaded.is_some();
        let mut keys = loaded.unwrap_or_default();
        keys.remove(own_node);
        Arc::new(ClusterJwtKeys {
            own_node: own_node.to_owned(),
            path,
            complete: AtomicBool::new(complete),
            keys: watch::Sender::new(Arc::new(keys)),
        })
    }

    /// Whether `Sync` must start with a snapshot to fill this copy.
    pub(crate) fn needs_snapshot(&self) -> bool {
        !self.complete.load(Ordering::Acquire)
    }

    /// The copy now and on every change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<OtherNodesKeys>> {
        self.keys.subscribe()
    }

    /// Replaces the whole copy with a snapshot's sets, leaving out the nodes in
    /// `evicted`, and saves it.
    pub(crate) fn replace_all(
        &self,
        sets: Vec<NodeJwtKeys>,
        evicted: &[&str],
    ) -> Result<(), std::io::Error> {
        let mut keys = OtherNodesKeys::new();
        for set in sets {
            if evicted.contains(&set.node.as_str()) {
                continue;
            }
            if let Some((node, parsed)) = self.parse(set) {
                keys.insert(node, parsed);
            }
        }
        self.commit(keys)?;
        self.complete.store(true, Ordering::Release);
        Ok(())
    }

    /// Replaces one node's set (an empty set removes it), and saves the copy.
    pub(crate) fn put(&self, set: NodeJwtKeys) -> Result<(), std::io::Error> {
        let node = set.node.clone();
        let parsed = self.parse(set);
        let mut keys = OtherNodesKeys::clone(&self.keys.borrow());
        match parsed {
            Some((node, parsed)) if !parsed.is_empty() => {
                keys.insert(node, parsed);
            }
            _ => {
                keys.remove(&node);
            }
        }
        self.commit(keys)
    }

    /// Drops an evicted node's keys at once (the server withdraws them too).
    pub(crate) fn drop_node(&self, node: &str) -> Result<(), std::io::Error> {
        if !self.keys.borrow().contains_key(node) {
            return Ok(());
        }
        let mut keys = OtherNodesKeys::clone(&self.keys.borrow());
        keys.remove(node);
        self.commit(keys)
    }

    /// A node's set as the server sent it: its well-formed, marked keys (at most
    /// [`MAX_NODE_JWT_KEYS`]); `None` for this node's own set.
    fn parse(&self, set: NodeJwtKeys) -> Option<(String, Vec<NodeKey>)> {
        if set.node == self.own_node {
            return None;
        }
        let mut out = Vec::new();
        for k in set.keys.into_iter().take(MAX_NODE_JWT_KEYS) {
            if !is_node_key_id(&k.kid) {
                tracing::warn!(node = %set.node, kid = %k.kid.chars().take(64).collect::<String>(), "a node's JWT key without the node mark; not trusted");
                continue;
            }
            match JwtKey::from_xy(&k.kid, &k.x, &k.y) {
                Ok(key) => out.push(NodeKey {
                    key,
                    not_after: k.not_after_unix,
                }),
                Err(e) => {
                    tracing::warn!(node = %set.node, kid = %k.kid, error = %e, "a node's JWT key is unusable; not trusted");
                }
            }
        }
        Some((set.node, out))
    }

    /// Saves `keys` (before anyone uses them, and before the caller records the change's
    /// version), then publishes them.
    fn commit(&self, keys: OtherNodesKeys) -> Result<(), std::io::Error> {
        write(&self.path, &keys)?;
        self.keys.send_if_modified(|cur| {
            if **cur == keys {
                false
            } else {
                *cur = Arc::new(keys);
                true
            }
        });
        Ok(())
    }
}

fn read(path: &Path) -> Result<Option<OtherNodesKeys>, String> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    let text = fs::read(path).map_err(|e| e.to_string())?;
    let saved: Saved = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
    if saved.version != 1 {
        return Err(format!("unknown version {}", saved.version));
    }
    let mut out = OtherNodesKeys::new();
    for (node, keys) in saved.nodes {
        let mut parsed = Vec::new();
        for k in keys {
            let coord = |s: &str| hex::decode(s).map_err(|e| e.to_string());
            if !is_node_key_id(&k.kid) {
                return Err(format!("key {} of {node} is not a node's", k.kid));
            }
            let key =
                JwtKey::from_xy(&k.kid, &coord(&k.x)?, &coord(&k.y)?).map_err(|e| e.to_string())?;
            parsed.push(NodeKey {
                key,
                not_after: k.not_after,
            });
        }
        out.insert(node, parsed);
    }
    Ok(Some(out))
}

/// Writes the copy atomically (temporary file, fsync, rename).
fn write(path: &Path, keys: &OtherNodesKeys) -> Result<(), std::io::Error> {
    let saved = Saved {
        version: 1,
        nodes: keys
            .iter()
            .map(|(node, keys)| {
                let keys = keys
                    .iter()
                    .map(|k| SavedKey {
                        kid: k.key.kid().to_owned(),
                        x: hex::encode(k.key.x()),
                        y: hex::encode(k.key.y()),
                        not_after: k.not_after,
                    })
                    .collect();
                (node.clone(), keys)
            })
            .collect(),
    };
    let text = serde_json::to_vec(&saved).expect("serializes");
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&text)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

/// The union this node validates JWT-SVIDs against at `now`: its own bundle's keys, then
/// every other node's unexpired keys (a kid already present is skipped: the server keeps
/// kids unique, and this node's own keys win), at most [`MAX_JWKS_KEYS`] in all. Also
/// returns when the next of the other nodes' keys expires.
pub(crate) fn union(
    own: &tessera_identity::JwtBundle,
    others: &OtherNodesKeys,
    now: i64,
) -> (tessera_identity::JwtBundle, Option<i64>) {
    let mut keys: Vec<JwtKey> = own.keys().to_vec();
    let mut seen: std::collections::HashSet<String> =
        keys.iter().map(|k| k.kid().to_owned()).collect();
    let mut next_expiry: Option<i64> = None;
    let mut dropped = 0usize;
    for key in others.values().flatten() {
        if key.not_after <= now {
            continue;
        }
        next_expiry = Some(next_expiry.map_or(key.not_after, |t| t.min(key.not_after)));
        if keys.len() >= MAX_JWKS_KEYS {
            dropped += 1;
            continue;
        }
        if seen.insert(key.key.kid().to_owned()) {
            keys.push(key.key.clone());
        }
    }
    if dropped > 0 {
        tracing::warn!(
            dropped,
            max = MAX_JWKS_KEYS,
            "the cluster's JWT keys exceed the JWKS bound; some nodes' tokens will be refused here"
        );
    }
    let bundle =
        tessera_identity::JwtBundle::new(own.trust_domain().clone(), keys, own.refresh_hint_secs())
            .expect("kids deduplicated and bounded above");
    (bundle, next_expiry)
}

/// Publishes this node's keys (see the module's comment) until `drain` starts.
pub(crate) async fn run_publisher(
    link: Arc<NodeLink>,
    authority: Arc<JwtAuthority>,
    drain: drain::Watch,
) {
    let mut bundle = authority.subscribe_bundle();
    let mut renewals = link.subscribe_renewals();
    let mut backoff = Backoff::default();
    loop {
        bundle.borrow_and_update();
        renewals.borrow_and_update();
        let wait = match publish_once(&link, &authority).await {
            Ok(count) => {
                tracing::debug!(keys = count, "published this node's JWT keys");
                backoff.reset();
                REPUBLISH_INTERVAL
            }
            Err(status) => {
                let wait = backoff.next();
                tracing::warn!(error = %status, retry_in = ?wait, "publishing this node's JWT keys failed; other nodes may refuse its new tokens until it succeeds");
                wait
            }
        };
        tokio::select! {
            () = drain.signaled() => return,
            _ = bundle.changed() => {}
            _ = renewals.changed() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// The keys to publish now: this node's marked keys (an unmarked one, left from
/// standalone days, stays local), each `not_after` capped at the node CA's.
pub(crate) fn keys_to_publish(
    authority: &JwtAuthority,
    ca_not_after: i64,
    now: i64,
) -> Vec<JwtSigningKey> {
    authority
        .published_keys()
        .into_iter()
        .filter(|p| is_node_key_id(p.key.kid()))
        .map(|p| JwtSigningKey {
            kid: p.key.kid().to_owned(),
            x: p.key.x().to_vec(),
            y: p.key.y().to_vec(),
            not_after_unix: p.not_after_unix.min(ca_not_after),
        })
        .filter(|k| k.not_after_unix > now)
        .take(MAX_NODE_JWT_KEYS)
        .collect()
}

async fn publish_once(link: &NodeLink, authority: &JwtAuthority) -> Result<usize, tonic::Status> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let keys = keys_to_publish(authority, link.authority().active_ca_not_after(), now);
    let count = keys.len();
    link.client()
        .publish_jwt_keys(PublishJwtKeysRequest { keys })
        .await?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_identity::{JwtBundle, TrustDomain};

    const NOW: i64 = 1_800_000_000;

    fn td() -> TrustDomain {
        "acme.corp".parse().unwrap()
    }

    fn wire_key(kid: &str, not_after: i64) -> JwtSigningKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let point = pair.public_key_raw();
        JwtSigningKey {
            kid: kid.into(),
            x: point[1..33].to_vec(),
            y: point[33..].to_vec(),
            not_after_unix: not_after,
        }
    }

    fn set(node: &str, keys: Vec<JwtSigningKey>) -> NodeJwtKeys {
        NodeJwtKeys {
            node: node.into(),
            keys,
        }
    }

    fn kids(keys: &ClusterJwtKeys) -> Vec<(String, Vec<String>)> {
        keys.subscribe()
            .borrow()
            .iter()
            .map(|(n, k)| {
                (
                    n.clone(),
                    k.iter().map(|k| k.key.kid().to_owned()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn unmarked_malformed_and_own_keys_are_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ClusterJwtKeys::load(dir.path(), "node-c");
        let mut off_curve = wire_key("node-bad", NOW + 60);
        off_curve.y[0] ^= 0x55;
        keys.replace_all(
            vec![
                set(
                    "node-a",
                    vec![
                        wire_key("node-a1", NOW + 60),
                        // A key that could sign MCP servers if trusted: skipped.
                        wire_key("0123456789abcdef", NOW + 60),
                        off_curve,
                    ],
                ),
                // This node's own set comes from its authority, never from the server.
                set("node-c", vec![wire_key("node-c1", NOW + 60)]),
                set("node-gone", vec![wire_key("node-g1", NOW + 60)]),
            ],
            &["node-gone"],
        )
        .unwrap();
        assert_eq!(kids(&keys), [("node-a".into(), vec!["node-a1".into()])]);
    }

    #[test]
    fn the_copy_survives_a_restart_and_only_a_snapshot_makes_it_complete() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ClusterJwtKeys::load(dir.path(), "node-c");
        assert!(keys.needs_snapshot(), "no saved copy: a snapshot first");
        keys.put(set("node-a", vec![wire_key("node-a1", NOW + 60)]))
            .unwrap();
        assert!(
            keys.needs_snapshot(),
            "a change alone is not the whole copy"
        );
        keys.replace_all(
            vec![set("node-a", vec![wire_key("node-a1", NOW + 60)])],
            &[],
        )
        .unwrap();
        keys.put(set("node-b", vec![wire_key("node-b1", NOW + 60)]))
            .unwrap();
        assert!(!keys.needs_snapshot());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(dir.path().join(FILE_NAME))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);

        let again = ClusterJwtKeys::load(dir.path(), "node-c");
        assert!(!again.needs_snapshot(), "resumes Sync by version");
        assert_eq!(kids(&again), kids(&keys));

        // Eviction and an empty set both remove a node.
        again.drop_node("node-a").unwrap();
        again.put(set("node-b", Vec::new())).unwrap();
        assert!(kids(&again).is_empty());
        assert!(kids(&ClusterJwtKeys::load(dir.path(), "node-c")).is_empty());

        // A corrupt file is not trusted: a snapshot refills the copy.
        fs::write(dir.path().join(FILE_NAME), b"{not json").unwrap();
        let corrupt = ClusterJwtKeys::load(dir.path(), "node-c");
        assert!(corrupt.needs_snapshot());
        assert!(kids(&corrupt).is_empty());
    }

    #[test]
    fn the_union_holds_own_keys_then_other_nodes_unexpired_ones() {
        let dir = tempfile::tempdir().unwrap();
        let others = ClusterJwtKeys::load(dir.path(), "node-c");
        let own_key = wire_key("node-c1", NOW + 600);
        let own = JwtBundle::new(
            td(),
            vec![JwtKey::from_xy(&own_key.kid, &own_key.x, &own_key.y).unwrap()],
            Some(7200),
        )
        .unwrap();
        // Another node claiming this node's kid does not replace it.
        let shadow = wire_key("node-c1", NOW + 600);
        others
            .replace_all(
                vec![
                    set(
                        "node-a",
                        vec![wire_key("node-a1", NOW + 100), wire_key("node-a0", NOW)],
                    ),
                    set("node-b", vec![wire_key("node-b1", NOW + 50), shadow]),
                ],
                &[],
            )
            .unwrap();
        let (union, next) = union(&own, &others.subscribe().borrow(), NOW);
        let kids: Vec<&str> = union.keys().iter().map(|k| k.kid()).collect();
        assert_eq!(kids, ["node-c1", "node-a1", "node-b1"]);
        assert_eq!(union.key("node-c1"), own.key("node-c1"), "own key wins");
        assert_eq!(union.refresh_hint_secs(), Some(7200));
        assert_eq!(next, Some(NOW + 50), "wake when node-b1 expires");
        let (later, next) = union_at(&own, &others, NOW + 50);
        assert_eq!(later, ["node-c1", "node-a1"]);
        assert_eq!(next, Some(NOW + 100));
    }

    fn union_at(own: &JwtBundle, others: &ClusterJwtKeys, now: i64) -> (Vec<String>, Option<i64>) {
        let (u, next) = union(own, &others.subscribe().borrow(), now);
        (u.keys().iter().map(|k| k.kid().to_owned()).collect(), next)
    }

    #[test]
    fn only_marked_keys_are_published_capped_at_the_node_ca() {
        let dir = tempfile::tempdir().unwrap();
        let authority = JwtAuthority::open(
            td(),
            dir.path().join("ca"),
            tessera_authority::JwtKeyPolicy {
                owner: tessera_authority::JwtKeyOwner::Node,
                ..Default::default()
            },
        )
        .unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let published = keys_to_publish(&authority, now + 100, now);
        assert_eq!(published.len(), 1);
        assert!(published[0].kid.starts_with("node-"));
        assert_eq!(published[0].not_after_unix, now + 100, "capped at the CA");
        // A node CA already expired leaves nothing worth publishing.
        assert!(keys_to_publish(&authority, now, now).is_empty());
    }
}

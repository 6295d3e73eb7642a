//! JWT-SVID signing: one P-256 key per trust domain, rotated with overlap, and the JWKS
//! bundle verifiers trust.
//!
//! Rotation follows the CA's two phases, on the key's own schedule: at half of the active
//! key's life the next key is created and *published* in the JWKS without signing; at two
//! thirds it becomes the signing key, and the old one stays in the JWKS (its private half
//! destroyed) until every token it signed has expired. A verifier refreshing its JWKS at
//! least once per sixth of a key's life therefore always knows a key before it meets a
//! token signed with it; `spiffe_refresh_hint` tells it how often to look.
//!
//! Whose keys they are ([`JwtKeyOwner`]): a standalone agent's keys are the trust
//! domain's own; a cluster-mode agent's are its node's, their `kid`s carry
//! [`NODE_KEY_ID_PREFIX`], and they sign client and task tokens only (the issuance split,
//! as for node CAs). Opening a key directory for the other owner retires its keys at once.
//!
//! Files, beside the CA's in the authority directory (mode 0700): `jwt-<kid>.key.pem`
//! (PKCS#8, mode 0600) for the active and prepared keys, and `jwt-state.json` (0600)
//! naming them and holding the retiring keys' public halves.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::KeyPair;
use serde::{Deserialize, Serialize};
use tessera_identity::{
    JWT_LEEWAY_SECS, JwtBundle, JwtKey, JwtSvidClaims, NODE_KEY_ID_PREFIX, TaskClaims, TesseraId,
    TrustDomain, check_audiences, is_node_key_id,
};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::{AuthorityError, pem};

/// When JWT signing keys rotate and how long their tokens live.
#[derive(Clone, Copy, Debug)]
pub struct JwtKeyPolicy {
    /// Life of each signing key: the next is published at half of it and signs from two
    /// thirds on.
    pub key_ttl: Duration,
    /// The longest JWT-SVID lifetime handed out: a retired key stays published this long
    /// (plus the validation leeway) after it stops signing.
    pub max_token_ttl: Duration,
    /// Whose keys these are.
    pub owner: JwtKeyOwner,
}

impl Default for JwtKeyPolicy {
    fn default() -> Self {
        JwtKeyPolicy {
            key_ttl: Duration::from_secs(24 * 3600),
            max_token_ttl: Duration::from_secs(3600),
            owner: JwtKeyOwner::TrustDomain,
        }
    }
}

/// Whose JWT signing keys an authority holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwtKeyOwner {
    /// The trust domain's own (a standalone agent): any Tessera identity.
    #[default]
    TrustDomain,
    /// A node's (cluster mode): `kid`s start with [`NODE_KEY_ID_PREFIX`], and only client
    /// and task identities are signed.
    Node,
}

impl JwtKeyOwner {
    /// Whether `kid` is the id of a key this owner makes.
    fn owns(self, kid: &str) -> bool {
        is_node_key_id(kid) == (self == JwtKeyOwner::Node)
    }

    /// A fresh key id of this owner: 128 random bits, hex, marked for a node.
    fn new_kid(self) -> String {
        let random = hex::encode(rand::random::<[u8; 16]>());
        match self {
            JwtKeyOwner::TrustDomain => random,
            JwtKeyOwner::Node => format!("{NODE_KEY_ID_PREFIX}{random}"),
        }
    }
}

/// The public half of a signing key as a node publishes it to the cluster, with the
/// last moment a token it signed can be valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedJwtKey {
    /// The key.
    pub key: JwtKey,
    /// Unix seconds after which no token this key signed is valid: for a retiring key
    /// when its last token expires; for the active and prepared keys, the end of their
    /// schedule (created + key life + the longest token + leeway), which rotation keeps.
    pub not_after_unix: i64,
}

/// What to sign.
#[derive(Clone, Copy, Debug)]
pub struct JwtSvidSpec<'a> {
    /// The subject's SPIFFE ID; a Tessera ID of the authority's trust domain.
    pub spiffe_id: &'a str,
    /// Audiences (1..=16, each 1..=512 bytes).
    pub audience: &'a [String],
    /// Requested lifetime; capped by `not_after_cap`.
    pub ttl: Duration,
    /// Absolute upper bound for `exp`, unix seconds (a task's deadline).
    pub not_after_cap: Option<i64>,
    /// A task's claims, required exactly when `spiffe_id` is a task's.
    pub task: Option<&'a TaskClaims>,
}

/// A signed JWT-SVID. `Debug` never prints the token: it is a bearer credential.
#[derive(Clone)]
pub struct IssuedJwtSvid {
    /// The compact JWS.
    pub token: String,
    /// `exp`, unix seconds.
    pub expires_unix: i64,
    /// `jti`.
    pub jti: String,
    /// The signing key's id.
    pub kid: String,
}

impl std::fmt::Debug for IssuedJwtSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedJwtSvid")
            .field("jti", &self.jti)
            .field("kid", &self.kid)
            .field("expires_unix", &self.expires_unix)
            .field("token", &"<redacted>")
            .finish()
    }
}

struct SigningKey {
    record: KeyRecord,
    encoding: EncodingKey,
    public: JwtKey,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct KeyRecord {
    kid: String,
    created_unix: i64,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct RetiringKey {
    kid: String,
    /// Uncompressed SEC1 point, hex.
    point_hex: String,
    until_unix: i64,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    active: KeyRecord,
    prepared: Option<KeyRecord>,
    retiring: Vec<RetiringKey>,
}

struct KeySet {
    active: Arc<SigningKey>,
    prepared: Option<Arc<SigningKey>>,
    retiring: Vec<RetiringKey>,
}

/// The JWT-SVID signer of one trust domain. Cheap to share behind an `Arc`.
pub struct JwtAuthority {
    trust_domain: TrustDomain,
    dir: PathBuf,
    policy: JwtKeyPolicy,
    keys: RwLock<KeySet>,
    bundle_tx: watch::Sender<Arc<JwtBundle>>,
}

impl std::fmt::Debug for JwtAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

const STATE_FILE: &str = "jwt-state.json";

fn key_path(dir: &Path, kid: &str) -> PathBuf {
    dir.join(format!("jwt-{kid}.key.pem"))
}

impl JwtAuthority {
    /// Opens the signer: loads its keys from `dir`, or creates the first on first start.
    /// `dir` is the authority directory (created 0700 if missing).
    pub fn open(
        trust_domain: TrustDomain,
        dir: PathBuf,
        policy: JwtKeyPolicy,
    ) -> Result<JwtAuthority, AuthorityError> {
        Self::open_at(trust_domain, dir, policy, OffsetDateTime::now_utc())
    }

    /// [`JwtAuthority::open`] at a given time (tests).
    pub fn open_at(
        trust_domain: TrustDomain,
        dir: PathBuf,
        policy: JwtKeyPolicy,
        now: OffsetDateTime,
    ) -> Result<JwtAuthority, AuthorityError> {
        if policy.key_ttl < Duration::from_secs(6) || policy.max_token_ttl.is_zero() {
            return Err(AuthorityError::InvalidRequest(
                "JWT key TTL must be at least 6s and the token TTL positive".into(),
            ));
        }
        crate::authority::ensure_private_dir(&dir)?;
        let keys = load_or_create(&dir, now.unix_timestamp(), &policy)?;
        let bundle = Arc::new(make_bundle(&trust_domain, &policy, &keys));
        let (bundle_tx, _) = watch::channel(bundle);
        Ok(JwtAuthority {
            trust_domain,
            dir,
            policy,
            keys: RwLock::new(keys),
            bundle_tx,
        })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The JWT bundle verifiers must trust now.
    pub fn bundle(&self) -> Arc<JwtBundle> {
        self.bundle_tx.borrow().clone()
    }

    /// The bundle now and on every change.
    pub fn subscribe_bundle(&self) -> watch::Receiver<Arc<JwtBundle>> {
        self.bundle_tx.subscribe()
    }

    /// Signs a JWT-SVID as of `now`.
    ///
    /// # Errors
    /// [`AuthorityError::InvalidRequest`] if the subject is not a Tessera ID of this
    /// trust domain, the audiences break their bounds, task claims are missing, extra or
    /// for another task, or the cap leaves no lifetime.
    pub fn sign(
        &self,
        spec: &JwtSvidSpec<'_>,
        now: OffsetDateTime,
    ) -> Result<IssuedJwtSvid, AuthorityError> {
        let invalid = |m: String| AuthorityError::InvalidRequest(m);
        let subject: TesseraId = spec
            .spiffe_id
            .parse()
            .map_err(|e| invalid(format!("JWT-SVID subject: {e}")))?;
        if subject.trust_domain() != &self.trust_domain {
            return Err(invalid(
                "JWT-SVID subject is in another trust domain".into(),
            ));
        }
        if self.policy.owner == JwtKeyOwner::Node && matches!(subject, TesseraId::Server(_)) {
            return Err(AuthorityError::NodeJwtKeyMayNotSign {
                spiffe_id: spec.spiffe_id.to_owned(),
            });
        }
        check_audiences(spec.audience).map_err(|e| invalid(e.to_string()))?;
        match (&subject, spec.task) {
            (TesseraId::Task(id), Some(c)) if c.task_id == id.task && c.client_id == id.client => {}
            (TesseraId::Task(_), _) => {
                return Err(invalid(
                    "a task JWT-SVID needs its own task's claims".into(),
                ));
            }
            (_, Some(_)) => return Err(invalid("task claims on a non-task subject".into())),
            (_, None) => {}
        }
        let now = now.unix_timestamp();
        let ttl = i64::try_from(spec.ttl.as_secs()).unwrap_or(i64::MAX);
        let max = i64::try_from(self.policy.max_token_ttl.as_secs()).unwrap_or(i64::MAX);
        let mut exp = now.saturating_add(ttl.min(max));
        if let Some(cap) = spec.not_after_cap {
            exp = exp.min(cap);
        }
        if let Some(task) = spec.task {
            exp = exp.min(task.deadline_unix);
        }
        if exp <= now {
            return Err(invalid("no lifetime left before the deadline".into()));
        }
        let jti = hex::encode(rand::random::<[u8; 16]>());
        let claims = JwtSvidClaims::new(
            spec.spiffe_id.to_owned(),
            spec.audience.to_vec(),
            now,
            exp,
            jti.clone(),
            spec.task,
        );
        let key = Arc::clone(&self.read().active);
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key.record.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &key.encoding)
            .map_err(|e| AuthorityError::KeyGeneration(format!("signing a JWT-SVID: {e}")))?;
        Ok(IssuedJwtSvid {
            token,
            expires_unix: exp,
            jti,
            kid: key.record.kid.clone(),
        })
    }

    /// Whose keys these are.
    pub fn owner(&self) -> JwtKeyOwner {
        self.policy.owner
    }

    /// Every key in the bundle with the time its last token expires, for publication to
    /// the cluster (cluster mode): active, prepared, then retiring keys.
    pub fn published_keys(&self) -> Vec<PublishedJwtKey> {
        let k = self.read();
        let life = i64::try_from(self.policy.key_ttl.as_secs()).unwrap_or(i64::MAX);
        let token = i64::try_from(self.policy.max_token_ttl.as_secs()).unwrap_or(i64::MAX);
        // Activation comes at two thirds of a key's life and its last token expires a
        // token's life after it stops signing; the whole key life bounds that with room
        // for a late tick.
        let scheduled = |key: &SigningKey| PublishedJwtKey {
            key: key.public.clone(),
            not_after_unix: key
                .record
                .created_unix
                .saturating_add(life)
                .saturating_add(token)
                .saturating_add(JWT_LEEWAY_SECS),
        };
        let mut out = vec![scheduled(&k.active)];
        out.extend(k.prepared.as_deref().map(scheduled));
        out.extend(k.retiring.iter().filter_map(|r| {
            let point = hex::decode(&r.point_hex).ok()?;
            Some(PublishedJwtKey {
                key: JwtKey::from_sec1(&r.kid, &point).ok()?,
                not_after_unix: r.until_unix,
            })
        }));
        out
    }

    /// Applies the rotation schedule as of `now`: prepare the next key at half of the
    /// active one's life, make it the signing key at two thirds, and drop retired keys
    /// once their last token has expired. Returns whether the bundle changed.
    pub fn tick(&self, now: OffsetDateTime) -> Result<bool, AuthorityError> {
        let t = now.unix_timestamp();
        let life = i64::try_from(self.policy.key_ttl.as_secs()).unwrap_or(i64::MAX);
        let (created, prepared) = {
            let k = self.read();
            (k.active.record.created_unix, k.prepared.is_some())
        };
        let mut changed = false;
        if !prepared && t >= created.saturating_add(life / 2) {
            self.prepare_next(now)?;
            changed = true;
        }
        if t >= created.saturating_add(life * 2 / 3) && self.read().prepared.is_some() {
            self.activate_prepared(now)?;
            changed = true;
        }
        changed |= self.prune(now)?;
        Ok(changed)
    }

    /// Creates the next key and publishes it without signing with it yet.
    pub fn prepare_next(&self, now: OffsetDateTime) -> Result<(), AuthorityError> {
        let key = generate(&self.dir, now.unix_timestamp(), self.policy.owner)?;
        let mut k = self.write();
        if let Some(old) = k.prepared.replace(Arc::new(key)) {
            let _ = std::fs::remove_file(key_path(&self.dir, &old.record.kid));
        }
        self.persist(&k)?;
        self.publish(&k);
        tracing::info!(kid = %k.prepared.as_ref().map(|p| p.record.kid.as_str()).unwrap_or(""), "prepared next JWT signing key");
        Ok(())
    }

    /// Makes the prepared key the signing key; the old one stays published until every
    /// token it signed has expired, and its private half is destroyed now.
    pub fn activate_prepared(&self, now: OffsetDateTime) -> Result<(), AuthorityError> {
        let mut k = self.write();
        let Some(next) = k.prepared.take() else {
            return Err(AuthorityError::InvalidRequest(
                "no prepared JWT key to activate".into(),
            ));
        };
        let old = std::mem::replace(&mut k.active, next);
        let max = i64::try_from(self.policy.max_token_ttl.as_secs()).unwrap_or(i64::MAX);
        k.retiring.push(RetiringKey {
            kid: old.record.kid.clone(),
            point_hex: hex::encode(old.public.to_sec1()),
            until_unix: now
                .unix_timestamp()
                .saturating_add(max)
                .saturating_add(JWT_LEEWAY_SECS),
        });
        self.persist(&k)?;
        self.publish(&k);
        drop(k);
        // The state no longer names it: a crash here leaves an orphan file, never a
        // signing key that is missing.
        let _ = std::fs::remove_file(key_path(&self.dir, &old.record.kid));
        tracing::info!(active = %self.read().active.record.kid, retired = %old.record.kid, "activated next JWT signing key");
        Ok(())
    }

    /// Removes retired keys whose tokens have all expired. Returns whether any went.
    pub fn prune(&self, now: OffsetDateTime) -> Result<bool, AuthorityError> {
        let t = now.unix_timestamp();
        let mut k = self.write();
        let before = k.retiring.len();
        k.retiring.retain(|r| r.until_unix > t);
        if k.retiring.len() == before {
            return Ok(false);
        }
        self.persist(&k)?;
        self.publish(&k);
        Ok(true)
    }

    fn persist(&self, k: &KeySet) -> Result<(), AuthorityError> {
        let state = StateFile {
            version: 1,
            active: k.active.record.clone(),
            prepared: k.prepared.as_ref().map(|p| p.record.clone()),
            retiring: k.retiring.clone(),
        };
        let json = serde_json::to_vec_pretty(&state).expect("state serializes");
        pem::write_atomic(&self.dir.join(STATE_FILE), &json, 0o600)
    }

    fn publish(&self, k: &KeySet) {
        let bundle = make_bundle(&self.trust_domain, &self.policy, k);
        self.bundle_tx.send_if_modified(|cur| {
            if **cur == bundle {
                false
            } else {
                *cur = Arc::new(bundle);
                true
            }
        });
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, KeySet> {
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, KeySet> {
        self.keys.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// The bundle: active, prepared, then retiring keys. Verifiers are asked to refresh
/// twice per prepare-to-activate window.
fn make_bundle(td: &TrustDomain, policy: &JwtKeyPolicy, k: &KeySet) -> JwtBundle {
    let mut keys = vec![k.active.public.clone()];
    keys.extend(k.prepared.iter().map(|p| p.public.clone()));
    keys.extend(k.retiring.iter().filter_map(|r| {
        let point = hex::decode(&r.point_hex).ok()?;
        JwtKey::from_sec1(&r.kid, &point).ok()
    }));
    let hint = (policy.key_ttl.as_secs() / 12).max(1);
    JwtBundle::new(td.clone(), keys, Some(hint)).expect("key ids are random and few")
}

fn generate(dir: &Path, now: i64, owner: JwtKeyOwner) -> Result<SigningKey, AuthorityError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let kid = owner.new_kid();
    let key_pem = zeroize::Zeroizing::new(key.serialize_pem());
    pem::write_atomic(&key_path(dir, &kid), key_pem.as_bytes(), 0o600)?;
    signing_key(
        KeyRecord {
            kid,
            created_unix: now,
        },
        &key,
    )
}

fn signing_key(record: KeyRecord, key: &KeyPair) -> Result<SigningKey, AuthorityError> {
    if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
        return Err(AuthorityError::KeyGeneration(
            "a JWT signing key must be ECDSA P-256".into(),
        ));
    }
    let der = zeroize::Zeroizing::new(key.serialize_der());
    let public = JwtKey::from_sec1(&record.kid, key.public_key_raw())
        .map_err(|e| AuthorityError::KeyGeneration(e.to_string()))?;
    Ok(SigningKey {
        encoding: EncodingKey::from_ec_der(&der),
        public,
        record,
    })
}

fn load(dir: &Path, record: &KeyRecord) -> Result<SigningKey, AuthorityError> {
    let path = key_path(dir, &record.kid);
    let key_pem = zeroize::Zeroizing::new(pem::read_key(&path)?);
    let key = KeyPair::from_pem(&key_pem).map_err(|e| AuthorityError::BadPem {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    signing_key(record.clone(), &key)
}

fn load_or_create(dir: &Path, now: i64, policy: &JwtKeyPolicy) -> Result<KeySet, AuthorityError> {
    let state_path = dir.join(STATE_FILE);
    if !state_path.exists() {
        let active = generate(dir, now, policy.owner)?;
        let keys = KeySet {
            active: Arc::new(active),
            prepared: None,
            retiring: Vec::new(),
        };
        let state = StateFile {
            version: 1,
            active: keys.active.record.clone(),
            prepared: None,
            retiring: Vec::new(),
        };
        pem::write_atomic(
            &state_path,
            &serde_json::to_vec_pretty(&state).expect("state serializes"),
            0o600,
        )?;
        tracing::info!(kid = %keys.active.record.kid, "created JWT signing key");
        return Ok(keys);
    }
    let corrupt = |reason: String| AuthorityError::CorruptState {
        path: state_path.clone(),
        reason,
    };
    let text =
        std::fs::read(&state_path).map_err(|e| AuthorityError::io("reading", &state_path, e))?;
    let state: StateFile = serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
    if state.version != 1 {
        return Err(corrupt(format!("unknown version {}", state.version)));
    }
    let active = load(dir, &state.active)?;
    let prepared = state.prepared.as_ref().map(|r| load(dir, r)).transpose()?;
    tracing::info!(kid = %active.record.kid, "loaded JWT signing key");
    let keys = KeySet {
        active: Arc::new(active),
        prepared: prepared.map(Arc::new),
        retiring: state.retiring,
    };
    if policy.owner.owns(&keys.active.record.kid) {
        return Ok(keys);
    }
    change_owner(dir, now, policy, keys)
}

/// The keys of an agent that moved between standalone and cluster mode: a standalone
/// key must not go on signing unmarked in a cluster (it could sign MCP servers, and the
/// server refuses to publish it), and a node's marked key would be refused for servers
/// standalone. A new key of the right owner signs from now on; the old active one is
/// retired (published until its last token expires), a prepared one dropped.
fn change_owner(
    dir: &Path,
    now: i64,
    policy: &JwtKeyPolicy,
    mut keys: KeySet,
) -> Result<KeySet, AuthorityError> {
    let old = std::mem::replace(
        &mut keys.active,
        Arc::new(generate(dir, now, policy.owner)?),
    );
    let max = i64::try_from(policy.max_token_ttl.as_secs()).unwrap_or(i64::MAX);
    keys.retiring.push(RetiringKey {
        kid: old.record.kid.clone(),
        point_hex: hex::encode(old.public.to_sec1()),
        until_unix: now.saturating_add(max).saturating_add(JWT_LEEWAY_SECS),
    });
    let dropped = keys.prepared.take();
    let state = StateFile {
        version: 1,
        active: keys.active.record.clone(),
        prepared: None,
        retiring: keys.retiring.clone(),
    };
    pem::write_atomic(
        &dir.join(STATE_FILE),
        &serde_json::to_vec_pretty(&state).expect("state serializes"),
        0o600,
    )?;
    for gone in std::iter::once(&old).chain(dropped.as_ref()) {
        let _ = std::fs::remove_file(key_path(dir, &gone.record.kid));
    }
    tracing::info!(retired = %old.record.kid, active = %keys.active.record.kid, owner = ?policy.owner, "JWT signing keys changed owner; new key made");
    Ok(keys)
}

#[cfg(test)]
mod tests;

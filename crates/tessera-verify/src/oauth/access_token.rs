//! Access tokens: JWTs of the RFC 9068 profile, signed with the server's own X.509-SVID
//! key and carrying its chain, so any replica of the server accepts any replica's token.
//!
//! The profile Tessera mints and accepts, nothing more:
//! - JOSE header `{"alg":"ES256","typ":"at+jwt","x5c":[leaf, intermediates...]}` and no
//!   other member (`kid`, `jwk`, `jku`, `crit`, ... would ask the verifier to trust
//!   something the token brings).
//! - the `x5c` leaf is exactly this server's SPIFFE ID (`spiffe://<td>/mcp/<server>`),
//!   passes the X.509-SVID profile, and chains to the own trust domain's bundle now;
//! - claims `iss`, `sub`, `aud` (one string: the resource), `exp`, `iat`, `jti`,
//!   `client_id`, `scope`, for a task `tessera_task` (the task X.509-SVID's claims
//!   extension, base64url), optionally `cnf.x5t#S256` (RFC 8705); no other claim, none
//!   twice.
//!
//! [`AccessTokenVerifier`] keeps the tokens it verified in a bounded cache keyed by the
//! SHA-256 of the token text: a request presenting a known token costs a hash and a map
//! lookup, not an ECDSA verify and a chain walk. A hit still checks the token's `exp`
//! against the clock, that the trust anchors its chain was verified against are still
//! the current ones (every X.509 update of the trust source, e.g. a bundle without an
//! evicted CA, sends each token through the full check once more; new JWT bundles do
//! not), and the task's revocation when a feed is given.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rustls::server::ParsedCertificate;
use rustls::{RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tessera_identity::{
    ClientId, JWT_LEEWAY_SECS, MAX_CLAIMS_DER_LEN, MAX_SCOPES, Scope, TaskClaims, TesseraId,
    check_leaf_svid,
};

use super::CertThumbprint;
use super::peer::AccessTokenSubject;
use crate::peer::Peer;
use crate::revocation::{RevocationStatus, RevocationWatcher};
use crate::trust::{TrustMaterial, TrustSource, provider};

/// The JOSE `typ` of an access token (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";

/// The only signature algorithm of an access token.
pub const ACCESS_TOKEN_ALGORITHM: &str = "ES256";

/// Longest access token accepted, in bytes, checked before anything is decoded. The
/// task claim may hold [`MAX_CLAIMS_DER_LEN`] of DER (the bound the X.509 extension has),
/// base64url inside base64url, plus the signer's chain: 48 KiB holds that, as for
/// JWT-SVIDs. Typical tokens are about 2 KiB.
pub const MAX_ACCESS_TOKEN_LEN: usize = 48 * 1024;

/// Most certificates in `x5c`: the leaf and up to three intermediates.
pub const MAX_X5C_CERTS: usize = 4;

/// Longest `jti`, in bytes (ours are 22 characters).
const MAX_JTI_LEN: usize = 64;

/// Longest scope claim, in bytes: [`MAX_SCOPES`] scopes of a few hundred bytes each.
const MAX_SCOPE_CLAIM_LEN: usize = 16 * 1024;

/// Default number of verified tokens the cache keeps.
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;

/// Longest base64url task claim: [`MAX_CLAIMS_DER_LEN`] bytes of DER, encoded.
const MAX_TASK_CLAIM_B64_LEN: usize = MAX_CLAIMS_DER_LEN.div_ceil(3) * 4;

// === errors ===

/// Why an access token was refused. Each variant is one rule; [`Self::reason`] gives a
/// stable, machine-readable name for audit records and `error_description`s.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AccessTokenError {
    /// The token is longer than [`MAX_ACCESS_TOKEN_LEN`].
    #[error("token is {len} bytes, longer than the maximum of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not three base64url segments with a JSON header of `alg`, `typ` and `x5c` only.
    #[error("token is not a compact JWS of the access-token profile: {0}")]
    Malformed(&'static str),
    /// The header names an algorithm other than ES256 (`none`, `HS256`, `RS256`, ...).
    #[error("token algorithm {alg:?} is not allowed; only ES256")]
    DisallowedAlgorithm {
        /// What the header said (truncated).
        alg: String,
    },
    /// The header's `typ` is not `at+jwt` (a JWT-SVID or an ID token is not an access
    /// token).
    #[error("token type {typ:?} is not at+jwt")]
    BadType {
        /// What the header said (truncated), empty when absent.
        typ: String,
    },
    /// The header has no `x5c`, or an empty one.
    #[error("token header has no x5c chain")]
    MissingX5c,
    /// An `x5c` entry is not base64 DER, or there are too many.
    #[error("token x5c is unusable: {0}")]
    BadX5c(&'static str),
    /// The `x5c` leaf is not an X.509-SVID, or not of this server.
    #[error("token was not signed by this server: {0}")]
    NotThisServer(String),
    /// The `x5c` chain does not verify against the own trust domain's bundle now.
    #[error("token signer does not chain to the trust bundle: {0}")]
    UntrustedChain(String),
    /// The signature does not verify under the `x5c` leaf's key.
    #[error("token signature does not verify")]
    BadSignature,
    /// The claims are not the access-token claims set (unknown or repeated claim, wrong
    /// type, ...).
    #[error("token claims are invalid: {0}")]
    BadClaims(String),
    /// No `exp` claim.
    #[error("token has no exp claim")]
    MissingExp,
    /// `aud` is a list (even a one-element list holding the resource: one token, one
    /// resource).
    #[error("token audience is a list; an access token names exactly one resource")]
    AudienceList,
    /// `aud` is not this server's resource.
    #[error("token is for another resource")]
    WrongAudience,
    /// `iss` is not this server's issuer.
    #[error("token was issued by another issuer")]
    WrongIssuer,
    /// `exp` has passed.
    #[error("token expired at {exp} (now {now})")]
    Expired {
        /// `exp`, unix seconds.
        exp: i64,
        /// The time of the check.
        now: i64,
    },
    /// `iat` is in the future (beyond the JWT leeway).
    #[error("token issued in the future at {iat} (now {now})")]
    NotYetValid {
        /// `iat`.
        iat: i64,
        /// The time of the check.
        now: i64,
    },
    /// `sub` is not a Tessera task or client ID.
    #[error("token subject is not a Tessera task or client: {0}")]
    BadSubject(String),
    /// The task claim is missing (task subject), present (client subject), too large, or
    /// does not decode to valid task claims.
    #[error("task claim is invalid: {0}")]
    BadTaskClaim(String),
    /// The task claim or `client_id` names another task or client than `sub`.
    #[error("token subject does not match its task claim or client_id")]
    SubjectMismatch,
    /// The task is for another MCP server.
    #[error("token's task is for another server")]
    TaskForAnotherServer,
    /// `exp` is after the task's deadline.
    #[error("token outlives its task")]
    OutlivesTask,
    /// A scope does not parse, or is not within the task's signed scopes.
    #[error("token scope is invalid: {0}")]
    BadScope(String),
    /// `cnf` is not `{"x5t#S256": <32 bytes base64url>}`.
    #[error("token confirmation (cnf) is invalid")]
    BadConfirmation,
    /// The revocation feed says the task is revoked.
    #[error("token's task is revoked ({reason})")]
    Revoked {
        /// The feed's reason.
        reason: String,
    },
    /// The revocation feed is stale: whether the task is revoked is unknown.
    #[error("revocation feed is stale")]
    RevocationStale,
    /// No trust material yet: nothing can be verified.
    #[error("no trust material yet")]
    NoTrustMaterial,
}

impl AccessTokenError {
    /// A stable name for the rule that failed.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "at_too_large",
            Self::Malformed(_) => "at_malformed",
            Self::DisallowedAlgorithm { .. } => "at_algorithm",
            Self::BadType { .. } => "at_type",
            Self::MissingX5c => "at_x5c_missing",
            Self::BadX5c(_) => "at_x5c_invalid",
            Self::NotThisServer(_) => "at_signer_not_this_server",
            Self::UntrustedChain(_) => "at_chain",
            Self::BadSignature => "at_signature",
            Self::BadClaims(_) => "at_claims",
            Self::MissingExp => "at_exp_missing",
            Self::AudienceList => "at_audience_list",
            Self::WrongAudience => "at_audience",
            Self::WrongIssuer => "at_issuer",
            Self::Expired { .. } => "at_expired",
            Self::NotYetValid { .. } => "at_not_yet_valid",
            Self::BadSubject(_) => "at_subject",
            Self::BadTaskClaim(_) => "at_task_claim_invalid",
            Self::SubjectMismatch => "at_subject_mismatch",
            Self::TaskForAnotherServer => "at_task_server",
            Self::OutlivesTask => "at_outlives_task",
            Self::BadScope(_) => "at_scope",
            Self::BadConfirmation => "at_cnf",
            Self::Revoked { .. } => "at_revoked",
            Self::RevocationStale => "at_revocation_stale",
            Self::NoTrustMaterial => "at_no_trust_material",
        }
    }
}

/// Why an access token could not be minted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// No trust material yet: no key to sign with.
    #[error("no trust material yet")]
    NoTrustMaterial,
    /// The server's SVID key is not ECDSA P-256 (ES256 needs one).
    #[error("the server's SVID key cannot sign ES256")]
    UnsupportedKey,
    /// Signing failed.
    #[error("signing failed: {0}")]
    Signing(String),
    /// The task is for another server.
    #[error("the task is for another server")]
    TaskForAnotherServer,
    /// A scope is not within the task's signed scopes.
    #[error("scope {0} is not within the task's scopes")]
    ScopeNotGranted(String),
    /// Every bound (TTL, assertion, deadline, own SVID) leaves no lifetime.
    #[error("no lifetime left")]
    NoLifetime,
    /// The token would exceed [`MAX_ACCESS_TOKEN_LEN`].
    #[error("token would be {0} bytes, over the limit")]
    TooLarge(usize),
}

// === claims ===

/// The claims of an access token, as signed.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Claims {
    iss: String,
    sub: String,
    // A Value so that a list is told apart from a wrong string (a list is refused even
    // when it holds the resource).
    aud: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp: Option<i64>,
    iat: i64,
    jti: String,
    client_id: String,
    scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tessera_task: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cnf: Option<Confirmation>,
}

/// RFC 8705 §3.1 confirmation.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Confirmation {
    #[serde(rename = "x5t#S256")]
    x5t_s256: String,
}

/// The JOSE header, strictly.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    x5c: Option<Vec<String>>,
}

// === minting ===

/// Whom a token is for.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "built once per token request; boxing would only add an indirection"
)]
pub enum GrantSubject {
    /// A task: `sub` is its SPIFFE ID and the token carries its signed claims.
    Task(TaskClaims),
    /// A client acting as itself (only where the server accepts client identities).
    Client(ClientId),
}

/// What an access token grants: the token endpoint's decision, for the minter to sign.
#[derive(Clone, Debug)]
pub struct AccessTokenGrant {
    /// Whom it is for.
    pub subject: GrantSubject,
    /// Scopes granted to the token; for a task each must be within its signed scopes.
    pub scopes: Vec<Scope>,
    /// Upper bound for `exp` besides the TTL, the task deadline and the own SVID: the
    /// assertion's `exp`, unix seconds.
    pub not_after_unix: Option<i64>,
    /// Requested lifetime.
    pub ttl: Duration,
    /// Bind the token to this client certificate (RFC 8705).
    pub cnf: Option<CertThumbprint>,
}

/// A signed access token. `Debug` never prints the token: it is a bearer credential.
#[derive(Clone)]
pub struct MintedAccessToken {
    /// The compact JWS.
    pub token: String,
    /// `jti`.
    pub jti: String,
    /// `exp`, unix seconds.
    pub exp_unix: i64,
    /// `iat`, unix seconds.
    pub iat_unix: i64,
    /// The `scope` claim (space-separated).
    pub scope: String,
}

impl fmt::Debug for MintedAccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MintedAccessToken")
            .field("jti", &self.jti)
            .field("exp_unix", &self.exp_unix)
            .field("scope", &self.scope)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Signs access tokens with the server's current SVID key (from the trust seam, so a
/// rotated SVID signs the next token).
#[derive(Clone, Debug)]
pub struct AccessTokenMinter {
    trust: TrustSource,
    issuer: String,
    resource: String,
}

impl AccessTokenMinter {
    /// A minter for tokens of `issuer` for `resource` (the exact URL clients dial).
    pub fn new(trust: TrustSource, issuer: impl Into<String>, resource: impl Into<String>) -> Self {
        Self {
            trust,
            issuer: issuer.into(),
            resource: resource.into(),
        }
    }

    /// Signs a token for `grant` as of `now`.
    ///
    /// `exp` is the earliest of `now + grant.ttl`, `grant.not_after_unix`, the task's
    /// deadline and the own SVID's notAfter (a token never outlives the chain it
    /// carries).
    ///
    /// # Errors
    /// A [`MintError`]: no material, a key that cannot sign ES256, a task for another
    /// server or a scope beyond the task's, or no lifetime left.
    pub fn mint(
        &self,
        grant: &AccessTokenGrant,
        now: SystemTime,
    ) -> Result<MintedAccessToken, MintError> {
        let material = self.trust.current().ok_or(MintError::NoTrustMaterial)?;
        let now = unix(now);
        let mut exp = now.saturating_add(i64::try_from(grant.ttl.as_secs()).unwrap_or(i64::MAX));
        exp = exp.min(material.not_after_unix());
        if let Some(cap) = grant.not_after_unix {
            exp = exp.min(cap);
        }
        let (sub, client_id, tessera_task) = match &grant.subject {
            GrantSubject::Task(claims) => {
                if &claims.server != material.own_id() {
                    return Err(MintError::TaskForAnotherServer);
                }
                let granted = claims.scopes.as_slice();
                if let Some(s) = grant
                    .scopes
                    .iter()
                    .find(|s| !granted.iter().any(|g| g.covers(s)))
                {
                    return Err(MintError::ScopeNotGranted(s.to_string()));
                }
                exp = exp.min(claims.deadline_unix);
                (
                    claims.client_id.task(claims.task_id).to_string(),
                    claims.client_id.to_string(),
                    Some(URL_SAFE_NO_PAD.encode(claims.to_der())),
                )
            }
            GrantSubject::Client(client) => (client.to_string(), client.to_string(), None),
        };
        if exp <= now {
            return Err(MintError::NoLifetime);
        }
        let jti = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>());
        let scope = join_scopes(&grant.scopes);
        let claims = Claims {
            iss: self.issuer.clone(),
            sub,
            aud: serde_json::Value::String(self.resource.clone()),
            exp: Some(exp),
            iat: now,
            jti: jti.clone(),
            client_id,
            scope: scope.clone(),
            tessera_task,
            cnf: grant.cnf.map(|t| Confirmation {
                x5t_s256: t.to_base64url(),
            }),
        };
        let key = material.certified_key();
        let header = serde_json::json!({
            "alg": ACCESS_TOKEN_ALGORITHM,
            "typ": ACCESS_TOKEN_TYPE,
            "x5c": key.cert.iter().map(|c| STANDARD.encode(c.as_ref())).collect::<Vec<_>>(),
        });
        let signing_input = format!("{}.{}", b64_json(&header), b64_json(&claims));
        let signer = key
            .key
            .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
            .ok_or(MintError::UnsupportedKey)?;
        let der = signer
            .sign(signing_input.as_bytes())
            .map_err(|e| MintError::Signing(e.to_string()))?;
        // rustls (ring) signs ECDSA as ASN.1 DER; JWS ES256 is the fixed r||s form.
        let fixed = p256::ecdsa::Signature::from_der(&der)
            .map_err(|e| MintError::Signing(e.to_string()))?
            .to_bytes();
        let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(fixed));
        if token.len() > MAX_ACCESS_TOKEN_LEN {
            return Err(MintError::TooLarge(token.len()));
        }
        Ok(MintedAccessToken {
            token,
            jti,
            exp_unix: exp,
            iat_unix: now,
            scope,
        })
    }
}

fn b64_json(value: &impl Serialize) -> String {
    // Serializing these plain structs cannot fail.
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap_or_default())
}

/// Scopes as the `scope` parameter and claim carry them (RFC 6749 §3.3).
pub(crate) fn join_scopes(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

// === verifying ===

/// A verified access token: who it stands for and what it grants.
#[derive(Clone, Debug)]
pub struct VerifiedAccessToken {
    peer: Arc<Peer>,
    scopes: Vec<Scope>,
    task_scopes: Vec<Scope>,
    /// Some task scope is missing from the token's: only then can a call need a step-up.
    narrower_than_task: bool,
    cnf: Option<CertThumbprint>,
    jti: String,
    exp_unix: i64,
}

impl VerifiedAccessToken {
    /// The peer to authorize with: for a task, its signed claims with the scopes
    /// narrowed to the token's; for a client, the client. Insert it into the request
    /// extensions where the mTLS path puts its `Arc<Peer>`.
    pub fn peer(&self) -> &Arc<Peer> {
        &self.peer
    }

    /// The token's scopes (within the task's).
    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }

    /// Whether the token grants less than its task, decided once when it was verified.
    /// The token's scopes are a subset of the task's (checked then), so "less" is "some
    /// task scope is missing": only such a token can meet a call that needs a step-up.
    pub fn narrower_than_task(&self) -> bool {
        self.narrower_than_task
    }

    /// The task's signed scopes (what a client may step up to); empty for a client.
    pub fn task_scopes(&self) -> &[Scope] {
        &self.task_scopes
    }

    /// The client certificate the token is bound to (RFC 8705), if any.
    pub fn cnf(&self) -> Option<&CertThumbprint> {
        self.cnf.as_ref()
    }

    /// `jti`.
    pub fn jti(&self) -> &str {
        &self.jti
    }

    /// `exp`, unix seconds.
    pub fn exp_unix(&self) -> i64 {
        self.exp_unix
    }
}

/// Verifies access tokens for one resource, with a bounded cache of verified tokens.
/// Cheap to clone; clones share the cache.
#[derive(Clone, Debug)]
pub struct AccessTokenVerifier {
    trust: TrustSource,
    issuer: Arc<str>,
    resource: Arc<str>,
    revocations: Option<RevocationWatcher>,
    cache: Arc<Cache>,
}

impl AccessTokenVerifier {
    /// A verifier of tokens from `issuer` for `resource` (the exact URL clients dial),
    /// signed by this server (the own ID of the trust material), caching up to
    /// [`DEFAULT_CACHE_CAPACITY`] tokens.
    pub fn new(trust: TrustSource, issuer: impl Into<String>, resource: impl Into<String>) -> Self {
        Self {
            trust,
            issuer: issuer.into().into(),
            resource: resource.into().into(),
            revocations: None,
            cache: Arc::new(Cache::new(DEFAULT_CACHE_CAPACITY)),
        }
    }

    /// Keep at most `capacity` verified tokens (at least one).
    pub fn with_cache_capacity(mut self, capacity: usize) -> Self {
        self.cache = Arc::new(Cache::new(capacity.max(1)));
        self
    }

    /// Also refuse tokens of revoked tasks, and every task token while the feed is
    /// stale, on every call (cache hits included). Without it, revocation is the
    /// authorizer's check, as for mTLS peers.
    pub fn with_revocations(mut self, revocations: RevocationWatcher) -> Self {
        self.revocations = Some(revocations);
        self
    }

    /// The resource tokens must be for.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// How many verified tokens the cache holds now.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Verifies `token` at `now`: from the cache when this token was verified under the
    /// current trust material, else in full (header, chain, signature, claims).
    ///
    /// # Errors
    /// The first rule the token breaks, as an [`AccessTokenError`].
    pub fn verify(
        &self,
        token: &str,
        now: SystemTime,
    ) -> Result<Arc<VerifiedAccessToken>, AccessTokenError> {
        if token.len() > MAX_ACCESS_TOKEN_LEN {
            return Err(AccessTokenError::TooLarge {
                len: token.len(),
                max: MAX_ACCESS_TOKEN_LEN,
            });
        }
        let material = self
            .trust
            .current()
            .ok_or(AccessTokenError::NoTrustMaterial)?;
        let now = unix(now);
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // What a cached verification depends on: the own trust domain's anchors (the
        // chain check). The own SVID and the JWT bundles may change under it.
        let roots = material
            .roots(material.own_id().trust_domain())
            .cloned()
            .ok_or_else(|| AccessTokenError::UntrustedChain("no bundle".into()))?;
        let verified = match self.cache.get(&key, &roots) {
            Some(hit) => hit,
            None => {
                let verified = Arc::new(verify_uncached(
                    token,
                    &material,
                    &self.issuer,
                    &self.resource,
                    now,
                )?);
                self.cache.insert(key, &verified, roots, now);
                verified
            }
        };
        self.live_checks(&verified, now)?;
        Ok(verified)
    }

    /// What can change while a token sits in the cache: the clock and the feed.
    fn live_checks(&self, token: &VerifiedAccessToken, now: i64) -> Result<(), AccessTokenError> {
        if token.exp_unix <= now {
            return Err(AccessTokenError::Expired {
                exp: token.exp_unix,
                now,
            });
        }
        if let (Some(feed), Peer::Task { task, .. }) = (&self.revocations, token.peer.as_ref()) {
            match feed.task_status(&task.task) {
                RevocationStatus::NotRevoked => {}
                RevocationStatus::Revoked { reason } => {
                    return Err(AccessTokenError::Revoked { reason });
                }
                RevocationStatus::Stale => return Err(AccessTokenError::RevocationStale),
            }
        }
        Ok(())
    }
}

fn truncated(s: &str) -> String {
    s.chars().take(32).collect()
}

/// The full check, in order: header; `x5c` leaf is this server and chains to the bundle;
/// signature under the leaf's key; then the claims (decoded only once the signature
/// verified).
fn verify_uncached(
    token: &str,
    material: &TrustMaterial,
    issuer: &str,
    resource: &str,
    now: i64,
) -> Result<VerifiedAccessToken, AccessTokenError> {
    let header = parse_header(token)?;
    if header.alg != ACCESS_TOKEN_ALGORITHM {
        return Err(AccessTokenError::DisallowedAlgorithm {
            alg: truncated(&header.alg),
        });
    }
    if header.typ.as_deref() != Some(ACCESS_TOKEN_TYPE) {
        return Err(AccessTokenError::BadType {
            typ: truncated(header.typ.as_deref().unwrap_or_default()),
        });
    }
    let x5c = header.x5c.unwrap_or_default();
    if x5c.is_empty() {
        return Err(AccessTokenError::MissingX5c);
    }
    if x5c.len() > MAX_X5C_CERTS {
        return Err(AccessTokenError::BadX5c("too many certificates"));
    }
    let chain: Vec<CertificateDer<'static>> = x5c
        .iter()
        .map(|c| STANDARD.decode(c).map(CertificateDer::from))
        .collect::<Result<_, _>>()
        .map_err(|_| AccessTokenError::BadX5c("an entry is not base64"))?;
    let point = check_signer(&chain, material, now)?;

    let (x, y) = point[1..].split_at(32);
    let key =
        DecodingKey::from_ec_components(&URL_SAFE_NO_PAD.encode(x), &URL_SAFE_NO_PAD.encode(y))
            .map_err(|_| AccessTokenError::NotThisServer("leaf key is not P-256".into()))?;
    let mut validation = Validation::new(Algorithm::ES256);
    // Time and audience follow this module's rules and errors below; the library checks
    // the signature (ES256 only) and decodes the claims.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    validation.leeway = 0;
    let claims = match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
        Ok(data) => data.claims,
        Err(e) => {
            return Err(match e.kind() {
                jsonwebtoken::errors::ErrorKind::Json(err) => {
                    AccessTokenError::BadClaims(err.to_string())
                }
                jsonwebtoken::errors::ErrorKind::Base64(_)
                | jsonwebtoken::errors::ErrorKind::Utf8(_)
                | jsonwebtoken::errors::ErrorKind::InvalidToken => {
                    AccessTokenError::Malformed("a segment does not decode")
                }
                _ => AccessTokenError::BadSignature,
            });
        }
    };
    check_claims(claims, material, issuer, resource, now)
}

/// The header, strictly: only `alg`, `typ` and `x5c`, each at most once.
fn parse_header(token: &str) -> Result<Header, AccessTokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AccessTokenError::Malformed("not three segments"));
    };
    let json = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AccessTokenError::Malformed("header is not base64url"))?;
    serde_json::from_slice(&json).map_err(|_| {
        AccessTokenError::Malformed("header is not a JSON object of alg, typ and x5c only")
    })
}

/// The `x5c` leaf is this server's SVID and the chain verifies against the own trust
/// domain's bundle at `now`; returns the leaf's public key (uncompressed P-256 point).
fn check_signer(
    chain: &[CertificateDer<'static>],
    material: &TrustMaterial,
    now: i64,
) -> Result<[u8; 65], AccessTokenError> {
    let leaf_der = &chain[0];
    let leaf = check_leaf_svid(leaf_der.as_ref())
        .map_err(|e| AccessTokenError::NotThisServer(e.to_string()))?;
    if leaf.spiffe_id != material.own_id().to_string() {
        return Err(AccessTokenError::NotThisServer(format!(
            "signed by {}",
            truncated(&leaf.spiffe_id)
        )));
    }
    let td = material.own_id().trust_domain();
    let (roots, limits) = material
        .anchor_limits(td)
        .ok_or_else(|| AccessTokenError::UntrustedChain("no bundle".into()))?;
    let parsed = ParsedCertificate::try_from(leaf_der)
        .map_err(|e| AccessTokenError::UntrustedChain(e.to_string()))?;
    let provider = provider();
    let at = UnixTime::since_unix_epoch(Duration::from_secs(now.max(0) as u64));
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        roots,
        &chain[1..],
        at,
        provider.signature_verification_algorithms.all,
    )
    .map_err(|e| AccessTokenError::UntrustedChain(e.to_string()))?;
    limits
        .check(
            roots,
            leaf_der,
            &chain[1..],
            at,
            webpki::KeyUsage::server_auth(),
            &provider,
        )
        .map_err(|e| AccessTokenError::UntrustedChain(e.to_string()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf_der.as_ref())
        .map_err(|_| AccessTokenError::BadX5c("leaf does not parse"))?;
    let spki = cert.public_key();
    let is_p256 = spki.algorithm.algorithm == x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        && spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            == Some(x509_parser::oid_registry::OID_EC_P256);
    let point: [u8; 65] = spki
        .subject_public_key
        .data
        .as_ref()
        .try_into()
        .ok()
        .filter(|p: &[u8; 65]| is_p256 && p[0] == 4)
        .ok_or_else(|| AccessTokenError::NotThisServer("leaf key is not P-256".into()))?;
    Ok(point)
}

fn check_claims(
    claims: Claims,
    material: &TrustMaterial,
    issuer: &str,
    resource: &str,
    now: i64,
) -> Result<VerifiedAccessToken, AccessTokenError> {
    match &claims.aud {
        serde_json::Value::String(aud) if aud == resource => {}
        serde_json::Value::Array(_) => return Err(AccessTokenError::AudienceList),
        _ => return Err(AccessTokenError::WrongAudience),
    }
    if claims.iss != issuer {
        return Err(AccessTokenError::WrongIssuer);
    }
    let exp = claims.exp.ok_or(AccessTokenError::MissingExp)?;
    if exp <= now {
        return Err(AccessTokenError::Expired { exp, now });
    }
    if claims.iat > now.saturating_add(JWT_LEEWAY_SECS) {
        return Err(AccessTokenError::NotYetValid {
            iat: claims.iat,
            now,
        });
    }
    if claims.jti.is_empty() || claims.jti.len() > MAX_JTI_LEN {
        return Err(AccessTokenError::BadClaims(
            "jti is empty or too long".into(),
        ));
    }
    if claims.scope.len() > MAX_SCOPE_CLAIM_LEN {
        return Err(AccessTokenError::BadScope("too long".into()));
    }
    let scopes = parse_scopes(&claims.scope).map_err(AccessTokenError::BadScope)?;
    let cnf = match &claims.cnf {
        Some(c) => Some(
            CertThumbprint::from_base64url(&c.x5t_s256).ok_or(AccessTokenError::BadConfirmation)?,
        ),
        None => None,
    };
    let subject: TesseraId = claims
        .sub
        .parse()
        .map_err(|e: tessera_identity::IdError| AccessTokenError::BadSubject(e.to_string()))?;
    let (peer_subject, task_scopes) = match subject {
        TesseraId::Task(task_id) => {
            let encoded = claims
                .tessera_task
                .as_deref()
                .ok_or_else(|| AccessTokenError::BadTaskClaim("missing".into()))?;
            if encoded.len() > MAX_TASK_CLAIM_B64_LEN {
                return Err(AccessTokenError::BadTaskClaim("too large".into()));
            }
            let der = URL_SAFE_NO_PAD
                .decode(encoded)
                .map_err(|_| AccessTokenError::BadTaskClaim("not base64url".into()))?;
            let mut task = TaskClaims::from_der(&der)
                .map_err(|e| AccessTokenError::BadTaskClaim(e.to_string()))?;
            if task.task_id != task_id.task
                || task.client_id != task_id.client
                || claims.client_id != task.client_id.to_string()
            {
                return Err(AccessTokenError::SubjectMismatch);
            }
            if &task.server != material.own_id() {
                return Err(AccessTokenError::TaskForAnotherServer);
            }
            if exp > task.deadline_unix {
                return Err(AccessTokenError::OutlivesTask);
            }
            let granted = std::mem::take(&mut task.scopes);
            if let Some(s) = scopes.iter().find(|s| !granted.iter().any(|g| g.covers(s))) {
                return Err(AccessTokenError::BadScope(format!(
                    "{s} is not within the task's scopes"
                )));
            }
            task.scopes = scopes.clone();
            (AccessTokenSubject::Task(task), granted)
        }
        TesseraId::Client(client) => {
            if claims.tessera_task.is_some() {
                return Err(AccessTokenError::BadTaskClaim(
                    "a client token carries no task".into(),
                ));
            }
            if claims.client_id != client.to_string() {
                return Err(AccessTokenError::SubjectMismatch);
            }
            (AccessTokenSubject::Client(client), Vec::new())
        }
        TesseraId::Server(_) => {
            return Err(AccessTokenError::BadSubject(
                "a server is not a token subject".into(),
            ));
        }
    };
    let narrower_than_task = task_scopes.iter().any(|t| !scopes.contains(t));
    Ok(VerifiedAccessToken {
        narrower_than_task,
        peer: Arc::new(Peer::from_access_token(
            peer_subject,
            &claims.jti,
            exp,
            cnf.is_some(),
        )),
        scopes,
        task_scopes,
        cnf,
        jti: claims.jti,
        exp_unix: exp,
    })
}

/// Parses a space-separated scope list (RFC 6749 §3.3): single spaces, no empty
/// entries, at most [`MAX_SCOPES`].
pub(crate) fn parse_scopes(text: &str) -> Result<Vec<Scope>, String> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let mut scopes = Vec::new();
    for part in text.split(' ') {
        if scopes.len() == MAX_SCOPES {
            return Err(format!("more than {MAX_SCOPES} scopes"));
        }
        let scope: Scope = part
            .parse()
            .map_err(|e| format!("{:?}: {e}", truncated(part)))?;
        scopes.push(scope);
    }
    Ok(scopes)
}

// === the cache ===

struct CacheEntry {
    token: Arc<VerifiedAccessToken>,
    /// The trust anchors the token's chain was verified against; a hit needs the
    /// current ones (the same `Arc`: material republished with new JWT bundles shares
    /// it, every X.509 update builds new anchors).
    roots: Arc<RootCertStore>,
}

/// Verified tokens by SHA-256 of their text.
struct Cache {
    capacity: usize,
    map: RwLock<HashMap<[u8; 32], CacheEntry>>,
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}

impl Cache {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            map: RwLock::new(HashMap::new()),
        }
    }

    fn len(&self) -> usize {
        self.map.read().map(|m| m.len()).unwrap_or(0)
    }

    fn get(&self, key: &[u8; 32], roots: &Arc<RootCertStore>) -> Option<Arc<VerifiedAccessToken>> {
        let map = self.map.read().ok()?;
        let entry = map.get(key)?;
        Arc::ptr_eq(&entry.roots, roots).then(|| entry.token.clone())
    }

    fn insert(
        &self,
        key: [u8; 32],
        token: &Arc<VerifiedAccessToken>,
        roots: Arc<RootCertStore>,
        now: i64,
    ) {
        let Ok(mut map) = self.map.write() else {
            return;
        };
        if map.len() >= self.capacity && !map.contains_key(&key) {
            // Expired tokens and those verified under older anchors go first; if the
            // cache is still full of live tokens, an arbitrary one makes room (it is
            // verified again in full when it comes back).
            map.retain(|_, e| e.token.exp_unix > now && Arc::ptr_eq(&e.roots, &roots));
            if map.len() >= self.capacity
                && let Some(victim) = map.keys().next().copied()
            {
                map.remove(&victim);
            }
        }
        map.insert(
            key,
            CacheEntry {
                token: token.clone(),
                roots,
            },
        );
    }
}

#[cfg(test)]
mod tests;

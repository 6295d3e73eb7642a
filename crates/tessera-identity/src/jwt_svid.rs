//! JWT-SVIDs: the claims Tessera signs, the JWKS bundle that carries its public keys,
//! and the one validation every consumer shares (the agent's `ValidateJWTSVID`, and the
//! token endpoint and resource server built on it).
//!
//! The profile (SPIFFE `standards/JWT-SVID.md`, narrowed to what Tessera issues):
//! - JOSE header: `alg` exactly `ES256`, `kid` naming a key of the subject's trust
//!   domain, `typ` absent, `JWT` or `JOSE`; no other header member (`jwk`, `jku`,
//!   `x5u`, `crit`, ... would ask a verifier to trust something the token brings).
//! - claims: `sub` a Tessera SPIFFE ID (client, task or server), `aud` a string or a
//!   non-empty array of strings, `exp` an integer; optional `iat`, `nbf`, `jti`, `iss`
//!   and, for a task, [`TASK_CLAIM`]: the base64url DER of the same
//!   [`TaskClaims`] the task's X.509-SVID carries (one encoding, one strict decoder,
//!   one size bound for both credentials). No other claim is accepted.
//!
//! The JOSE work (signature, base64url, header and claims decoding) is `jsonwebtoken`'s,
//! with the algorithm pinned by this module, never read from the token alone. Time is
//! the caller's (`now_unix`): the crate stays pure.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::claims::{ClaimsError, MAX_CLAIMS_DER_LEN, TaskClaims};
use crate::error::IdError;
use crate::id::TesseraId;
use crate::trust_domain::TrustDomain;

/// The only signature algorithm a JWT-SVID may use here.
pub const JWT_SVID_ALGORITHM: &str = "ES256";

/// Name of the private claim holding a task's claims (base64url, no padding, of the
/// DER `TaskClaims`, exactly the task X.509-SVID's extension value).
pub const TASK_CLAIM: &str = "tessera_task";

/// Longest token accepted, in bytes: a task token with the largest claims
/// ([`MAX_CLAIMS_DER_LEN`] of DER, base64url inside base64url) and the largest audience
/// list fits; anything longer is refused before any decoding. Under the agent's 64 KiB
/// request bound.
pub const MAX_JWT_SVID_LEN: usize = 48 * 1024;

/// Longest encoded JOSE header accepted, in bytes: ours is about 100.
const MAX_HEADER_B64_LEN: usize = 512;

/// Most audiences one token (or one FetchJWTSVID request) may name.
pub const MAX_AUDIENCES: usize = 16;

/// Longest single audience, in bytes.
pub const MAX_AUDIENCE_LEN: usize = 512;

/// Longest `kid`, in bytes (ours are 32 hex digits).
pub const MAX_KID_LEN: usize = 64;

/// Longest `jti` or `iss`, in bytes.
const MAX_TEXT_CLAIM_LEN: usize = 256;

/// Most keys one JWKS may hold. A standalone agent publishes an active, a prepared and a
/// few retiring keys; in cluster mode a trust domain's JWKS is the union of every node's
/// (at most [`MAX_NODE_JWT_KEYS`] each), so this bounds a cluster at 512 nodes publishing
/// their full allowance (about 1,300 at the usual two or three keys).
pub const MAX_JWKS_KEYS: usize = 4096;

/// Largest JWKS document accepted, in bytes: [`MAX_JWKS_KEYS`] keys of about 200 bytes.
pub const MAX_JWKS_LEN: usize = 1024 * 1024;

/// Most JWT signing keys one node may publish at a time (an active, a prepared and
/// retiring ones).
pub const MAX_NODE_JWT_KEYS: usize = 8;

/// The `kid` prefix that marks a JWT signing key as a node's (cluster mode).
///
/// A node's key lives on that node, so, as for node CAs, what its theft buys must be
/// bounded to the identities the node issues anyway: clients and tasks.
/// [`validate_jwt_svid`] refuses a token signed by a key whose id starts with this
/// prefix unless its subject is a client or a task (reason `jwt_node_key_may_not_sign`).
/// The mark travels in the `kid`, which every JWKS consumer (the `spiffe` crate,
/// go-spiffe, py-spiffe) treats as an opaque string, so the JWKS stays standard; an
/// extra JWK member would not (some consumers refuse unknown members). Keys of the trust
/// domain itself (a standalone agent's) are 32 hex digits and never carry it; the server
/// refuses a node's key without it, and an agent marks every key it takes from the server.
pub const NODE_KEY_ID_PREFIX: &str = "node-";

/// Whether `kid` names a node's JWT signing key ([`NODE_KEY_ID_PREFIX`]).
pub fn is_node_key_id(kid: &str) -> bool {
    kid.starts_with(NODE_KEY_ID_PREFIX)
}

/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds. Small on purpose: a
/// JWT-SVID is a bearer token, and every second of leeway is a second a stolen or
/// revoked-elsewhere token keeps working. Agents and verifiers on one node share a clock;
/// across nodes NTP keeps skew well under this.
pub const JWT_LEEWAY_SECS: i64 = 5;

/// Longest the base64url task claim can be: [`MAX_CLAIMS_DER_LEN`] of DER, encoded.
const MAX_TASK_CLAIM_B64_LEN: usize = MAX_CLAIMS_DER_LEN.div_ceil(3) * 4;

// === errors ===

/// Why a JWT-SVID was refused. Each variant is one rule; [`JwtSvidError::reason`] gives
/// a stable, machine-readable name for audit records and denial reasons.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtSvidError {
    /// The token is longer than [`MAX_JWT_SVID_LEN`].
    #[error("token is {len} bytes, longer than the maximum of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The token is not three base64url segments with a JSON header.
    #[error("token is not a compact JWS: {0}")]
    Malformed(&'static str),
    /// The header names an algorithm other than ES256 (`none`, `HS256`, `RS256`, ...).
    #[error("token algorithm {alg:?} is not allowed; only ES256")]
    DisallowedAlgorithm {
        /// What the header said (truncated).
        alg: String,
    },
    /// The header's `typ` is neither `JWT` nor `JOSE`.
    #[error("token type {typ:?} is not JWT or JOSE")]
    BadType {
        /// What the header said (truncated).
        typ: String,
    },
    /// The header has no `kid`, or an empty or overlong one.
    #[error("token header has no usable key id")]
    MissingKeyId,
    /// No trusted bundle holds a key with the token's `kid`.
    #[error("no trusted key has id {kid:?}")]
    UnknownKeyId {
        /// The key id (truncated).
        kid: String,
    },
    /// The signature does not verify under the key its `kid` names.
    #[error("token signature does not verify")]
    BadSignature,
    /// The claims are not the JWT-SVID claims set (unknown or duplicate claim, wrong
    /// type, `aud` holding a non-string, `exp` missing, ...).
    #[error("token claims are invalid: {0}")]
    BadClaims(String),
    /// `sub` is not a Tessera SPIFFE ID.
    #[error("token subject is not a Tessera SPIFFE ID: {0}")]
    BadSubject(#[source] IdError),
    /// `sub` belongs to another trust domain than the key that signed the token.
    #[error("token subject is in trust domain {subject}, signed by a key of {key}")]
    SubjectDomainMismatch {
        /// The subject's trust domain.
        subject: TrustDomain,
        /// The signing key's trust domain.
        key: TrustDomain,
    },
    /// `aud` is empty, too long, or holds too many values.
    #[error("token audience is unusable: {0}")]
    BadAudience(&'static str),
    /// `aud` does not contain the expected audience.
    #[error("token audience does not include the expected one")]
    AudienceMismatch,
    /// `exp` has passed (beyond [`JWT_LEEWAY_SECS`]).
    #[error("token expired at {exp} (now {now})")]
    Expired {
        /// `exp`, unix seconds.
        exp: i64,
        /// The time of the check.
        now: i64,
    },
    /// `nbf` or `iat` is in the future (beyond [`JWT_LEEWAY_SECS`]).
    #[error("token is not valid before {not_before} (now {now})")]
    NotYetValid {
        /// `nbf` or `iat`, unix seconds.
        not_before: i64,
        /// The time of the check.
        now: i64,
    },
    /// The task claim is longer than [`MAX_CLAIMS_DER_LEN`] allows (refused before
    /// decoding it).
    #[error("task claim is {len} bytes, longer than the maximum of {max}")]
    TaskClaimTooLarge {
        /// Its encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The task claim does not decode to valid task claims.
    #[error("task claim is invalid: {0}")]
    BadTaskClaim(String),
    /// A task subject without task claims: a verifier could not check scope or consent.
    #[error("task token carries no task claims")]
    MissingTaskClaims,
    /// Task claims on a subject that is not a task.
    #[error("token subject is not a task but carries task claims")]
    UnexpectedTaskClaims,
    /// The task claims name another task or client than `sub`.
    #[error("task claims do not match the token subject")]
    TaskClaimsMismatch,
    /// The token expires after its task's deadline.
    #[error("token expires at {exp}, after its task's deadline {deadline}")]
    OutlivesTask {
        /// `exp`.
        exp: i64,
        /// The task's deadline.
        deadline: i64,
    },
    /// A node's key ([`NODE_KEY_ID_PREFIX`]) signed a token for an identity nodes do not
    /// issue (an MCP server): only the trust domain's own keys may.
    #[error("a node's JWT key may sign client and task tokens only, not {subject}")]
    NodeKeyMayNotSign {
        /// The subject it signed.
        subject: String,
    },
}

impl JwtSvidError {
    /// A stable name for the rule that failed.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "jwt_too_large",
            Self::Malformed(_) => "jwt_malformed",
            Self::DisallowedAlgorithm { .. } => "jwt_algorithm",
            Self::BadType { .. } => "jwt_type",
            Self::MissingKeyId => "jwt_missing_kid",
            Self::UnknownKeyId { .. } => "jwt_unknown_kid",
            Self::BadSignature => "jwt_signature",
            Self::BadClaims(_) => "jwt_claims",
            Self::BadSubject(_) => "jwt_subject",
            Self::SubjectDomainMismatch { .. } => "jwt_subject_trust_domain",
            Self::BadAudience(_) => "jwt_audience_invalid",
            Self::AudienceMismatch => "jwt_audience",
            Self::Expired { .. } => "jwt_expired",
            Self::NotYetValid { .. } => "jwt_not_yet_valid",
            Self::TaskClaimTooLarge { .. } => "jwt_task_claim_too_large",
            Self::BadTaskClaim(_) => "jwt_task_claim_invalid",
            Self::MissingTaskClaims => "jwt_task_claim_missing",
            Self::UnexpectedTaskClaims => "jwt_task_claim_unexpected",
            Self::TaskClaimsMismatch => "jwt_task_claim_mismatch",
            Self::OutlivesTask { .. } => "jwt_outlives_task",
            Self::NodeKeyMayNotSign { .. } => "jwt_node_key_may_not_sign",
        }
    }
}

/// Why a JWKS document or key was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// The document is larger than [`MAX_JWKS_LEN`].
    #[error("JWKS is {len} bytes, larger than the maximum of {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The document is not a JWKS (JSON object with a `keys` array).
    #[error("JWKS is not valid: {0}")]
    Malformed(String),
    /// More than [`MAX_JWKS_KEYS`] keys.
    #[error("JWKS holds more than {max} keys")]
    TooManyKeys {
        /// The limit.
        max: usize,
    },
    /// A JWT-SVID key is not an EC P-256 public key with a usable `kid`.
    #[error("JWKS key {index} is not usable: {reason}")]
    BadKey {
        /// Position in `keys`.
        index: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two JWT-SVID keys share a `kid`: which one signed a token would be ambiguous.
    #[error("JWKS holds two keys with id {kid:?}")]
    DuplicateKeyId {
        /// The id.
        kid: String,
    },
}

// === keys and bundles ===

/// A JWT-SVID public key: an ECDSA P-256 point with its `kid`.
#[derive(Clone)]
pub struct JwtKey {
    kid: String,
    x: [u8; 32],
    y: [u8; 32],
    decoding: DecodingKey,
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKey").field("kid", &self.kid).finish()
    }
}

impl PartialEq for JwtKey {
    fn eq(&self, other: &Self) -> bool {
        self.kid == other.kid && self.x == other.x && self.y == other.y
    }
}

impl Eq for JwtKey {}

impl JwtKey {
    /// A key from its id and its uncompressed SEC1 point (`04 || x || y`, 65 bytes).
    ///
    /// # Errors
    /// [`JwksError::BadKey`] if the id or the point is unusable.
    pub fn from_sec1(kid: &str, point: &[u8]) -> Result<JwtKey, JwksError> {
        let bad = |reason| JwksError::BadKey { index: 0, reason };
        let (x, y) = match point {
            [4, rest @ ..] if rest.len() == 64 => rest.split_at(32),
            _ => return Err(bad("not an uncompressed P-256 point")),
        };
        JwtKey::from_coordinates(kid, x, y).map_err(bad)
    }

    /// A key from its id and its affine coordinates (32 bytes each, big-endian), as a JWK
    /// or the Node API carries them.
    ///
    /// # Errors
    /// [`JwksError::BadKey`] if the id or the point is unusable (not on P-256 included).
    pub fn from_xy(kid: &str, x: &[u8], y: &[u8]) -> Result<JwtKey, JwksError> {
        JwtKey::from_coordinates(kid, x, y).map_err(|reason| JwksError::BadKey { index: 0, reason })
    }

    fn from_coordinates(kid: &str, x: &[u8], y: &[u8]) -> Result<JwtKey, &'static str> {
        if kid.is_empty() || kid.len() > MAX_KID_LEN {
            return Err("kid is empty or too long");
        }
        let x: [u8; 32] = x.try_into().map_err(|_| "x is not 32 bytes")?;
        let y: [u8; 32] = y.try_into().map_err(|_| "y is not 32 bytes")?;
        // A point off the curve (an invalid-curve attack's tool) is refused here, whatever
        // the JOSE library would make of it later.
        let sec1 = [&[4u8][..], &x, &y].concat();
        p256::PublicKey::from_sec1_bytes(&sec1).map_err(|_| "not a point on P-256")?;
        let decoding =
            DecodingKey::from_ec_components(&URL_SAFE_NO_PAD.encode(x), &URL_SAFE_NO_PAD.encode(y))
                .map_err(|_| "not a P-256 public key")?;
        Ok(JwtKey {
            kid: kid.to_owned(),
            x,
            y,
            decoding,
        })
    }

    /// The key id (`kid`).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The point's x coordinate (big-endian).
    pub fn x(&self) -> &[u8; 32] {
        &self.x
    }

    /// The point's y coordinate (big-endian).
    pub fn y(&self) -> &[u8; 32] {
        &self.y
    }

    /// The uncompressed SEC1 point (`04 || x || y`).
    pub fn to_sec1(&self) -> Vec<u8> {
        [&[4u8][..], &self.x, &self.y].concat()
    }

    /// The key as a JWK of a SPIFFE bundle (`use: jwt-svid`).
    pub fn to_jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(self.x),
            "y": URL_SAFE_NO_PAD.encode(self.y),
            "kid": self.kid,
            "use": "jwt-svid",
        })
    }
}

/// The JWT-SVID keys of one trust domain: what verifiers trust for it right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtBundle {
    trust_domain: TrustDomain,
    keys: Vec<JwtKey>,
    refresh_hint_secs: Option<u64>,
}

impl JwtBundle {
    /// A bundle of `keys` (ids must be distinct).
    ///
    /// # Errors
    /// [`JwksError::DuplicateKeyId`] or [`JwksError::TooManyKeys`].
    pub fn new(
        trust_domain: TrustDomain,
        keys: Vec<JwtKey>,
        refresh_hint_secs: Option<u64>,
    ) -> Result<JwtBundle, JwksError> {
        if keys.len() > MAX_JWKS_KEYS {
            return Err(JwksError::TooManyKeys { max: MAX_JWKS_KEYS });
        }
        // A cluster's JWKS holds thousands of keys: a set, not a quadratic scan.
        let mut seen = std::collections::HashSet::with_capacity(keys.len());
        for k in &keys {
            if !seen.insert(k.kid.as_str()) {
                return Err(JwksError::DuplicateKeyId { kid: k.kid.clone() });
            }
        }
        Ok(JwtBundle {
            trust_domain,
            keys,
            refresh_hint_secs,
        })
    }

    /// Parses a JWKS as the Workload API's `FetchJWTBundles` or a SPIFFE bundle endpoint
    /// serves it. Keys whose `use` is not `jwt-svid` (X.509 roots of a SPIFFE bundle)
    /// are skipped; every `jwt-svid` key must be EC P-256 with a distinct `kid`, and an
    /// `alg`, if given, must be ES256.
    ///
    /// # Errors
    /// The first rule the document breaks, as a [`JwksError`].
    pub fn from_jwks(trust_domain: TrustDomain, json: &[u8]) -> Result<JwtBundle, JwksError> {
        if json.len() > MAX_JWKS_LEN {
            return Err(JwksError::TooLarge {
                len: json.len(),
                max: MAX_JWKS_LEN,
            });
        }
        #[derive(Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Map<String, serde_json::Value>>,
            #[serde(default)]
            spiffe_refresh_hint: Option<u64>,
        }
        let doc: Doc =
            serde_json::from_slice(json).map_err(|e| JwksError::Malformed(e.to_string()))?;
        if doc.keys.len() > MAX_JWKS_KEYS {
            return Err(JwksError::TooManyKeys { max: MAX_JWKS_KEYS });
        }
        let mut keys = Vec::new();
        for (index, jwk) in doc.keys.iter().enumerate() {
            let field = |name: &str| jwk.get(name).and_then(serde_json::Value::as_str);
            if field("use") != Some("jwt-svid") {
                continue;
            }
            let bad = |reason| JwksError::BadKey { index, reason };
            if field("kty") != Some("EC") || field("crv") != Some("P-256") {
                return Err(bad("not an EC P-256 key"));
            }
            if jwk.get("alg").is_some() && field("alg") != Some(JWT_SVID_ALGORITHM) {
                return Err(bad("alg is not ES256"));
            }
            if jwk.contains_key("d") {
                // A private key in a trust bundle is a leak, not a trust anchor.
                return Err(bad("holds a private key"));
            }
            let coord = |name| {
                field(name)
                    .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
                    .ok_or(bad("x or y is not base64url"))
            };
            let key = JwtKey::from_coordinates(
                field("kid").ok_or(bad("no kid"))?,
                &coord("x")?,
                &coord("y")?,
            )
            .map_err(bad)?;
            keys.push(key);
        }
        JwtBundle::new(trust_domain, keys, doc.spiffe_refresh_hint)
    }

    /// The bundle as a JWKS document (`keys`, each `use: jwt-svid`; `spiffe_refresh_hint`
    /// when set).
    pub fn to_jwks(&self) -> Vec<u8> {
        let keys: Vec<serde_json::Value> = self.keys.iter().map(JwtKey::to_jwk).collect();
        let mut doc = serde_json::json!({ "keys": keys });
        if let Some(hint) = self.refresh_hint_secs {
            doc["spiffe_refresh_hint"] = hint.into();
        }
        serde_json::to_vec(&doc).expect("a JSON value serializes")
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The keys.
    pub fn keys(&self) -> &[JwtKey] {
        &self.keys
    }

    /// How often verifiers are asked to refresh (`spiffe_refresh_hint`), seconds.
    pub fn refresh_hint_secs(&self) -> Option<u64> {
        self.refresh_hint_secs
    }

    /// The key with id `kid`.
    pub fn key(&self, kid: &str) -> Option<&JwtKey> {
        self.keys.iter().find(|k| k.kid == kid)
    }
}

// === claims ===

/// `aud`: one string or a non-empty array of strings, as RFC 7519 allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Audience(Vec<String>);

impl Audience {
    /// The audiences.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

impl Serialize for Audience {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => s.serialize_str(one),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Audience;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Audience, E> {
                Ok(Audience(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Audience, A::Error> {
                let mut out = Vec::new();
                // Stop reading at one past the bound: a huge array costs nothing more.
                while let Some(v) = seq.next_element::<String>()? {
                    if out.len() == MAX_AUDIENCES {
                        return Err(de::Error::custom("too many audiences"));
                    }
                    out.push(v);
                }
                Ok(Audience(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// The claims of a JWT-SVID as they travel: what the authority signs and what
/// validation decodes (strictly: an unknown or repeated claim is refused).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSvidClaims {
    /// The SPIFFE ID.
    pub sub: String,
    /// Who the token is for.
    pub aud: Audience,
    /// Expiry, unix seconds.
    pub exp: i64,
    /// Issued at, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Not before, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Unique token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// A task's claims, base64url of their DER ([`TASK_CLAIM`]).
    #[serde(
        default,
        rename = "tessera_task",
        skip_serializing_if = "Option::is_none"
    )]
    pub task: Option<String>,
}

impl JwtSvidClaims {
    /// Claims for `sub` and `audience`, valid from `iat` until `exp`, carrying `task`'s
    /// claims when given.
    pub fn new(
        sub: String,
        audience: Vec<String>,
        iat: i64,
        exp: i64,
        jti: String,
        task: Option<&TaskClaims>,
    ) -> JwtSvidClaims {
        JwtSvidClaims {
            sub,
            aud: Audience(audience),
            exp,
            iat: Some(iat),
            nbf: None,
            jti: Some(jti),
            iss: None,
            task: task.map(|c| URL_SAFE_NO_PAD.encode(c.to_der())),
        }
    }

    /// The claims as a JSON object (the Workload API's `ValidateJWTSVIDResponse.claims`).
    pub fn to_json_map(&self) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => unreachable!("a struct serializes to a JSON object"),
        }
    }
}

/// Checks a list of audiences as a token or a FetchJWTSVID request may carry it:
/// 1..=[`MAX_AUDIENCES`] values, each 1..=[`MAX_AUDIENCE_LEN`] bytes.
///
/// # Errors
/// [`JwtSvidError::BadAudience`] saying which bound was broken.
pub fn check_audiences(audiences: &[String]) -> Result<(), JwtSvidError> {
    if audiences.is_empty() {
        return Err(JwtSvidError::BadAudience("no audience"));
    }
    if audiences.len() > MAX_AUDIENCES {
        return Err(JwtSvidError::BadAudience("too many audiences"));
    }
    if audiences
        .iter()
        .any(|a| a.is_empty() || a.len() > MAX_AUDIENCE_LEN)
    {
        return Err(JwtSvidError::BadAudience(
            "an audience is empty or too long",
        ));
    }
    Ok(())
}

// === validation ===

/// A JWT-SVID that passed [`validate_jwt_svid`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidJwtSvid {
    /// The subject.
    pub subject: TesseraId,
    /// The id of the key that signed it.
    pub kid: String,
    /// The task's claims, for a task token.
    pub task: Option<TaskClaims>,
    /// Every claim, as signed.
    pub claims: JwtSvidClaims,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
}

fn truncated(s: &str) -> String {
    s.chars().take(32).collect()
}

/// Validates `token` as a JWT-SVID for `audience` at `now_unix`, against the JWT keys of
/// the trusted `bundles` (one per trust domain).
///
/// In order: the size bound; the JOSE header (ES256 only, a `kid`, nothing else); the
/// signature under the key its `kid` names; then the claims: `sub` a Tessera ID in the
/// signing key's trust domain, `aud` containing `audience`, `exp` in the future and
/// `nbf`/`iat` not in it (with [`JWT_LEEWAY_SECS`]), and a task token's claims matching
/// its `sub` and deadline. Claims are decoded only from a token whose signature verified.
/// A node's key ([`NODE_KEY_ID_PREFIX`]) validates client and task tokens only.
///
/// # Errors
/// The first rule the token breaks, as a [`JwtSvidError`].
pub fn validate_jwt_svid<'b>(
    token: &str,
    bundles: impl IntoIterator<Item = &'b JwtBundle>,
    audience: &str,
    now_unix: i64,
) -> Result<ValidJwtSvid, JwtSvidError> {
    if token.len() > MAX_JWT_SVID_LEN {
        return Err(JwtSvidError::TooLarge {
            len: token.len(),
            max: MAX_JWT_SVID_LEN,
        });
    }
    let header = parse_header(token)?;
    if header.alg != JWT_SVID_ALGORITHM {
        return Err(JwtSvidError::DisallowedAlgorithm {
            alg: truncated(&header.alg),
        });
    }
    if let Some(typ) = header.typ.as_deref()
        && typ != "JWT"
        && typ != "JOSE"
    {
        return Err(JwtSvidError::BadType {
            typ: truncated(typ),
        });
    }
    let kid = match header.kid {
        Some(kid) if !kid.is_empty() && kid.len() <= MAX_KID_LEN => kid,
        _ => return Err(JwtSvidError::MissingKeyId),
    };

    let mut validation = Validation::new(Algorithm::ES256);
    // Time and audience are checked below with this module's rules and errors; the
    // library verifies the signature (ES256 only) and decodes the claims.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    validation.leeway = 0;

    // Keys are looked up by `kid` before anything of the claims is read. Ids are random,
    // but a federated domain could publish ours: each candidate key is tried, and the
    // subject must then belong to the domain of the key that verified.
    let mut found = false;
    let mut verified = None;
    for bundle in bundles {
        let Some(key) = bundle.key(&kid) else {
            continue;
        };
        found = true;
        match jsonwebtoken::decode::<JwtSvidClaims>(token, &key.decoding, &validation) {
            Ok(data) => {
                verified = Some((bundle.trust_domain(), data.claims));
                break;
            }
            Err(e) => match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => continue,
                jsonwebtoken::errors::ErrorKind::Json(err) => {
                    return Err(JwtSvidError::BadClaims(err.to_string()));
                }
                jsonwebtoken::errors::ErrorKind::Base64(_)
                | jsonwebtoken::errors::ErrorKind::Utf8(_)
                | jsonwebtoken::errors::ErrorKind::InvalidToken => {
                    return Err(JwtSvidError::Malformed("a segment does not decode"));
                }
                _ => continue,
            },
        }
    }
    let (key_domain, claims) = match verified {
        Some(v) => v,
        None if found => return Err(JwtSvidError::BadSignature),
        None => {
            return Err(JwtSvidError::UnknownKeyId {
                kid: truncated(&kid),
            });
        }
    };

    let subject: TesseraId = claims.sub.parse().map_err(JwtSvidError::BadSubject)?;
    if is_node_key_id(&kid) && !matches!(subject, TesseraId::Client(_) | TesseraId::Task(_)) {
        return Err(JwtSvidError::NodeKeyMayNotSign {
            subject: subject.to_string(),
        });
    }
    if subject.trust_domain() != key_domain {
        return Err(JwtSvidError::SubjectDomainMismatch {
            subject: subject.trust_domain().clone(),
            key: key_domain.clone(),
        });
    }
    check_audiences(claims.aud.as_slice())?;
    if !claims.aud.as_slice().iter().any(|a| a == audience) {
        return Err(JwtSvidError::AudienceMismatch);
    }
    if claims.exp.saturating_add(JWT_LEEWAY_SECS) <= now_unix {
        return Err(JwtSvidError::Expired {
            exp: claims.exp,
            now: now_unix,
        });
    }
    for not_before in [claims.nbf, claims.iat].into_iter().flatten() {
        if not_before > now_unix.saturating_add(JWT_LEEWAY_SECS) {
            return Err(JwtSvidError::NotYetValid {
                not_before,
                now: now_unix,
            });
        }
    }
    for text in [&claims.jti, &claims.iss].into_iter().flatten() {
        if text.len() > MAX_TEXT_CLAIM_LEN {
            return Err(JwtSvidError::BadClaims("jti or iss is too long".into()));
        }
    }
    let task = task_claims(&subject, &claims)?;
    Ok(ValidJwtSvid {
        subject,
        kid,
        task,
        claims,
    })
}

/// The header, strictly: only `alg`, `kid` and `typ`, each at most once.
fn parse_header(token: &str) -> Result<Header, JwtSvidError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtSvidError::Malformed("not three segments"));
    };
    if header.len() > MAX_HEADER_B64_LEN {
        return Err(JwtSvidError::Malformed("header too long"));
    }
    let json = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| JwtSvidError::Malformed("header is not base64url"))?;
    serde_json::from_slice(&json).map_err(|_| {
        JwtSvidError::Malformed("header is not a JSON object of alg, kid and typ only")
    })
}

/// The task claims of a verified token, checked against its subject.
fn task_claims(
    subject: &TesseraId,
    claims: &JwtSvidClaims,
) -> Result<Option<TaskClaims>, JwtSvidError> {
    let (task_id, encoded) = match (subject, &claims.task) {
        (TesseraId::Task(id), Some(encoded)) => (id, encoded),
        (TesseraId::Task(_), None) => return Err(JwtSvidError::MissingTaskClaims),
        (_, Some(_)) => return Err(JwtSvidError::UnexpectedTaskClaims),
        (_, None) => return Ok(None),
    };
    if encoded.len() > MAX_TASK_CLAIM_B64_LEN {
        return Err(JwtSvidError::TaskClaimTooLarge {
            len: encoded.len(),
            max: MAX_TASK_CLAIM_B64_LEN,
        });
    }
    let der = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| JwtSvidError::BadTaskClaim("not base64url".into()))?;
    let task = TaskClaims::from_der(&der)
        .map_err(|e: ClaimsError| JwtSvidError::BadTaskClaim(e.to_string()))?;
    if task.task_id != task_id.task || task.client_id != task_id.client {
        return Err(JwtSvidError::TaskClaimsMismatch);
    }
    if claims.exp > task.deadline_unix {
        return Err(JwtSvidError::OutlivesTask {
            exp: claims.exp,
            deadline: task.deadline_unix,
        });
    }
    Ok(Some(task))
}

#[cfg(test)]
mod tests;

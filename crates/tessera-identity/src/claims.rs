//! Task claims: the non-critical X.509 extension a task SVID carries.
//!
//! A verifier trusts these claims because the CA signed the certificate that holds them;
//! nothing the peer says outside the certificate is trusted.
//!
//! # ASN.1 module
//!
//! ```asn1
//! TesseraTaskClaims DEFINITIONS EXPLICIT TAGS ::= BEGIN
//!
//! -- id-tessera-task-claims OBJECT IDENTIFIER ::= { 2 25 6532358527539175378 }
//! -- extnValue of that extension (critical = FALSE) is the DER encoding of TaskClaims.
//!
//! TaskClaims ::= SEQUENCE {
//!     version    INTEGER (1),             -- this module is version 1
//!     taskId     UTF8String (SIZE (26)),  -- canonical ULID, uppercase Crockford base32
//!     clientId   UTF8String,              -- spiffe://<td>/client/<name>
//!     subject    UTF8String (SIZE (1..256)),   -- on-behalf-of human; no control chars
//!     purpose    UTF8String (SIZE (0..1024)),  -- free text; no control chars
//!     server     UTF8String,              -- spiffe://<td>/mcp/<name>, same <td> as clientId
//!     scopes     SEQUENCE SIZE (1..64) OF UTF8String, -- <server>/<kind>/<pattern>
//!     consentId  UTF8String (SIZE (1..64)),    -- [A-Za-z0-9._-]
//!     deadline   INTEGER                  -- task deadline, seconds since the Unix epoch
//! }
//!
//! END
//! ```
//!
//! Sizes are in bytes of UTF-8. Every scope names the claims' server. Decoding is strict
//! DER; [`TaskClaims::from_der`] re-encodes what it decoded and refuses input that does not
//! come back byte-identical.

use std::fmt;

use der::{Decode, Encode, Sequence};

use crate::error::IdError;
use crate::id::{ClientId, ServerId};
use crate::scope::{Scope, ScopeError};
use crate::task_id::TaskId;
use crate::trust_domain::TrustDomain;

/// Dotted form of the task-claims extension OID.
///
/// It lies under the UUID arc `2.25` (ITU-T X.667), which needs no registration. The arc
/// below 2.25 is a random 63-bit integer rather than a full 128-bit UUID because rcgen 0.14
/// (which the authority uses to issue SVIDs) takes OID arcs as `u64`. As an integer it is
/// the UUID `00000000-0000-0000-5aa7-99788b775fd2`, whose version nibble is 0: no generated UUID
/// (versions 1–8) is below 2^64, so it cannot collide with another 2.25 allocation.
pub const TASK_CLAIMS_OID: &str = "2.25.6532358527539175378";

/// Arcs of [`TASK_CLAIMS_OID`], for `rcgen::CustomExtension::from_oid_content`.
pub const TASK_CLAIMS_OID_ARCS: &[u64] = &[2, 25, 6_532_358_527_539_175_378];

/// DER content bytes of [`TASK_CLAIMS_OID`] (no tag, no length).
const TASK_CLAIMS_OID_DER: &[u8] = &[0x69, 0xda, 0xd3, 0xe6, 0xaf, 0x88, 0xdb, 0xdd, 0xbf, 0x52];

/// DER content bytes of the task-claims OID, without tag and length: what
/// `x509_parser`'s `Oid::as_bytes()` returns for the extension's `extnID`.
pub fn task_claims_oid_der() -> &'static [u8] {
    TASK_CLAIMS_OID_DER
}

/// The task-claims OID as an `x509-parser` OID, to look the extension up in a parsed certificate.
pub fn task_claims_oid() -> x509_parser::oid_registry::Oid<'static> {
    x509_parser::oid_registry::Oid::new(std::borrow::Cow::Borrowed(TASK_CLAIMS_OID_DER))
}

/// The only claims version this crate writes and reads.
pub const TASK_CLAIMS_VERSION: u8 = 1;

/// Largest encoded claims accepted by [`TaskClaims::from_der`], in bytes.
pub const MAX_CLAIMS_DER_LEN: usize = 16 * 1024;

/// Longest subject, in bytes.
pub const MAX_SUBJECT_LEN: usize = 256;

/// Longest purpose, in bytes.
pub const MAX_PURPOSE_LEN: usize = 1024;

/// Most scopes one task may carry.
pub const MAX_SCOPES: usize = 64;

/// Longest consent record id, in bytes.
pub const MAX_CONSENT_ID_LEN: usize = 64;

/// Which free-text claim a [`ClaimsError::ForbiddenChar`] was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TextField {
    /// [`TaskClaims::subject`].
    Subject,
    /// [`TaskClaims::purpose`].
    Purpose,
}

impl fmt::Display for TextField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Subject => "subject",
            Self::Purpose => "purpose",
        })
    }
}

/// Task claims that could not be decoded or broke a rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClaimsError {
    /// The encoded claims are larger than [`MAX_CLAIMS_DER_LEN`].
    #[error("task claims are {len} bytes, larger than the maximum of {max}")]
    TooLarge {
        /// Size of the input in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The input is not DER of the `TaskClaims` structure (truncated, wrong types, trailing data, ...).
    #[error("task claims are not valid DER: {0}")]
    Der(#[source] der::Error),
    /// The input decodes but re-encodes differently, so it was not canonical DER.
    #[error("task claims are not canonical DER")]
    NonCanonical,
    /// The version is not [`TASK_CLAIMS_VERSION`].
    #[error("task claims version {version} is not supported (expected {TASK_CLAIMS_VERSION})")]
    UnsupportedVersion {
        /// The version found.
        version: u8,
    },
    /// The task id is not a canonical ULID.
    #[error("task claims task id is invalid: {0}")]
    InvalidTaskId(#[source] IdError),
    /// The client id is not a Tessera client SPIFFE ID.
    #[error("task claims client id is invalid: {0}")]
    InvalidClientId(#[source] IdError),
    /// The server id is not a Tessera MCP server SPIFFE ID.
    #[error("task claims server id is invalid: {0}")]
    InvalidServerId(#[source] IdError),
    /// The client and server ids are in different trust domains.
    #[error("task claims client trust domain {client} differs from server trust domain {server}")]
    TrustDomainMismatch {
        /// The client's trust domain.
        client: TrustDomain,
        /// The server's trust domain.
        server: TrustDomain,
    },
    /// The subject is empty.
    #[error("task claims subject is empty")]
    SubjectEmpty,
    /// The subject is longer than [`MAX_SUBJECT_LEN`].
    #[error("task claims subject is {len} bytes, longer than the maximum of {max}")]
    SubjectTooLong {
        /// Length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The purpose is longer than [`MAX_PURPOSE_LEN`].
    #[error("task claims purpose is {len} bytes, longer than the maximum of {max}")]
    PurposeTooLong {
        /// Length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Subject or purpose holds a control character, a line/paragraph separator or a
    /// bidirectional override (which could forge or disguise log lines).
    #[error("task claims {field} contains forbidden character U+{:04X} at byte {index}", u32::from(*ch))]
    ForbiddenChar {
        /// The field.
        field: TextField,
        /// Byte offset within the field.
        index: usize,
        /// The character.
        ch: char,
    },
    /// There are no scopes.
    #[error("task claims carry no scopes")]
    NoScopes,
    /// There are more than [`MAX_SCOPES`] scopes.
    #[error("task claims carry {count} scopes, more than the maximum of {max}")]
    TooManyScopes {
        /// Number of scopes.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A scope does not parse.
    #[error("task claims scope #{index} is invalid: {source}")]
    InvalidScope {
        /// Position of the scope in the list.
        index: usize,
        /// Why it is invalid.
        #[source]
        source: ScopeError,
    },
    /// A scope names a server other than the claims' server.
    #[error("task claims scope #{index} is for server {scope_server}, not {server}")]
    ScopeServerMismatch {
        /// Position of the scope in the list.
        index: usize,
        /// The server the scope names.
        scope_server: String,
        /// The server of the claims.
        server: String,
    },
    /// The consent id is empty.
    #[error("task claims consent id is empty")]
    ConsentIdEmpty,
    /// The consent id is longer than [`MAX_CONSENT_ID_LEN`].
    #[error("task claims consent id is {len} bytes, longer than the maximum of {max}")]
    ConsentIdTooLong {
        /// Length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The consent id contains a character outside `[A-Za-z0-9._-]`.
    #[error("task claims consent id contains {ch:?} at byte {index}")]
    ConsentIdInvalidChar {
        /// Byte offset.
        index: usize,
        /// The character.
        ch: char,
    },
}

/// What a task SVID says about its task: who runs it, for whom, why, against which server,
/// with which scopes, under which consent, until when.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TaskClaims {
    /// Claims format version; [`TASK_CLAIMS_VERSION`].
    pub version: u8,
    /// The task; must equal the task in the SVID's URI SAN.
    pub task_id: TaskId,
    /// The client running the task; must equal the client in the SVID's URI SAN.
    pub client_id: ClientId,
    /// The human the task acts on behalf of: 1..=256 bytes, no control characters.
    pub subject: String,
    /// Why the task runs: 0..=1024 bytes, no control characters.
    pub purpose: String,
    /// The MCP server the task may call; same trust domain as the client.
    pub server: ServerId,
    /// Granted scopes, 1..=64, each for [`TaskClaims::server`]; order is preserved.
    pub scopes: Vec<Scope>,
    /// The consent record the scopes come from: 1..=64 bytes of `[A-Za-z0-9._-]`.
    pub consent_id: String,
    /// The task deadline, seconds since the Unix epoch. The SVID must not outlive it.
    pub deadline_unix: i64,
}

/// The wire form of [`TaskClaims`], field for field as in the ASN.1 module.
#[derive(Sequence)]
struct RawClaims {
    version: u8,
    task_id: String,
    client_id: String,
    subject: String,
    purpose: String,
    server: String,
    scopes: Vec<String>,
    consent_id: String,
    deadline: i64,
}

// === impl TaskClaims ===

impl TaskClaims {
    /// The DER encoding of the claims: the `extnValue` contents of the task-claims extension.
    ///
    /// Encodes whatever the struct holds; call [`TaskClaims::validate`] first, since
    /// [`TaskClaims::from_der`] refuses invalid claims.
    pub fn to_der(&self) -> Vec<u8> {
        let raw = RawClaims {
            version: self.version,
            task_id: self.task_id.to_string(),
            client_id: self.client_id.to_string(),
            subject: self.subject.clone(),
            purpose: self.purpose.clone(),
            server: self.server.to_string(),
            scopes: self.scopes.iter().map(ToString::to_string).collect(),
            consent_id: self.consent_id.clone(),
            deadline: self.deadline_unix,
        };
        // Encoding only fails when a length exceeds the DER length limit (256 MiB), far
        // beyond anything `String`/`Vec` fields of a task could reasonably hold.
        raw.to_der()
            .expect("task claims exceed the DER length limit")
    }

    /// Decodes and validates DER-encoded claims.
    ///
    /// Refuses input over [`MAX_CLAIMS_DER_LEN`], anything that is not exactly one strict-DER
    /// `TaskClaims` (including trailing bytes), an unknown version, any field breaking its
    /// rule (see [`TaskClaims::validate`]), and input that would not re-encode identically.
    ///
    /// # Errors
    /// The first problem found, as a [`ClaimsError`].
    pub fn from_der(der: &[u8]) -> Result<Self, ClaimsError> {
        if der.len() > MAX_CLAIMS_DER_LEN {
            return Err(ClaimsError::TooLarge {
                len: der.len(),
                max: MAX_CLAIMS_DER_LEN,
            });
        }
        let raw = RawClaims::from_der(der).map_err(ClaimsError::Der)?;
        if raw.version != TASK_CLAIMS_VERSION {
            return Err(ClaimsError::UnsupportedVersion {
                version: raw.version,
            });
        }
        let claims = Self {
            version: raw.version,
            task_id: raw.task_id.parse().map_err(ClaimsError::InvalidTaskId)?,
            client_id: raw
                .client_id
                .parse()
                .map_err(ClaimsError::InvalidClientId)?,
            subject: raw.subject,
            purpose: raw.purpose,
            server: raw.server.parse().map_err(ClaimsError::InvalidServerId)?,
            scopes: raw
                .scopes
                .iter()
                .enumerate()
                .map(|(index, s)| {
                    s.parse()
                        .map_err(|source| ClaimsError::InvalidScope { index, source })
                })
                .collect::<Result<_, _>>()?,
            consent_id: raw.consent_id,
            deadline_unix: raw.deadline,
        };
        claims.validate()?;
        // Every typed field prints exactly what it parsed and `der` decodes strict DER, so
        // this holds by construction; checking it makes the guarantee explicit.
        if claims.to_der() != der {
            return Err(ClaimsError::NonCanonical);
        }
        Ok(claims)
    }

    /// Checks every rule of the claims that the field types do not already enforce:
    /// version, client/server trust domain, subject, purpose, scopes, consent id.
    ///
    /// # Errors
    /// The first rule broken, as a [`ClaimsError`].
    pub fn validate(&self) -> Result<(), ClaimsError> {
        if self.version != TASK_CLAIMS_VERSION {
            return Err(ClaimsError::UnsupportedVersion {
                version: self.version,
            });
        }
        if self.client_id.trust_domain != self.server.trust_domain {
            return Err(ClaimsError::TrustDomainMismatch {
                client: self.client_id.trust_domain.clone(),
                server: self.server.trust_domain.clone(),
            });
        }
        if self.subject.is_empty() {
            return Err(ClaimsError::SubjectEmpty);
        }
        if self.subject.len() > MAX_SUBJECT_LEN {
            return Err(ClaimsError::SubjectTooLong {
                len: self.subject.len(),
                max: MAX_SUBJECT_LEN,
            });
        }
        check_text(TextField::Subject, &self.subject)?;
        if self.purpose.len() > MAX_PURPOSE_LEN {
            return Err(ClaimsError::PurposeTooLong {
                len: self.purpose.len(),
                max: MAX_PURPOSE_LEN,
            });
        }
        check_text(TextField::Purpose, &self.purpose)?;
        if self.scopes.is_empty() {
            return Err(ClaimsError::NoScopes);
        }
        if self.scopes.len() > MAX_SCOPES {
            return Err(ClaimsError::TooManyScopes {
                count: self.scopes.len(),
                max: MAX_SCOPES,
            });
        }
        if let Some((index, scope)) = self
            .scopes
            .iter()
            .enumerate()
            .find(|(_, s)| s.server() != &self.server.name)
        {
            return Err(ClaimsError::ScopeServerMismatch {
                index,
                scope_server: scope.server().to_string(),
                server: self.server.name.to_string(),
            });
        }
        if self.consent_id.is_empty() {
            return Err(ClaimsError::ConsentIdEmpty);
        }
        if self.consent_id.len() > MAX_CONSENT_ID_LEN {
            return Err(ClaimsError::ConsentIdTooLong {
                len: self.consent_id.len(),
                max: MAX_CONSENT_ID_LEN,
            });
        }
        if let Some((index, ch)) = self
            .consent_id
            .char_indices()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(ClaimsError::ConsentIdInvalidChar { index, ch });
        }
        Ok(())
    }
}

/// Refuses characters that would let free text forge or disguise a log line.
fn check_text(field: TextField, text: &str) -> Result<(), ClaimsError> {
    match text
        .char_indices()
        .find(|&(_, c)| is_forbidden_text_char(c))
    {
        Some((index, ch)) => Err(ClaimsError::ForbiddenChar { field, index, ch }),
        None => Ok(()),
    }
}

/// Control characters (C0, DEL, C1), line and paragraph separators, and the Unicode
/// bidirectional embedding/override/isolate controls.
fn is_forbidden_text_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200E}' | '\u{200F}' | '\u{061C}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
pub(crate) mod tests;

//! The outcome of one authorization: allowed or not, and exactly why.

use std::fmt;

/// Why a request was allowed or denied. Each variant has one stable, machine-readable
/// string ([`Reason::as_str`]) used in audit events and in the JSON-RPC denial `data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// Every check passed and a Cedar policy permits.
    Allowed,
    /// The peer's certificate or the task deadline has passed.
    Expired,
    /// The task (or its SVID serial) is in the revocation feed.
    Revoked,
    /// The revocation feed is past its staleness bound: task credentials are refused.
    RevocationFeedStale,
    /// The operation is outside the task's granted scopes.
    OutOfScope,
    /// A Cedar `forbid` policy matched.
    PolicyForbids,
    /// No Cedar `permit` policy matched.
    NoPolicyPermits,
    /// A Cedar policy failed to evaluate (e.g. a type error on an argument): fail closed.
    PolicyError,
    /// The call's arguments hold values Cedar cannot represent and the authorizer is set
    /// to refuse them.
    UnsupportedArguments,
    /// The peer is not a task (a client's own SVID or another server): only tasks call.
    NotATask,
    /// The task was granted for another MCP server.
    WrongServer,
    /// No policy set is loaded.
    NoPolicies,
    /// The method names nothing the task's scopes or Cedar can decide on (a custom
    /// method, `tasks/*`, skills, an unknown notification): refused by default.
    MethodNotEnforceable,
    /// The operation is within the task's granted scopes but not its access token's:
    /// answered `403 insufficient_scope`, naming the scope to get a token for.
    InsufficientScope,
}

/// The decision on one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Why.
    pub reason: Reason,
    /// The Cedar policies that decided (the permits for an allow, the forbids for a
    /// forbid); empty when an earlier check decided.
    pub policy_ids: Vec<String>,
    /// Human-readable detail for logs (never needed to act on the decision).
    pub detail: String,
}

// === impl Reason ===

impl Reason {
    /// The stable string form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::RevocationFeedStale => "revocation_feed_stale",
            Self::OutOfScope => "out_of_scope",
            Self::PolicyForbids => "policy_forbids",
            Self::NoPolicyPermits => "no_policy_permits",
            Self::PolicyError => "policy_error",
            Self::UnsupportedArguments => "unsupported_arguments",
            Self::NotATask => "not_a_task",
            Self::WrongServer => "wrong_server",
            Self::NoPolicies => "no_policies",
            Self::MethodNotEnforceable => "method_not_enforceable",
            Self::InsufficientScope => "insufficient_scope",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Decision ===

impl Decision {
    /// A denial for `reason` with `detail`.
    pub fn deny(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            allowed: false,
            reason,
            policy_ids: Vec::new(),
            detail: detail.into(),
        }
    }

    /// An allow decided by `policy_ids`.
    pub fn allow(policy_ids: Vec<String>) -> Self {
        Self {
            allowed: true,
            reason: Reason::Allowed,
            policy_ids,
            detail: String::new(),
        }
    }
}

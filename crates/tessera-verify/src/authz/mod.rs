//! The per-request decision: expiry, revocation, task scope, then Cedar.
//!
//! Order of checks (the first failure decides, and is the [`Reason`]):
//! 1. the peer is a task ([`Reason::NotATask`] for a client's own SVID or a server);
//! 2. the credential (the leaf, or the access token) and the task deadline have not
//!    passed ([`Reason::Expired`]);
//! 3. the task was granted for this server ([`Reason::WrongServer`]);
//! 4. the revocation feed is fresh and lists neither a node CA in the peer's chain (an
//!    evicted node), nor the task, nor (for a certificate) the leaf's serial
//!    ([`Reason::RevocationFeedStale`], [`Reason::Revoked`]);
//! 5. a granted scope permits `server/kind/target` ([`Reason::OutOfScope`]);
//! 6. the arguments convert to Cedar ([`Reason::UnsupportedArguments`]);
//! 7. Cedar: principal `Task::"<task id>"` (child of `Client::"<client>"`, with the
//!    task's signed facts as attributes), action `Action::"<method>"`, resource
//!    `Tool::"<name>"` / `Resource::"<uri>"` / `Prompt::"<name>"`, and a context of the
//!    time and the call's arguments (see [`SCHEMA_DOC`], [`BASE_SCHEMA`]). A `forbid` wins
//!    ([`Reason::PolicyForbids`]); no `permit` denies ([`Reason::NoPolicyPermits`]); any
//!    policy evaluation error denies ([`Reason::PolicyError`]), because Cedar skips an
//!    erroring policy and a skipped `forbid` must not turn into an allow.
//!
//! An untargeted method ([`McpMethod::Untargeted`]: `initialize`, `ping`, the lists, ...)
//! stops after check 4: it names nothing to scope or to hand Cedar, but a revoked,
//! expired or foreign credential is refused for it like for any other.
//!
//! The client entity id is the client's name for the server's own trust domain, and the
//! full SPIFFE ID for an allowed foreign one, so a federated `code-reviewer` never matches
//! a policy written for the local one.

mod entities;
pub mod json;
pub mod policy;
mod reads;
mod slice;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use cedar_policy::{Context, EntityId, EntityUid, Request, RestrictedExpression};
use tessera_identity::{ClientId, ScopeKind, ServerId};

use crate::audit::AuditLog;
use crate::decision::{Decision, Reason};
use crate::peer::{Credential, Peer};
use crate::request::{McpMethod, McpRequest};
use crate::revocation::{NodeCaStatus, RevocationStatus, RevocationWatcher};
use entities::{EntityStore, Types};
use policy::PolicyStore;

/// What the authorizer hands Cedar, as schema fragments for your own schema.
///
/// The task's facts are attributes of the principal (`principal.subject`,
/// `principal.scopes`, ...): they are signed into the SVID and never change while the
/// task lives, so they are evaluated once per task. The context holds what changes per
/// request. Extend `arguments` with the argument attributes your policies read,
/// optional with `?`.
pub const SCHEMA_DOC: &str = r#"entity Task in [Client] = {
  client: String,         // the client's entity id (its name; the full SPIFFE ID if foreign)
  subject: String,        // the human the task acts for
  purpose: String,        // why the task runs
  consent_id: String,     // the consent record the scopes come from
  scopes: Set<String>,    // granted scopes, e.g. "github/tool/get_pull_request"
  deadline: Long,         // the task deadline, unix seconds
};
context: {
  now: Long,              // unix seconds at decision time
  arguments: { ... },     // the call's JSON arguments as a record
}"#;

/// A minimal schema that validates in strict mode, for tests and as a starting point.
/// Real servers declare the argument attributes their policies use.
pub const BASE_SCHEMA: &str = r#"
entity Client;
entity Task in [Client] = {
  client: String, subject: String, purpose: String, consent_id: String,
  scopes: Set<String>, deadline: Long,
};
entity Tool;
entity Resource;
entity Prompt;
type Ctx = { now: Long, arguments: {} };
action "tools/call" appliesTo { principal: [Task], resource: [Tool], context: Ctx };
action "resources/read" appliesTo { principal: [Task], resource: [Resource], context: Ctx };
action "prompts/get" appliesTo { principal: [Task], resource: [Prompt], context: Ctx };
"#;

/// [`BASE_SCHEMA`] with the call's `arguments` declared as the record type `arguments`,
/// in Cedar schema syntax (e.g. `{ path?: String, force?: Bool }`): strict validation
/// refuses a policy that reads an argument the schema does not declare.
pub fn schema_with_arguments(arguments: &str) -> String {
    BASE_SCHEMA.replacen("arguments: {}", &format!("arguments: {arguments}"), 1)
}

/// Seconds since the Unix epoch (0 before it).
fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What to do with call arguments Cedar cannot represent (see [`json`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UnsupportedArguments {
    Deny,
    Drop,
}

/// Decides every MCP request of a task. Share it in an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct Authorizer {
    server: ServerId,
    policies: Arc<PolicyStore>,
    revocations: RevocationWatcher,
    entities: EntityStore,
    types: Types,
    cedar: cedar_policy::Authorizer,
    unsupported: UnsupportedArguments,
    audit: Option<AuditLog>,
    empty_arguments: EmptyArgumentsContext,
}

/// The context `{now, arguments: {}}` of the current second, shared by every request
/// whose slice reads no argument (or that has none): building a Cedar context costs
/// more than some whole policy evaluations, and this one only changes once a second.
#[derive(Debug, Default)]
struct EmptyArgumentsContext(ArcSwapOption<(i64, Context)>);

impl EmptyArgumentsContext {
    fn context(&self, now_unix: i64) -> Result<Context, String> {
        if let Some(cached) = &*self.0.load()
            && cached.0 == now_unix
        {
            return Ok(cached.1.clone());
        }
        let built = context(now_unix, Vec::new())?;
        self.0.store(Some(Arc::new((now_unix, built.clone()))));
        Ok(built)
    }
}

/// The request context: the time and the call's (converted) arguments.
///
/// # Errors
/// Cedar's refusal, rendered: it only ever ends up in a denial's detail.
fn context(
    now_unix: i64,
    arguments: Vec<(String, RestrictedExpression)>,
) -> Result<Context, String> {
    let arguments =
        RestrictedExpression::new_record(arguments).expect("argument names are JSON keys, unique");
    Context::from_pairs([
        ("now".to_owned(), RestrictedExpression::new_long(now_unix)),
        ("arguments".to_owned(), arguments),
    ])
    .map_err(|e| e.to_string())
}

// === impl Authorizer ===

impl Authorizer {
    /// An authorizer for the server `server` (its own id; scopes and claims name it).
    pub fn new(
        server: ServerId,
        policies: Arc<PolicyStore>,
        revocations: RevocationWatcher,
    ) -> Self {
        Self {
            server,
            policies,
            revocations,
            entities: EntityStore::new(),
            types: Types::new(),
            cedar: cedar_policy::Authorizer::new(),
            unsupported: UnsupportedArguments::Deny,
            audit: None,
            empty_arguments: EmptyArgumentsContext::default(),
        }
    }

    /// Records every decision made through [`Self::authorize`] / [`Self::check`].
    pub fn with_audit(mut self, audit: AuditLog) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Drops argument values Cedar cannot represent instead of denying the call. A
    /// `forbid` on such a value can then not fire: only when your policies never read them.
    pub fn dangerous_drop_unsupported_arguments(mut self) -> Self {
        self.unsupported = UnsupportedArguments::Drop;
        self
    }

    /// The server this authorizer protects.
    pub fn server(&self) -> &ServerId {
        &self.server
    }

    /// The policy store (for reloads and introspection).
    pub fn policies(&self) -> &Arc<PolicyStore> {
        &self.policies
    }

    /// The revocation watcher.
    pub fn revocations(&self) -> &RevocationWatcher {
        &self.revocations
    }

    /// The plain API for servers not built on rmcp: decides `request` of `peer` now, and
    /// records an audit event.
    pub fn check(&self, peer: &Peer, request: &McpRequest) -> Decision {
        self.authorize(peer, request, SystemTime::now())
    }

    /// Decides `request` of `peer` at `now`, and records an audit event.
    pub fn authorize(&self, peer: &Peer, request: &McpRequest, now: SystemTime) -> Decision {
        let start = Instant::now();
        let decision = self.decide(peer, request, now);
        self.record(peer, request, &decision, start.elapsed());
        decision
    }

    /// Records a decision made outside [`Self::decide`] (a method refused outright, a
    /// stream ended on revocation) like one made by it.
    pub(crate) fn record(
        &self,
        peer: &Peer,
        request: &McpRequest,
        decision: &Decision,
        latency: Duration,
    ) {
        if let Some(audit) = &self.audit {
            audit.record(&self.server, peer, request, decision, latency);
        } else {
            crate::audit::trace(&self.server, peer, request, decision, latency);
        }
    }

    /// Whether `peer` may use the `kind` target `name`: the same checks as a call with
    /// no arguments, for filtering `tools/list`, `resources/list` and `prompts/list`.
    /// Not audited per item.
    pub fn permits_listing(&self, peer: &Peer, kind: ScopeKind, name: &str) -> bool {
        let req = McpRequest {
            method: McpMethod::for_kind(kind),
            target: name.to_owned(),
            arguments: None,
        };
        self.decide(peer, &req, SystemTime::now()).allowed
    }

    /// Decides without recording an audit event.
    pub fn decide(&self, peer: &Peer, request: &McpRequest, now: SystemTime) -> Decision {
        let now_unix = unix_secs(now);
        if let Err(denied) = self.credential(peer, now_unix) {
            return denied;
        }
        let Peer::Task { client, claims, .. } = peer else {
            return Decision::deny(Reason::NotATask, format!("{peer} is not a task"));
        };
        let Some(kind) = request.method.scope_kind() else {
            // Untargeted: the credential is all there is to check.
            return Decision::allow(Vec::new());
        };
        if !claims
            .scopes
            .iter()
            .any(|s| s.permits(&self.server.name, kind, &request.target))
        {
            return Decision::deny(
                Reason::OutOfScope,
                format!(
                    "{}/{}/{} not granted",
                    self.server.name, kind, request.target
                ),
            );
        }
        self.cedar_decide(client, peer, request, now_unix)
    }

    /// Checks 1 to 4 (a task, not expired, granted for this server, not revoked with the
    /// feed fresh): what every request needs, whatever its method.
    fn credential(&self, peer: &Peer, now_unix: i64) -> Result<(), Decision> {
        let Peer::Task {
            task,
            claims,
            credential,
            ..
        } = peer
        else {
            return Err(Decision::deny(
                Reason::NotATask,
                format!("{peer} is not a task"),
            ));
        };
        let not_after_unix = credential.not_after_unix();
        if now_unix >= not_after_unix {
            return Err(Decision::deny(
                Reason::Expired,
                format!("{} expired at {not_after_unix}", credential.noun()),
            ));
        }
        if now_unix >= claims.deadline_unix {
            return Err(Decision::deny(
                Reason::Expired,
                format!("task deadline {} passed", claims.deadline_unix),
            ));
        }
        if claims.server != self.server {
            return Err(Decision::deny(
                Reason::WrongServer,
                format!(
                    "task granted for {}, this is {}",
                    claims.server, self.server
                ),
            ));
        }
        // A chain through an evicted node's CA is refused whatever its leaf says: the
        // node's key may be in other hands. Checked on every request, so an open
        // connection through it is refused at its next call.
        for serial in peer.node_ca_serials() {
            match self.revocations.node_ca_status(serial) {
                NodeCaStatus::NotRevoked => {}
                NodeCaStatus::Revoked { node } => {
                    return Err(Decision::deny(
                        Reason::Revoked,
                        format!("issued through the CA of evicted node {node} (serial {serial})"),
                    ));
                }
                _ => {
                    return Err(Decision::deny(
                        Reason::RevocationFeedStale,
                        "revocation feed is stale; task credentials refused",
                    ));
                }
            }
        }
        // A certificate is also looked up by its serial; an access token by its task
        // alone, never by anything of its own that could collide with a serial.
        let status = match credential {
            Credential::Certificate { serial_hex, .. } => {
                self.revocations.status(&task.task, serial_hex)
            }
            Credential::AccessToken(_) => self.revocations.task_status(&task.task),
        };
        match status {
            RevocationStatus::NotRevoked => Ok(()),
            RevocationStatus::Revoked { reason } => Err(Decision::deny(
                Reason::Revoked,
                format!("task revoked: {reason}"),
            )),
            RevocationStatus::Stale => Err(Decision::deny(
                Reason::RevocationFeedStale,
                "revocation feed is stale; task credentials refused",
            )),
        }
    }

    /// Waits until `peer`'s credential stops passing the checks every request gets
    /// (revoked, expired, past the task deadline, feed stale, or never a task of this
    /// server), and returns that denial. For long-lived streams: a revoked task's open
    /// subscriptions and SSE streams must end when the revocation arrives, not at the
    /// next request. Wakes on the task's revocation or the eviction of a node CA in its
    /// chain (see [`RevocationWatcher::watch`]), at expiry, and when the feed goes
    /// stale. Not audited: the caller records what it ends.
    pub async fn until_denied(&self, peer: &Peer) -> Decision {
        let mut watch = peer
            .task()
            .map(|t| self.revocations.watch(&t.task, peer.node_ca_serials()));
        loop {
            let now = SystemTime::now();
            if let Err(denied) = self.credential(peer, unix_secs(now)) {
                return denied;
            }
            let Some(watch) = watch.as_mut() else {
                // Unreachable: only a task passes the credential checks.
                return Decision::deny(Reason::NotATask, format!("{peer} is not a task"));
            };
            let wake = self.next_credential_change(peer, now);
            tokio::select! {
                _ = watch.changed() => {}
                _ = tokio::time::sleep(wake) => {}
            }
        }
    }

    /// How long `peer`'s credential (passing now) certainly keeps passing unless the feed
    /// says otherwise: until its SVID or task deadline, or the feed going stale; at
    /// most a minute, so that a clock step is noticed.
    fn next_credential_change(&self, peer: &Peer, now: SystemTime) -> Duration {
        let mut wake = Duration::from_secs(60);
        if let Peer::Task {
            claims, credential, ..
        } = peer
        {
            for at in [credential.not_after_unix(), claims.deadline_unix] {
                let at = UNIX_EPOCH + Duration::from_secs(at.max(0) as u64);
                // The checks compare whole seconds: `at` itself is already past.
                wake = wake.min(at.duration_since(now).unwrap_or_default());
            }
        }
        if let Some(stale) = self.revocations.stale_in() {
            wake = wake.min(stale);
        }
        // A whole-second boundary or the staleness bound just reached: look again
        // a moment later rather than spin.
        wake.max(Duration::from_millis(5))
    }

    fn client_entity_id<'a>(&self, client: &'a ClientId) -> Cow<'a, str> {
        if client.trust_domain() == self.server.trust_domain() {
            Cow::Borrowed(client.name.as_str())
        } else {
            Cow::Owned(client.to_string())
        }
    }

    fn cedar_decide(
        &self,
        client: &ClientId,
        peer: &Peer,
        request: &McpRequest,
        now_unix: i64,
    ) -> Decision {
        let Some(claims) = peer.claims() else {
            return Decision::deny(Reason::NotATask, "not a task");
        };
        let (action, rtype) = match request.method {
            McpMethod::ToolsCall => (&self.types.actions[0], &self.types.tool),
            McpMethod::ResourcesRead => (&self.types.actions[1], &self.types.resource),
            McpMethod::PromptsGet => (&self.types.actions[2], &self.types.prompt),
            // Decided before Cedar (no scope, no action in the schema); never here.
            McpMethod::Untargeted(_) => {
                return Decision::deny(Reason::PolicyError, "untargeted method reached Cedar");
            }
        };
        let resource =
            EntityUid::from_type_name_and_id(rtype.clone(), EntityId::new(&request.target));
        let client_name = self.client_entity_id(client);
        let client_uid = EntityUid::from_type_name_and_id(
            self.types.client.clone(),
            EntityId::new(client_name.as_ref()),
        );
        let loaded = self.policies.guard();
        // The slice is looked up first so that only the arguments its policies can
        // read are converted; the checks still decide in the documented order.
        let applicable = loaded.applicable(action, &resource, &client_uid);
        let arguments = match &request.arguments {
            None => Vec::new(),
            Some(map) => {
                let (fields, unsupported) = json::fields_reading(map, &applicable.arguments);
                if !unsupported.is_empty() {
                    if self.unsupported == UnsupportedArguments::Deny {
                        return Decision::deny(
                            Reason::UnsupportedArguments,
                            unsupported.join("; "),
                        );
                    }
                    tracing::debug!(dropped = ?unsupported, "dropped unsupported arguments");
                }
                fields
            }
        };
        let task_entities = match self.entities.task(
            &self.types,
            claims,
            &client_name,
            peer.not_after_unix(),
            now_unix,
        ) {
            Ok(t) => t,
            Err(e) => return Decision::deny(Reason::PolicyError, e),
        };
        let context = if arguments.is_empty() {
            self.empty_arguments.context(now_unix)
        } else {
            context(now_unix, arguments)
        };
        let context = match context {
            Ok(c) => c,
            Err(e) => return Decision::deny(Reason::PolicyError, format!("context: {e}")),
        };
        if loaded.policies.is_empty() {
            return Decision::deny(Reason::NoPolicies, "no policies loaded");
        }
        // A slice whose policies were all decided when it was built needs no request
        // (`Request::new` without a schema cannot fail, so skipping it hides nothing).
        let response = if applicable.needs_cedar() {
            let request = match Request::new(
                task_entities.principal.clone(),
                action.clone(),
                resource,
                context,
                None,
            ) {
                Ok(r) => r,
                Err(e) => return Decision::deny(Reason::PolicyError, format!("request: {e}")),
            };
            Some(
                self.cedar
                    .is_authorized(&request, &applicable.policies, &task_entities.entities),
            )
        } else {
            None
        };
        let outcome = applicable.outcome(response.as_ref());
        let policy_ids = outcome.policy_ids;
        if !outcome.errors.is_empty() {
            return Decision {
                allowed: false,
                reason: Reason::PolicyError,
                policy_ids,
                detail: outcome.errors.join("; "),
            };
        }
        if outcome.allowed {
            Decision::allow(policy_ids)
        } else if policy_ids.is_empty() {
            Decision::deny(Reason::NoPolicyPermits, "no policy permits")
        } else {
            Decision {
                allowed: false,
                reason: Reason::PolicyForbids,
                detail: format!("forbidden by {}", policy_ids.join(", ")),
                policy_ids,
            }
        }
    }
}

#[cfg(test)]
mod tests;

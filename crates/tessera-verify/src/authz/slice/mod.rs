//! The policies that can apply to one (action, resource) pair, for a task of one client.
//!
//! Cedar evaluates every policy of the set it is given, and builds and drops each
//! policy's condition expression per request, so a decision costs roughly linear time
//! in the number of policies. A policy whose scope names another action, another
//! resource or another resource type cannot be satisfied, and (Cedar's `&&` short-
//! circuits before the `when` clause) cannot error either: leaving it out changes no
//! decision. Slices are computed once per (action, resource, client) and kept with the
//! policy set they come from, so a reload starts afresh.
//!
//! `action in [...]` and `resource in E` are kept whatever they name: they depend on
//! entity hierarchies, and keeping a policy is always safe (dropping a `forbid` that
//! could apply would not be). `==` and `is` depend on the request alone.
//!
//! The principal's hierarchy is known exactly, because the authorizer builds it (see
//! [`super::entities`]): the principal is always a `Task` whose only ancestor is its
//! client. So `principal == E` can hold only for a `Task` `E`, `principal is T` only
//! for `T` = `Task`, and `principal in E` only for a `Task` `E` (the task itself) or
//! `E` = the task's client: a policy naming another client, or a client or type in
//! place of the task, is left out of that client's slices. This is what keeps one
//! client's policies from costing another client's requests anything.
//!
//! ## Policies decided once per slice
//!
//! Within one slice, requests differ only in the task (its id and attributes) and the
//! context. A policy whose principal constraint does not name a task and whose
//! conditions mention neither `principal`, `context` nor a task entity (see
//! [`super::reads`]) therefore has the same outcome for every request of the slice;
//! the example server's `resource in [Tool::"a", ...]` permits are such policies.
//! Cedar itself evaluates each of them once, when the slice is built, for a
//! representative task of the client in the same two-entity store the authorizer
//! builds: unsatisfied ones are left out, satisfied ones are kept as ids, and any
//! that errors stays in the evaluated set, so its error is reported per request as
//! before. [`Slice::outcome`] then combines the remembered ids with Cedar's answer
//! on the rest the way Cedar combines policies: a satisfied `forbid` denies and is
//! the reason, else satisfied `permit`s allow, else deny with no reason; evaluation
//! errors come from the evaluated part only, the only part that can error.
//!
//! The cache of slices is bounded, and a caller cannot pin it: see [`cache`].

mod cache;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision, Effect, Entities, Entity, EntityId,
    EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, PrincipalConstraint, Request,
    ResourceConstraint, Response,
};

use super::reads::{ArgumentReads, PolicyReads};
use cache::Cache;

/// The policies that can apply to one (action, resource, client), and what they read.
#[derive(Debug)]
pub(crate) struct Slice {
    /// The policies Cedar evaluates per request.
    pub(crate) policies: PolicySet,
    /// The `permit`s satisfied by every request of the slice (decided once).
    permits: Vec<String>,
    /// The `forbid`s satisfied by every request of the slice (decided once).
    forbids: Vec<String>,
    /// The call arguments any evaluated policy can read (see [`super::reads`]).
    pub(crate) arguments: ArgumentReads,
}

/// What the whole slice decides for one request, as Cedar would over all its policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// Whether it allows.
    pub(crate) allowed: bool,
    /// The deciding policies: the satisfied `forbid`s of a denial, or the satisfied
    /// `permit`s of an allow; none when nothing was satisfied.
    pub(crate) policy_ids: Vec<String>,
    /// Evaluation errors.
    pub(crate) errors: Vec<String>,
}

impl Slice {
    /// Whether any policy needs evaluating per request (else [`Self::outcome`] takes
    /// `None` and no request needs building).
    pub(crate) fn needs_cedar(&self) -> bool {
        !self.policies.is_empty()
    }

    /// The slice's outcome, given Cedar's response over [`Self::policies`] (`None`
    /// when there are none).
    pub(crate) fn outcome(&self, evaluated: Option<&Response>) -> Outcome {
        let (decision, reasons, errors) = match evaluated {
            Some(r) => {
                let d = r.diagnostics();
                (
                    r.decision(),
                    d.reason().map(ToString::to_string).collect::<Vec<_>>(),
                    d.errors().map(ToString::to_string).collect(),
                )
            }
            None => (Decision::Deny, Vec::new(), Vec::new()),
        };
        // A denial with reasons is a satisfied forbid; an allow's reasons are permits.
        let forbid = decision == Decision::Deny && !reasons.is_empty();
        let (allowed, policy_ids) = if !self.forbids.is_empty() || forbid {
            let mut ids = self.forbids.clone();
            if forbid {
                ids.extend(reasons);
            }
            (false, ids)
        } else if !self.permits.is_empty() || decision == Decision::Allow {
            let mut ids = self.permits.clone();
            ids.extend(reasons);
            (true, ids)
        } else {
            (false, Vec::new())
        };
        Outcome {
            allowed,
            policy_ids,
            errors,
        }
    }
}

/// Every policy of a set, and its slices computed so far (bounded, see [`cache`]).
#[derive(Debug)]
pub(crate) struct Slices {
    all: PolicySet,
    /// The type of every principal.
    task_type: EntityTypeName,
    /// Per policy, computed once at load.
    reads: HashMap<PolicyId, PolicyReads>,
    cedar: Authorizer,
    cache: RwLock<Cache<Slice>>,
}

impl Slices {
    /// Slices of `all`, whose principals are entities of type `task_type`.
    pub(crate) fn new(all: PolicySet, task_type: EntityTypeName) -> Self {
        let reads = all
            .policies()
            .map(|p| (p.id().clone(), PolicyReads::of_policy(p, &task_type)))
            .collect();
        Self {
            all,
            task_type,
            reads,
            cedar: Authorizer::new(),
            cache: RwLock::default(),
        }
    }

    /// The policies of the whole set that can apply to `action` on `resource` by a
    /// task of `client`.
    pub(crate) fn get(
        &self,
        action: &EntityUid,
        resource: &EntityUid,
        client: &EntityUid,
    ) -> Arc<Slice> {
        {
            let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
            if let Some(slot) = cache
                .get(action, resource, client)
                .and_then(|i| cache.slot(i))
            {
                // A plain load first: most hits find the flag set, and skipping the
                // store keeps the cache line shared between cores.
                if !slot.used.load(Ordering::Relaxed) {
                    slot.used.store(true, Ordering::Relaxed);
                }
                return Arc::clone(&slot.slice);
            }
        }
        let slice = Arc::new(self.slice(action, resource, client));
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                action,
                resource,
                client,
                &slice,
                slice.policies.policies().count(),
            )
            .unwrap_or(slice)
    }

    fn slice(&self, action: &EntityUid, resource: &EntityUid, client: &EntityUid) -> Slice {
        let applicable: Vec<&Policy> = self
            .all
            .policies()
            .filter(|p| {
                may_apply(p, action, resource)
                    && self.principal_may_be(p.principal_constraint(), client)
            })
            .collect();
        let once = Representative::new(&self.task_type, action, resource, client);
        let (mut evaluated, mut permits, mut forbids) = (Vec::new(), Vec::new(), Vec::new());
        let mut arguments = ArgumentReads::default();
        for p in applicable {
            // Every policy was analysed at load; a missing one would be a bug here,
            // and evaluating it per request with every argument is the safe answer.
            let reads = self.reads.get(p.id());
            let decided = match (&once, reads) {
                (Some(once), Some(r)) if !r.task_or_context && self.names_no_task(p) => {
                    once.decide(&self.cedar, p)
                }
                _ => None,
            };
            match decided {
                Some(false) => {}
                Some(true) => match p.effect() {
                    Effect::Permit => permits.push(p.id().to_string()),
                    Effect::Forbid => forbids.push(p.id().to_string()),
                },
                None => {
                    arguments.extend(reads.map_or(&ArgumentReads::All, |r| &r.arguments));
                    evaluated.push(p);
                }
            }
        }
        // The policies come from a valid set, so their ids are unique.
        match PolicySet::from_policies(evaluated.into_iter().cloned()) {
            Ok(policies) => Slice {
                policies,
                permits,
                forbids,
                arguments,
            },
            // Unreachable (unique ids); Cedar on the whole set is always right.
            Err(_) => Slice {
                policies: self.all.clone(),
                permits: Vec::new(),
                forbids: Vec::new(),
                arguments: ArgumentReads::All,
            },
        }
    }

    /// Whether `p`'s principal constraint holds alike for every task of a client: it
    /// names no task (a task named could be the principal or not).
    fn names_no_task(&self, p: &Policy) -> bool {
        match p.principal_constraint() {
            PrincipalConstraint::Any | PrincipalConstraint::Is(_) => true,
            PrincipalConstraint::Eq(e)
            | PrincipalConstraint::In(e)
            | PrincipalConstraint::IsIn(_, e) => *e.type_name() != self.task_type,
        }
    }
}

/// A request of one (action, resource, client) with a stand-in task and an empty
/// context, in the same two-entity store the authorizer builds: what the policies
/// decided once per slice are evaluated on.
struct Representative {
    request: Request,
    entities: Entities,
}

impl Representative {
    fn new(
        task_type: &EntityTypeName,
        action: &EntityUid,
        resource: &EntityUid,
        client: &EntityUid,
    ) -> Option<Self> {
        let task = EntityUid::from_type_name_and_id(task_type.clone(), EntityId::new(""));
        let entities = Entities::from_entities(
            [
                Entity::new_no_attrs(task.clone(), [client.clone()].into_iter().collect()),
                Entity::new_no_attrs(client.clone(), Default::default()),
            ],
            None,
        )
        .ok()?;
        let request = Request::new(
            task,
            action.clone(),
            resource.clone(),
            Context::empty(),
            None,
        )
        .ok()?;
        Some(Self { request, entities })
    }

    /// Whether `p` is satisfied; `None` when it errors (it is then evaluated per
    /// request, so that the error is reported with each decision).
    fn decide(&self, cedar: &Authorizer, p: &Policy) -> Option<bool> {
        let alone = PolicySet::from_policies([p.clone()]).ok()?;
        let r = cedar.is_authorized(&self.request, &alone, &self.entities);
        if r.diagnostics().errors().next().is_some() {
            return None;
        }
        Some(r.diagnostics().reason().next().is_some())
    }
}

impl Slices {
    /// Whether a task of `client` can satisfy `constraint` (see the module docs).
    fn principal_may_be(&self, constraint: PrincipalConstraint, client: &EntityUid) -> bool {
        let the_task_or_client = |e: &EntityUid| *e.type_name() == self.task_type || e == client;
        match constraint {
            PrincipalConstraint::Any => true,
            PrincipalConstraint::Eq(e) => *e.type_name() == self.task_type,
            PrincipalConstraint::In(e) => the_task_or_client(&e),
            PrincipalConstraint::Is(t) => t == self.task_type,
            PrincipalConstraint::IsIn(t, e) => t == self.task_type && the_task_or_client(&e),
        }
    }
}

fn may_apply(policy: &Policy, action: &EntityUid, resource: &EntityUid) -> bool {
    let action_may = match policy.action_constraint() {
        // `in` depends on action groups: kept, like `resource in`.
        ActionConstraint::Any | ActionConstraint::In(_) => true,
        ActionConstraint::Eq(a) => a == *action,
    };
    action_may
        && match policy.resource_constraint() {
            ResourceConstraint::Any | ResourceConstraint::In(_) => true,
            ResourceConstraint::Eq(r) => r == *resource,
            ResourceConstraint::Is(t) | ResourceConstraint::IsIn(t, _) => {
                t == *resource.type_name()
            }
        }
}

#[cfg(test)]
mod tests;

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
//! ## The cache is bounded, and a caller cannot pin it
//!
//! Resource names come from requests (any URI within a task's scopes), so a task can
//! ask for as many distinct slices as it likes, with names as long as a request body.
//! The cache holds at most [`MAX_SLICES`] slices and [`MAX_CACHE_BYTES`] of estimated
//! memory (names, plus a per-slice and per-policy estimate); a name longer than
//! [`MAX_CACHED_NAME_BYTES`] is never cached (its slice is computed per request, a
//! cost its own requests pay). Past either bound a slice is evicted by CLOCK (second
//! chance): a hit only sets a flag under the read lock, and an insertion looks at a
//! bounded number of slots for one not used since the hand last passed, so names
//! requested once (a scan of chosen URIs) go first and the slices in use stay, and no
//! operation walks the whole cache under the lock.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision, Effect, Entities, Entity, EntityId,
    EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, PrincipalConstraint, Request,
    ResourceConstraint, Response,
};

use super::reads::{ArgumentReads, PolicyReads};

/// At most this many (action, resource, client) slices are kept.
pub(crate) const MAX_SLICES: usize = 4096;

/// At most this much estimated memory is kept in slices (see [`Slot::weight`]).
pub(crate) const MAX_CACHE_BYTES: usize = 16 << 20;

/// A slice whose resource or client name is longer than this is not cached: one such
/// name would otherwise take the room of many ordinary ones.
pub(crate) const MAX_CACHED_NAME_BYTES: usize = 1024;

/// Estimated bytes of one cached slice besides its names: the `Arc<Slice>`, its vectors,
/// the three index maps' entries and the slot.
const SLOT_OVERHEAD_BYTES: usize = 512;

/// Estimated bytes per policy a slice evaluates: the cloned policy (its AST is shared
/// with the full set behind `Arc`s) and its entries in the slice's `PolicySet` maps.
const PER_POLICY_BYTES: usize = 256;

/// Slots an insertion looks at for one not used since the hand last passed, before it
/// takes the one under the hand anyway: bounds the work under the write lock.
const CLOCK_SWEEP: usize = 32;

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

#[derive(Debug)]
pub(crate) struct Slices {
    all: PolicySet,
    /// The type of every principal.
    task_type: EntityTypeName,
    /// Per policy, computed once at load.
    reads: HashMap<PolicyId, PolicyReads>,
    cedar: Authorizer,
    cache: RwLock<Cache>,
}

/// The cached slices: a CLOCK ring of slots, and an index keyed by action, then
/// resource, then client, so that a lookup borrows the request's uids instead of
/// cloning them into a tuple.
#[derive(Debug, Default)]
struct Cache {
    index: HashMap<EntityUid, HashMap<EntityUid, HashMap<EntityUid, usize>>>,
    /// `None` for a slot freed by an eviction that made room by bytes.
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// The CLOCK hand: the next slot an insertion looks at.
    hand: usize,
    len: usize,
    bytes: usize,
}

#[derive(Debug)]
struct Slot {
    action: EntityUid,
    resource: EntityUid,
    client: EntityUid,
    slice: Arc<Slice>,
    /// Set by every hit (under the read lock), cleared when the hand passes.
    used: AtomicBool,
    /// Estimated bytes: the names, [`SLOT_OVERHEAD_BYTES`], and [`PER_POLICY_BYTES`] per
    /// policy the slice evaluates.
    weight: usize,
}

/// The byte length of a uid's id, as the cache counts it.
fn name_len(uid: &EntityUid) -> usize {
    uid.id().unescaped().len()
}

impl Cache {
    fn get(&self, action: &EntityUid, resource: &EntityUid, client: &EntityUid) -> Option<usize> {
        self.index
            .get(action)
            .and_then(|by_resource| by_resource.get(resource))
            .and_then(|by_client| by_client.get(client))
            .copied()
    }

    fn slot(&self, i: usize) -> Option<&Slot> {
        self.slots.get(i).and_then(Option::as_ref)
    }

    /// Caches `slice` unless it is already there (another thread computed it
    /// meanwhile) or too big to cache; returns the cached one, if any.
    fn insert(
        &mut self,
        action: &EntityUid,
        resource: &EntityUid,
        client: &EntityUid,
        slice: &Arc<Slice>,
    ) -> Option<Arc<Slice>> {
        if let Some(i) = self.get(action, resource, client) {
            return self.slot(i).map(|s| Arc::clone(&s.slice));
        }
        let names = name_len(resource) + name_len(client);
        if name_len(resource).max(name_len(client)) > MAX_CACHED_NAME_BYTES {
            return None;
        }
        let weight = names
            + name_len(action)
            + SLOT_OVERHEAD_BYTES
            + PER_POLICY_BYTES * slice.policies.policies().count();
        if weight > MAX_CACHE_BYTES {
            return None;
        }
        while self.len >= MAX_SLICES || self.bytes + weight > MAX_CACHE_BYTES {
            if !self.evict_one() {
                return None;
            }
        }
        let slot = Slot {
            action: action.clone(),
            resource: resource.clone(),
            client: client.clone(),
            slice: Arc::clone(slice),
            used: AtomicBool::new(false),
            weight,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        self.index
            .entry(action.clone())
            .or_default()
            .entry(resource.clone())
            .or_default()
            .insert(client.clone(), i);
        self.len += 1;
        self.bytes += weight;
        Some(Arc::clone(slice))
    }

    /// Evicts one slot: the first of the next [`CLOCK_SWEEP`] under the hand not used
    /// since the hand last passed it, else the last of them in use. Whether it evicted
    /// one.
    fn evict_one(&mut self) -> bool {
        let n = self.slots.len();
        if n == 0 {
            return false;
        }
        let (mut victim, mut fallback) = (None, None);
        for _ in 0..CLOCK_SWEEP {
            let i = self.hand % n;
            self.hand = (i + 1) % n;
            let Some(slot) = self.slot(i) else { continue };
            if !slot.used.swap(false, Ordering::Relaxed) {
                victim = Some(i);
                break;
            }
            fallback = Some(i);
        }
        // Every slot looked at was in use (or free): the last one in use goes. If all
        // were free, nothing is evicted this time and the hand has moved on.
        let victim = victim.or(fallback);
        let Some(slot) = victim.and_then(|i| self.slots[i].take().map(|s| (i, s))) else {
            return false;
        };
        let (i, slot) = slot;
        if let Some(by_resource) = self.index.get_mut(&slot.action) {
            if let Some(by_client) = by_resource.get_mut(&slot.resource) {
                by_client.remove(&slot.client);
                if by_client.is_empty() {
                    by_resource.remove(&slot.resource);
                }
            }
            if by_resource.is_empty() {
                self.index.remove(&slot.action);
            }
        }
        self.free.push(i);
        self.len -= 1;
        self.bytes -= slot.weight;
        true
    }
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
            .insert(action, resource, client, &slice)
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
mod tests {
    use std::collections::BTreeSet;
    use std::str::FromStr;

    use cedar_policy::{Authorizer, Context, Entities, Request, RestrictedExpression};

    use super::*;

    const POLICIES: &str = r#"
@id("any") permit(principal in Client::"a", action, resource) when { context.n > 1 };
@id("eq-action") permit(principal, action == Action::"tools/call", resource == Tool::"read");
@id("in-action") forbid(principal, action in [Action::"tools/call", Action::"prompts/get"], resource) when { context.n > 8 };
@id("eq-resource") forbid(principal, action, resource == Tool::"delete");
@id("is-type") permit(principal, action, resource is Prompt) when { context.n < 5 };
@id("is-in") forbid(principal, action, resource is Tool in Tool::"group") when { context.n == 3 };
@id("in-resource") permit(principal, action == Action::"resources/read", resource in Resource::"docs");
@id("errors") forbid(principal, action == Action::"tools/call", resource == Tool::"boom") when { context.missing };
@id("task-eq") forbid(principal == Task::"t", action, resource) when { context.n == 4 };
@id("client-eq") permit(principal == Client::"a", action, resource);
@id("in-b") permit(principal in Client::"b", action == Action::"tools/call", resource) when { context.n > 6 };
@id("in-task") forbid(principal in Task::"u", action, resource == Tool::"read") when { context.n == 7 };
@id("is-client") permit(principal is Client, action, resource);
@id("is-task-in-a") permit(principal is Task in Client::"a", action == Action::"prompts/get", resource) when { context.n == 2 };
@id("is-task-in-task") permit(principal is Task in Task::"v", action, resource) when { context.n == 1 };
@id("is-task") forbid(principal is Task, action, resource == Prompt::"review") when { context.n == 9 };
@id("errors-b") forbid(principal in Client::"b", action, resource == Tool::"boom") when { context.missing };
@id("static-list") permit(principal in Client::"a", action == Action::"tools/call", resource) when { resource in [Tool::"read", Tool::"boom"] };
@id("static-forbid") forbid(principal is Task in Client::"c", action, resource) when { resource is Tool && action != Action::"prompts/get" };
@id("static-unless") permit(principal, action in [Action::"resources/read"], resource) unless { resource == Resource::"other" };
@id("static-error") forbid(principal, action, resource == Tool::"delete") when { 9223372036854775807 + 1 > 0 };
@id("task-only") forbid(principal == Task::"u", action == Action::"prompts/get", resource);
@id("task-literal") permit(principal, action, resource == Prompt::"review") when { Task::"t" in Client::"a" };
"#;

    fn task_type() -> EntityTypeName {
        "Task".parse().unwrap()
    }

    fn uid(s: &str) -> EntityUid {
        EntityUid::from_str(s).unwrap()
    }

    /// The slice's decision, deciding policies and errors are the full set's, for every
    /// principal × action × resource × context combination, with the entities the
    /// authorizer builds (a task in its client).
    #[test]
    fn slicing_changes_no_decision() {
        let all = PolicySet::from_str(POLICIES).unwrap();
        let slices = Slices::new(all.clone(), task_type());
        let authorizer = Authorizer::new();
        let mut sliced_smaller = 0;
        for (task, client) in [("t", "a"), ("u", "b"), ("v", "c")] {
            let (principal, client) = (
                uid(&format!("Task::{task:?}")),
                uid(&format!("Client::{client:?}")),
            );
            let task = cedar_policy::Entity::new_no_attrs(
                principal.clone(),
                [client.clone()].into_iter().collect(),
            );
            let entities = Entities::from_entities(
                [
                    task,
                    cedar_policy::Entity::new_no_attrs(client.clone(), Default::default()),
                ],
                None,
            )
            .unwrap();
            sliced_smaller +=
                check_slices(&slices, &all, &authorizer, &principal, &client, &entities);
        }
        assert!(sliced_smaller > 30, "slicing leaves policies out");
    }

    /// Compares every slice for `principal` (a task of `client`) with the full set; how
    /// many slices were smaller than the set.
    fn check_slices(
        slices: &Slices,
        all: &PolicySet,
        authorizer: &Authorizer,
        principal: &EntityUid,
        client: &EntityUid,
        entities: &Entities,
    ) -> usize {
        let actions = ["tools/call", "resources/read", "prompts/get"];
        let resources = [
            r#"Tool::"read""#,
            r#"Tool::"delete""#,
            r#"Tool::"boom""#,
            r#"Tool::"group""#,
            r#"Prompt::"review""#,
            r#"Resource::"docs""#,
            r#"Resource::"other""#,
        ];
        let mut sliced_smaller = 0;
        let (mut decided_once, mut outcomes) = (0, BTreeSet::new());
        for action in actions.map(|a| uid(&format!("Action::{a:?}"))) {
            for resource in resources.map(uid) {
                let slice = slices.get(&action, &resource, client);
                if slice.policies.policies().count() < all.policies().count() {
                    sliced_smaller += 1;
                }
                decided_once += slice.permits.len() + slice.forbids.len();
                for n in 0..10 {
                    let context =
                        Context::from_pairs([("n".to_owned(), RestrictedExpression::new_long(n))])
                            .unwrap();
                    let request = Request::new(
                        principal.clone(),
                        action.clone(),
                        resource.clone(),
                        context,
                        None,
                    )
                    .unwrap();
                    let full = authorizer.is_authorized(&request, all, entities);
                    let d = full.diagnostics();
                    let want = (
                        full.decision() == Decision::Allow,
                        d.reason().map(ToString::to_string).collect::<BTreeSet<_>>(),
                        d.errors().map(ToString::to_string).collect::<BTreeSet<_>>(),
                    );
                    let evaluated = slice
                        .needs_cedar()
                        .then(|| authorizer.is_authorized(&request, &slice.policies, entities));
                    let got = slice.outcome(evaluated.as_ref());
                    let got = (
                        got.allowed,
                        got.policy_ids.into_iter().collect::<BTreeSet<_>>(),
                        got.errors.into_iter().collect::<BTreeSet<_>>(),
                    );
                    assert_eq!(got, want, "{principal} {action} on {resource} with n = {n}");
                    outcomes.insert((got.0, got.1.is_empty(), got.2.is_empty()));
                }
            }
        }
        // Allows, forbids, no permit, and errors all occur.
        for kind in [
            (true, false, true),
            (false, false, true),
            (false, true, true),
        ] {
            assert!(outcomes.contains(&kind), "{kind:?} in {outcomes:?}");
        }
        assert!(outcomes.iter().any(|o| !o.2), "{outcomes:?}");
        assert!(decided_once > 5, "some policies are decided once per slice");
        sliced_smaller
    }

    #[test]
    fn other_clients_policies_are_left_out() {
        let slices = Slices::new(PolicySet::from_str(POLICIES).unwrap(), task_type());
        let ids = |client: &str| -> BTreeSet<String> {
            let slice = slices.get(
                &uid(r#"Action::"tools/call""#),
                &uid(r#"Tool::"boom""#),
                &uid(&format!("Client::{client:?}")),
            );
            slice
                .policies
                .policies()
                .filter_map(|p| p.annotation("id").map(str::to_owned))
                .collect()
        };
        let (a, b) = (ids("a"), ids("b"));
        for kept in ["any", "task-eq", "is-task-in-task"] {
            assert!(a.contains(kept), "{kept} for a: {a:?}");
        }
        for left in ["in-b", "errors-b", "client-eq", "is-client"] {
            assert!(!a.contains(left), "{left} for a: {a:?}");
        }
        assert!(b.contains("in-b") && b.contains("errors-b") && !b.contains("any"));
    }

    #[test]
    fn the_cache_is_bounded() {
        let slices = Slices::new(PolicySet::from_str(POLICIES).unwrap(), task_type());
        let action = uid(r#"Action::"tools/call""#);
        let client = uid(r#"Client::"a""#);
        for i in 0..MAX_SLICES + 100 {
            slices.get(&action, &uid(&format!("Tool::\"t{i}\"")), &client);
        }
        let cache = slices.cache.read().unwrap();
        assert_eq!(cache.len, MAX_SLICES);
        assert_eq!(cache.index[&action].len(), MAX_SLICES);
        assert_eq!(cache.slots.iter().flatten().count(), MAX_SLICES);
        assert!(cache.slots.len() <= MAX_SLICES);
    }

    /// Resource id bytes held by the cache (the part of its memory a caller chooses).
    fn resident_resource_bytes(slices: &Slices) -> usize {
        let cache = slices.cache.read().unwrap();
        cache
            .slots
            .iter()
            .flatten()
            .map(|s| s.resource.id().escaped().len())
            .sum()
    }

    /// A caller that fills the cache with resource names of its choosing does not stop
    /// the resources others use from being cached, nor push out the ones in use.
    #[test]
    fn a_cache_filled_with_chosen_names_still_caches_what_is_used() {
        let slices = Slices::new(PolicySet::from_str(POLICIES).unwrap(), task_type());
        let action = uid(r#"Action::"tools/call""#);
        let client = uid(r#"Client::"a""#);
        let (read, boom) = (uid(r#"Tool::"read""#), uid(r#"Tool::"boom""#));
        let hot = slices.get(&action, &boom, &client);
        for i in 0..MAX_SLICES * 2 {
            slices.get(&action, &uid(&format!("Tool::\"junk-{i}\"")), &client);
            // Another client keeps using its slice while the scan goes on.
            if i % 64 == 0 {
                slices.get(&action, &boom, &client);
            }
        }
        assert!(
            Arc::ptr_eq(&hot, &slices.get(&action, &boom, &client)),
            "a slice in use through the scan is still cached"
        );
        let first = slices.get(&action, &read, &client);
        let again = slices.get(&action, &read, &client);
        assert!(
            Arc::ptr_eq(&first, &again),
            "the slice of a resource in use is cached again after the cache filled up"
        );
        assert_eq!(slices.cache.read().unwrap().len, MAX_SLICES);
    }

    /// Long resource names do not grow the cache past its byte budget; a name over
    /// [`MAX_CACHED_NAME_BYTES`] is decided without being cached.
    #[test]
    fn long_resource_names_stay_within_the_byte_budget() {
        let slices = Slices::new(PolicySet::from_str(POLICIES).unwrap(), task_type());
        let action = uid(r#"Action::"resources/read""#);
        let client = uid(r#"Client::"a""#);
        let long = "x".repeat(MAX_CACHED_NAME_BYTES - 8);
        for i in 0..MAX_SLICES * 2 {
            slices.get(
                &action,
                &uid(&format!("Resource::\"{i:07}{long}\"")),
                &client,
            );
        }
        let bytes = resident_resource_bytes(&slices);
        assert!(
            bytes <= 8 << 20,
            "{bytes} bytes of chosen resource names are held"
        );
        {
            let cache = slices.cache.read().unwrap();
            let weights: usize = cache.slots.iter().flatten().map(|s| s.weight).sum();
            assert_eq!(cache.bytes, weights, "the byte count matches the slots");
            assert!(cache.bytes <= MAX_CACHE_BYTES, "{}", cache.bytes);
        }
        let huge = uid(&format!("Resource::\"{}\"", "y".repeat(16 << 20)));
        let once = slices.get(&action, &huge, &client);
        assert!(!Arc::ptr_eq(&once, &slices.get(&action, &huge, &client)));
        assert!(resident_resource_bytes(&slices) <= 8 << 20);
    }

    /// With many policies per slice, the byte budget binds before the entry count.
    #[test]
    fn big_slices_are_bounded_by_bytes() {
        let text: String = (0..300)
            .map(|i| format!("permit(principal, action, resource) when {{ context.n == {i} }};\n"))
            .collect();
        let slices = Slices::new(PolicySet::from_str(&text).unwrap(), task_type());
        let action = uid(r#"Action::"resources/read""#);
        let client = uid(r#"Client::"a""#);
        for i in 0..2000 {
            slices.get(&action, &uid(&format!("Resource::\"r{i}\"")), &client);
        }
        let cache = slices.cache.read().unwrap();
        assert!(cache.bytes <= MAX_CACHE_BYTES, "{}", cache.bytes);
        assert!(
            cache.len < 2000 && cache.len * 300 * PER_POLICY_BYTES <= MAX_CACHE_BYTES,
            "{} slices of 300 policies",
            cache.len
        );
    }

    /// After the cache churned through chosen names, every slice still decides as the
    /// full policy set does.
    #[test]
    fn decisions_are_unchanged_after_eviction() {
        let all = PolicySet::from_str(POLICIES).unwrap();
        let slices = Slices::new(all.clone(), task_type());
        for action in ["tools/call", "resources/read", "prompts/get"] {
            let action = uid(&format!("Action::{action:?}"));
            for i in 0..MAX_SLICES {
                for (kind, client) in [("Tool", "a"), ("Resource", "b"), ("Prompt", "c")] {
                    slices.get(
                        &action,
                        &uid(&format!("{kind}::\"junk-{i}\"")),
                        &uid(&format!("Client::{client:?}")),
                    );
                }
            }
        }
        let authorizer = Authorizer::new();
        for (task, client) in [("t", "a"), ("u", "b"), ("v", "c")] {
            let (principal, client) = (
                uid(&format!("Task::{task:?}")),
                uid(&format!("Client::{client:?}")),
            );
            let entities = Entities::from_entities(
                [
                    cedar_policy::Entity::new_no_attrs(
                        principal.clone(),
                        [client.clone()].into_iter().collect(),
                    ),
                    cedar_policy::Entity::new_no_attrs(client.clone(), Default::default()),
                ],
                None,
            )
            .unwrap();
            // Twice: computed (after eviction), then from the cache.
            for _ in 0..2 {
                check_slices(&slices, &all, &authorizer, &principal, &client, &entities);
            }
        }
    }
}

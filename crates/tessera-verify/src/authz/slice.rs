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

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use cedar_policy::{
    ActionConstraint, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, PrincipalConstraint,
    ResourceConstraint,
};

use super::reads::ArgumentReads;

/// At most this many (action, resource, client) slices are kept; past it, a slice is computed
/// per request (resource names come from requests, and must not grow memory without
/// bound).
const MAX_SLICES: usize = 4096;

/// The policies that can apply to one (action, resource), and what they read.
#[derive(Debug)]
pub(crate) struct Slice {
    /// The policies Cedar evaluates.
    pub(crate) policies: PolicySet,
    /// The call arguments any of them can read (see [`super::reads`]).
    pub(crate) arguments: ArgumentReads,
}

#[derive(Debug)]
pub(crate) struct Slices {
    all: PolicySet,
    /// The type of every principal.
    task_type: EntityTypeName,
    /// Per policy, computed once at load: a slice only unions them.
    reads: HashMap<PolicyId, ArgumentReads>,
    cache: RwLock<Cache>,
}

/// Keyed by action, then resource, then client, so that a lookup borrows the
/// request's uids instead of cloning them into a tuple.
#[derive(Debug, Default)]
struct Cache {
    slices: HashMap<EntityUid, HashMap<EntityUid, HashMap<EntityUid, Arc<Slice>>>>,
    len: usize,
}

impl Slices {
    /// Slices of `all`, whose principals are entities of type `task_type`.
    pub(crate) fn new(all: PolicySet, task_type: EntityTypeName) -> Self {
        let reads = all
            .policies()
            .map(|p| (p.id().clone(), ArgumentReads::of_policy(p)))
            .collect();
        Self {
            all,
            task_type,
            reads,
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
        if let Some(hit) = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .slices
            .get(action)
            .and_then(|by_resource| by_resource.get(resource))
            .and_then(|by_client| by_client.get(client))
        {
            return Arc::clone(hit);
        }
        let slice = Arc::new(self.slice(action, resource, client));
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.len < MAX_SLICES {
            let by_client = cache
                .slices
                .entry(action.clone())
                .or_default()
                .entry(resource.clone())
                .or_default();
            if by_client
                .insert(client.clone(), Arc::clone(&slice))
                .is_none()
            {
                cache.len += 1;
            }
        }
        slice
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
        let mut arguments = ArgumentReads::default();
        for p in &applicable {
            // Every policy was analysed at load; a missing one would be a bug here,
            // and reading everything is the safe answer to it.
            arguments.extend(self.reads.get(p.id()).unwrap_or(&ArgumentReads::All));
        }
        // The policies come from a valid set, so their ids are unique.
        let policies = PolicySet::from_policies(applicable.into_iter().cloned())
            .unwrap_or_else(|_| self.all.clone());
        Slice {
            policies,
            arguments,
        }
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
        for action in actions.map(|a| uid(&format!("Action::{a:?}"))) {
            for resource in resources.map(uid) {
                let slice = &slices.get(&action, &resource, client).policies;
                if slice.policies().count() < all.policies().count() {
                    sliced_smaller += 1;
                }
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
                    let part = authorizer.is_authorized(&request, slice, entities);
                    let why = |r: &cedar_policy::Response| {
                        let d = r.diagnostics();
                        (
                            d.reason().map(ToString::to_string).collect::<BTreeSet<_>>(),
                            d.errors().count(),
                        )
                    };
                    assert_eq!(
                        (full.decision(), why(&full)),
                        (part.decision(), why(&part)),
                        "{principal} {action} on {resource} with n = {n}"
                    );
                }
            }
        }
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
        assert_eq!(cache.slices[&action].len(), MAX_SLICES);
    }
}

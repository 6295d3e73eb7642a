//! The policies that can apply to one (action, resource) pair.
//!
//! Cedar evaluates every policy of the set it is given, and builds and drops each
//! policy's condition expression per request, so a decision costs roughly linear time
//! in the number of policies. A policy whose scope names another action, another
//! resource or another resource type cannot be satisfied, and (Cedar's `&&` short-
//! circuits before the `when` clause) cannot error either: leaving it out changes no
//! decision. Slices are computed once per (action, resource) and kept with the policy
//! set they come from, so a reload starts afresh.
//!
//! `action in [...]` and `resource in E` are kept whatever they name: they depend on
//! entity hierarchies, and keeping a policy is always safe (dropping a `forbid` that
//! could apply would not be). `==` and `is` depend on the request alone.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use cedar_policy::{ActionConstraint, EntityUid, Policy, PolicyId, PolicySet, ResourceConstraint};

use super::reads::ArgumentReads;

/// At most this many (action, resource) slices are kept; past it, a slice is computed
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
    /// Per policy, computed once at load: a slice only unions them.
    reads: HashMap<PolicyId, ArgumentReads>,
    cache: RwLock<Cache>,
}

/// Keyed by action, then resource, so that a lookup borrows the request's uids
/// instead of cloning them into a pair.
#[derive(Debug, Default)]
struct Cache {
    slices: HashMap<EntityUid, HashMap<EntityUid, Arc<Slice>>>,
    len: usize,
}

impl Slices {
    /// Slices of `all`.
    pub(crate) fn new(all: PolicySet) -> Self {
        let reads = all
            .policies()
            .map(|p| (p.id().clone(), ArgumentReads::of_policy(p)))
            .collect();
        Self {
            all,
            reads,
            cache: RwLock::default(),
        }
    }

    /// The policies of the whole set that can apply to `action` on `resource`.
    pub(crate) fn get(&self, action: &EntityUid, resource: &EntityUid) -> Arc<Slice> {
        if let Some(hit) = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .slices
            .get(action)
            .and_then(|by_resource| by_resource.get(resource))
        {
            return Arc::clone(hit);
        }
        let slice = Arc::new(self.slice(action, resource));
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.len < MAX_SLICES {
            let by_resource = cache.slices.entry(action.clone()).or_default();
            if by_resource
                .insert(resource.clone(), Arc::clone(&slice))
                .is_none()
            {
                cache.len += 1;
            }
        }
        slice
    }

    fn slice(&self, action: &EntityUid, resource: &EntityUid) -> Slice {
        let applicable: Vec<&Policy> = self
            .all
            .policies()
            .filter(|p| may_apply(p, action, resource))
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
"#;

    fn uid(s: &str) -> EntityUid {
        EntityUid::from_str(s).unwrap()
    }

    /// The slice's decision, deciding policies and errors are the full set's, for every
    /// action × resource × context combination.
    #[test]
    fn slicing_changes_no_decision() {
        let all = PolicySet::from_str(POLICIES).unwrap();
        let slices = Slices::new(all.clone());
        let task = cedar_policy::Entity::new_no_attrs(
            uid(r#"Task::"t""#),
            [uid(r#"Client::"a""#)].into_iter().collect(),
        );
        let entities = Entities::from_entities([task], None).unwrap();
        let authorizer = Authorizer::new();
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
                let slice = &slices.get(&action, &resource).policies;
                if slice.policies().count() < all.policies().count() {
                    sliced_smaller += 1;
                }
                for n in 0..10 {
                    let context =
                        Context::from_pairs([("n".to_owned(), RestrictedExpression::new_long(n))])
                            .unwrap();
                    let request = Request::new(
                        uid(r#"Task::"t""#),
                        action.clone(),
                        resource.clone(),
                        context,
                        None,
                    )
                    .unwrap();
                    let full = authorizer.is_authorized(&request, &all, &entities);
                    let part = authorizer.is_authorized(&request, slice, &entities);
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
                        "{action} on {resource} with n = {n}"
                    );
                }
            }
        }
        assert!(sliced_smaller > 10, "slicing leaves policies out");
    }

    #[test]
    fn the_cache_is_bounded() {
        let slices = Slices::new(PolicySet::from_str(POLICIES).unwrap());
        let action = uid(r#"Action::"tools/call""#);
        for i in 0..MAX_SLICES + 100 {
            slices.get(&action, &uid(&format!("Tool::\"t{i}\"")));
        }
        let cache = slices.cache.read().unwrap();
        assert_eq!(cache.len, MAX_SLICES);
        assert_eq!(cache.slices[&action].len(), MAX_SLICES);
    }
}

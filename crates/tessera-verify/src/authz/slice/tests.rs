use std::collections::BTreeSet;
use std::str::FromStr;

use cedar_policy::{Authorizer, Context, Entities, Request, RestrictedExpression};

use super::cache::{MAX_CACHE_BYTES, MAX_CACHED_NAME_BYTES, MAX_SLICES, PER_POLICY_BYTES};
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
        sliced_smaller += check_slices(&slices, &all, &authorizer, &principal, &client, &entities);
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

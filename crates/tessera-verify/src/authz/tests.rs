//! The decision table, policy loading and hot reload.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::json;
use tessera_identity::ScopeKind;

use super::policy::{PolicyError, PolicyFiles, PolicyStore};
use super::*;
use crate::testutil::{SERVER, TASK_ULID, bearer_peer, task_peer};

/// The base schema with the arguments [`POLICIES`] read.
fn schema() -> String {
    schema_with_arguments("{ path?: String, force?: Bool }")
}

pub(crate) const POLICIES: &str = r#"
@id("reviewers-call")
permit(principal in Client::"code-reviewer", action == Action::"tools/call", resource);

@id("read-all")
permit(principal, action == Action::"resources/read", resource);

@id("no-etc")
forbid(principal, action == Action::"tools/call", resource)
when { context.arguments has path && context.arguments.path like "/etc/*" };

@id("no-force-push")
forbid(principal, action == Action::"tools/call", resource == Tool::"push")
when { context.arguments has force && context.arguments.force };
"#;

const SCOPES: &[&str] = &[
    "github/tool/get_pull_request",
    "github/tool/list_*",
    "github/tool/push",
    "github/prompt/review",
    "github/resource/file:///handbook/*",
];

pub(crate) fn authorizer(revocations: RevocationWatcher) -> Authorizer {
    let store = Arc::new(PolicyStore::from_strs(POLICIES, &schema()).unwrap());
    Authorizer::new(SERVER.parse().unwrap(), store, revocations)
}

fn fresh() -> RevocationWatcher {
    RevocationWatcher::from_static([], [])
}

fn args(v: serde_json::Value) -> Option<serde_json::Map<String, serde_json::Value>> {
    Some(v.as_object().unwrap().clone())
}

/// `peer` (a task) with its claims edited by `edit`.
fn with_claims(peer: Peer, edit: impl FnOnce(&mut tessera_identity::TaskClaims)) -> Peer {
    let Peer::Task {
        client,
        task,
        mut claims,
        credential,
    } = peer
    else {
        panic!("not a task peer: {peer}")
    };
    edit(&mut claims);
    Peer::Task {
        client,
        task,
        claims,
        credential,
    }
}

fn decide(a: &Authorizer, req: McpRequest) -> Decision {
    a.authorize(&task_peer(SCOPES), &req, SystemTime::now())
}

#[test]
fn decision_table() {
    let a = authorizer(fresh());
    let cases: Vec<(&str, McpRequest, Reason, &[&str])> = vec![
        (
            "exact scope",
            McpRequest::call_tool("get_pull_request", None),
            Reason::Allowed,
            &["reviewers-call"],
        ),
        (
            "prefix scope",
            McpRequest::call_tool("list_issues", args(json!({"path": "/src"}))),
            Reason::Allowed,
            &["reviewers-call"],
        ),
        (
            "out of scope",
            McpRequest::call_tool("delete_repo", None),
            Reason::OutOfScope,
            &[],
        ),
        (
            "resource prefix",
            McpRequest::read_resource("file:///handbook/onboarding.md"),
            Reason::Allowed,
            &["read-all"],
        ),
        (
            "resource outside prefix",
            McpRequest::read_resource("file:///secrets/key"),
            Reason::OutOfScope,
            &[],
        ),
        (
            "resource traversal",
            McpRequest::read_resource("file:///handbook/../secrets"),
            Reason::OutOfScope,
            &[],
        ),
        (
            "forbid by argument",
            McpRequest::call_tool("get_pull_request", args(json!({"path": "/etc/passwd"}))),
            Reason::PolicyForbids,
            &["no-etc"],
        ),
        (
            "forbid by bool argument",
            McpRequest::call_tool("push", args(json!({"force": true}))),
            Reason::PolicyForbids,
            &["no-force-push"],
        ),
        (
            "bool argument false",
            McpRequest::call_tool("push", args(json!({"force": false}))),
            Reason::Allowed,
            &["reviewers-call"],
        ),
        (
            "no permit",
            McpRequest::get_prompt("review", None),
            Reason::NoPolicyPermits,
            &[],
        ),
        (
            "type error fails closed",
            McpRequest::call_tool("get_pull_request", args(json!({"path": 5}))),
            Reason::PolicyError,
            &[],
        ),
        (
            "unsupported argument",
            McpRequest::call_tool("get_pull_request", args(json!({"ratio": 1.23456789}))),
            Reason::UnsupportedArguments,
            &[],
        ),
    ];
    for (name, req, reason, ids) in cases {
        let d = decide(&a, req);
        assert_eq!(d.reason, reason, "{name}: {d:?}");
        assert_eq!(d.allowed, reason == Reason::Allowed, "{name}");
        if !ids.is_empty() {
            assert_eq!(d.policy_ids, ids, "{name}");
        }
    }
}

#[test]
fn revoked_task_is_refused() {
    let a = authorizer(RevocationWatcher::from_static(
        [TASK_ULID.parse().unwrap()],
        [],
    ));
    let d = decide(&a, McpRequest::call_tool("get_pull_request", None));
    assert_eq!(d.reason, Reason::Revoked);
    let a = authorizer(RevocationWatcher::from_static([], ["42".to_owned()]));
    let d = decide(&a, McpRequest::call_tool("get_pull_request", None));
    assert_eq!(d.reason, Reason::Revoked, "revoked by serial");
}

/// An access token's peer is revoked with its task, and nothing of the token (its
/// `jti`, even one spelled like a revoked serial) is ever looked up as a serial.
#[test]
fn bearer_task_is_revoked_by_task_id_never_by_serial() {
    let bearer = bearer_peer(SCOPES, &["github/tool/get_pull_request"], "42", 300, false);
    let req = McpRequest::call_tool("get_pull_request", None);
    let serial_42 = authorizer(RevocationWatcher::from_static([], ["42".to_owned()]));
    assert_eq!(
        serial_42
            .authorize(&task_peer(SCOPES), &req, SystemTime::now())
            .reason,
        Reason::Revoked,
        "the certificate with serial 42 is revoked"
    );
    let d = serial_42.authorize(&bearer, &req, SystemTime::now());
    assert!(d.allowed, "a jti is not a serial: {d:?}");
    let ended = authorizer(RevocationWatcher::from_static(
        [TASK_ULID.parse().unwrap()],
        [],
    ));
    let d = ended.authorize(&bearer, &req, SystemTime::now());
    assert_eq!(d.reason, Reason::Revoked, "revoked with its task");
    let stale = authorizer(RevocationWatcher::detached(Duration::from_secs(30)));
    let d = stale.authorize(&bearer, &req, SystemTime::now());
    assert_eq!(d.reason, Reason::RevocationFeedStale);
}

/// A bearer task is decided on the token's scopes and expiry, within its task's.
#[test]
fn bearer_task_is_held_to_the_tokens_scopes_and_expiry() {
    let a = authorizer(fresh());
    let bearer = bearer_peer(SCOPES, &["github/tool/get_pull_request"], "j", 60, true);
    let now = SystemTime::now();
    assert!(
        a.authorize(
            &bearer,
            &McpRequest::call_tool("get_pull_request", None),
            now
        )
        .allowed
    );
    let d = a.authorize(&bearer, &McpRequest::call_tool("push", None), now);
    assert_eq!(
        d.reason,
        Reason::OutOfScope,
        "granted to the task, not the token"
    );
    assert!(!a.permits_listing(&bearer, ScopeKind::Tool, "push"));
    assert!(a.permits_listing(&bearer, ScopeKind::Tool, "get_pull_request"));
    // Cedar sees the token's scopes too.
    assert_eq!(
        bearer.claims().unwrap().scopes,
        vec!["github/tool/get_pull_request".parse().unwrap()]
    );
    let later = now + Duration::from_secs(61);
    let d = a.authorize(
        &bearer,
        &McpRequest::call_tool("get_pull_request", None),
        later,
    );
    assert_eq!(
        d.reason,
        Reason::Expired,
        "the token's exp, before the task's"
    );
    assert!(d.detail.contains("access token expired"), "{}", d.detail);
}

#[test]
fn stale_feed_fails_closed() {
    let a = authorizer(RevocationWatcher::detached(Duration::from_secs(30)));
    let d = decide(&a, McpRequest::call_tool("get_pull_request", None));
    assert_eq!(d.reason, Reason::RevocationFeedStale);
    assert_eq!(d.reason.as_str(), "revocation_feed_stale");
}

#[test]
fn expired_certificate_and_deadline_are_refused() {
    let a = authorizer(fresh());
    let peer = task_peer(SCOPES);
    let later = SystemTime::now() + Duration::from_secs(7200);
    let d = a.authorize(
        &peer,
        &McpRequest::call_tool("get_pull_request", None),
        later,
    );
    assert_eq!(d.reason, Reason::Expired);
    let peer = with_claims(peer, |c| c.deadline_unix = 1);
    let d = a.authorize(
        &peer,
        &McpRequest::call_tool("get_pull_request", None),
        SystemTime::now(),
    );
    assert_eq!(d.reason, Reason::Expired);
}

#[test]
fn non_task_peers_and_other_servers_are_refused() {
    let a = authorizer(fresh());
    let client = Peer::Client {
        client: "spiffe://acme.corp/client/code-reviewer".parse().unwrap(),
        credential: Credential::Certificate {
            serial_hex: "01".into(),
            not_after_unix: i64::MAX,
            node_ca_serials: Vec::new(),
        },
    };
    let d = a.authorize(
        &client,
        &McpRequest::call_tool("get_pull_request", None),
        SystemTime::now(),
    );
    assert_eq!(d.reason, Reason::NotATask);
    let store = Arc::new(PolicyStore::from_strs(POLICIES, &schema()).unwrap());
    let other = Authorizer::new(
        "spiffe://acme.corp/mcp/gitlab".parse().unwrap(),
        store,
        fresh(),
    );
    let d = other.authorize(
        &task_peer(SCOPES),
        &McpRequest::call_tool("get_pull_request", None),
        SystemTime::now(),
    );
    assert_eq!(d.reason, Reason::WrongServer);
}

#[test]
fn listing_uses_the_same_checks() {
    let a = authorizer(fresh());
    let p = task_peer(SCOPES);
    assert!(a.permits_listing(&p, ScopeKind::Tool, "get_pull_request"));
    assert!(a.permits_listing(&p, ScopeKind::Tool, "list_commits"));
    assert!(!a.permits_listing(&p, ScopeKind::Tool, "delete_repo"));
    assert!(
        !a.permits_listing(&p, ScopeKind::Prompt, "review"),
        "no permit policy"
    );
}

#[test]
fn policies_must_validate_strictly() {
    let typo = "// comment\npermit(principal, action == Action::\"tools/call\", resource)\n  when { context.argumentz has path };";
    let err = PolicyStore::from_strs(typo, &schema()).unwrap_err();
    assert!(matches!(err, PolicyError::Validation { .. }), "{err}");
    assert!(
        err.to_string().contains("line 3, column 10") && err.to_string().contains("argumentz"),
        "the operator is told where the typo is: {err}"
    );
    let syntax = "permit(principal action resource);";
    let err = PolicyStore::from_strs(syntax, &schema()).unwrap_err();
    assert!(matches!(err, PolicyError::Parse { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("policies <text>: line 1, column 18: "),
        "{err}"
    );
    assert!(
        !err.to_string().contains("ParseErrors("),
        "no Debug dump: {err}"
    );
    let dup = r#"@id("a") permit(principal, action, resource); @id("a") forbid(principal, action, resource);"#;
    assert!(matches!(
        PolicyStore::from_strs(dup, &schema()),
        Err(PolicyError::DuplicateId(_))
    ));
    let template = "permit(principal == ?principal, action, resource);";
    assert!(matches!(
        PolicyStore::from_strs(template, &schema()),
        Err(PolicyError::Templates)
    ));
    PolicyStore::from_strs("", BASE_SCHEMA).unwrap();
}

#[test]
fn bad_policy_file_keeps_last_good_set() {
    let dir = tempfile::tempdir().unwrap();
    let files = PolicyFiles {
        policies: dir.path().join("policy.cedar"),
        schema: dir.path().join("schema.cedarschema"),
    };
    std::fs::write(&files.policies, POLICIES).unwrap();
    std::fs::write(&files.schema, schema()).unwrap();
    let store = Arc::new(PolicyStore::load(files.clone()).unwrap());
    let before = store.policy_ids();
    assert_eq!(before.len(), 4);

    std::fs::write(
        &files.policies,
        "permit(principal, action, resource) when { context.nope };",
    )
    .unwrap();
    assert!(store.reload().is_err());
    assert_eq!(
        store.policy_ids(),
        before,
        "a bad file keeps the last good set"
    );
    let a = Authorizer::new(SERVER.parse().unwrap(), store.clone(), fresh());
    assert!(decide(&a, McpRequest::call_tool("get_pull_request", None)).allowed);

    std::fs::write(
        &files.policies,
        r#"@id("only") forbid(principal, action, resource);"#,
    )
    .unwrap();
    store.reload().unwrap();
    assert_eq!(store.policy_ids(), vec!["only".to_owned()]);
    let d = decide(&a, McpRequest::call_tool("get_pull_request", None));
    assert_eq!(d.reason, Reason::PolicyForbids);
}

#[tokio::test]
async fn watched_policy_file_reloads_on_change() {
    let dir = tempfile::tempdir().unwrap();
    let files = PolicyFiles {
        policies: dir.path().join("policy.cedar"),
        schema: dir.path().join("schema.cedarschema"),
    };
    std::fs::write(&files.policies, POLICIES).unwrap();
    std::fs::write(&files.schema, schema()).unwrap();
    let store = Arc::new(PolicyStore::load(files.clone()).unwrap());
    let task = store.spawn_watch(Duration::from_millis(20));
    tokio::time::sleep(Duration::from_millis(50)).await;
    std::fs::write(
        &files.policies,
        r#"@id("new-one") permit(principal, action, resource);"#,
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.policy_ids() != vec!["new-one".to_owned()] {
        assert!(tokio::time::Instant::now() < deadline, "reload not seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The task ends with its guard and lets go of the store it reloads.
    task.shutdown().await;
    assert_eq!(
        Arc::strong_count(&store),
        1,
        "the stopped task let go of the store"
    );
    let task = store.spawn_watch(Duration::from_millis(20));
    assert_eq!(Arc::strong_count(&store), 2);
    drop(task);
    while Arc::strong_count(&store) > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a dropped guard's task lingers"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn foreign_client_is_not_confused_with_local_one() {
    let a = authorizer(fresh());
    assert_eq!(
        a.client_entity_id(&"spiffe://acme.corp/client/x".parse().unwrap()),
        "x"
    );
    assert_eq!(
        a.client_entity_id(&"spiffe://other.td/client/x".parse().unwrap()),
        "spiffe://other.td/client/x"
    );
}

/// The task's signed facts are principal attributes a policy can use.
#[test]
fn task_facts_are_principal_attributes() {
    let policies = r#"
@id("alice-in-work-hours")
permit(principal, action == Action::"tools/call", resource)
when {
  principal.subject like "*@acme.corp" &&
  principal.client == "code-reviewer" &&
  principal.consent_id == "consent-1" &&
  principal.purpose like "review*" &&
  principal.scopes.contains("github/tool/get_pull_request") &&
  context.now < principal.deadline
};
@id("not-for-bob") forbid(principal, action, resource) when { principal.subject == "bob@acme.corp" };
"#;
    let store = Arc::new(PolicyStore::from_strs(policies, &schema()).unwrap());
    let a = Authorizer::new(SERVER.parse().unwrap(), store, fresh());
    let d = decide(&a, McpRequest::call_tool("get_pull_request", None));
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.policy_ids, ["alice-in-work-hours"]);

    // Same task id, other signed facts (as a federated CA could mint): the cached
    // entity of the first is not reused, the new facts decide.
    let bob = with_claims(task_peer(SCOPES), |c| c.subject = "bob@acme.corp".into());
    let req = McpRequest::call_tool("get_pull_request", None);
    let d = a.decide(&bob, &req, SystemTime::now());
    assert_eq!(d.reason, Reason::PolicyForbids, "{d:?}");
    assert_eq!(d.policy_ids, ["not-for-bob"]);
    assert_eq!(a.entities.len(), 1, "one entry per task id");
    // And back: alice's facts decide again, not bob's.
    assert!(decide(&a, McpRequest::call_tool("get_pull_request", None)).allowed);
}

/// A task calling with its certificate and with narrowed access tokens keeps one
/// entity per distinct set of claims (a few at most), not one rebuilt at each switch;
/// each decides on its own scopes.
#[test]
fn certificate_and_token_peers_of_a_task_keep_their_own_entities() {
    let policies = r#"
@id("needs-push-scope")
permit(principal, action == Action::"tools/call", resource)
when { principal.scopes.contains("github/tool/push") };
"#;
    let store = Arc::new(PolicyStore::from_strs(policies, &schema()).unwrap());
    let a = Authorizer::new(SERVER.parse().unwrap(), store, fresh());
    let cert = task_peer(SCOPES);
    let narrow = bearer_peer(SCOPES, &["github/tool/get_pull_request"], "j1", 60, false);
    let push = bearer_peer(SCOPES, &["github/tool/push"], "j2", 60, false);
    let task: tessera_identity::TaskId = TASK_ULID.parse().unwrap();
    let now = SystemTime::now();
    let entity = |p: &Peer| {
        let claims = p.claims().unwrap();
        a.entities
            .task(&a.types, claims, "code-reviewer", p.not_after_unix(), 0)
            .unwrap()
    };
    let (first_cert, first_narrow) = (entity(&cert), entity(&narrow));
    for _ in 0..3 {
        assert!(Arc::ptr_eq(&entity(&cert), &first_cert));
        assert!(Arc::ptr_eq(&entity(&narrow), &first_narrow));
    }
    assert_eq!(a.entities.variants(&task), 2);
    // Cedar sees each peer's own scopes.
    let call = |p: &Peer, tool: &str| a.decide(p, &McpRequest::call_tool(tool, None), now);
    assert!(
        call(&cert, "get_pull_request").allowed,
        "the certificate holds push"
    );
    assert_eq!(
        call(&narrow, "get_pull_request").reason,
        Reason::NoPolicyPermits,
        "the narrow token does not"
    );
    assert!(call(&push, "push").allowed);
    // Bounded: more variants push the oldest out.
    for scope in [
        "github/tool/list_a",
        "github/tool/list_b",
        "github/tool/list_c",
    ] {
        entity(&bearer_peer(SCOPES, &[scope], "j", 60, false));
    }
    assert_eq!(a.entities.variants(&task), entities::MAX_VARIANTS);
    assert!(!Arc::ptr_eq(&entity(&cert), &first_cert), "the oldest went");
}

/// Policies that read arguments by name, as a whole, in depth, not at all, and one that
/// errors on some values: for the argument-reading equivalence test.
fn reading_schema() -> String {
    schema_with_arguments(
        "{ path?: String, force?: Bool, limit?: Long, tags?: Set<String>, opts?: { depth?: Long } }",
    )
}

const READING_POLICIES: &str = r#"
@id("call") permit(principal in Client::"code-reviewer", action == Action::"tools/call", resource);
@id("no-etc") forbid(principal, action == Action::"tools/call", resource == Tool::"get_pull_request")
  when { context.arguments has path && context.arguments.path like "/etc/*" };
@id("no-force") forbid(principal, action, resource == Tool::"push")
  when { context.arguments has force && context.arguments.force };
@id("whole") forbid(principal, action, resource == Tool::"list_whole")
  when { (if context.now > 0 then context.arguments else context.arguments) has limit };
@id("deep") forbid(principal, action, resource == Tool::"list_deep")
  when { context.arguments has opts.depth && context.arguments.opts.depth > 3 };
@id("overflow") forbid(principal, action, resource == Tool::"list_overflow")
  when { context has arguments.limit && context.arguments.limit * 1000000000000 > 0 };
@id("deadline") forbid(principal, action, resource) when { context.now > principal.deadline };
@id("prompt") permit(principal, action == Action::"prompts/get", resource)
  when { context.arguments has tags && context.arguments.tags.contains("ok") };
@id("static-list") permit(principal in Client::"code-reviewer", action == Action::"tools/call", resource)
  when { resource in [Tool::"push", Tool::"other"] };
@id("static-forbid") forbid(principal, action, resource)
  when { resource == Tool::"list_deep" && action == Action::"tools/call" };
@id("other-client") permit(principal in Client::"ci-bot", action, resource);
"#;

/// What Cedar decides over the whole, unsliced set with every argument converted:
/// the (allowed, reason, deciding policies, error count) the authorizer must match.
fn unsliced_reference(
    a: &Authorizer,
    peer: &Peer,
    req: &McpRequest,
    now: i64,
) -> (bool, Reason, std::collections::BTreeSet<String>, usize) {
    let arguments = match &req.arguments {
        None => RestrictedExpression::new_record(Vec::new()).unwrap(),
        Some(map) => {
            let c = json::to_cedar_record(map);
            if !c.unsupported.is_empty() {
                return (false, Reason::UnsupportedArguments, Default::default(), 0);
            }
            c.record
        }
    };
    let Peer::Task { client, claims, .. } = peer else {
        unreachable!()
    };
    let t = a
        .entities
        .task(&a.types, claims, &a.client_entity_id(client), i64::MAX, now)
        .unwrap();
    let resource: EntityUid = format!("{}::{:?}", req.method.resource_type().unwrap(), req.target)
        .parse()
        .unwrap();
    let action: EntityUid = format!("Action::{:?}", req.method.as_str())
        .parse()
        .unwrap();
    let context = Context::from_pairs([
        ("now".to_owned(), RestrictedExpression::new_long(now)),
        ("arguments".to_owned(), arguments),
    ])
    .unwrap();
    let request = Request::new(t.principal.clone(), action, resource, context, None).unwrap();
    let all = &a.policies().current().policies;
    let r = a.cedar.is_authorized(&request, all, &t.entities);
    let ids: std::collections::BTreeSet<String> =
        r.diagnostics().reason().map(ToString::to_string).collect();
    let errors = r.diagnostics().errors().count();
    let reason = match (r.decision(), errors, ids.is_empty()) {
        (_, 1.., _) => Reason::PolicyError,
        (cedar_policy::Decision::Allow, ..) => Reason::Allowed,
        (cedar_policy::Decision::Deny, _, true) => Reason::NoPolicyPermits,
        (cedar_policy::Decision::Deny, _, false) => Reason::PolicyForbids,
    };
    (reason == Reason::Allowed, reason, ids, errors)
}

/// Slicing, deciding request-independent policies once per slice, and converting only
/// the arguments a slice's policies read change no decision: every request here is
/// decided as Cedar decides it over the whole set with every argument converted,
/// whether its slice reads no argument, some by name, or all of them.
#[test]
fn reading_only_used_arguments_changes_no_decision() {
    let store = Arc::new(PolicyStore::from_strs(READING_POLICIES, &reading_schema()).unwrap());
    let a = Authorizer::new(SERVER.parse().unwrap(), store, fresh());
    let peer = task_peer(&["github/tool/*", "github/prompt/*"]);
    let tools = [
        "get_pull_request",
        "push",
        "list_whole",
        "list_deep",
        "list_overflow",
        "other",
    ];
    let argument_sets = [
        None,
        args(json!({})),
        args(json!({"path": "/etc/passwd"})),
        args(json!({"path": "/src", "owner": "acme", "number": 42})),
        args(json!({"path": 5})),
        args(json!({"force": true, "path": "/etc/x"})),
        args(json!({"force": "yes"})),
        args(json!({"limit": 2})),
        args(json!({"limit": 20_000_000})),
        args(json!({"limit": "many", "tags": ["ok"]})),
        args(json!({"opts": {"depth": 4}, "extra": {"deep": [1, 2]}})),
        args(json!({"opts": {"depth": "4"}})),
        args(json!({"opts": {"other": 1}})),
        args(json!({"tags": ["ok", "no"]})),
        args(json!({"tags": ["no"], "ratio": 0.5})),
        args(json!({"unread": 1.23456789})),
        args(json!({"unread": [1, null], "path": "/etc/passwd"})),
        args(json!({"path": null, "force": null})),
    ];
    let now = SystemTime::now();
    let now_unix = now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let mut seen = std::collections::HashSet::new();
    let requests = tools
        .iter()
        .map(|t| (McpMethod::ToolsCall, *t))
        .chain([(McpMethod::PromptsGet, "review")]);
    for (method, target) in requests {
        for arguments in &argument_sets {
            let req = McpRequest {
                method,
                target: target.to_owned(),
                arguments: arguments.clone(),
            };
            let d = a.decide(&peer, &req, now);
            let (allowed, reason, ids, _) = unsliced_reference(&a, &peer, &req, now_unix);
            let got: std::collections::BTreeSet<String> = d.policy_ids.iter().cloned().collect();
            assert_eq!(
                (d.allowed, d.reason),
                (allowed, reason),
                "{target} {arguments:?}: {d:?}"
            );
            if reason != Reason::UnsupportedArguments {
                assert_eq!(got, ids, "{target} {arguments:?}");
            }
            seen.insert(reason);
        }
    }
    // The table exercises every outcome Cedar can give, not only allows.
    for r in [
        Reason::Allowed,
        Reason::PolicyForbids,
        Reason::NoPolicyPermits,
        Reason::PolicyError,
        Reason::UnsupportedArguments,
    ] {
        assert!(seen.contains(&r), "no case ends in {r}");
    }
    let loaded = a.policies().current();
    let reads = |m: McpMethod, t: &str| {
        let action: EntityUid = format!("Action::{:?}", m.as_str()).parse().unwrap();
        let resource: EntityUid = format!("{}::{t:?}", m.resource_type().unwrap())
            .parse()
            .unwrap();
        let client: EntityUid = r#"Client::"code-reviewer""#.parse().unwrap();
        loaded
            .applicable(&action, &resource, &client)
            .arguments
            .clone()
    };
    // And the slices really do differ in what they read.
    assert!(reads(McpMethod::ToolsCall, "other").is_none());
    assert_eq!(
        reads(McpMethod::ToolsCall, "get_pull_request"),
        reads::ArgumentReads::Keys(["path".to_owned()].into())
    );
    assert_eq!(
        reads(McpMethod::ToolsCall, "list_whole"),
        reads::ArgumentReads::All
    );
}

/// The shared empty-arguments context follows the clock: a second later, a new `now`.
#[test]
fn empty_arguments_context_follows_the_clock() {
    let cache = EmptyArgumentsContext::default();
    let now = |c: &Context| match c.get("now") {
        Some(cedar_policy::EvalResult::Long(n)) => n,
        other => panic!("now: {other:?}"),
    };
    let a = cache.context(100).unwrap();
    assert_eq!(now(&a), 100);
    assert_eq!(now(&cache.context(100).unwrap()), 100);
    assert_eq!(now(&cache.context(101).unwrap()), 101);
    assert_eq!(
        now(&cache.context(100).unwrap()),
        100,
        "a late request keeps its own second"
    );
    let fresh = context(7, Vec::new()).unwrap();
    assert_eq!(cache.context(7).unwrap(), fresh);
    assert!(matches!(
        fresh.get("arguments"),
        Some(cedar_policy::EvalResult::Record(r)) if r.iter().next().is_none()
    ));
}

/// [`Authorizer::until_denied`] returns the denial a request would get once the
/// credential stops passing: on revocation, on expiry, and when the feed goes stale.
#[tokio::test(start_paused = true)]
async fn until_denied_ends_on_revocation_and_staleness() {
    let watcher = RevocationWatcher::detached(Duration::from_secs(30));
    watcher.apply(&tessera_proto::tessera::v1::RevocationSet::default());
    let a = Arc::new(authorizer(watcher.clone()));
    let peer = task_peer(SCOPES);
    let ended = {
        let (a, peer) = (a.clone(), peer.clone());
        tokio::spawn(async move { a.until_denied(&peer).await })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!ended.is_finished());
    watcher.apply(&tessera_proto::tessera::v1::RevocationSet {
        version: 2,
        revoked: vec![tessera_proto::tessera::v1::RevokedTask {
            task_id: TASK_ULID.into(),
            reason: "ended".into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    let d = ended.await.unwrap();
    assert_eq!(d.reason, Reason::Revoked, "{d:?}");

    // Nothing revoked, but no feed message for the staleness bound.
    let watcher = RevocationWatcher::detached(Duration::from_secs(30));
    watcher.apply(&tessera_proto::tessera::v1::RevocationSet::default());
    let a = authorizer(watcher);
    let d = tokio::time::timeout(Duration::from_secs(31), a.until_denied(&peer))
        .await
        .expect("stale within the bound");
    assert_eq!(d.reason, Reason::RevocationFeedStale, "{d:?}");

    // Not a task at all: at once.
    let client = Peer::Client {
        client: "spiffe://acme.corp/client/code-reviewer".parse().unwrap(),
        credential: Credential::Certificate {
            serial_hex: "1".into(),
            not_after_unix: i64::MAX,
            node_ca_serials: Vec::new(),
        },
    };
    assert_eq!(
        authorizer(fresh()).until_denied(&client).await.reason,
        Reason::NotATask
    );
}

/// Untargeted methods get checks 1 to 4 and nothing else.
#[test]
fn untargeted_methods_get_the_credential_checks() {
    let a = authorizer(fresh());
    let req = McpRequest::untargeted("ping", "");
    assert!(decide(&a, req.clone()).allowed);
    let revoked = authorizer(RevocationWatcher::from_static(
        [TASK_ULID.parse().unwrap()],
        [],
    ));
    assert_eq!(decide(&revoked, req.clone()).reason, Reason::Revoked);
    let elsewhere = with_claims(task_peer(SCOPES), |c| {
        c.server = "spiffe://acme.corp/mcp/other".parse().unwrap()
    });
    assert_eq!(
        a.authorize(&elsewhere, &req, SystemTime::now()).reason,
        Reason::WrongServer
    );
}

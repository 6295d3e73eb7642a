//! The decision table, policy loading and hot reload.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::json;
use tessera_identity::ScopeKind;

use super::policy::{PolicyError, PolicyFiles, PolicyStore};
use super::*;
use crate::testutil::{SERVER, TASK_ULID, task_peer};

pub(crate) const SCHEMA: &str = r#"
entity Client;
entity Task in [Client] = {
  client: String, subject: String, purpose: String, consent_id: String,
  scopes: Set<String>, deadline: Long,
};
entity Tool;
entity Resource;
entity Prompt;
type Args = { path?: String, force?: Bool };
type Ctx = { now: Long, arguments: Args };
action "tools/call" appliesTo { principal: [Task], resource: [Tool], context: Ctx };
action "resources/read" appliesTo { principal: [Task], resource: [Resource], context: Ctx };
action "prompts/get" appliesTo { principal: [Task], resource: [Prompt], context: Ctx };
"#;

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
    let store = Arc::new(PolicyStore::from_strs(POLICIES, SCHEMA).unwrap());
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
        serial_hex,
        not_after_unix,
    } = peer
    else {
        panic!("not a task peer: {peer}")
    };
    edit(&mut claims);
    Peer::Task {
        client,
        task,
        claims,
        serial_hex,
        not_after_unix,
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
        serial_hex: "01".into(),
        not_after_unix: i64::MAX,
    };
    let d = a.authorize(
        &client,
        &McpRequest::call_tool("get_pull_request", None),
        SystemTime::now(),
    );
    assert_eq!(d.reason, Reason::NotATask);
    let store = Arc::new(PolicyStore::from_strs(POLICIES, SCHEMA).unwrap());
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
    let err = PolicyStore::from_strs(typo, SCHEMA).unwrap_err();
    assert!(matches!(err, PolicyError::Validation { .. }), "{err}");
    assert!(
        err.to_string().contains("line 3, column 10") && err.to_string().contains("argumentz"),
        "the operator is told where the typo is: {err}"
    );
    let syntax = "permit(principal action resource);";
    let err = PolicyStore::from_strs(syntax, SCHEMA).unwrap_err();
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
        PolicyStore::from_strs(dup, SCHEMA),
        Err(PolicyError::DuplicateId(_))
    ));
    let template = "permit(principal == ?principal, action, resource);";
    assert!(matches!(
        PolicyStore::from_strs(template, SCHEMA),
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
    std::fs::write(&files.schema, SCHEMA).unwrap();
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
    std::fs::write(&files.schema, SCHEMA).unwrap();
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
    task.abort();
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
    let store = Arc::new(PolicyStore::from_strs(policies, SCHEMA).unwrap());
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
    assert_eq!(a.entities.len(), 1, "one entry per task id, replaced");
    // And back: alice's facts are rebuilt, not bob's kept.
    assert!(decide(&a, McpRequest::call_tool("get_pull_request", None)).allowed);
}

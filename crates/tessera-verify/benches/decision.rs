//! The per-request decision: expiry, revocation, scopes, Cedar (8 policies, with
//! arguments). Prints p50/p99 over 100,000 single decisions, then runs criterion.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use tessera_verify::authz::policy::PolicyStore;
use tessera_verify::{Authorizer, McpRequest, Peer, RevocationWatcher};

const SCHEMA: &str = r#"
entity Client;
entity Task in [Client] = {
  client: String, subject: String, purpose: String, consent_id: String,
  scopes: Set<String>, deadline: Long,
};
entity Tool;
entity Resource;
entity Prompt;
type Args = { path?: String, force?: Bool, limit?: Long };
type Ctx = { now: Long, arguments: Args };
action "tools/call" appliesTo { principal: [Task], resource: [Tool], context: Ctx };
action "resources/read" appliesTo { principal: [Task], resource: [Resource], context: Ctx };
action "prompts/get" appliesTo { principal: [Task], resource: [Prompt], context: Ctx };
"#;

const POLICIES: &str = r#"
@id("p1") permit(principal in Client::"code-reviewer", action == Action::"tools/call", resource);
@id("p2") permit(principal, action == Action::"resources/read", resource);
@id("p3") forbid(principal, action == Action::"tools/call", resource) when { context.arguments has path && context.arguments.path like "/etc/*" };
@id("p4") forbid(principal, action, resource == Tool::"push") when { context.arguments has force && context.arguments.force };
@id("p5") forbid(principal, action, resource) when { context.now > principal.deadline };
@id("p6") permit(principal in Client::"deployer", action == Action::"tools/call", resource == Tool::"deploy");
@id("p7") forbid(principal, action == Action::"tools/call", resource) when { context.arguments has limit && context.arguments.limit > 1000 };
@id("p8") permit(principal, action == Action::"prompts/get", resource) when { principal.subject like "*@acme.corp" };
"#;

fn setup() -> (Authorizer, Peer, McpRequest) {
    let store = Arc::new(PolicyStore::from_strs(POLICIES, SCHEMA).unwrap());
    let revoked: Vec<_> = (0..1000).map(|_| tessera_identity::TaskId::new()).collect();
    let authz = Authorizer::new(
        "spiffe://acme.corp/mcp/github".parse().unwrap(),
        store,
        RevocationWatcher::from_static(revoked, []),
    );
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = tessera_identity::TaskClaims {
        version: tessera_identity::TASK_CLAIMS_VERSION,
        task_id: tessera_identity::TaskId::new(),
        client_id: "spiffe://acme.corp/client/code-reviewer".parse().unwrap(),
        subject: "alice@acme.corp".into(),
        purpose: "review PR 42".into(),
        server: "spiffe://acme.corp/mcp/github".parse().unwrap(),
        scopes: [
            "github/tool/get_pull_request",
            "github/tool/list_*",
            "github/resource/file:///handbook/*",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect(),
        consent_id: "consent-1".into(),
        deadline_unix: now + 3600,
    };
    let peer = Peer::Task {
        client: claims.client_id.clone(),
        task: claims.client_id.task(claims.task_id),
        claims,
        serial_hex: "42".into(),
        not_after_unix: now + 3600,
    };
    let args = serde_json::json!({"path": "/src/lib.rs", "limit": 50, "owner": "acme", "repo": "app", "number": 42});
    let req = McpRequest::call_tool("get_pull_request", Some(args.as_object().unwrap().clone()));
    (authz, peer, req)
}

fn percentiles() {
    let (authz, peer, req) = setup();
    for _ in 0..10_000 {
        assert!(authz.decide(&peer, &req, SystemTime::now()).allowed);
    }
    let mut samples = Vec::with_capacity(100_000);
    for _ in 0..100_000 {
        let t = Instant::now();
        black_box(authz.decide(black_box(&peer), black_box(&req), SystemTime::now()));
        samples.push(t.elapsed().as_nanos() as u64);
    }
    samples.sort_unstable();
    let p = |q: f64| {
        samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)] as f64 / 1000.0
    };
    println!(
        "decision (8 policies, 5 arguments): p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs",
        p(0.50),
        p(0.90),
        p(0.99),
        p(0.999)
    );
}

fn bench(c: &mut Criterion) {
    percentiles();
    let (authz, peer, req) = setup();
    c.bench_function("decision/tools_call_allowed", |b| {
        b.iter(|| black_box(authz.decide(&peer, &req, SystemTime::now())))
    });
    let denied = McpRequest::call_tool("delete_repo", None);
    c.bench_function("decision/out_of_scope", |b| {
        b.iter(|| black_box(authz.decide(&peer, &denied, SystemTime::now())))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

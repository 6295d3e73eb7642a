//! The per-request decision: expiry, revocation, scopes, Cedar (8 policies, with
//! arguments; and the example server's policies, as the round-trip bench calls them).
//! Prints p50/p99 over 100,000 single decisions beside a no-op baseline of the same
//! length (the VM's own noise, measured interleaved in the same run), then runs
//! criterion.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use tessera_verify::authz::policy::PolicyStore;
use tessera_verify::authz::schema_with_arguments;
use tessera_verify::peer::Credential;
use tessera_verify::{Authorizer, McpRequest, Peer, RevocationWatcher};

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

/// The example MCP server's own policies, as the round-trip bench runs them.
const EXAMPLE_POLICIES: &str = include_str!("../../../examples/mcp-server/policies/github.cedar");
const EXAMPLE_SCHEMA: &str =
    include_str!("../../../examples/mcp-server/policies/github.cedarschema");

/// One measured case: a name, its policies and schema, and the call's arguments.
struct Case {
    name: &'static str,
    policies: &'static str,
    schema: String,
    arguments: serde_json::Value,
}

fn cases() -> [Case; 2] {
    [
        Case {
            name: "decision (8 policies, 5 arguments)",
            policies: POLICIES,
            schema: schema_with_arguments("{ path?: String, force?: Bool, limit?: Long }"),
            arguments: serde_json::json!({"path": "/src/lib.rs", "limit": 50, "owner": "acme", "repo": "app", "number": 42}),
        },
        Case {
            name: "decision (example server's policies, 2 arguments)",
            policies: EXAMPLE_POLICIES,
            schema: EXAMPLE_SCHEMA.to_owned(),
            arguments: serde_json::json!({"repo": "acme/api", "number": 42}),
        },
    ]
}

fn setup(case: &Case) -> (Authorizer, Peer, McpRequest) {
    let store = Arc::new(PolicyStore::from_strs(case.policies, &case.schema).unwrap());
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
        credential: Credential::Certificate {
            serial_hex: "42".into(),
            not_after_unix: now + 3600,
            node_ca_serials: Vec::new(),
        },
    };
    let req = McpRequest::call_tool(
        "get_pull_request",
        Some(case.arguments.as_object().unwrap().clone()),
    );
    (authz, peer, req)
}

/// Samples per percentile run; `TESSERA_DECISION_SAMPLES` overrides it (e.g. a small
/// count under callgrind, where only the instruction count matters).
fn samples() -> usize {
    std::env::var("TESSERA_DECISION_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000)
}

/// Work that allocates nothing and touches no shared state, sized to take about as
/// long as a decision: its tail is the VM's own (interrupts, steal, frequency), so a
/// decision's tail beyond it is ours.
fn spin(rounds: u64) -> u64 {
    let mut x = black_box(0x9e37_79b9_7f4a_7c15_u64);
    for _ in 0..rounds {
        x = black_box(x.rotate_left(7) ^ (x >> 3)).wrapping_mul(0x2545_f491_4f6c_dd1d);
    }
    x
}

/// Rounds of [`spin`] that take about `target`.
fn calibrate(target: std::time::Duration) -> u64 {
    let mut rounds = 1024u64;
    loop {
        let t = Instant::now();
        for _ in 0..100 {
            black_box(spin(rounds));
        }
        let each = t.elapsed() / 100;
        if each >= target / 2 {
            return (rounds as f64 * target.as_secs_f64() / each.as_secs_f64()) as u64;
        }
        rounds *= 2;
    }
}

/// One timed decision. Not inlined, so that callgrind can count exactly its
/// instructions: `--toggle-collect='decision::timed_decision'`.
#[inline(never)]
fn timed_decision(authz: &Authorizer, peer: &Peer, req: &McpRequest) -> u64 {
    let t = Instant::now();
    black_box(authz.decide(black_box(peer), black_box(req), SystemTime::now()));
    t.elapsed().as_nanos() as u64
}

fn pct(samples: &mut [u64], q: f64) -> f64 {
    samples.sort_unstable();
    samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)] as f64 / 1000.0
}

fn report(name: &str, samples: &mut [u64]) {
    println!(
        "{name}: p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs",
        pct(samples, 0.50),
        pct(samples, 0.90),
        pct(samples, 0.99),
        pct(samples, 0.999)
    );
}

/// Decisions and same-length no-op spins, interleaved so both see the same noise.
fn percentiles(case: &Case) {
    let (authz, peer, req) = setup(case);
    let n = samples();
    for _ in 0..(n / 10).max(1) {
        assert!(authz.decide(&peer, &req, SystemTime::now()).allowed);
    }
    let mut warm = Vec::with_capacity(1000);
    for _ in 0..1000 {
        warm.push(timed_decision(&authz, &peer, &req));
    }
    warm.sort_unstable();
    let rounds = calibrate(std::time::Duration::from_nanos(warm[warm.len() / 2]));
    let (mut decisions, mut baseline) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        decisions.push(timed_decision(&authz, &peer, &req));
        let t = Instant::now();
        black_box(spin(black_box(rounds)));
        baseline.push(t.elapsed().as_nanos() as u64);
    }
    report(case.name, &mut decisions);
    report("  no-op baseline of the same length", &mut baseline);
}

fn bench(c: &mut Criterion) {
    // TESSERA_DECISION_CASE=<n> runs only case n (0, 1): one case per callgrind run.
    let only: Option<usize> = std::env::var("TESSERA_DECISION_CASE")
        .ok()
        .and_then(|s| s.parse().ok());
    for (i, case) in cases().iter().enumerate() {
        if only.is_none_or(|n| n == i) {
            percentiles(case);
        }
    }
    let (authz, peer, req) = setup(&cases()[0]);
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

//! `tessera demo`, the README's run command, end to end: every step's outcome,
//! not just the exit code; and `tessera demo --cluster`, the same story across a
//! cluster (a real PostgreSQL, two server replicas, three agents) plus its own steps.

use std::process::Command;

/// Runs `tessera demo` with `args`; its stdout, after checking it succeeded.
fn run_demo(args: &[&str]) -> String {
    let out = Command::new(tessera_e2e::bin("tessera"))
        .arg("demo")
        .args(args)
        // `cargo test --workspace` has built every binary already.
        .env("TESSERA_DEMO_NO_BUILD", "1")
        .output()
        .expect("running tessera demo");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "demo {args:?} failed ({:?})\nstdout:\n{stdout}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Step `n`'s text in the demo's `stdout`, up to the next heading.
fn step(stdout: &str, n: u32) -> &str {
    let start = stdout
        .find(&format!("── {n}. "))
        .unwrap_or_else(|| panic!("step {n} missing:\n{stdout}"));
    let rest = &stdout[start..];
    let end = rest[3..].find("── ").map(|e| e + 3).unwrap_or(rest.len());
    &rest[..end]
}

#[test]
fn demo_tells_the_whole_story_and_every_step_holds() {
    let stdout = run_demo(&[]);
    assert_story(&stdout);
}

#[test]
fn demo_cluster_tells_the_story_across_nodes_and_every_step_holds() {
    // The cluster demo needs PostgreSQL's server binaries, as tessera-server's tests do.
    if let Err(e) = tessera_pgtest::find_binaries() {
        assert!(!tessera_pgtest::required(), "{e}");
        eprintln!("SKIPPED: the cluster demo: {e}");
        return;
    }
    let stdout = run_demo(&["--cluster"]);
    assert!(
        stdout.contains("started three agents, each attested with a join token"),
        "{stdout}"
    );
    for node in ["node-a (CA …", "node-b (CA …", "node-c (CA …"] {
        assert!(stdout.contains(node), "{node} missing:\n{stdout}");
    }
    assert!(
        stdout.contains("the entries and the consent reached all three agents"),
        "{stdout}"
    );
    assert!(
        stdout.contains("the runtime runs on node-a, the MCP server on node-c"),
        "{stdout}"
    );
    // Steps 1 to 8 hold across nodes: the task begun on node-a, refused at node-c's
    // server after EndTask on node-a (step 6).
    assert_story(&stdout);
    let audit = step(&stdout, 8);
    assert!(
        audit.contains("tessera-server (r1) (tessera audit):"),
        "{audit}"
    );
    assert!(audit.contains("agent node-a (the runtime's)"), "{audit}");
    let evict = step(&stdout, 9);
    assert!(
        evict.contains("a runtime on node-b, task ")
            && evict.contains("→ get_pull_request allowed on node-c's server"),
        "{evict}"
    );
    assert!(
        evict.contains("a new task on node-b → denied: revoked at node-c"),
        "{evict}"
    );
    assert!(evict.contains("node-a's tasks are unaffected"), "{evict}");
    let failover = step(&stdout, 10);
    assert!(
        failover.contains("replica r1 killed (SIGKILL)"),
        "{failover}"
    );
    assert!(
        failover.contains("node-a moved to r2 and learned it: BeginTask refused")
            && failover.contains("no live consent"),
        "{failover}"
    );
}

/// Steps 1 to 8 and the closing line, as both demos tell them.
fn assert_story(stdout: &str) {
    let step = |n: u32| step(stdout, n);
    assert!(step(1).contains("✔ task SVID spiffe://demo.tessera.dev/client/code-reviewer/task/"));
    assert!(step(1).contains("on behalf of  alice@example.com"));
    assert!(step(1).contains("github/tool/get_pull_request, github/tool/delete_branch"));
    assert!(step(2).contains("✔ get_pull_request → "), "{}", step(2));
    assert!(
        step(3).contains("list_pulls → denied: out_of_scope"),
        "{}",
        step(3)
    );
    assert!(
        step(4).contains("denied: policy_forbids by policy protect-default-branch"),
        "{}",
        step(4)
    );
    assert!(
        step(5).contains("shadow-agent → BeginTask refused") && step(5).contains("no live consent"),
        "{}",
        step(5)
    );
    assert!(step(6).contains("denied: revoked"), "{}", step(6));
    let bearer = step(7);
    assert!(
        bearer.contains("✔ no client certificate: the 401 named https://127.0.0.1:")
            && bearer.contains("/.well-known/oauth-protected-resource/mcp"),
        "{bearer}"
    );
    assert!(
        bearer.contains("✔ get_pull_request with the token → allowed"),
        "{bearer}"
    );
    assert!(
        bearer.contains("list_pulls with the token → denied: out_of_scope"),
        "{bearer}"
    );
    assert!(
        bearer.contains("EndTask, then get_pull_request with the still-unexpired token → "),
        "{bearer}"
    );
    let audit = step(8);
    for kind in ["entry.create", "consent.grant", "task.begin", "task.end"] {
        assert!(audit.contains(kind), "audit trail lacks {kind}:\n{audit}");
    }
    // The first SVID is audited with its task.
    assert!(
        audit
            .lines()
            .any(|l| l.contains("task.begin") && l.contains("serial=")),
        "{audit}"
    );
    assert!(
        audit.contains("deny    mtls   tools/call         delete_branch"),
        "{audit}"
    );
    // The bearer task's decisions are audited as such.
    assert!(
        audit.contains("allow   bearer tools/call         get_pull_request"),
        "{audit}"
    );
    assert!(stdout.contains("Every step behaved as shown"));
}

//! `tessera demo`, the README's run command, end to end: every step's outcome,
//! not just the exit code.

use std::process::Command;

#[test]
fn demo_tells_the_whole_story_and_every_step_holds() {
    let out = Command::new(tessera_e2e::bin("tessera"))
        .arg("demo")
        // `cargo test --workspace` has built every binary already.
        .env("TESSERA_DEMO_NO_BUILD", "1")
        .output()
        .expect("running tessera demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed ({:?})\nstdout:\n{stdout}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let step = |n: u32| -> &str {
        let start = stdout
            .find(&format!("── {n}. "))
            .unwrap_or_else(|| panic!("step {n} missing:\n{stdout}"));
        let rest = &stdout[start..];
        let end = rest[3..].find("── ").map(|e| e + 3).unwrap_or(rest.len());
        &rest[..end]
    };
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

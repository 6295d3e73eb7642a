//! The story the demo tells: the example runtime runs one task through an allowed call,
//! an out-of-scope call, a call the Cedar policy forbids and a call after EndTask; a
//! runtime with no consent tries to begin a task; a second task gets in with no
//! certificate, with an OAuth bearer token from the server's token endpoint, and is
//! checked the same way; then both audit trails are shown. Each of the eight steps
//! checks what it shows, and the first that does not hold fails the demo, naming the
//! step.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use serde_json::Value;

use super::narration::{detail, ok, say, step};
use super::stage::{Binaries, CLIENT, SERVER, SUBJECT, Stage, TRUST_DOMAIN};

/// A failed step: the demo stops and exits non-zero with this message.
fn fail(n: u32, what: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("demo step {n} did not behave as shown: {what}")
}

fn unix_time() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Tells steps 1 to 8 on a started stage.
pub(super) async fn tell(stage: &mut Stage, bins: &Binaries) -> anyhow::Result<()> {
    let workload = stage.workload.as_path();
    let url = stage.url.as_str();
    // The story, told by the example runtime.
    let runtime_args = |exe: &Path| {
        let mut cmd = Command::new(exe);
        cmd.arg("--workload-socket")
            .arg(workload)
            .args(["--url", url, "--server", SERVER, "--subject", SUBJECT])
            .args(["--purpose", "review PR 42 in acme/api"])
            .args([
                "--scope",
                "github/tool/get_pull_request",
                "--scope",
                "github/tool/delete_branch",
            ])
            .arg("--json")
            .env("RUST_LOG", "error")
            .stdin(Stdio::null());
        cmd
    };
    let out = runtime_args(&bins.runtime)
        .args([
            "--call",
            "get_pull_request",
            r#"{"repo":"acme/api","number":42}"#,
        ])
        .args(["--call", "list_pulls", r#"{"repo":"acme/api"}"#])
        .args([
            "--call",
            "delete_branch",
            r#"{"repo":"acme/api","branch":"main"}"#,
        ])
        .args([
            "--after-end",
            "get_pull_request",
            r#"{"repo":"acme/api","number":42}"#,
        ])
        .output()
        .context("running the example agent runtime")?;
    let doc: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "the runtime printed no JSON (exit {:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(err) = doc.get("error") {
        bail!(
            "the example runtime failed at {}: {}",
            err["stage"],
            err["message"]
        );
    }

    step(1, "The runtime is attested and begins a task");
    let svid = &doc["svid"];
    let claims = &svid["claims"];
    let task_id = doc["task"]["id"].as_str().unwrap_or_default().to_owned();
    let expected_id = format!("spiffe://{TRUST_DOMAIN}/client/{CLIENT}/task/{task_id}");
    if svid["spiffe_id"] != expected_id.as_str() || claims.is_null() {
        return Err(fail(1, format!("unexpected task SVID: {svid}")));
    }
    ok(&format!("task SVID {expected_id}"));
    detail(&format!(
        "on behalf of  {}",
        claims["subject"].as_str().unwrap_or("?")
    ));
    detail(&format!(
        "purpose       {}",
        claims["purpose"].as_str().unwrap_or("?")
    ));
    detail(&format!(
        "server        {}",
        claims["server"].as_str().unwrap_or("?")
    ));
    detail(&format!("scopes        {}", join(&claims["scopes"])));
    detail(&format!(
        "consent       {}",
        claims["consent_id"].as_str().unwrap_or("?")
    ));
    let expires_in = svid["not_after_unix"].as_i64().unwrap_or(0) - unix_time();
    detail(&format!(
        "expires in    {expires_in}s (serial {})",
        svid["serial"].as_str().unwrap_or("?")
    ));

    let calls = doc["calls"].as_array().cloned().unwrap_or_default();
    let call = |i: usize| calls.get(i).cloned().unwrap_or(Value::Null);

    step(2, "An allowed tool call succeeds");
    let c = call(0);
    if c["outcome"] != "ok" {
        return Err(fail(2, format!("get_pull_request was not allowed: {c}")));
    }
    ok(&format!(
        "get_pull_request → {}",
        first_line(c["text"].as_str().unwrap_or(""))
    ));

    step(3, "A tool outside the task's scopes is denied");
    let c = call(1);
    if c["outcome"] != "denied" || c["reason"] != "out_of_scope" {
        return Err(fail(3, format!("list_pulls should be out of scope: {c}")));
    }
    ok(&format!(
        "list_pulls → denied: {} (the consent allows it, but this task did not ask for it)",
        c["reason"].as_str().unwrap_or("?")
    ));

    step(
        4,
        "A destructive call the policy forbids by argument is denied",
    );
    let c = call(2);
    let ids = join(&c["policy_ids"]);
    if c["outcome"] != "denied"
        || c["reason"] != "policy_forbids"
        || !ids.contains("protect-default-branch")
    {
        return Err(fail(
            4,
            format!("delete_branch main should be forbidden: {c}"),
        ));
    }
    ok(&format!(
        "delete_branch {{branch: \"main\"}} → denied: {} by policy {ids}",
        c["reason"].as_str().unwrap_or("?")
    ));

    step(5, "A second client with no consent is denied");
    let shadow_out = runtime_args(&stage.shadow)
        .args([
            "--call",
            "get_pull_request",
            r#"{"repo":"acme/api","number":42}"#,
        ])
        .output()
        .context("running the shadow runtime")?;
    let shadow_doc: Value = serde_json::from_slice(&shadow_out.stdout).unwrap_or(Value::Null);
    let err = &shadow_doc["error"];
    let message = err["message"].as_str().unwrap_or_default();
    if shadow_out.status.success()
        || err["stage"] != "begin_task"
        || !message.contains("no live consent")
    {
        return Err(fail(
            5,
            format!("shadow-agent should be refused at BeginTask: {shadow_doc}"),
        ));
    }
    ok(&format!("shadow-agent → BeginTask refused: {message}"));

    step(
        6,
        "The task ends; the next call on the same open connection is refused",
    );
    let after = &doc["after_end"];
    let refused_ms = after["refused_after_ms"].as_f64().unwrap_or(f64::INFINITY);
    if after["outcome"] != "denied" || after["reason"] != "revoked" || refused_ms > 1000.0 {
        return Err(fail(
            6,
            format!("the call after EndTask should be refused as revoked: {after}"),
        ));
    }
    ok(&format!(
        "EndTask, then get_pull_request on the still-open connection → denied: revoked, {refused_ms:.1} ms after EndTask"
    ));

    step(
        7,
        "A second task gets in with a bearer token instead of a certificate",
    );
    let out = runtime_args(&bins.runtime)
        .args(["--auth", "bearer"])
        .args([
            "--call",
            "get_pull_request",
            r#"{"repo":"acme/api","number":42}"#,
        ])
        .args(["--call", "list_pulls", r#"{"repo":"acme/api"}"#])
        .args([
            "--after-end",
            "get_pull_request",
            r#"{"repo":"acme/api","number":42}"#,
        ])
        .output()
        .context("running the example agent runtime with --auth bearer")?;
    let doc: Value = serde_json::from_slice(&out.stdout).map_err(|_| {
        fail(
            7,
            format!(
                "the runtime printed no JSON (exit {:?}): {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    })?;
    if let Some(err) = doc.get("error") {
        return Err(fail(
            7,
            format!(
                "the bearer runtime failed at {}: {}",
                err["stage"], err["message"]
            ),
        ));
    }
    let bearer = &doc["bearer"];
    let scope = bearer["scope"].as_str().unwrap_or_default();
    if doc.get("svid").is_some()
        || bearer["resource"] != url
        || !scope.contains("github/tool/get_pull_request")
    {
        return Err(fail(7, format!("unexpected bearer token: {doc}")));
    }
    ok(&format!(
        "no client certificate: the 401 named {}",
        bearer["resource_metadata"].as_str().unwrap_or("?")
    ));
    detail(&format!(
        "token endpoint {} took the task's JWT-SVID (audience {})",
        bearer["token_endpoint"].as_str().unwrap_or("?"),
        bearer["issuer"].as_str().unwrap_or("?")
    ));
    detail(&format!(
        "access token for {url}: scope {scope}, expires in {}s",
        bearer["expires_in"].as_u64().unwrap_or(0)
    ));
    let calls = doc["calls"].as_array().cloned().unwrap_or_default();
    let call = |i: usize| calls.get(i).cloned().unwrap_or(Value::Null);
    let c = call(0);
    if c["outcome"] != "ok" {
        return Err(fail(
            7,
            format!("get_pull_request with the token was not allowed: {c}"),
        ));
    }
    ok("get_pull_request with the token → allowed, the same checks as over mTLS");
    let c = call(1);
    if c["outcome"] != "denied" || c["reason"] != "out_of_scope" {
        return Err(fail(7, format!("list_pulls should be out of scope: {c}")));
    }
    ok("list_pulls with the token → denied: out_of_scope");
    let after = &doc["after_end"];
    let refused_ms = after["refused_after_ms"].as_f64().unwrap_or(f64::INFINITY);
    if after["outcome"] == "ok" || refused_ms > 1000.0 {
        return Err(fail(
            7,
            format!("the bearer call after EndTask should be refused: {after}"),
        ));
    }
    // The bearer layer refuses a token of an ended task before MCP sees the request:
    // 401 invalid_token, which rmcp's client reports as "Auth required".
    let how = match (after["reason"].as_str(), after["message"].as_str()) {
        (Some(reason), _) => format!("denied: {reason}"),
        (None, Some(m)) if m.contains("Auth required") => {
            "refused: 401 invalid_token (the task is revoked)".to_owned()
        }
        (None, m) => format!("refused: {}", m.unwrap_or("no answer")),
    };
    ok(&format!(
        "EndTask, then get_pull_request with the still-unexpired token → {how}, {refused_ms:.1} ms after EndTask"
    ));

    step(8, "The audit trail");
    let mut kinds: Vec<String> = Vec::new();
    let mut begin_names_serial = false;
    for (who, admin) in &mut stage.audits {
        let records = admin.list_audit(0, 1000).await?;
        say(&format!("   {who} (tessera audit):"));
        for r in &records {
            detail(&format!(
                "#{:<3} {:<18} {}",
                r.seq,
                r.kind,
                summarize(&r.detail_json)
            ));
        }
        kinds.extend(records.iter().map(|r| r.kind.clone()));
        // The task's first SVID is audited inside its task.begin record.
        begin_names_serial |= records.iter().any(|r| {
            r.kind == "task.begin"
                && serde_json::from_str::<Value>(&r.detail_json)
                    .is_ok_and(|d| d["svid"]["serial"].is_string())
        });
    }
    for needed in ["entry.create", "consent.grant", "task.begin", "task.end"] {
        if !kinds.iter().any(|k| k == needed) {
            return Err(fail(8, format!("the audit trail has no {needed} record")));
        }
    }
    if !begin_names_serial {
        return Err(fail(
            8,
            "the agent's task.begin record names no SVID serial",
        ));
    }
    say("   MCP server (decisions):");
    let decisions = std::fs::read_to_string(&stage.server_audit).unwrap_or_default();
    let mut seen = 0;
    for line in decisions.lines() {
        let Ok(d) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        seen += 1;
        detail(&format!(
            "{:<7} {:<6} {:<18} {:<16} {:<22} {}",
            d["decision"].as_str().unwrap_or("?"),
            d["auth"].as_str().unwrap_or("mtls"),
            d["method"].as_str().unwrap_or("?"),
            d["target"].as_str().unwrap_or(""),
            d["reason"].as_str().unwrap_or("?"),
            join(&d["policy_ids"])
        ));
    }
    if seen < 4 {
        return Err(fail(
            8,
            format!(
                "expected the server's decisions in {}",
                stage.server_audit.display()
            ),
        ));
    }

    Ok(())
}

fn join(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.len() > 90 {
        format!("{}…", &line[..line.floor_char_boundary(90)])
    } else {
        line.to_owned()
    }
}

/// One line of an audit record's detail for the terminal.
fn summarize(detail_json: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(detail_json) else {
        return detail_json.to_owned();
    };
    let pick = |keys: &[&str]| -> Vec<String> {
        keys.iter()
            .filter_map(|k| {
                let x = v
                    .get(*k)
                    .or_else(|| v.get("entry").and_then(|e| e.get(*k)))
                    .or_else(|| v.get("task").and_then(|t| t.get(*k)))
                    .or_else(|| v.get("consent").and_then(|c| c.get(*k)))
                    .or_else(|| v.get("svid").and_then(|c| c.get(*k)))?;
                let s = match x {
                    Value::String(s) => s.clone(),
                    Value::Array(_) => join(x),
                    other => other.to_string(),
                };
                Some(format!("{k}={s}"))
            })
            .collect()
    };
    let is_server_entry = v
        .get("entry")
        .and_then(|e| e.get("kind"))
        .and_then(Value::as_str)
        == Some("server");
    let line = pick(&[
        "node",
        "client",
        "server",
        "spiffe_id",
        "reason",
        "subject",
        "serial",
    ])
    .join(" ");
    if is_server_entry {
        line.replacen("client=", "server=", 1)
    } else {
        line
    }
}

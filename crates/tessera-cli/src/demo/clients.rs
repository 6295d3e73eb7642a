//! The demo's epilogue: the same story told by the Python and Node example runtimes
//! (`clients/python/examples/review_runtime.py`, `clients/typescript/examples/review-runtime.ts`)
//! when this machine has them ready, and a line saying why not when it does not. The
//! eight Rust steps come first and stay as they are; a client that runs and does not
//! behave as shown fails the demo like any step.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::stage::Stage;
use anyhow::{Context, bail};
use serde_json::Value;

/// Where to look for the clients: `TESSERA_DEMO_CLIENTS`, else the `clients/` of the
/// repository this binary was built from.
fn clients_dir() -> PathBuf {
    std::env::var_os("TESSERA_DEMO_CLIENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients"))
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

/// A Python with `tessera-client` and `mcp` importable: `TESSERA_DEMO_PYTHON`, the
/// venv the tests build under `target/`, or `python3` on the PATH.
fn python() -> Result<PathBuf, String> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("TESSERA_DEMO_PYTHON") {
        candidates.push(PathBuf::from(p));
    } else {
        if let Some(target) = std::env::current_exe()
            .ok()
            .and_then(|e| e.ancestors().nth(2).map(Path::to_path_buf))
        {
            candidates.push(target.join("tessera-clients/py/bin/python3"));
        }
        candidates.extend(which("python3"));
    }
    if candidates.is_empty() {
        return Err("no python3 on the PATH".into());
    }
    for p in &candidates {
        let ok = Command::new(p)
            .args(["-c", "import tessera.task, mcp"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(p.clone());
        }
    }
    Err("no Python with tessera-client and mcp (pip install './clients/python[mcp]')".into())
}

/// `node` and the built example, or why not.
fn node(clients: &Path) -> Result<(PathBuf, PathBuf), String> {
    let node = which("node").ok_or("no node on the PATH")?;
    let script = clients.join("typescript/dist/examples/review-runtime.js");
    if !script.is_file() {
        return Err(format!(
            "the Node client is not built (cd {} && npm ci && npm run build)",
            clients.join("typescript").display()
        ));
    }
    Ok((node, script))
}

/// Runs each client present as `client`, checks it told the story, and prints it.
pub async fn run(
    stage: &mut Stage,
    client: &str,
    server: &str,
    subject: &str,
) -> anyhow::Result<()> {
    let (workload, url) = (stage.workload.clone(), stage.url.clone());
    let (workload, url) = (workload.as_path(), url.as_str());
    super::narration::say(
        "\n── Also in Python and Node (clients/): the same story through tessera-client and @tessera/client",
    );
    if std::env::var_os("TESSERA_DEMO_NO_CLIENTS").is_some() {
        super::narration::detail("skipped (TESSERA_DEMO_NO_CLIENTS is set)");
        return Ok(());
    }
    let clients = clients_dir();
    let common = |cmd: &mut Command| {
        cmd.arg("--socket")
            .arg(workload)
            .args([
                "--url",
                url,
                "--server",
                server,
                "--subject",
                subject,
                "--json",
            ])
            .stdin(Stdio::null());
    };
    let mut runs: Vec<(&str, Result<Command, String>)> = Vec::new();
    runs.push((
        "Python",
        python().map(|p| {
            let mut cmd = Command::new(p);
            cmd.arg(clients.join("python/examples/review_runtime.py"));
            common(&mut cmd);
            cmd
        }),
    ));
    runs.push((
        "Node",
        node(&clients).map(|(n, script)| {
            let mut cmd = Command::new(n);
            cmd.arg(script);
            common(&mut cmd);
            cmd
        }),
    ));
    for (name, cmd) in runs {
        let mut cmd = match cmd {
            Ok(cmd) => cmd,
            Err(why) => {
                super::narration::detail(&format!("{name}: not run: {why}"));
                continue;
            }
        };
        // The interpreter is the attested executable: register it as the same client,
        // which the consent already covers.
        let exe = std::fs::canonicalize(cmd.get_program())?;
        stage.register_client_exe(client, &exe).await?;
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::task::spawn_blocking(move || cmd.output()),
        )
        .await
        .map_err(|_| anyhow::anyhow!("the {name} runtime did not finish within 60 s"))??
        .with_context(|| format!("running the {name} runtime"))?;
        let doc: Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "the {name} runtime printed no JSON (exit {:?}): {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        tell(name, &doc).with_context(|| format!("the {name} runtime did not behave as shown"))?;
    }
    Ok(())
}

fn tell(name: &str, doc: &Value) -> anyhow::Result<()> {
    if let Some(e) = doc.get("error") {
        bail!("{}: {}", e["type"], e["message"]);
    }
    let calls = doc["calls"].as_array().cloned().unwrap_or_default();
    let get = |i: usize| calls.get(i).cloned().unwrap_or(Value::Null);
    let (pr, pulls, delete) = (get(0), get(1), get(2));
    if pr["outcome"] != "ok" {
        bail!("get_pull_request was not allowed: {pr}");
    }
    if pulls["reason"] != "out_of_scope" {
        bail!("list_pulls should be out of scope: {pulls}");
    }
    let ids = delete["policy_ids"].to_string();
    if delete["reason"] != "policy_forbids" || !ids.contains("protect-default-branch") {
        bail!("delete_branch main should be forbidden: {delete}");
    }
    let refusal = &doc["consent_refusal"];
    if refusal["outcome"] != "refused" {
        bail!("a task for search_code should be refused: {refusal}");
    }
    let after = &doc["after_end"];
    if after["reason"] != "revoked" {
        bail!("the call after EndTask should be refused as revoked: {after}");
    }
    super::narration::ok(&format!(
        "{name}: task {} → get_pull_request ok; list_pulls out_of_scope; delete_branch main \
         policy_forbids; search_code refused at BeginTask (ConsentRequired); after EndTask: \
         revoked, {:.1} ms",
        doc["task"]["spiffe_id"].as_str().unwrap_or("?"),
        after["refused_after_ms"].as_f64().unwrap_or(f64::NAN),
    ));
    Ok(())
}

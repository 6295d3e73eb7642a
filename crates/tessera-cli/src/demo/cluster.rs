//! `tessera demo --cluster`: the same story across "nodes" of one machine. A real
//! PostgreSQL (initdb'd in the demo's temporary directory), two `tessera-server`
//! replicas sharing it and one cluster root, and three cluster-mode agents (`node-a`,
//! `node-b`, `node-c`), each with its own data directory and sockets, attested with a
//! join token and issuing with its own node CA. Registrations are made once, at a
//! replica; the runtime runs on node-a and the MCP server on node-c. Then two steps only
//! a cluster has: a node is evicted and its credentials stop working on the other nodes,
//! and a replica is killed while a consent is withdrawn at the other.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use tessera_pgtest::PgServer;
use tessera_proto::tessera::v1 as pb;
use tessera_proto::tessera::v1::cluster_admin_client::ClusterAdminClient;

use super::cluster_parts::{ClusterParts, NodeParts, ReplicaParts};
use super::narration::{detail, ok, say, step};
use super::stage::{
    Binaries, Children, PROPAGATION_PATIENCE, SERVER, SUBJECT, Stage, TRUST_DOMAIN, agent_toml,
    free_port, grant, register_entries, spawn, start_mcp_server, wait_for_admin,
};
use crate::admin::Admin;
use crate::transport::connect_unix;

/// The nodes, in the order they are started.
const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];

/// Starts PostgreSQL, the root, two replicas and three agents; registers once at
/// replica r1 and grants at replica r2; waits until every agent holds all of it; starts
/// the MCP server on node-c.
pub(super) async fn start(bins: &Binaries) -> anyhow::Result<Stage> {
    let control_plane = bins
        .control_plane
        .as_deref()
        .context("tessera-server was not located")?;
    let dir = tempfile::Builder::new()
        .prefix("tessera-demo-cluster-")
        .tempdir()?;
    let root = dir.path().to_owned();
    let mut children = Children(Vec::new());

    // PostgreSQL: Debian's binaries, a fresh cluster in a directory of its own.
    let pg = PgServer::start()
        .await
        .context("starting PostgreSQL for the cluster demo")?;
    say(&format!(
        "started PostgreSQL (initdb'd for this demo) on 127.0.0.1:{}",
        pg.port()
    ));

    // The cluster root, then two replicas sharing PostgreSQL and the root.
    let ca = root.join("ca");
    let init = Command::new(control_plane)
        .args(["ca", "init", "--trust-domain", TRUST_DOMAIN, "--dir"])
        .arg(&ca)
        .stdin(Stdio::null())
        .output()
        .context("running tessera-server ca init")?;
    if !init.status.success() {
        bail!(
            "tessera-server ca init failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
    }
    let password = root.join("pgpassword");
    write_private(&password, pg.password())?;
    let (mut replicas, mut admins) = (Vec::new(), Vec::new());
    for name in ["r1", "r2"] {
        let admin_socket = root.join(format!("{name}/admin.sock"));
        let node_listen = format!("127.0.0.1:{}", free_port()?);
        let config = root.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "trust_domain = \"{TRUST_DOMAIN}\"\n\
                 admin_socket = \"{}\"\n\
                 http_listen = \"127.0.0.1:{}\"\n\
                 [database]\nurl = \"postgres://{}@127.0.0.1:{}/postgres?sslmode=disable\"\n\
                 password_file = \"{}\"\n\
                 [ca]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
                 [listen]\nnode = \"{node_listen}\"\n",
                admin_socket.display(),
                free_port()?,
                tessera_pgtest::SUPERUSER,
                pg.port(),
                password.display(),
                ca.join("ca.crt").display(),
                ca.join("ca.key").display(),
            ),
        )?;
        spawn(&mut children, name, control_plane, &config, &root)?;
        admins.push(wait_for_admin(&admin_socket, &mut children, &root, "tessera-server").await?);
        replicas.push(ReplicaParts {
            name: name.to_owned(),
            admin_socket,
            node_listen,
        });
    }
    say(&format!(
        "started tessera-server replicas r1 ({}) and r2 ({}): one root for {TRUST_DOMAIN}, all state in PostgreSQL",
        replicas[0].node_listen, replicas[1].node_listen
    ));

    // Three agents, each attested once with a single-use join token, each listing both
    // replicas (node-c prefers r2) so it can move to the other.
    let mut r1_cluster = ClusterAdminClient::new(connect_unix(&replicas[0].admin_socket).await?);
    let mut nodes = Vec::new();
    for name in NODES {
        let token = r1_cluster
            .create_join_token(pb::CreateJoinTokenRequest {
                ttl_secs: 600,
                node_name: name.into(),
            })
            .await
            .context("creating a join token")?
            .into_inner()
            .token;
        let node_root = root.join(name);
        let workload = node_root.join("run/workload.sock");
        let admin_socket = node_root.join("run/admin.sock");
        let (first, second) = if name == "node-c" { (1, 0) } else { (0, 1) };
        let config = root.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "{}[server]\n\
                 addresses = [\"{}\", \"{}\"]\n\
                 bundle_file = \"{}\"\n\
                 join_token = \"{token}\"\n\
                 node_name = \"{name}\"\n",
                agent_toml(&node_root, free_port()?),
                replicas[first].node_listen,
                replicas[second].node_listen,
                ca.join("ca.crt").display(),
            ),
        )?;
        spawn(&mut children, name, &bins.agent, &config, &root)?;
        let admin = wait_for_admin(&admin_socket, &mut children, &root, name).await?;
        nodes.push(NodeParts {
            name: name.to_owned(),
            workload,
            admin_socket,
            admin,
        });
    }
    let listed = r1_cluster
        .list_nodes(pb::ListNodesRequest {})
        .await?
        .into_inner()
        .nodes;
    say(&format!(
        "started three agents, each attested with a join token and issuing with its own node CA: {}",
        listed
            .iter()
            .map(|n| {
                // Serials begin with their issue time: the end tells them apart.
                let tail = n.ca_serial.len().saturating_sub(8);
                format!(
                    "{} (CA …{})",
                    n.name,
                    n.ca_serial.get(tail..).unwrap_or("?")
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    ));

    // Registration once, at the server: entries at r1, the consent at r2 (both reach
    // every agent over the server's stream, whichever replica wrote them).
    let (mut r1, mut r2) = (admins[0].clone(), admins[1].clone());
    say("registering once, at the server (entries at r1, the consent below at r2):");
    let (shadow, entries) = register_entries(&mut r1, bins, &root).await?;
    let consent = grant(&mut r2).await?;
    let started = Instant::now();
    for node in &mut nodes {
        wait_until_holds(node, &entries, &consent).await?;
    }
    say(&format!(
        "the entries and the consent reached all three agents {:.0} ms after the consent was granted",
        started.elapsed().as_secs_f64() * 1000.0
    ));

    let runtime_node = &nodes[0];
    let server_node = &nodes[2];
    let (url, server_audit) =
        start_mcp_server(&mut children, bins, &server_node.workload, &root).await?;
    say(&format!(
        "the runtime runs on {}, the MCP server on {}: different agents, different node CAs",
        runtime_node.name, server_node.name
    ));

    let workload = runtime_node.workload.clone();
    let admin_socket = runtime_node.admin_socket.clone();
    let runtime_agent = runtime_node.admin.clone();
    let audits = vec![
        ("tessera-server (r1)".to_owned(), r1.clone()),
        (
            format!("agent {} (the runtime's)", runtime_node.name),
            runtime_node.admin.clone(),
        ),
    ];
    Ok(Stage {
        children,
        cluster: Some(ClusterParts {
            pg,
            replicas,
            nodes,
            consent,
        }),
        dir,
        workload,
        admin_socket,
        http_port: 0,
        admin: r1,
        runtime_agent,
        audits,
        url,
        server_audit,
        shadow,
    })
}

/// Waits until `node`'s agent holds every entry in `entries` and the live consent.
async fn wait_until_holds(
    node: &mut NodeParts,
    entries: &[String],
    consent: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + PROPAGATION_PATIENCE;
    loop {
        let held = node.admin.list_entries().await?;
        let consents = node.admin.list_consents(String::new(), false).await?;
        if entries.iter().all(|id| held.iter().any(|e| &e.id == id))
            && consents.iter().any(|c| c.id == consent)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the registrations did not reach {} within {PROPAGATION_PATIENCE:?}",
                node.name
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Writes `contents` to a new file only its owner can read.
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

/// A failed cluster step.
fn fail(n: u32, what: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("demo step {n} did not behave as shown: {what}")
}

/// Runs the example runtime on `workload` with one `get_pull_request` call; its JSON.
fn run_runtime(runtime: &Path, workload: &Path, url: &str) -> anyhow::Result<Value> {
    let out = Command::new(runtime)
        .arg("--workload-socket")
        .arg(workload)
        .args(["--url", url, "--server", SERVER, "--subject", SUBJECT])
        .args(["--purpose", "review PR 42 in acme/api"])
        .args(["--scope", "github/tool/get_pull_request"])
        .args([
            "--call",
            "get_pull_request",
            r#"{"repo":"acme/api","number":42}"#,
        ])
        .arg("--json")
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .output()
        .context("running the example agent runtime")?;
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "the runtime printed no JSON (exit {:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Runs the runtime every 100 ms until `done` holds for its JSON; the JSON and how long
/// it took. Fails after `within`.
async fn runtime_until(
    runtime: &Path,
    workload: &Path,
    url: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<Option<(Value, Duration)>> {
    let start = Instant::now();
    loop {
        let doc = run_runtime(runtime, workload, url)?;
        if done(&doc) {
            return Ok(Some((doc, start.elapsed())));
        }
        if start.elapsed() > within {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where the runtime's run in `doc` was refused as `revoked`: at the MCP session's
/// `initialize` or at its call; `None` if it was not.
fn refusal_as_revoked(doc: &Value) -> Option<&'static str> {
    let error = &doc["error"];
    if error["stage"] == "connect_mcp"
        && error["message"]
            .as_str()
            .is_some_and(|m| m.contains("access denied: revoked"))
    {
        return Some("at the session's initialize");
    }
    let call = &doc["calls"][0];
    (call["outcome"] == "denied" && call["reason"] == "revoked").then_some("at its call")
}

/// Steps 9 and 10, which only a cluster has.
pub(super) async fn tell(stage: &mut Stage, bins: &Binaries) -> anyhow::Result<()> {
    let url = stage.url.clone();
    let cluster = stage
        .cluster
        .as_ref()
        .context("the cluster steps need a cluster stage")?;
    let node_b = cluster.node("node-b").workload.clone();
    let node_a = cluster.node("node-a").workload.clone();
    let r2_socket = cluster.replicas[1].admin_socket.clone();
    let consent = cluster.consent.clone();

    step(
        9,
        "A node is evicted: what its node CA signed stops working on every node",
    );
    let doc = run_runtime(&bins.runtime, &node_b, &url)?;
    let call = &doc["calls"][0];
    if call["outcome"] != "ok" {
        return Err(fail(
            9,
            format!("a task from node-b was not allowed: {doc}"),
        ));
    }
    ok(&format!(
        "a runtime on node-b, task {} → get_pull_request allowed on node-c's server",
        doc["task"]["id"].as_str().unwrap_or("?")
    ));
    let mut r2_cluster = ClusterAdminClient::new(connect_unix(&r2_socket).await?);
    let evicted = r2_cluster
        .evict_node(pb::EvictNodeRequest {
            name: "node-b".into(),
        })
        .await
        .context("evicting node-b")?
        .into_inner()
        .node
        .unwrap_or_default();
    let evicted_at = Instant::now();
    detail(&format!(
        "tessera node evict node-b (at r2): its node CA {} is revoked, its renewals stop",
        evicted.ca_serial
    ));
    // Every request is checked, the session's `initialize` first: a new task from
    // node-b is refused there, or at its call if its session was opened just before.
    let refused = runtime_until(&bins.runtime, &node_b, &url, Duration::from_secs(10), |d| {
        refusal_as_revoked(d).is_some()
    })
    .await?;
    let Some((doc, _)) = refused else {
        return Err(fail(
            9,
            "node-b's tasks were still allowed on node-c 10 s after the eviction",
        ));
    };
    ok(&format!(
        "a new task on node-b → denied: revoked at node-c ({}), {:.0} ms after the eviction",
        refusal_as_revoked(&doc).unwrap_or_default(),
        evicted_at.elapsed().as_secs_f64() * 1000.0,
    ));
    let doc = run_runtime(&bins.runtime, &node_a, &url)?;
    if doc["calls"][0]["outcome"] != "ok" {
        return Err(fail(9, format!("node-a's tasks should still work: {doc}")));
    }
    ok("node-a's tasks are unaffected: get_pull_request allowed");

    step(
        10,
        "A server replica dies; a consent withdrawn at the other still reaches every node",
    );
    if !stage.children.kill("r1") {
        return Err(fail(10, "replica r1 was not running"));
    }
    ok("replica r1 killed (SIGKILL); node-a and node-b were connected to it");
    let mut r2 = Admin::connect(&r2_socket).await?;
    if r2
        .withdraw_consent(&consent)
        .await
        .context("withdrawing the consent at r2")?
        .is_none()
    {
        return Err(fail(10, format!("r2 does not know consent {consent}")));
    }
    let withdrawn_at = Instant::now();
    detail(&format!("consent {consent} withdrawn at r2"));
    let refused = runtime_until(&bins.runtime, &node_a, &url, PROPAGATION_PATIENCE, |d| {
        d["error"]["stage"] == "begin_task"
    })
    .await?;
    let Some((doc, _)) = refused else {
        return Err(fail(
            10,
            format!("node-a still began tasks {PROPAGATION_PATIENCE:?} after the withdrawal"),
        ));
    };
    let message = doc["error"]["message"].as_str().unwrap_or_default();
    if !message.contains("no live consent") {
        return Err(fail(10, format!("unexpected refusal: {doc}")));
    }
    ok(&format!(
        "node-a moved to r2 and learned it: BeginTask refused ({message}), {:.0} ms after the withdrawal",
        withdrawn_at.elapsed().as_secs_f64() * 1000.0
    ));
    Ok(())
}

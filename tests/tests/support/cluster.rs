//! A cluster on one machine for the revocation suites and bench: a real PostgreSQL
//! (tessera-pgtest), two `tessera-server` replicas sharing it and one cluster root, and
//! cluster-mode `tessera-agent`s with their own data directories and sockets, each
//! attested with a join token, optionally behind a [`Forwarder`](super::forwarder) that
//! can partition it. Registrations are made once, at the server.
//!
//! (`tests/tests/cluster.rs` has its own copy of the replica harness; it belongs to the
//! control-plane suite and predates this module.)
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tessera_e2e::{TRUST_DOMAIN, TestAgent, bin};
use tessera_example_agent_runtime::{
    CallOutcome, McpConnection, TaskCredential, TaskRequest, Workload, install_crypto_provider,
    tls_config,
};
use tessera_pgtest::PgServer;
use tessera_proto::tessera::v1::admin_client::AdminClient;
use tessera_proto::tessera::v1::cluster_admin_client::ClusterAdminClient;
use tessera_proto::tessera::v1::{
    CreateEntryRequest, CreateJoinTokenRequest, GrantConsentRequest, ListConsentsRequest,
    ListEntriesRequest, ListNodesRequest, ListTasksRequest, Task,
};
use tonic::transport::Channel;

/// The client every runtime in these suites acts as.
pub const CLIENT: &str = "code-reviewer";
/// The human the tasks act for.
pub const SUBJECT: &str = "alice@acme.corp";
/// The example MCP server's binary.
pub const SERVER_BIN: &str = "tessera-example-mcp-server";
/// The example agent runtime's binary.
pub const RUNTIME_BIN: &str = "tessera-example-agent-runtime";
/// The scopes of the cluster's consent.
pub const CONSENTED: &[&str] = &["github/tool/get_pull_request", "github/tool/list_pulls"];

pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// PostgreSQL, the cluster root and two replicas; dropped in reverse order.
pub struct Cluster {
    pub replicas: Vec<Replica>,
    pub pg: PgServer,
    /// The root's `ca.crt` / `ca.key`.
    pub ca: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts PostgreSQL, makes a root and starts two replicas; `None` (after saying so)
    /// on a machine without PostgreSQL's binaries.
    pub async fn start(test: &str) -> Option<Cluster> {
        let pg = PgServer::start_or_skip(test).await?;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        let init = Command::new(bin("tessera-server"))
            .args(["ca", "init", "--trust-domain", TRUST_DOMAIN, "--dir"])
            .arg(&ca)
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "{}",
            String::from_utf8_lossy(&init.stderr)
        );
        let r1 = Replica::start(&pg, dir.path(), &ca, "r1").await;
        let r2 = Replica::start(&pg, dir.path(), &ca, "r2").await;
        Some(Cluster {
            replicas: vec![r1, r2],
            pg,
            ca,
            dir,
        })
    }

    pub fn r1(&self) -> &Replica {
        &self.replicas[0]
    }

    pub fn r2(&self) -> &Replica {
        &self.replicas[1]
    }

    /// The replicas' node listeners, `host:port`.
    pub fn node_addresses(&self) -> Vec<String> {
        self.replicas.iter().map(|r| r.node.clone()).collect()
    }

    /// A cluster-mode agent attesting as `node` (join token from replica 1), connecting
    /// to `server_address` (a replica's node listener or a forwarder), with `extra` TOML.
    pub async fn agent(&self, node: &str, server_address: &str, extra: &str) -> TestAgent {
        let token = self.r1().join_token(node).await;
        TestAgent::start(&format!(
            "{extra}\n[server]\naddress = \"{server_address}\"\nbundle_file = \"{}\"\n\
             join_token = \"{token}\"\nnode_name = \"{node}\"\n",
            self.ca.join("ca.crt").display()
        ))
        .await
        .unwrap()
    }

    /// Registers, once at the server: this test process and the example runtime as
    /// [`CLIENT`], the example MCP server as server `github`; grants [`CONSENTED`] for
    /// [`SUBJECT`]; waits until every agent in `agents` holds all of it. The consent id.
    pub async fn register(&self, agents: &[&TestAgent]) -> String {
        let uid = nix::unistd::geteuid();
        let exe = std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
        let mut entries = Vec::new();
        for (client, server, path) in [
            (CLIENT, "", exe),
            (CLIENT, "", std::fs::canonicalize(bin(RUNTIME_BIN)).unwrap()),
            (
                "",
                "github",
                std::fs::canonicalize(bin(SERVER_BIN)).unwrap(),
            ),
        ] {
            let entry = self
                .r1()
                .admin()
                .await
                .create_entry(CreateEntryRequest {
                    client: client.into(),
                    selectors: vec![
                        format!("unix:uid:{uid}"),
                        format!("unix:path:{}", path.display()),
                    ],
                    svid_ttl_secs: 0,
                    server: server.into(),
                })
                .await
                .unwrap()
                .into_inner();
            entries.push(entry.id);
        }
        let consent = self.r2().grant(CONSENTED).await;
        for agent in agents {
            for id in &entries {
                until(
                    "an entry reaches every agent",
                    Duration::from_secs(20),
                    || has_entry(agent, id),
                )
                .await;
            }
            until(
                "the consent reaches every agent",
                Duration::from_secs(20),
                || has_live_consent(agent, &consent),
            )
            .await;
        }
        consent
    }

    /// Runs the `tessera` CLI against replica `i`'s admin socket.
    pub fn cli(&self, i: usize, args: &[&str]) -> Output {
        Command::new(bin("tessera"))
            .arg("--admin-socket")
            .arg(&self.replicas[i].admin)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running tessera")
    }

    /// The replicas' logs, to explain a failure.
    pub fn logs(&self) -> String {
        self.replicas
            .iter()
            .map(|r| format!("--- {}:\n{}", r.log.display(), r.log_text()))
            .collect()
    }
}

/// A `tessera-server` replica; killed on drop.
pub struct Replica {
    pub child: Option<Child>,
    pub admin: PathBuf,
    /// Its node listener, `host:port`.
    pub node: String,
    pub http: String,
    pub log: PathBuf,
    config: PathBuf,
    name: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Replica {
    pub async fn start(pg: &PgServer, dir: &Path, ca: &Path, name: &str) -> Replica {
        let password = dir.join("pgpassword");
        if !password.exists() {
            std::fs::write(&password, pg.password()).unwrap();
            std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let admin = dir.join(format!("{name}/admin.sock"));
        let node = format!("127.0.0.1:{}", free_port());
        let http = format!("127.0.0.1:{}", free_port());
        let log = dir.join(format!("{name}.log"));
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "trust_domain = \"{TRUST_DOMAIN}\"\n\
                 admin_socket = \"{}\"\n\
                 http_listen = \"{http}\"\n\
                 [database]\nurl = \"postgres://{}@127.0.0.1:{}/postgres?sslmode=disable\"\n\
                 password_file = \"{}\"\n\
                 [ca]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
                 [listen]\nnode = \"{node}\"\n",
                admin.display(),
                tessera_pgtest::SUPERUSER,
                pg.port(),
                password.display(),
                ca.join("ca.crt").display(),
                ca.join("ca.key").display(),
            ),
        )
        .unwrap();
        let mut replica = Replica {
            child: None,
            admin,
            node,
            http,
            log,
            config,
            name: name.into(),
        };
        replica.spawn().await;
        replica
    }

    /// Starts (or restarts) the process on the same config and waits until it serves.
    pub async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(bin("tessera-server"))
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tessera-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut c) = self.cluster_admin().await
                && c.list_nodes(ListNodesRequest {}).await.is_ok()
                && std::net::TcpStream::connect(&self.node).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tessera-server {} not ready:\n{}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL, no shutdown of any kind.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn channel(&self) -> anyhow::Result<Channel> {
        TestAgent::channel(&self.admin).await
    }

    pub async fn cluster_admin(&self) -> anyhow::Result<ClusterAdminClient<Channel>> {
        Ok(ClusterAdminClient::new(self.channel().await?))
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel().await.unwrap())
    }

    pub async fn join_token(&self, node: &str) -> String {
        self.cluster_admin()
            .await
            .unwrap()
            .create_join_token(CreateJoinTokenRequest {
                ttl_secs: 600,
                node_name: node.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .token
    }

    /// Grants [`CLIENT`] `scopes` on `github` for [`SUBJECT`], for an hour.
    pub async fn grant(&self, scopes: &[&str]) -> String {
        self.admin()
            .await
            .grant_consent(GrantConsentRequest {
                client: CLIENT.into(),
                subject: SUBJECT.into(),
                server: "github".into(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                expires_at_unix: 0,
                ttl_secs: 3600,
            })
            .await
            .unwrap()
            .into_inner()
            .id
    }
}

pub async fn has_entry(agent: &TestAgent, id: &str) -> bool {
    let Ok(mut admin) = agent.admin_client().await else {
        return false;
    };
    admin
        .list_entries(ListEntriesRequest {})
        .await
        .is_ok_and(|r| r.into_inner().entries.iter().any(|e| e.id == id))
}

pub async fn has_live_consent(agent: &TestAgent, id: &str) -> bool {
    let Ok(mut admin) = agent.admin_client().await else {
        return false;
    };
    admin
        .list_consents(ListConsentsRequest {
            client: String::new(),
            include_withdrawn: false,
        })
        .await
        .is_ok_and(|r| r.into_inner().consents.iter().any(|c| c.id == id))
}

/// Polls `check` every 10 ms until it holds, panicking after `within`; how long it took.
pub async fn until<F, Fut>(what: &str, within: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// === Tasks and MCP calls ===

/// A task begun on `agent` by this (registered) process, with its SVID picked from the
/// Workload API stream by hint, as any SPIFFE client would.
pub struct RunningTask {
    pub workload: Workload,
    pub task: Task,
    pub cred: TaskCredential,
}

impl RunningTask {
    pub async fn begin(agent: &TestAgent) -> RunningTask {
        install_crypto_provider();
        let workload = Workload::connect(&agent.endpoint()).await.unwrap();
        let task = workload
            .begin_task(&TaskRequest {
                server: "github".into(),
                scopes: vec!["github/tool/get_pull_request".into()],
                subject: SUBJECT.into(),
                purpose: "review PR 42".into(),
                lifetime_secs: 0,
            })
            .await
            .unwrap_or_else(|e| panic!("BeginTask: {e}\nagent log:\n{}", agent.log_text()));
        let cred = workload
            .task_credential(&task.id, Duration::from_secs(10))
            .await
            .unwrap();
        RunningTask {
            workload,
            task,
            cred,
        }
    }

    /// An MCP session over mTLS with the server at `url`, presenting the task's SVID.
    pub async fn connect(&self, url: &str) -> anyhow::Result<McpConnection> {
        McpConnection::connect(url, tls_config(&self.cred, "github")?).await
    }

    pub async fn end(&self) -> Task {
        self.workload.end_task(&self.task.id).await.unwrap()
    }
}

/// One allowed-if-the-task-is-good call.
pub async fn call(conn: &McpConnection) -> CallOutcome {
    conn.call(
        "get_pull_request",
        serde_json::json!({"repo": "acme/api", "number": 42})
            .as_object()
            .cloned(),
    )
    .await
}

/// Calls on `conn` until a call is refused; the refusal and how long it took. Panics if
/// every call is still allowed after `within`.
pub async fn until_refused(conn: &McpConnection, within: Duration) -> (CallOutcome, Duration) {
    let start = Instant::now();
    loop {
        let out = call(conn).await;
        if !out.is_ok() {
            return (out, start.elapsed());
        }
        assert!(
            start.elapsed() < within,
            "still allowed {within:?} later: {out:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Calls on `conn` until a call is refused with `reason` (a verifier may refuse for
/// another reason first, e.g. stale before the revocation arrives); how long it took.
pub async fn until_refused_as(conn: &McpConnection, reason: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let out = call(conn).await;
        if out.denial_reason() == Some(reason) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "not refused as {reason} {within:?} later: {out:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Calls on `conn` until a call is allowed (a verifier fresh again); panics after `within`.
pub async fn until_allowed(conn: &McpConnection, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let out = call(conn).await;
        if out.is_ok() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "still refused {within:?} later: {out:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The task `id` as `agent` holds it (ended ones too), if it does.
pub async fn task_on(agent: &TestAgent, id: &str) -> Option<Task> {
    let mut tasks = tessera_proto::tessera::v1::tasks_client::TasksClient::new(
        TestAgent::channel(&agent.workload).await.ok()?,
    );
    tasks
        .list_tasks(ListTasksRequest {
            include_ended: true,
        })
        .await
        .ok()?
        .into_inner()
        .tasks
        .into_iter()
        .find(|t| t.id == id)
}

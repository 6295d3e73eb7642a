//! Cluster mode across processes: a real PostgreSQL (tessera-pgtest), two real
//! `tessera-server` replicas sharing it and one cluster root, and three `tessera-agent`s
//! with their own data directories and sockets, each attested with a join token.
//! Registrations are made once, at the server; every agent serves them.
//!
//! Needs the binaries: `cargo build --bins -p tessera-agent -p tessera-cli -p tessera-server`.

#[path = "support/tasks.rs"]
mod tasks;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, UnixTime};
use tasks::{SUBJECT, begin, begin_req, live_task_ids};
use tessera_e2e::{TRUST_DOMAIN, TestAgent, bin};
use tessera_pgtest::PgServer;
use tessera_proto::tessera::v1::admin_client::AdminClient;
use tessera_proto::tessera::v1::cluster_admin_client::ClusterAdminClient;
use tessera_proto::tessera::v1::{
    CreateEntryRequest, CreateJoinTokenRequest, GrantConsentRequest, ListAuditRequest,
    ListConsentsRequest, ListEntriesRequest, ListNodesRequest, WithdrawConsentRequest,
};
use tonic::transport::Channel;

const CLIENT: &str = "code-reviewer";

fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `tessera-server` replica; killed on drop.
struct Replica {
    child: Child,
    admin: PathBuf,
    node: String,
    log: PathBuf,
    config: PathBuf,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    async fn start(pg: &PgServer, dir: &Path, ca: &Path, name: &str) -> Replica {
        let password = dir.join("pgpassword");
        if !password.exists() {
            std::fs::write(&password, pg.password()).unwrap();
            std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let admin = dir.join(format!("{name}/admin.sock"));
        let node = format!("127.0.0.1:{}", free_port());
        let log = dir.join(format!("{name}.log"));
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "trust_domain = \"{TRUST_DOMAIN}\"\n\
                 admin_socket = \"{}\"\n\
                 http_listen = \"127.0.0.1:{}\"\n\
                 [database]\nurl = \"postgres://{}@127.0.0.1:{}/postgres?sslmode=disable\"\n\
                 password_file = \"{}\"\n\
                 [ca]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
                 [listen]\nnode = \"{node}\"\n",
                admin.display(),
                free_port(),
                tessera_pgtest::SUPERUSER,
                pg.port(),
                password.display(),
                ca.join("ca.crt").display(),
                ca.join("ca.key").display(),
            ),
        )
        .unwrap();
        let child = Command::new(bin("tessera-server"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start tessera-server");
        let replica = Replica {
            child,
            admin,
            node,
            log,
            config,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut c) = replica.cluster_admin().await
                && c.list_nodes(ListNodesRequest {}).await.is_ok()
                && std::net::TcpStream::connect(&replica.node).is_ok()
            {
                return replica;
            }
            assert!(
                Instant::now() < deadline,
                "tessera-server {name} not ready:\n{}",
                std::fs::read_to_string(&replica.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn channel(&self) -> anyhow::Result<Channel> {
        TestAgent::channel(&self.admin).await
    }

    async fn cluster_admin(&self) -> anyhow::Result<ClusterAdminClient<Channel>> {
        Ok(ClusterAdminClient::new(self.channel().await?))
    }

    async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel().await.unwrap())
    }

    async fn join_token(&self, node: &str) -> String {
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

    async fn grant(&self, scopes: &[&str]) -> String {
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

/// An agent in cluster mode pointed at `replica`, attesting as `node`.
async fn cluster_agent(replica: &Replica, ca: &Path, node: &str) -> TestAgent {
    let token = replica.join_token(node).await;
    TestAgent::start(&format!(
        "[server]\naddress = \"{}\"\nbundle_file = \"{}\"\njoin_token = \"{token}\"\nnode_name = \"{node}\"\n",
        replica.node,
        ca.join("ca.crt").display()
    ))
    .await
    .unwrap()
}

/// An agent in cluster mode listing every replica, attesting as `node`.
async fn failover_agent(replicas: &[&Replica], ca: &Path, node: &str) -> TestAgent {
    let token = replicas[0].join_token(node).await;
    let addresses: Vec<String> = replicas.iter().map(|r| format!("\"{}\"", r.node)).collect();
    TestAgent::start(&format!(
        "[server]\naddresses = [{}]\nbundle_file = \"{}\"\njoin_token = \"{token}\"\nnode_name = \"{node}\"\n",
        addresses.join(", "),
        ca.join("ca.crt").display()
    ))
    .await
    .unwrap()
}

/// The replica address an agent's log says it last connected to.
fn connected_to(agent: &TestAgent) -> Option<String> {
    let log = agent.log_text();
    log.lines()
        .rfind(|l| l.contains("connected to tessera-server"))
        .and_then(|l| l.split("server=").nth(1))
        .map(|rest| {
            rest.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned()
        })
}

/// PostgreSQL, a cluster root, and a directory for replicas' files.
async fn cluster_base(test: &str) -> Option<(PgServer, tempfile::TempDir, PathBuf)> {
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
    Some((pg, dir, ca))
}

/// This test process's client entry, made at `replica`.
async fn register_self_at(replica: &Replica) -> String {
    let exe = std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
    replica
        .admin()
        .await
        .create_entry(CreateEntryRequest {
            client: CLIENT.into(),
            selectors: vec![
                format!("unix:uid:{}", nix::unistd::geteuid()),
                format!("unix:path:{}", exe.display()),
            ],
            svid_ttl_secs: 0,
            server: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .id
}

async fn has_entry(agent: &TestAgent, id: &str) -> bool {
    agent
        .admin_client()
        .await
        .unwrap()
        .list_entries(ListEntriesRequest {})
        .await
        .unwrap()
        .into_inner()
        .entries
        .iter()
        .any(|e| e.id == id)
}

async fn has_live_consent(agent: &TestAgent, id: &str) -> bool {
    agent
        .admin_client()
        .await
        .unwrap()
        .list_consents(ListConsentsRequest {
            client: String::new(),
            include_withdrawn: false,
        })
        .await
        .unwrap()
        .into_inner()
        .consents
        .iter()
        .any(|c| c.id == id)
}

/// Polls `check` until it holds; the time it took.
async fn until<F, Fut>(what: &str, within: Duration, mut check: F) -> Duration
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
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The certificates of a concatenated-DER bundle.
fn split_der(mut der: &[u8]) -> Vec<CertificateDer<'static>> {
    let mut out = Vec::new();
    while !der.is_empty() {
        let (rest, _) = x509_parser::parse_x509_certificate(der).expect("a DER certificate");
        out.push(CertificateDer::from(der[..der.len() - rest.len()].to_vec()));
        der = rest;
    }
    out
}

/// `n` BeginTask calls in a row on one connection, sorted by latency.
async fn begin_latency(agent: &TestAgent, n: usize) -> Vec<Duration> {
    let mut client = tasks::tasks(agent).await;
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        client
            .begin_task(begin_req(&["github/tool/get_pull_request"]))
            .await
            .unwrap();
        times.push(start.elapsed());
    }
    times.sort();
    times
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_made_once_at_the_server_work_on_every_agent() {
    let Some(pg) = PgServer::start_or_skip("cluster").await else {
        return;
    };
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

    // Three nodes, two on one replica and one on the other.
    let a = cluster_agent(&r1, &ca, "node-a").await;
    let b = cluster_agent(&r2, &ca, "node-b").await;
    let mut c = cluster_agent(&r1, &ca, "node-c").await;

    // Local registration writes are refused in cluster mode, naming the server.
    let refused = a.register_self(CLIENT).await.unwrap_err();
    assert!(
        format!("{refused:#}").contains("cluster mode"),
        "{refused:#}"
    );

    // Registered once, at the server.
    let exe = std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
    let entry = r2
        .admin()
        .await
        .create_entry(CreateEntryRequest {
            client: CLIENT.into(),
            selectors: vec![
                format!("unix:uid:{}", nix::unistd::geteuid()),
                format!("unix:path:{}", exe.display()),
            ],
            svid_ttl_secs: 0,
            server: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    // An MCP server entry too: its SVID comes from the server's root through
    // SignServerSvid (a node CA may not sign it), and the agent serves it.
    r1.admin()
        .await
        .create_entry(CreateEntryRequest {
            client: String::new(),
            selectors: vec![format!("unix:uid:{}", nix::unistd::geteuid())],
            svid_ttl_secs: 0,
            server: "github".into(),
        })
        .await
        .unwrap();
    let consent = r1.grant(&["github/tool/get_*"]).await;
    for agent in [&a, &b, &c] {
        until(
            "the entry reaches every agent",
            Duration::from_secs(10),
            || has_entry(agent, &entry.id),
        )
        .await;
        until(
            "the consent reaches every agent",
            Duration::from_secs(10),
            || has_live_consent(agent, &consent),
        )
        .await;
    }

    until(
        "agent A holds the server SVID",
        Duration::from_secs(10),
        || async {
            a.log_text()
                .lines()
                .any(|l| l.contains("issued SVID") && l.contains("spiffe://e2e.test/mcp/github"))
        },
    )
    .await;

    // BeginTask works on agent A and on agent C, under the server's consent id.
    let on_a = begin(&a, begin_req(&["github/tool/get_pull_request"])).await;
    let on_c = begin(&c, begin_req(&["github/tool/get_pull_request"])).await;
    let task_a = on_a.task.clone().unwrap();
    assert_eq!(task_a.consent_id, consent);

    // A's audit names node A on the task's begin and its SVID; C's names C.
    for (agent, node, task) in [
        (&a, "node-a", &task_a.id),
        (&c, "node-c", &on_c.task.as_ref().unwrap().id),
    ] {
        let records = agent
            .admin_client()
            .await
            .unwrap()
            .list_audit(ListAuditRequest {
                after_seq: 0,
                limit: 1000,
            })
            .await
            .unwrap()
            .into_inner()
            .records;
        let begun = records
            .iter()
            .find(|r| r.kind == "task.begin" && r.detail_json.contains(task.as_str()))
            .expect("a task.begin record");
        let detail: serde_json::Value = serde_json::from_str(&begun.detail_json).unwrap();
        assert_eq!(
            detail["node"],
            format!("spiffe://{TRUST_DOMAIN}/node/{node}"),
            "{detail}"
        );
    }
    assert_eq!(on_c.task.unwrap().consent_id, consent);

    // A's task SVID verifies under the bundle C hands out: a stock rustls client
    // verifier fed with C's roots accepts A's chain (leaf, A's node CA).
    let svid_a = on_a.svid.unwrap();
    let chain_a = split_der(&svid_a.x509_svid);
    assert_eq!(chain_a.len(), 2, "leaf and node A's CA");
    let mut roots = rustls::RootCertStore::empty();
    for root in split_der(&on_c.svid.unwrap().bundle) {
        roots.add(root).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        std::sync::Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    verifier
        .verify_client_cert(&chain_a[0], &chain_a[1..], UnixTime::now())
        .expect("agent C's bundle accepts agent A's task SVID");

    // Withdrawn at the server: the live task on A ends.
    assert!(live_task_ids(&a).await.contains(&task_a.id));
    r2.admin()
        .await
        .withdraw_consent(WithdrawConsentRequest {
            id: consent.clone(),
        })
        .await
        .unwrap();
    until("the task on A ends", Duration::from_secs(10), || async {
        !live_task_ids(&a).await.contains(&task_a.id)
    })
    .await;

    // C restarted resumes from its version and catches up with what it missed.
    if let Some(mut child) = c.child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let missed = r1.grant(&["github/tool/list_pulls"]).await;
    c.spawn().await.unwrap();
    until(
        "C catches up after a restart",
        Duration::from_secs(10),
        || has_live_consent(&c, &missed),
    )
    .await;
    // Require the line (the agent's log has no colour codes off a terminal), or a missing
    // line would pass.
    let log = c.log_text();
    let resumed = log
        .lines()
        .rfind(|l| l.contains("syncing registrations from the server"))
        .expect("C logs the version it resumes syncing from")
        .to_owned();
    let since: i64 = resumed
        .split("since=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no since=<version> in {resumed:?}"));
    assert!(since > 0, "the restart resumed from its version: {resumed}");

    // Change → every agent, and BeginTask latency cluster vs standalone, in this run.
    let mut propagation = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        let id = r1.grant(&["github/tool/get_*"]).await;
        for agent in [&a, &b, &c] {
            until(
                "a consent reaches every agent",
                Duration::from_secs(10),
                || has_live_consent(agent, &id),
            )
            .await;
        }
        propagation.push(start.elapsed());
    }
    propagation.sort();
    let standalone = TestAgent::start("").await.unwrap();
    standalone.register_self(CLIENT).await.unwrap();
    tasks::grant(&standalone, CLIENT, &["github/tool/get_*"]).await;
    let cluster_begin = begin_latency(&b, 50).await;
    let standalone_begin = begin_latency(&standalone, 50).await;
    eprintln!(
        "cluster: change -> all 3 agents p50 {:?} p99 {:?} (n={}); BeginTask p50 cluster {:?} vs standalone {:?}, p99 {:?} vs {:?} (n=50 each)",
        percentile(&propagation, 0.5),
        percentile(&propagation, 0.99),
        propagation.len(),
        percentile(&cluster_begin, 0.5),
        percentile(&standalone_begin, 0.5),
        percentile(&cluster_begin, 0.99),
        percentile(&standalone_begin, 0.99),
    );
    // Generous bound only: the target (p99 < 500 ms) is reported above, not asserted.
    assert!(percentile(&propagation, 0.99) < Duration::from_secs(5));
    drop((r1, r2));
}

/// Creates an entry for a client nobody runs (`load-<i>`) at `replica`: a registration
/// whose arrival can be checked on every agent.
async fn load_entry(admin: &mut AdminClient<Channel>, i: usize) -> Result<String, tonic::Status> {
    admin
        .create_entry(CreateEntryRequest {
            client: format!("load-{i}"),
            selectors: vec!["unix:uid:3999999".into()],
            svid_ttl_secs: 0,
            server: String::new(),
        })
        .await
        .map(|r| r.into_inner().id)
}

async fn entry_ids(agent: &TestAgent) -> std::collections::HashSet<String> {
    agent
        .admin_client()
        .await
        .unwrap()
        .list_entries(ListEntriesRequest {})
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .map(|e| e.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_move_to_the_other_replica_when_one_is_killed_under_load_and_lose_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let Some((pg, dir, ca)) = cluster_base("cluster failover").await else {
        return;
    };
    let r1 = Replica::start(&pg, dir.path(), &ca, "r1").await;
    let r2 = Replica::start(&pg, dir.path(), &ca, "r2").await;
    // Every agent lists both replicas; each picks one in its own shuffled order.
    let agents = [
        failover_agent(&[&r1, &r2], &ca, "node-a").await,
        failover_agent(&[&r1, &r2], &ca, "node-b").await,
        failover_agent(&[&r1, &r2], &ca, "node-c").await,
    ];
    let entry = register_self_at(&r1).await;
    let consent = r1.grant(&["github/tool/get_*"]).await;
    for agent in &agents {
        until(
            "the entry reaches every agent",
            Duration::from_secs(10),
            || has_entry(agent, &entry),
        )
        .await;
        until(
            "the consent reaches every agent",
            Duration::from_secs(10),
            || has_live_consent(agent, &consent),
        )
        .await;
    }

    // The replica most agents are connected to dies; at least two of three move.
    let on: Vec<String> = agents
        .iter()
        .map(|a| connected_to(a).expect("an agent logs the replica it connected to"))
        .collect();
    let on_r1 = on.iter().filter(|a| **a == r1.node).count();
    let (mut victim, survivor) = if on_r1 >= 2 { (r1, r2) } else { (r2, r1) };
    assert!(
        on.iter().filter(|a| **a == victim.node).count() >= 2,
        "{on:?}"
    );

    // Load: entry writes at the surviving replica and BeginTask on every agent.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(Mutex::new(Vec::<String>::new()));
    let writer = {
        let (stop, written) = (Arc::clone(&stop), Arc::clone(&written));
        let mut admin = survivor.admin().await;
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = load_entry(&mut admin, i)
                    .await
                    .expect("a write at the survivor");
                written.lock().unwrap().push(id);
                i += 1;
            }
        })
    };
    let mut beginners = Vec::new();
    for agent in &agents {
        let stop = Arc::clone(&stop);
        let mut client = tasks::tasks(agent).await;
        beginners.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match client
                    .begin_task(begin_req(&["github/tool/get_pull_request"]))
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // kill -9, then a registration at the survivor must reach all three agents.
    victim.child.kill().unwrap();
    let killed = Instant::now();
    let _ = victim.child.wait();
    let after_kill = survivor.grant(&["github/tool/list_pulls"]).await;
    for agent in &agents {
        until(
            "a registration after the kill reaches every agent",
            Duration::from_secs(10),
            || has_live_consent(agent, &after_kill),
        )
        .await;
    }
    let failover = killed.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let mut begun = 0;
    for b in beginners {
        let (ok, failed) = b.await.unwrap();
        assert!(
            failed.is_empty(),
            "BeginTask failed during the failover: {failed:?}"
        );
        begun += ok;
    }
    let written = written.lock().unwrap().clone();
    eprintln!(
        "failover: a registration made after kill -9 reached all 3 agents {failover:?} after the kill \
         ({} entry writes and {begun} BeginTask calls under load, none failed)",
        written.len()
    );
    // The issue's target is 2 s; the assertion leaves room for a loaded CI machine.
    assert!(failover < Duration::from_secs(8), "{failover:?}");

    // Nothing acknowledged is lost: every write is at the survivor and on every agent.
    let at_server: std::collections::HashSet<String> = survivor
        .admin()
        .await
        .list_entries(ListEntriesRequest {})
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .map(|e| e.id)
        .collect();
    for id in &written {
        assert!(at_server.contains(id), "entry {id} lost at the server");
    }
    for agent in &agents {
        until(
            "every written entry is on every agent",
            Duration::from_secs(10),
            || async {
                let here = entry_ids(agent).await;
                written.iter().all(|id| here.contains(id))
            },
        )
        .await;
        assert_eq!(connected_to(agent).as_deref(), Some(survivor.node.as_str()));
    }
    let moved = agents
        .iter()
        .filter(|a| {
            a.log_text()
                .contains("moved to another tessera-server replica")
        })
        .count();
    assert!(moved >= 2, "{moved} agents logged the move");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_postgres_restart_the_servers_recover_by_themselves() {
    let Some((mut pg, dir, ca)) = cluster_base("cluster postgres restart").await else {
        return;
    };
    let r1 = Replica::start(&pg, dir.path(), &ca, "r1").await;
    let r2 = Replica::start(&pg, dir.path(), &ca, "r2").await;
    let agent = failover_agent(&[&r1, &r2], &ca, "node-a").await;
    let entry = register_self_at(&r1).await;
    let consent = r1.grant(&["github/tool/get_*"]).await;
    until(
        "the consent reaches the agent",
        Duration::from_secs(10),
        || has_live_consent(&agent, &consent),
    )
    .await;

    pg.stop().await.unwrap();
    // While it is down: writes refused UNAVAILABLE, reads from memory, tasks on nodes.
    let refused = r1
        .admin()
        .await
        .grant_consent(GrantConsentRequest {
            client: CLIENT.into(),
            subject: SUBJECT.into(),
            server: "github".into(),
            scopes: vec!["github/tool/get_*".into()],
            expires_at_unix: 0,
            ttl_secs: 3600,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let listed = r2
        .admin()
        .await
        .list_entries(ListEntriesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.entries.iter().any(|e| e.id == entry));
    begin(&agent, begin_req(&["github/tool/get_pull_request"])).await;

    pg.start_again().await.unwrap();
    // Nobody restarts the replicas: both take writes again, and the agent converges.
    let mut after = Vec::new();
    for r in [&r1, &r2] {
        let deadline = Instant::now() + Duration::from_secs(60);
        let id = loop {
            let mut admin = r.admin().await;
            match admin
                .grant_consent(GrantConsentRequest {
                    client: CLIENT.into(),
                    subject: SUBJECT.into(),
                    server: "github".into(),
                    scopes: vec!["github/tool/list_pulls".into()],
                    expires_at_unix: 0,
                    ttl_secs: 3600,
                })
                .await
            {
                Ok(r) => break r.into_inner().id,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "writes still refused a minute after PostgreSQL came back: {e:?}\n{}",
                        std::fs::read_to_string(&r.log).unwrap_or_default()
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        after.push(id);
    }
    for id in &after {
        until(
            "a write after the restart reaches the agent",
            Duration::from_secs(20),
            || has_live_consent(&agent, id),
        )
        .await;
    }
}

/// Writes an SVID the cluster root signs for `id` as PEM files; their paths.
fn root_signed(ca: &Path, out: &Path, id: &str) -> (PathBuf, PathBuf) {
    let root = tessera_authority::Authority::open_cluster_root(
        TRUST_DOMAIN.parse().unwrap(),
        &ca.join("ca.crt"),
        &ca.join("ca.key"),
        tessera_authority::ClusterPolicy {
            node_ca_ttl: Duration::from_secs(3600),
        },
    )
    .unwrap();
    let svid = root
        .issue(&tessera_authority::SvidSpec {
            spiffe_id: id,
            ttl: Duration::from_secs(600),
            not_after_cap: None,
            claims: None,
        })
        .unwrap();
    write_pair(out, &svid.chain_der, &svid.key_pkcs8_der)
}

fn write_pair(out: &Path, chain: &[Vec<u8>], key: &[u8]) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(out).unwrap();
    let cert = out.join("svid.crt");
    let key_path = out.join("svid.key");
    let pem_chain: String = chain
        .iter()
        .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der.clone())))
        .collect();
    std::fs::write(&cert, pem_chain).unwrap();
    std::fs::write(
        &key_path,
        pem::encode(&pem::Pem::new("PRIVATE KEY", key.to_vec())),
    )
    .unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (cert, key_path)
}

/// `tessera --server-url https://<replica> --cert --key --ca <bundle> args…`.
fn remote_cli(
    replica: &Replica,
    cert: &Path,
    key: &Path,
    bundle: &Path,
    args: &[&str],
) -> std::process::Output {
    Command::new(bin("tessera"))
        .arg("--server-url")
        .arg(format!("https://{}", replica.node))
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .arg("--ca")
        .arg(bundle)
        .args(args)
        .env_remove("TESSERA_ADMIN_SOCKET")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_over_mtls_takes_an_admin_svid_and_refuses_every_other_identity() {
    let Some((pg, dir, ca)) = cluster_base("cluster admin mtls").await else {
        return;
    };
    let r1 = Replica::start(&pg, dir.path(), &ca, "r1").await;
    let alice = dir.path().join("alice");
    let issued = Command::new(bin("tessera-server"))
        .arg("--config")
        .arg(&r1.config)
        .args(["admin-svid", "issue", "--name", "alice", "--out"])
        .arg(&alice)
        .output()
        .unwrap();
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    assert!(String::from_utf8_lossy(&issued.stdout).contains("spiffe://e2e.test/admin/alice"));
    let key_mode = std::fs::metadata(alice.join("admin.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let (cert, key, bundle) = (
        alice.join("admin.crt"),
        alice.join("admin.key"),
        alice.join("bundle.crt"),
    );

    // The admin SVID registers, mints join tokens and reads, over a real handshake.
    let created = remote_cli(
        &r1,
        &cert,
        &key,
        &bundle,
        &[
            "entry",
            "create",
            "--client",
            "remote-made",
            "--selector",
            "unix:uid:4242",
        ],
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let token = remote_cli(
        &r1,
        &cert,
        &key,
        &bundle,
        &["node", "token", "create", "--node", "worker-9"],
    );
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    let listed = remote_cli(
        &r1,
        &cert,
        &key,
        &bundle,
        &["entry", "list", "--output", "json"],
    );
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(String::from_utf8_lossy(&listed.stdout).contains("remote-made"));
    // The write is the cluster's: the admin socket sees it, and its audit names alice.
    let at_socket = r1
        .admin()
        .await
        .list_entries(ListEntriesRequest {})
        .await
        .unwrap();
    assert!(
        at_socket
            .into_inner()
            .entries
            .iter()
            .any(|e| e.client == "remote-made")
    );

    // Every other identity the root signs is refused PERMISSION_DENIED, naming it.
    for (name, id) in [
        ("node", "spiffe://e2e.test/node/node-a"),
        ("client", "spiffe://e2e.test/client/code-reviewer"),
        ("mcp", "spiffe://e2e.test/mcp/github"),
        ("server", "spiffe://e2e.test/tessera/server"),
    ] {
        let (c, k) = root_signed(&ca, &dir.path().join(name), id);
        let out = remote_cli(&r1, &c, &k, &bundle, &["entry", "list"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{id} was let in");
        assert!(
            err.contains("refused the admin SVID") && err.contains("is not an admin SVID"),
            "{id}: {err}"
        );
    }
    // A task SVID (signed by a node CA) is refused too: a real one from an agent.
    let agent = cluster_agent(&r1, &ca, "node-t").await;
    register_self_at(&r1).await;
    let consent = r1.grant(&["github/tool/get_*"]).await;
    until(
        "the consent reaches the agent",
        Duration::from_secs(10),
        || has_live_consent(&agent, &consent),
    )
    .await;
    let svid = begin(&agent, begin_req(&["github/tool/get_pull_request"]))
        .await
        .svid
        .unwrap();
    let chain: Vec<Vec<u8>> = split_der(&svid.x509_svid)
        .into_iter()
        .map(|c| c.to_vec())
        .collect();
    let (c, k) = write_pair(&dir.path().join("task"), &chain, &svid.x509_svid_key);
    let out = remote_cli(&r1, &c, &k, &bundle, &["entry", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is not an admin SVID"),
        "{err}"
    );

    // An admin SVID of another root does not complete the handshake.
    let other = dir.path().join("other-ca");
    let init = Command::new(bin("tessera-server"))
        .args(["ca", "init", "--trust-domain", TRUST_DOMAIN, "--dir"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(init.status.success());
    let (c, k) = root_signed(
        &other,
        &dir.path().join("forged"),
        "spiffe://e2e.test/admin/mallory",
    );
    let out = remote_cli(&r1, &c, &k, &bundle, &["entry", "list"]);
    assert!(!out.status.success(), "a foreign admin SVID was let in");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("remote-made"),
        "nothing listed"
    );
}

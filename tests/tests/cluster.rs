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
    CreateEntryRequest, CreateJoinTokenRequest, GrantConsentRequest, ListConsentsRequest,
    ListEntriesRequest, ListNodesRequest, WithdrawConsentRequest,
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
    let log = c.log_text();
    let resumed = log
        .lines()
        .rfind(|l| l.contains("syncing registrations from the server"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        !resumed.contains("since=0"),
        "the restart resumed from its version: {resumed}"
    );

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

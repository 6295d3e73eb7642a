//! Cluster mode on one machine: a real PostgreSQL (tessera-pgtest), two `tessera-server`
//! replicas, three `tessera-agent`s listing both, and a standalone agent for the
//! baseline, all in this run:
//!
//! * propagation: a consent granted at a replica → listed by all three agents (p50/p99);
//! * server writes/s: entry creations through the admin socket, one caller and eight;
//! * BeginTask on a cluster agent (node CA, synced copy) against a standalone agent
//!   (its own CA), interleaved, one caller each (target: cluster ≤ 1.2× standalone).
//!
//! ```text
//! cargo bench -p tessera-e2e --bench cluster
//! ```
//! Needs PostgreSQL's binaries (`postgresql` on Debian; TESSERA_POSTGRES_BIN elsewhere).
//! The replica and agent helpers mirror tests/tests/cluster.rs (kept apart so the bench
//! builds without the test suite's support modules).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tessera_e2e::{Samples, TRUST_DOMAIN, TestAgent, bin};
use tessera_pgtest::PgServer;
use tessera_proto::tessera::v1::admin_client::AdminClient;
use tessera_proto::tessera::v1::cluster_admin_client::ClusterAdminClient;
use tessera_proto::tessera::v1::tasks_client::TasksClient;
use tessera_proto::tessera::v1::{
    BeginTaskRequest, CreateEntryRequest, CreateJoinTokenRequest, GrantConsentRequest,
    ListConsentsRequest, ListNodesRequest,
};
use tonic::transport::Channel;

const CLIENT: &str = "code-reviewer";
const SUBJECT: &str = "alice@acme.corp";
const PROPAGATIONS: usize = 200;
const WRITES: usize = 1000;
const WRITERS: usize = 8;
const BEGINS: usize = 2000;

fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Replica {
    child: Child,
    admin: PathBuf,
    node: String,
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
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "trust_domain = \"{TRUST_DOMAIN}\"\nadmin_socket = \"{}\"\n\
                 http_listen = \"127.0.0.1:{}\"\n\
                 [database]\nurl = \"postgres://{}@127.0.0.1:{}/postgres?sslmode=disable\"\n\
                 password_file = \"{}\"\n[ca]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
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
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
            .spawn()
            .expect("start tessera-server");
        let r = Replica { child, admin, node };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(ch) = TestAgent::channel(&r.admin).await
                && ClusterAdminClient::new(ch)
                    .list_nodes(ListNodesRequest {})
                    .await
                    .is_ok()
                && std::net::TcpStream::connect(&r.node).is_ok()
            {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("tessera-server {name} not ready");
    }

    async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(TestAgent::channel(&self.admin).await.unwrap())
    }

    async fn grant(&self, admin: &mut AdminClient<Channel>) -> String {
        admin
            .grant_consent(GrantConsentRequest {
                client: CLIENT.into(),
                subject: SUBJECT.into(),
                server: "github".into(),
                scopes: vec!["github/tool/get_*".into()],
                expires_at_unix: 0,
                ttl_secs: 3600,
            })
            .await
            .unwrap()
            .into_inner()
            .id
    }
}

async fn has_consent(admin: &mut AdminClient<Channel>, id: &str) -> bool {
    admin
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

fn begin_req() -> BeginTaskRequest {
    BeginTaskRequest {
        purpose: "bench".into(),
        subject: SUBJECT.into(),
        server: "github".into(),
        scopes: vec!["github/tool/get_pull_request".into()],
        lifetime_secs: 0,
        client: String::new(),
        bind_to_parent: false,
    }
}

fn show(what: &str, s: &Samples) {
    println!(
        "{what:<48} p50 {:>10.3?} p99 {:>10.3?} (n={})",
        s.pct(0.50),
        s.pct(0.99),
        s.0.len()
    );
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    tessera_e2e::ensure_built(&[
        ("tessera-agent", "tessera-agent"),
        ("tessera-server", "tessera-server"),
    ]);
    let pg = PgServer::start()
        .await
        .expect("PostgreSQL for the cluster bench (install postgresql)");
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let init = Command::new(bin("tessera-server"))
        .args(["ca", "init", "--trust-domain", TRUST_DOMAIN, "--dir"])
        .arg(&ca)
        .output()
        .unwrap();
    assert!(init.status.success());
    let r1 = Replica::start(&pg, dir.path(), &ca, "r1").await;
    let r2 = Replica::start(&pg, dir.path(), &ca, "r2").await;
    let mut agents = Vec::new();
    for node in ["node-a", "node-b", "node-c"] {
        let token = ClusterAdminClient::new(TestAgent::channel(&r1.admin).await.unwrap())
            .create_join_token(CreateJoinTokenRequest {
                ttl_secs: 600,
                node_name: node.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .token;
        agents.push(
            TestAgent::start(&format!(
                "task_max_live_per_process = 100000\n[server]\naddresses = [\"{}\", \"{}\"]\n\
                 bundle_file = \"{}\"\njoin_token = \"{token}\"\nnode_name = \"{node}\"\n",
                r1.node,
                r2.node,
                ca.join("ca.crt").display()
            ))
            .await
            .unwrap(),
        );
    }
    let exe = std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
    let selectors = vec![
        format!("unix:uid:{}", nix::unistd::geteuid()),
        format!("unix:path:{}", exe.display()),
    ];
    let mut admin1 = r1.admin().await;
    admin1
        .create_entry(CreateEntryRequest {
            client: CLIENT.into(),
            selectors: selectors.clone(),
            svid_ttl_secs: 0,
            server: String::new(),
        })
        .await
        .unwrap();
    let first = r1.grant(&mut admin1).await;
    let mut agent_admins = Vec::new();
    for a in &agents {
        agent_admins.push(a.admin_client().await.unwrap());
    }
    for a in &mut agent_admins {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !has_consent(a, &first).await {
            assert!(
                Instant::now() < deadline,
                "the consent never reached an agent"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    println!("cluster bench: PostgreSQL, 2 replicas, 3 agents (each listing both replicas)");

    // Propagation, alternating the replica written to.
    let mut admin2 = r2.admin().await;
    let mut propagation = Vec::with_capacity(PROPAGATIONS);
    for i in 0..PROPAGATIONS {
        let start = Instant::now();
        let id = if i % 2 == 0 {
            r1.grant(&mut admin1).await
        } else {
            r2.grant(&mut admin2).await
        };
        for a in &mut agent_admins {
            while !has_consent(a, &id).await {
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        }
        propagation.push(start.elapsed());
    }
    show(
        "consent granted → listed by all 3 agents",
        &Samples(propagation),
    );

    // Server writes/s: entries through the admin socket (commit, audit, change log,
    // NOTIFY, answered once this replica's memory holds it).
    let start = Instant::now();
    for i in 0..WRITES {
        admin1
            .create_entry(CreateEntryRequest {
                client: format!("seq-{i}"),
                selectors: vec!["unix:uid:3999999".into()],
                svid_ttl_secs: 0,
                server: String::new(),
            })
            .await
            .unwrap();
    }
    let one = WRITES as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut admin = if w % 2 == 0 {
            r1.admin().await
        } else {
            r2.admin().await
        };
        writers.push(tokio::spawn(async move {
            for i in 0..WRITES / WRITERS {
                admin
                    .create_entry(CreateEntryRequest {
                        client: format!("par-{w}-{i}"),
                        selectors: vec!["unix:uid:3999999".into()],
                        svid_ttl_secs: 0,
                        server: String::new(),
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let eight = (WRITES / WRITERS * WRITERS) as f64 / start.elapsed().as_secs_f64();
    println!(
        "server entry writes/s                            1 caller {one:.0}/s, {WRITERS} callers over both replicas {eight:.0}/s"
    );

    // The writes above leave every agent applying their entries (and minting an SVID for
    // each: an agent holds one per entry, matching workload or not) for a while after
    // the last answer; BeginTask measured meanwhile measured that backlog (2x). Wait
    // until the cluster agents' CPU is quiet, and say how long the catch-up took.
    let settle = Instant::now();
    let pids: Vec<u32> = agents.iter().filter_map(TestAgent::pid).collect();
    let cpu = |pids: &[u32]| -> Duration {
        pids.iter()
            .filter_map(|p| tessera_e2e::proc_cpu_time(*p).ok())
            .sum()
    };
    let busy_before = cpu(&pids);
    loop {
        let before = cpu(&pids);
        tokio::time::sleep(Duration::from_millis(500)).await;
        if cpu(&pids) - before < Duration::from_millis(25) {
            break;
        }
        assert!(
            settle.elapsed() < Duration::from_secs(120),
            "the agents never went quiet after the writes"
        );
    }
    println!(
        "agents applying the {} written entries: quiet {:.1?} after the last write, {:.1?} CPU over the 3 agents meanwhile",
        WRITES + WRITES / WRITERS * WRITERS,
        settle.elapsed().saturating_sub(Duration::from_millis(500)),
        cpu(&pids) - busy_before
    );

    // BeginTask: cluster agent vs standalone, interleaved in one loop.
    let standalone = TestAgent::start("task_max_live_per_process = 100000")
        .await
        .unwrap();
    standalone.register_self(CLIENT).await.unwrap();
    standalone
        .grant(CLIENT, SUBJECT, "github", &["github/tool/get_*"])
        .await
        .unwrap();
    let mut on_cluster = TasksClient::new(TestAgent::channel(&agents[1].workload).await.unwrap());
    let mut on_standalone =
        TasksClient::new(TestAgent::channel(&standalone.workload).await.unwrap());
    for _ in 0..100 {
        on_cluster.begin_task(begin_req()).await.unwrap();
        on_standalone.begin_task(begin_req()).await.unwrap();
    }
    let (mut c, mut s) = (Vec::with_capacity(BEGINS), Vec::with_capacity(BEGINS));
    for _ in 0..BEGINS {
        let t = Instant::now();
        on_cluster.begin_task(begin_req()).await.unwrap();
        c.push(t.elapsed());
        let t = Instant::now();
        on_standalone.begin_task(begin_req()).await.unwrap();
        s.push(t.elapsed());
    }
    let (c, s) = (Samples(c), Samples(s));
    show("BeginTask, cluster agent (node CA)", &c);
    show("BeginTask, standalone agent (baseline)", &s);
    println!(
        "BeginTask cluster ÷ standalone                   p50 {:.3}x p99 {:.3}x (target ≤ 1.2x)",
        c.pct(0.5).as_secs_f64() / s.pct(0.5).as_secs_f64(),
        c.pct(0.99).as_secs_f64() / s.pct(0.99).as_secs_f64()
    );
    drop((r1, r2));
}

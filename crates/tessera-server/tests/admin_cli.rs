//! Cross-process: two `tessera-server` replicas on one real PostgreSQL, driven with the
//! stock `tessera` CLI over their admin sockets, and PostgreSQL stopped and started
//! under them.
//!
//! The CLI binary is the one `cargo test --workspace` builds (`target/<profile>/tessera`);
//! alone, build it first with `cargo build -p tessera-cli --bins`.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tessera_pgtest::PgServer;

/// Generous: how long a replica may take to start or see a change before a test fails.
const PATIENCE: Duration = Duration::from_secs(60);

/// A binary built by this workspace, next to the test executable's directory.
fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .join(name);
    assert!(
        path.exists(),
        "{} not found: run `cargo build -p tessera-cli --bins` (or `cargo test --workspace`)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `tessera-server` process; killed on drop.
struct Replica {
    child: Child,
    admin: PathBuf,
    http: SocketAddr,
    log: PathBuf,
}

impl Replica {
    fn start(pg: &PgServer, database: &str, dir: &Path, name: &str) -> Replica {
        let mut replica = Replica::spawn(pg, database, dir, name);
        replica.until("ready", |r| r.get("/readyz").0 == 200);
        replica
    }

    /// Starts the process without waiting for it to be ready.
    fn spawn(pg: &PgServer, database: &str, dir: &Path, name: &str) -> Replica {
        let password = dir.join("pgpassword");
        if !password.exists() {
            std::fs::write(&password, pg.password()).unwrap();
            std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let admin = dir.join(format!("{name}/admin.sock"));
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_tessera-server"))
            .arg("--database-url")
            .arg(format!(
                "postgres://{}@127.0.0.1:{}/{database}?sslmode=disable",
                tessera_pgtest::SUPERUSER,
                pg.port()
            ))
            .arg("--admin-socket")
            .arg(&admin)
            .arg("--http-listen")
            .arg(http.to_string())
            .env("TESSERA_SERVER_DATABASE_PASSWORD_FILE", &password)
            .env("TESSERA_SERVER_TRUST_DOMAIN", "e2e.test")
            .env("TESSERA_SERVER_DATABASE_ACQUIRE_TIMEOUT", "1s")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start tessera-server");
        Replica {
            child,
            admin,
            http,
            log,
        }
    }

    /// `tessera --admin-socket <this replica> ARGS --output json`.
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("tessera"))
            .arg("--admin-socket")
            .arg(&self.admin)
            .args(args)
            .args(["--output", "json"])
            .output()
            .expect("run tessera")
    }

    /// The CLI's JSON output; panics with its stderr if it failed.
    fn json(&self, args: &[&str]) -> Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "tessera {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON output")
    }

    /// Status and body of a GET on the HTTP port; (0, "") if it does not answer.
    fn get(&self, path: &str) -> (u16, String) {
        let Ok(mut stream) = TcpStream::connect_timeout(&self.http, Duration::from_secs(5)) else {
            return (0, String::new());
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        if stream.write_all(request.as_bytes()).is_err() {
            return (0, String::new());
        }
        let mut response = String::new();
        if stream.read_to_string(&mut response).is_err() {
            return (0, String::new());
        }
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    fn until(&mut self, what: &str, mut check: impl FnMut(&Replica) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !check(self) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "tessera-server exited ({status}) waiting for {what}:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("a JSON array")
        .iter()
        .map(|item| item["id"].as_str().expect("an id").to_owned())
        .collect()
}

/// Entries and consents registered through one replica's admin socket are listed by the
/// other's; the audit log names the admin; the admin socket is 0600.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_serve_one_registry_to_the_stock_cli() {
    let Some(pg) = PgServer::start_or_skip("tessera-server admin").await else {
        return;
    };
    let database = pg.create_database().await.unwrap();
    let database = database.get_database().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let one = Replica::start(&pg, &database, dir.path(), "one");
    let mut two = Replica::start(&pg, &database, dir.path(), "two");
    let mode = std::fs::metadata(&one.admin).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let entry = one.json(&[
        "entry",
        "create",
        "--client",
        "code-reviewer",
        "--selector",
        "unix:uid:1001",
        "--selector",
        "k8s:ns:agents",
    ]);
    let entry_id = entry["id"].as_str().unwrap().to_owned();
    assert_eq!(entry["spiffe_id"], "spiffe://e2e.test/client/code-reviewer");
    assert_eq!(
        ids(&one.json(&["entry", "list"])),
        std::slice::from_ref(&entry_id),
        "read your write"
    );
    two.until("the entry on replica two", |r| {
        ids(&r.json(&["entry", "list"])) == [entry_id.clone()]
    });

    let consent = two.json(&[
        "consent",
        "grant",
        "--client",
        "code-reviewer",
        "--subject",
        "alice@example.com",
        "--server",
        "github",
        "--scope",
        "github/tool/get_pull_request",
        "--ttl",
        "1h",
    ]);
    let consent_id = consent["id"].as_str().unwrap().to_owned();
    let mut one = one;
    one.until("the consent on replica one", |r| {
        ids(&r.json(&["consent", "list"])) == [consent_id.clone()]
    });
    one.json(&["consent", "withdraw", &consent_id]);
    two.until("the withdrawal on replica two", |r| {
        ids(&r.json(&["consent", "list"])).is_empty()
    });

    // Refused as the agent refuses: a selector no agent could match.
    let bad = one.cli(&[
        "entry",
        "create",
        "--client",
        "x",
        "--selector",
        "unix:nonsense:1",
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("unknown selector"),
        "{bad:?}"
    );

    // `tessera audit --output json` prints one record per line.
    let out = two.cli(&["audit"]);
    assert!(out.status.success(), "{out:?}");
    let audit: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON record"))
        .collect();
    let kinds: Vec<&str> = audit.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["entry.create", "consent.grant", "consent.withdraw"]);
    let uid = own_uid();
    assert!(
        audit.iter().all(|r| r["actor"] == format!("uid:{uid}")),
        "{audit:?}"
    );

    one.json(&["entry", "delete", &entry_id]);
    two.until("the deletion on replica two", |r| {
        ids(&r.json(&["entry", "list"])).is_empty()
    });
    let (status, metrics) = two.get("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("tessera_server_change_version 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tessera_server_change_stream_up 1"),
        "{metrics}"
    );
}

/// PostgreSQL stops: both replicas keep listing from memory, refuse writes as
/// UNAVAILABLE and report not ready. It starts again: they become ready and take writes
/// with no restart, and each sees the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_outlive_a_postgres_restart() {
    let Some(mut pg) = PgServer::start_or_skip("tessera-server admin").await else {
        return;
    };
    let database = pg.create_database().await.unwrap();
    let database = database.get_database().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let mut one = Replica::start(&pg, &database, dir.path(), "one");
    let mut two = Replica::start(&pg, &database, dir.path(), "two");
    let before = one.json(&[
        "entry",
        "create",
        "--client",
        "a",
        "--selector",
        "unix:uid:1",
    ]);
    let before_id = before["id"].as_str().unwrap().to_owned();
    two.until("the entry on replica two", |r| {
        ids(&r.json(&["entry", "list"])) == [before_id.clone()]
    });

    pg.stop().await.unwrap();
    for replica in [&mut one, &mut two] {
        replica.until("not ready", |r| r.get("/readyz").0 == 503);
        assert_eq!(
            ids(&replica.json(&["entry", "list"])),
            std::slice::from_ref(&before_id),
            "served from memory"
        );
        let refused = replica.cli(&[
            "entry",
            "create",
            "--client",
            "b",
            "--selector",
            "unix:uid:2",
        ]);
        assert!(!refused.status.success());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains("database is unavailable"), "{stderr}");
        assert_eq!(replica.get("/healthz").0, 200, "alive, only not ready");
    }

    pg.start_again().await.unwrap();
    for replica in [&mut one, &mut two] {
        replica.until("ready again", |r| r.get("/readyz").0 == 200);
    }
    let after = two.json(&[
        "entry",
        "create",
        "--client",
        "b",
        "--selector",
        "unix:uid:2",
    ]);
    let after_id = after["id"].as_str().unwrap().to_owned();
    one.until("replica two's write on replica one", |r| {
        ids(&r.json(&["entry", "list"])).contains(&after_id)
    });
    assert_eq!(ids(&one.json(&["entry", "list"])).len(), 2);
}

/// A replica started before PostgreSQL is alive (`/healthz`) but not ready, and becomes
/// ready and serves once PostgreSQL is up, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_before_postgres_waits_for_it() {
    let Some(mut pg) = PgServer::start_or_skip("tessera-server admin").await else {
        return;
    };
    let database = pg.create_database().await.unwrap();
    let database = database.get_database().unwrap().to_owned();
    pg.stop().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut replica = Replica::spawn(&pg, &database, dir.path(), "early");
    replica.until("alive", |r| r.get("/healthz").0 == 200);
    let (status, body) = replica.get("/readyz");
    assert_eq!((status, body.as_str()), (503, "not ready: starting\n"));
    assert!(
        !replica.admin.exists(),
        "no admin socket before the registry is loaded"
    );

    pg.start_again().await.unwrap();
    replica.until("ready", |r| r.get("/readyz").0 == 200);
    let entry = replica.json(&[
        "entry",
        "create",
        "--client",
        "a",
        "--selector",
        "unix:uid:1",
    ]);
    assert_eq!(
        ids(&replica.json(&["entry", "list"])),
        [entry["id"].as_str().unwrap()]
    );
}

fn own_uid() -> u32 {
    // The test's own uid: what the server sees on the admin socket.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap()
}

//! A real, throwaway PostgreSQL server: for the tests of `tessera-server` and the
//! cross-process suites, and for `tessera demo --cluster`. Never for a deployment (it
//! runs with `fsync=off` and lives in a temporary directory).
//!
//! [`PgServer::start`] runs Debian's own binaries (`initdb`, then `postgres`, from
//! `/usr/lib/postgresql/<highest version>/bin`, or the directory `TESSERA_POSTGRES_BIN`
//! names) in a fresh temporary directory: the cluster's data, its unix socket and its log
//! all live there, and the server also listens on a free loopback TCP port (password
//! authentication, a random password per server, for clients that only speak TCP). It runs
//! with `fsync=off`: nothing in it has to survive a power cut, and tests are faster.
//! Dropping the [`PgServer`] kills the server and removes the directory.
//!
//! `initdb` and `postgres` refuse to run as root, and CI runs as root: then both run as the
//! `postgres` user the Debian package creates, in a directory that user owns (mode 0700:
//! only it, and root, reach the socket). As any other user they run as that user.
//!
//! Each test asks for its own database ([`PgServer::create_database`]); a test that
//! restarts PostgreSQL ([`PgServer::stop`], [`PgServer::start_again`]) starts its own
//! server. On a machine without the binaries, [`PgServer::start_or_skip`] prints why and
//! returns `None` so the test can return, unless `TESSERA_REQUIRE_POSTGRES=1` (set by CI's
//! `.ci/run`, which installs the `postgresql` package) makes that a failure.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod binaries;
mod error;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Gid, Pid, Uid, User};
use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};

pub use crate::binaries::{BIN_ENV, find_binaries};
pub use crate::error::PgTestError;

/// The superuser `initdb` creates.
pub const SUPERUSER: &str = "postgres";

/// Set to `1` to make a missing PostgreSQL a test failure instead of a skip.
pub const REQUIRE_ENV: &str = "TESSERA_REQUIRE_POSTGRES";

/// How long a start or a stop may take before the harness gives up. Generous: two cores
/// shared by many test processes can make a cold start take seconds.
const PATIENCE: Duration = Duration::from_secs(60);

/// A PostgreSQL server of its own, in a temporary directory; killed and removed on drop.
#[derive(Debug)]
pub struct PgServer {
    bin: PathBuf,
    /// Holds `data/`, the unix socket and `postgres.log`; owned by `run_as` when set.
    dir: tempfile::TempDir,
    port: u16,
    /// The superuser's password, for TCP (the socket trusts the directory's owner).
    password: String,
    /// Who runs `initdb` and `postgres` when this process is root.
    run_as: Option<(Uid, Gid)>,
    child: Option<Child>,
    next_database: AtomicU32,
    started_in: Duration,
    /// `name=value` settings given to `start_with`, after the harness's own.
    settings: Vec<String>,
}

// === impl PgServer ===

impl PgServer {
    /// Starts a server, or, on a machine without PostgreSQL's binaries, prints why
    /// (naming `test`) and returns `None`, unless `TESSERA_REQUIRE_POSTGRES=1` makes that a
    /// panic. Any other failure (binaries present that do not start) panics.
    pub async fn start_or_skip(test: &str) -> Option<PgServer> {
        match PgServer::start().await {
            Ok(server) => Some(server),
            Err(error @ PgTestError::NoBinaries { .. }) if !required() => {
                eprintln!("SKIPPED: {test}: {error} (CI sets {REQUIRE_ENV}=1)");
                None
            }
            Err(error) => panic!("{test}: starting PostgreSQL: {error}"),
        }
    }

    /// Creates a cluster with `initdb` in a new temporary directory and starts it.
    pub async fn start() -> Result<PgServer, PgTestError> {
        PgServer::start_with(&[]).await
    }

    /// [`PgServer::start`] with these server settings (`name`, `value`) on top of the
    /// harness's (a bench passes `("fsync", "on")` and `("synchronous_commit", "on")` to
    /// measure durable commits).
    pub async fn start_with(settings: &[(&str, &str)]) -> Result<PgServer, PgTestError> {
        PgServer::start_inner(settings, None).await
    }

    /// [`PgServer::start`] with TLS on: the server presents `cert_pem` (a chain) with
    /// `key_pem`, on TCP (clients choose with `sslmode`).
    pub async fn start_with_tls(cert_pem: &str, key_pem: &str) -> Result<PgServer, PgTestError> {
        PgServer::start_inner(&[], Some((cert_pem, key_pem))).await
    }

    async fn start_inner(
        settings: &[(&str, &str)],
        tls: Option<(&str, &str)>,
    ) -> Result<PgServer, PgTestError> {
        let began = Instant::now();
        let bin = find_binaries()?;
        let run_as = unprivileged_user()?;
        let dir = tempfile::Builder::new()
            .prefix("tessera-pg-")
            .tempdir()
            .map_err(PgTestError::io("creating the temporary directory"))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid.as_raw()), Some(gid.as_raw())).map_err(
                PgTestError::io("giving the temporary directory to postgres"),
            )?;
        }
        let password = hex::encode(rand::random::<[u8; 16]>());
        let mut server = PgServer {
            bin,
            dir,
            port: 0,
            password,
            run_as,
            child: None,
            next_database: AtomicU32::new(0),
            started_in: Duration::ZERO,
            settings: settings
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect(),
        };
        server.initdb()?;
        if let Some((cert, key)) = tls {
            // postgres refuses a key file anyone but its owner can read.
            for (name, pem) in [("server.crt", cert), ("server.key", key)] {
                server.write_private(name, pem)?;
            }
            let dir = server.dir.path().display().to_string();
            server.settings.extend([
                "ssl=on".to_owned(),
                format!("ssl_cert_file={dir}/server.crt"),
                format!("ssl_key_file={dir}/server.key"),
            ]);
        }
        // The free port can be taken by another process before postgres binds it (test
        // binaries run side by side): then postgres exits saying so, and another port is
        // tried.
        let mut attempts = 0;
        loop {
            server.port = free_port()?;
            match server.spawn().await {
                Err(PgTestError::Exited { log, .. })
                    if attempts < 3 && log.contains("could not bind") =>
                {
                    attempts += 1;
                }
                result => break result?,
            }
        }
        server.started_in = began.elapsed();
        Ok(server)
    }

    /// How long [`PgServer::start`] took, `initdb` included.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The directory holding the server's unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The loopback TCP port the server listens on (also the socket's number).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's password, for clients over TCP.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Whether the server is running (started and not stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Connection options for `database` as the superuser, over the unix socket.
    pub fn connect_options(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new_without_pgpass()
            .socket(self.dir.path())
            .port(self.port)
            .username(SUPERUSER)
            .database(database)
            .ssl_mode(PgSslMode::Disable)
    }

    /// A `postgres://` URL for `database` as the superuser over loopback TCP, with the
    /// password: for another process (the `tessera-server` binary) to connect with.
    pub fn tcp_url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}?sslmode=disable",
            self.password, self.port
        )
    }

    /// Creates a new, empty database with a name unique to this server, and returns the
    /// options to reach it over the unix socket.
    pub async fn create_database(&self) -> Result<PgConnectOptions, PgTestError> {
        let n = self.next_database.fetch_add(1, Ordering::Relaxed);
        let name = format!("tessera_test_{n}");
        let mut admin = PgConnection::connect_with(&self.connect_options("postgres")).await?;
        // The name is ours (a counter), never input.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        Ok(self.connect_options(&name))
    }

    /// Stops the server (a fast shutdown: clients are disconnected, the data stays) and
    /// waits until it has exited. Does nothing if it is not running.
    pub async fn stop(&mut self) -> Result<(), PgTestError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        signal(&child, Signal::SIGINT);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if child
                .try_wait()
                .map_err(PgTestError::io("waiting for postgres"))?
                .is_some()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                signal(&child, Signal::SIGKILL);
                let _ = child.wait();
                return Err(PgTestError::Timeout {
                    what: "stopping",
                    log: self.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the stopped server again, on the same data, socket and port.
    pub async fn start_again(&mut self) -> Result<(), PgTestError> {
        if self.child.is_some() {
            return Ok(());
        }
        self.spawn().await
    }

    /// The last lines of the server's log, to explain a failure.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// A command for one of the binaries, as the unprivileged user when there is one.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command.current_dir(self.dir.path()).env("LC_ALL", "C");
        if let Some((uid, gid)) = self.run_as {
            use std::os::unix::process::CommandExt as _;
            // std drops root's supplementary groups when it sets the uid.
            command.uid(uid.as_raw()).gid(gid.as_raw());
        }
        command
    }

    /// Writes `name` in the server's directory, mode 0600, owned by whoever runs it.
    fn write_private(&self, name: &str, contents: &str) -> Result<PathBuf, PgTestError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = self.dir.path().join(name);
        File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| file.write_all(contents.as_bytes()))
            .map_err(PgTestError::io("writing a file for postgres"))?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&path, Some(uid.as_raw()), Some(gid.as_raw()))
                .map_err(PgTestError::io("giving a file to postgres"))?;
        }
        Ok(path)
    }

    fn initdb(&self) -> Result<(), PgTestError> {
        let pwfile = self.write_private("pwfile", &self.password)?;
        let output = self
            .command("initdb")
            .arg("--pgdata")
            .arg(self.data_dir())
            .arg(format!("--username={SUPERUSER}"))
            .arg("--pwfile")
            .arg(&pwfile)
            .args([
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ])
            .output()
            .map_err(PgTestError::io("running initdb"))?;
        let _ = std::fs::remove_file(&pwfile);
        if !output.status.success() {
            return Err(PgTestError::Initdb {
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        Ok(())
    }

    /// Starts `postgres` and waits until it accepts connections.
    async fn spawn(&mut self) -> Result<(), PgTestError> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(PgTestError::io("opening the server log"))?;
        let log_err = log
            .try_clone()
            .map_err(PgTestError::io("opening the server log"))?;
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-k")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-h", "127.0.0.1"])
            .args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "unix_socket_permissions=0700",
            ])
            .args(self.settings.iter().flat_map(|s| ["-c", s.as_str()]))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(PgTestError::io("starting postgres"))?;
        self.child = Some(child);
        self.wait_ready().await
    }

    /// Waits for `postmaster.pid` to say `ready` (its status line, written once the server
    /// accepts connections), or for the server to die.
    async fn wait_ready(&mut self) -> Result<(), PgTestError> {
        let pid_file = self.data_dir().join("postmaster.pid");
        let deadline = Instant::now() + PATIENCE;
        loop {
            let child = self.child.as_mut().expect("spawned");
            if let Some(status) = child
                .try_wait()
                .map_err(PgTestError::io("waiting for postgres"))?
            {
                self.child = None;
                return Err(PgTestError::Exited {
                    status: status.to_string(),
                    log: self.log_tail(),
                });
            }
            let ours = child.id().to_string();
            if let Ok(text) = std::fs::read_to_string(&pid_file) {
                let lines: Vec<&str> = text.lines().collect();
                // A file left by the previous run names another pid.
                if lines.first() == Some(&ours.as_str())
                    && lines.get(7).map(|l| l.trim()) == Some("ready")
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(PgTestError::Timeout {
                    what: "starting",
                    log: self.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Immediate shutdown: the data is thrown away with the directory.
            signal(&child, Signal::SIGQUIT);
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Whether `TESSERA_REQUIRE_POSTGRES=1`.
pub fn required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

fn signal(child: &Child, signal: Signal) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

/// The `postgres` user's ids when this process is root; `None` otherwise.
fn unprivileged_user() -> Result<Option<(Uid, Gid)>, PgTestError> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    match User::from_name(SUPERUSER) {
        Ok(Some(user)) => Ok(Some((user.uid, user.gid))),
        Ok(None) => Err(PgTestError::NoUnprivilegedUser),
        Err(error) => Err(PgTestError::Io {
            what: "looking up the postgres user",
            source: error.into(),
        }),
    }
}

/// A loopback TCP port free right now. Another process could take it before postgres
/// binds it; postgres then fails to start and says so in its log.
fn free_port() -> Result<u16, PgTestError> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(PgTestError::io("finding a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(PgTestError::io("finding a free port"))?
        .port())
}

#[cfg(test)]
mod tests;

//! Stock clients written elsewhere, installed from their registries, for
//! interop tests: py-spiffe and grpcio (PyPI), grpc-java (Debian), grpc-js
//! (npm).
//!
//! Python: the first test to ask creates `target/tessera-interop/venv` and
//! installs `tests/interop/python/requirements.txt` into it (pinned versions),
//! under a file lock so concurrent tests wait for one install; later runs reuse
//! it while the requirements file is unchanged.
//!
//! Java: Debian's `libgrpc-java` (with `libnetty-java` and `libperfmark-java`)
//! puts grpc-java's jars in `/usr/share/java`; the first test to ask compiles
//! `tests/interop/java/StockGrpcJava.java` against them with `javac` into
//! `target/tessera-interop/java`, under its own lock, and later runs reuse the
//! classes while the source and classpath are unchanged.
//!
//! Node: the first test to ask installs `tests/interop/node/package-lock.json`
//! (exact versions and their hashes) with `npm ci` into
//! `target/tessera-interop/node`, under its own lock, again only when the
//! lockfile changed.
//!
//! Without the toolchain (`python3`; `javac` or the jars; `node` or `npm`) the tests are skipped
//! with a message, unless `TESSERA_REQUIRE_INTEROP=1` (set by CI) makes that a
//! failure: CI must never pass by skipping them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, bail};

/// The repository's `proto/` directory: the contract the stock clients compile.
pub fn proto_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto")
}

/// The stock-client script the Python interop tests run.
pub fn python_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/python/stock_clients.py")
}

/// The Python MCP SDK's OAuth client against the example server (`tests/mcp_oauth.rs`).
pub fn python_mcp_oauth_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/python/mcp_oauth.py")
}

fn requirements() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/python/requirements.txt")
}

/// `target/` of this build (the test binary lives in `target/<profile>/deps/`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .nth(3)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

pub(crate) fn interop_required() -> bool {
    std::env::var("TESSERA_REQUIRE_INTEROP").is_ok_and(|v| v == "1")
}

/// A Python interpreter with the stock clients installed, or `None` (after
/// saying why) when this machine has no Python and CI did not require it.
pub fn python() -> Option<PathBuf> {
    match ensure_venv() {
        Ok(p) => Some(p),
        Err(e) if !interop_required() && which("python3").is_none() => {
            eprintln!(
                "SKIPPED: stock Python client tests: {e:#} (CI sets TESSERA_REQUIRE_INTEROP=1)"
            );
            None
        }
        Err(e) => panic!("setting up the stock Python clients: {e:#}"),
    }
}

pub(crate) fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

fn ensure_venv() -> anyhow::Result<PathBuf> {
    let python3 = which("python3").context("python3 is not on PATH")?;
    let root = target_dir().join("tessera-interop");
    std::fs::create_dir_all(&root)?;
    let lock_file = std::fs::File::create(root.join("lock"))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .context("locking the interop venv")?;
    let venv = root.join("venv");
    let python = venv.join("bin/python3");
    let wanted = std::fs::read_to_string(requirements())?;
    let stamp = root.join("installed-requirements.txt");
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&wanted) {
        return Ok(python);
    }
    let _ = std::fs::remove_dir_all(&venv);
    run(Command::new(&python3).args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(requirements()))?;
    std::fs::write(&stamp, wanted)?;
    Ok(python)
}

/// Runs a set-up command; its output is in the error when it fails.
pub(crate) fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Runs `stock_clients.py ARGS` and parses the JSON object it prints; its
/// stderr is in the error when it fails.
pub fn run_python(python: &Path, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    run_python_script(python, &python_script(), args)
}

/// Runs the Python `script ARGS` and parses the JSON object it prints last; its stderr
/// is in the error when it fails.
pub fn run_python_script(
    python: &Path,
    script: &Path,
    args: &[&str],
) -> anyhow::Result<serde_json::Value> {
    let name = script
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let out: Output = Command::new(python)
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {name}"))?;
    last_json_line(&name, args, &out)
}

/// Where Debian's Java packages put their jars.
const DEBIAN_JARS: &str = "/usr/share/java";

/// grpc-java's client over Netty and what it loads, by their unversioned
/// Debian names (`apt-get install libgrpc-java libnetty-java libperfmark-java`;
/// Debian's guava carries failureaccess).
const GRPC_JAVA_JARS: &[&str] = &[
    "grpc-api",
    "grpc-context",
    "grpc-core",
    "grpc-netty",
    "grpc-stub",
    "netty-buffer",
    "netty-codec",
    "netty-codec-http",
    "netty-codec-http2",
    "netty-common",
    "netty-handler",
    "netty-resolver",
    "netty-transport",
    "netty-transport-native-unix-common",
    "guava",
    "perfmark-api",
];

/// The stock grpc-java client, compiled and ready to run.
#[derive(Debug, Clone)]
pub struct GrpcJava {
    /// The JVM, canonical: the executable `/proc/<pid>/exe` shows, which the
    /// agent attests and a test registers.
    pub java: PathBuf,
    classpath: String,
}

/// The stock grpc-java client, or `None` (after saying why) when this machine
/// has no JDK or no grpc-java jars and CI did not require them.
pub fn grpc_java() -> Option<GrpcJava> {
    match ensure_java_classes() {
        Ok(client) => Some(client),
        Err(e) if !interop_required() && java_toolchain_missing() => {
            eprintln!(
                "SKIPPED: stock grpc-java client tests: {e:#} (CI sets TESSERA_REQUIRE_INTEROP=1)"
            );
            None
        }
        Err(e) => panic!("setting up the stock grpc-java client: {e:#}"),
    }
}

fn java_toolchain_missing() -> bool {
    which("javac").is_none()
        || which("java").is_none()
        || GRPC_JAVA_JARS
            .iter()
            .any(|jar| !Path::new(DEBIAN_JARS).join(format!("{jar}.jar")).is_file())
}

fn java_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/java/StockGrpcJava.java")
}

fn ensure_java_classes() -> anyhow::Result<GrpcJava> {
    let javac = which("javac").context("javac is not on PATH (a JDK 17 or later)")?;
    let java = which("java").context("java is not on PATH")?;
    let java = std::fs::canonicalize(&java).with_context(|| format!("{}", java.display()))?;
    let mut jars = Vec::new();
    for jar in GRPC_JAVA_JARS {
        let path = Path::new(DEBIAN_JARS).join(format!("{jar}.jar"));
        if !path.is_file() {
            bail!(
                "{} is missing: apt-get install libgrpc-java libnetty-java libperfmark-java",
                path.display()
            );
        }
        jars.push(path.display().to_string());
    }
    let root = target_dir().join("tessera-interop");
    std::fs::create_dir_all(&root)?;
    let lock_file = std::fs::File::create(root.join("java.lock"))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .context("locking the interop Java classes")?;
    let classes = root.join("java");
    let source = std::fs::read_to_string(java_source())?;
    let wanted = format!("{}\n{source}", jars.join(":"));
    let stamp = root.join("java-compiled-from.txt");
    let classpath = format!("{}:{}", classes.display(), jars.join(":"));
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(&wanted) {
        let _ = std::fs::remove_dir_all(&classes);
        run(Command::new(&javac)
            .arg("-d")
            .arg(&classes)
            .arg("-cp")
            .arg(jars.join(":"))
            .arg(java_source()))?;
        std::fs::write(&stamp, wanted)?;
    }
    Ok(GrpcJava { java, classpath })
}

/// Runs `StockGrpcJava ARGS` and parses the JSON object it prints; its stderr
/// is in the error when it fails.
pub fn run_java(client: &GrpcJava, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(&client.java)
        .arg("-cp")
        .arg(&client.classpath)
        .arg("StockGrpcJava")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running StockGrpcJava")?;
    last_json_line("StockGrpcJava", args, &out)
}

fn last_json_line(what: &str, args: &[&str], out: &Output) -> anyhow::Result<serde_json::Value> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{what} {args:?} failed ({}):\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = stdout
        .lines()
        .last()
        .with_context(|| format!("{what} printed nothing"))?;
    serde_json::from_str(line).with_context(|| format!("parsing {line:?}"))
}

/// The stock Node client: `node` (canonical, as the agent attests it) and the
/// `node_modules` it loads @grpc/grpc-js from.
#[derive(Debug, Clone)]
pub struct GrpcJs {
    /// The Node executable, canonical.
    pub node: PathBuf,
    node_modules: PathBuf,
}

impl GrpcJs {
    /// The installed `node_modules` (every package of `tests/interop/node/package.json`,
    /// e.g. the MCP reference servers the gateway's stdio tests run).
    pub fn node_modules(&self) -> &Path {
        &self.node_modules
    }
}

/// The stock Node client, or `None` (after saying why) when this machine has
/// no `node` or `npm` and CI did not require them.
pub fn grpc_js() -> Option<GrpcJs> {
    match ensure_node_modules() {
        Ok(client) => Some(client),
        Err(e) if !interop_required() && (which("node").is_none() || which("npm").is_none()) => {
            eprintln!(
                "SKIPPED: stock Node gRPC client tests: {e:#} (CI sets TESSERA_REQUIRE_INTEROP=1)"
            );
            None
        }
        Err(e) => panic!("setting up the stock Node gRPC client: {e:#}"),
    }
}

fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/node")
}

fn ensure_node_modules() -> anyhow::Result<GrpcJs> {
    let node = which("node").context("node is not on PATH")?;
    let node = std::fs::canonicalize(&node).with_context(|| format!("{}", node.display()))?;
    let npm = which("npm").context("npm is not on PATH")?;
    let root = target_dir().join("tessera-interop");
    std::fs::create_dir_all(&root)?;
    let lock_file = std::fs::File::create(root.join("node.lock"))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .context("locking the interop node_modules")?;
    let prefix = root.join("node");
    let package = std::fs::read_to_string(node_dir().join("package.json"))?;
    let lockfile = std::fs::read_to_string(node_dir().join("package-lock.json"))?;
    let wanted = format!("{package}{lockfile}");
    let stamp = root.join("installed-node-packages.json");
    let node_modules = prefix.join("node_modules");
    if !node_modules.is_dir() || std::fs::read_to_string(&stamp).ok().as_deref() != Some(&wanted) {
        let _ = std::fs::remove_dir_all(&prefix);
        std::fs::create_dir_all(&prefix)?;
        std::fs::write(prefix.join("package.json"), &package)?;
        std::fs::write(prefix.join("package-lock.json"), &lockfile)?;
        // `npm ci` installs exactly the lockfile, or fails.
        run(Command::new(npm)
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(&prefix))?;
        std::fs::write(&stamp, wanted)?;
    }
    Ok(GrpcJs { node, node_modules })
}

/// Runs `stock_clients.js ARGS` and parses the JSON object it prints; its
/// stderr is in the error when it fails.
pub fn run_node(client: &GrpcJs, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(&client.node)
        .arg(node_dir().join("stock_clients.js"))
        .args(args)
        .env("NODE_PATH", &client.node_modules)
        .stdin(Stdio::null())
        .output()
        .context("running stock_clients.js")?;
    last_json_line("stock_clients.js", args, &out)
}

//! Stock clients written elsewhere (py-spiffe, grpcio), installed from their
//! registries into a virtual environment under `target/`, for interop tests.
//!
//! The first test to ask creates `target/tessera-interop/venv` and installs
//! `tests/interop/python/requirements.txt` into it (pinned versions), under a
//! file lock so concurrent tests wait for one install; later runs reuse it while
//! the requirements file is unchanged. Without `python3` the tests are skipped
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

fn run(cmd: &mut Command) -> anyhow::Result<()> {
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
    let out: Output = Command::new(python)
        .arg(python_script())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running stock_clients.py")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "stock_clients.py {args:?} failed ({}):\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = stdout
        .lines()
        .last()
        .context("stock_clients.py printed nothing")?;
    serde_json::from_str(line).with_context(|| format!("parsing {line:?}"))
}

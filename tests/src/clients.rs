//! Tessera's own Python and TypeScript clients (`clients/`), installed the way their
//! users install them, for the cross-process tests and the bench.
//!
//! Python: a venv under `target/tessera-clients/py` with
//! `clients/python/requirements-test.txt` (pinned, from PyPI) and then the client
//! itself, built from `clients/python` by pip (its build compiles `proto/` with
//! grpcio-tools). Node: `npm ci` in `clients/typescript`, then its build (which
//! generates the protobuf code from `proto/` and compiles the TypeScript).
//!
//! Both are redone when any of their inputs changed (sources, lock files, `proto/`),
//! under a file lock; a stamp of the inputs' contents says when. Without `python3`
//! (or `node`/`npm`) the tests are skipped saying so, unless
//! `TESSERA_REQUIRE_INTEROP=1` (set by CI) makes that a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use crate::interop::{interop_required, run, which};

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `clients/python`.
pub fn python_client_dir() -> PathBuf {
    repo_root().join("clients/python")
}

/// `clients/typescript`.
pub fn typescript_client_dir() -> PathBuf {
    repo_root().join("clients/typescript")
}

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .nth(3)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

/// A Python interpreter with `tessera-client` and its test requirements installed,
/// or `None` (after saying why) on a machine without Python when CI did not require it.
pub fn python() -> Option<PathBuf> {
    match ensure_python() {
        Ok(p) => Some(p),
        Err(e) if !interop_required() && which("python3").is_none() => {
            eprintln!("SKIPPED: Python client tests: {e:#} (CI sets TESSERA_REQUIRE_INTEROP=1)");
            None
        }
        Err(e) => panic!("setting up the Python client: {e:#}"),
    }
}

/// `node`, with `clients/typescript` installed and built, or `None` (after saying why)
/// on a machine without Node when CI did not require it.
pub fn node() -> Option<PathBuf> {
    match ensure_node() {
        Ok(p) => Some(p),
        Err(e) if !interop_required() && (which("node").is_none() || which("npm").is_none()) => {
            eprintln!(
                "SKIPPED: TypeScript client tests: {e:#} (CI sets TESSERA_REQUIRE_INTEROP=1)"
            );
            None
        }
        Err(e) => panic!("setting up the TypeScript client: {e:#}"),
    }
}

fn ensure_python() -> anyhow::Result<PathBuf> {
    let python3 = which("python3").context("python3 is not on PATH")?;
    let client = python_client_dir();
    let root = target_dir().join("tessera-clients");
    std::fs::create_dir_all(&root)?;
    let _lock = lock(&root.join("py.lock"))?;
    let venv = root.join("py");
    let python = venv.join("bin/python3");
    let requirements = client.join("requirements-test.txt");
    let stamp = root.join("py.stamp");
    let wanted = fingerprint(&[
        client.join("pyproject.toml"),
        client.join("setup.py"),
        requirements.clone(),
        client.join("src"),
        repo_root().join("proto"),
    ])?;
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&wanted) {
        return Ok(python);
    }
    let _ = std::fs::remove_file(&stamp);
    if !python.exists() {
        run(Command::new(&python3).args(["-m", "venv"]).arg(&venv))?;
    }
    let pip = |args: &[&str]| {
        let mut cmd = Command::new(&python);
        cmd.args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(args);
        cmd
    };
    run(pip(&["-r"]).arg(&requirements))?;
    // A real build (not editable): what `pip install clients/python` gives a user,
    // generated stubs included.
    run(pip(&["--force-reinstall", "--no-deps"]).arg(&client))?;
    // setuptools leaves build/ and *.egg-info beside the sources; they are ignored by
    // git, and removed so a stale copy never shadows the next build.
    let _ = std::fs::remove_dir_all(client.join("build"));
    for e in std::fs::read_dir(client.join("src"))?.flatten() {
        if e.file_name().to_string_lossy().ends_with(".egg-info") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    std::fs::write(&stamp, wanted)?;
    Ok(python)
}

fn ensure_node() -> anyhow::Result<PathBuf> {
    let node = which("node").context("node is not on PATH")?;
    let npm = which("npm").context("npm is not on PATH")?;
    let client = typescript_client_dir();
    let root = target_dir().join("tessera-clients");
    std::fs::create_dir_all(&root)?;
    let _lock = lock(&root.join("node.lock"))?;
    let stamp = root.join("node.stamp");
    let wanted = fingerprint(&[
        client.join("package.json"),
        client.join("package-lock.json"),
        client.join("tsconfig.json"),
        client.join("scripts"),
        client.join("src"),
        client.join("test"),
        client.join("examples"),
        repo_root().join("proto"),
    ])?;
    if client.join("dist").exists()
        && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&wanted)
    {
        return Ok(node);
    }
    let _ = std::fs::remove_file(&stamp);
    run(Command::new(&npm)
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&client))?;
    run(Command::new(&npm)
        .args(["run", "--silent", "build"])
        .current_dir(&client))?;
    std::fs::write(&stamp, wanted)?;
    Ok(node)
}

fn lock(path: &Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    let file = std::fs::File::create(path)?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("locking {}", path.display()))
}

/// A stamp of the contents of `inputs` (files, or directories walked in name order,
/// skipping build output): FNV-1a over each path and its bytes.
fn fingerprint(inputs: &[PathBuf]) -> anyhow::Result<String> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        if p.is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(p)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|e| {
                    let name = e.file_name().unwrap_or_default().to_string_lossy();
                    !(name == "__pycache__"
                        || name.ends_with(".egg-info")
                        || name == "_proto"
                        || name == "gen")
                })
                .collect();
            entries.sort();
            for e in entries {
                walk(&e, out)?;
            }
        } else if p.is_file() {
            out.push(p.to_path_buf());
        }
        Ok(())
    }
    let mut files = Vec::new();
    for i in inputs {
        walk(i, &mut files)?;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for f in &files {
        eat(f.to_string_lossy().as_bytes());
        eat(&std::fs::read(f).with_context(|| format!("reading {}", f.display()))?);
    }
    Ok(format!("{h:016x} over {} files\n", files.len()))
}

/// The counts in a test runner's closing summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Tests that passed.
    pub passed: u32,
    /// Tests that failed (or errored).
    pub failed: u32,
    /// Tests skipped (or todo).
    pub skipped: u32,
}

/// Reads pytest's closing line (`12 passed, 1 skipped in 3.2s`).
pub fn pytest_summary(output: &str) -> Option<Summary> {
    let line = output
        .lines()
        .rev()
        .find(|l| l.contains(" passed") || l.contains(" failed") || l.contains(" error"))?;
    let mut s = Summary::default();
    let words: Vec<&str> = line
        .split(|c: char| c == ',' || c.is_whitespace() || c == '=')
        .filter(|w| !w.is_empty())
        .collect();
    for pair in words.windows(2) {
        let Ok(n) = pair[0].parse::<u32>() else {
            continue;
        };
        match pair[1] {
            "passed" => s.passed += n,
            "failed" | "error" | "errors" => s.failed += n,
            "skipped" | "xfailed" | "deselected" => s.skipped += n,
            _ => {}
        }
    }
    Some(s)
}

/// Reads `node --test`'s closing counters (`# pass 12`, `# fail 0`, `# skipped 0`, `# todo 0`).
pub fn node_test_summary(output: &str) -> Option<Summary> {
    let count = |key: &str| {
        output
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix(key)?.trim().parse::<u32>().ok())
    };
    Some(Summary {
        passed: count("# pass ")?,
        failed: count("# fail ")? + count("# cancelled ").unwrap_or(0),
        skipped: count("# skipped ").unwrap_or(0) + count("# todo ").unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries() {
        assert_eq!(
            pytest_summary("...\n12 passed, 1 skipped in 3.20s\n"),
            Some(Summary {
                passed: 12,
                failed: 0,
                skipped: 1
            })
        );
        assert_eq!(
            pytest_summary("== 1 failed, 3 passed, 2 errors in 1s ==").map(|s| s.failed),
            Some(3)
        );
        assert_eq!(
            node_test_summary(
                "# tests 3\n# pass 2\n# fail 1\n# cancelled 0\n# skipped 0\n# todo 0\n"
            ),
            Some(Summary {
                passed: 2,
                failed: 1,
                skipped: 0
            })
        );
        assert_eq!(node_test_summary("nothing"), None);
    }
}

//! The `tessera-agent` binary's configuration surface, run as an operator runs it.
//!
//! Besides what they check, these tests make `cargo test --workspace` build the
//! `tessera-agent` binary (cargo builds a package's binaries only for its own
//! integration tests), which the cross-process tests in `tests/` start.

use std::process::{Command, Output};

const AGENT: &str = env!("CARGO_BIN_EXE_tessera-agent");

/// Runs the agent with a clean TESSERA_* environment plus `env`.
fn agent(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(AGENT);
    for (k, _) in std::env::vars() {
        if k.starts_with("TESSERA_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_BACKTRACE", "0")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("running tessera-agent")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn effective(out: &Output) -> toml::Table {
    assert!(out.status.success(), "print-config failed: {}", stderr(out));
    std::str::from_utf8(&out.stdout)
        .expect("UTF-8")
        .parse()
        .expect("print-config prints TOML")
}

#[test]
fn settings_layer_defaults_file_env_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(
        &file,
        "trust_domain = \"file.example\"\n\
         data_dir = \"/from/file\"\n\
         task_svid_ttl = \"2m\"\n\
         [log]\nformat = \"json\"\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();

    let defaults = effective(&agent(&["print-config"], &[]));
    assert_eq!(defaults["trust_domain"].as_str(), Some("tessera.local"));
    assert_eq!(defaults["task_svid_ttl"].as_str(), Some("5m"));

    let layered = effective(&agent(
        &["--config", file, "--data-dir", "/from/flag", "print-config"],
        &[
            ("TESSERA_TRUST_DOMAIN", "env.example"),
            ("TESSERA_DATA_DIR", "/from/env"),
        ],
    ));
    assert_eq!(
        layered["trust_domain"].as_str(),
        Some("env.example"),
        "env beats file"
    );
    assert_eq!(
        layered["data_dir"].as_str(),
        Some("/from/flag"),
        "flag beats env"
    );
    assert_eq!(
        layered["task_svid_ttl"].as_str(),
        Some("2m"),
        "file beats default"
    );
    assert_eq!(layered["log"]["format"].as_str(), Some("json"));

    // What print-config prints is a config file that yields the same settings.
    let from_file = agent(&["--config", file, "print-config"], &[]);
    let printed = dir.path().join("printed.toml");
    std::fs::write(&printed, &from_file.stdout).unwrap();
    let again = agent(
        &["--config", printed.to_str().unwrap(), "print-config"],
        &[],
    );
    assert_eq!(effective(&again), effective(&from_file));
}

#[test]
fn config_mistakes_are_refused_naming_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(
        &file,
        "trust_domain = \"a.example\"\ntask_svid_tl = \"5m\"\n",
    )
    .unwrap();
    let out = agent(&["--config", file.to_str().unwrap(), "print-config"], &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("task_svid_tl")
            && err.contains(file.to_str().unwrap())
            && err.contains("line 2"),
        "an unknown key names the key, the file and the line: {err}"
    );

    let out = agent(
        &["print-config"],
        &[("TESSERA_HTTP_LISTEN", "not-an-address")],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("TESSERA_HTTP_LISTEN") && err.contains("not-an-address"),
        "a bad env value names the variable: {err}"
    );

    let out = agent(&["--trust-domain", "Upper.Case", "print-config"], &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("trust_domain"),
        "a bad trust domain names the setting: {}",
        stderr(&out)
    );

    let missing = dir.path().join("missing.toml");
    let out = agent(
        &["--config", missing.to_str().unwrap(), "print-config"],
        &[],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(missing.to_str().unwrap()) && err.contains("No such file"),
        "{err}"
    );
    assert_eq!(
        err.matches("No such file").count(),
        1,
        "the cause is printed once: {err}"
    );
}

#[test]
fn help_teaches_the_precedence_and_env_vars() {
    let out = agent(&["--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "SPIFFE_ENDPOINT_SOCKET",
        "TESSERA_CONFIG",
        "TESSERA_TRUST_DOMAIN",
        "TESSERA_WORKLOAD_SOCKET",
        "print-config",
    ] {
        assert!(help.contains(needle), "--help mentions {needle}:\n{help}");
    }
}

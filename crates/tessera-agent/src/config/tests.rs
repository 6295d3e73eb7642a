use std::collections::HashMap;
use std::path::Path;

use super::*;

fn env(vars: &[(&'static str, &'static str)]) -> HashMap<&'static str, &'static str> {
    vars.iter().copied().collect()
}

#[test]
fn defaults_are_valid_and_round_trip_through_toml() {
    let c = Config::default();
    let printed = c.to_toml();
    assert_eq!(Config::from_toml(&printed).unwrap(), c);
}

#[test]
fn file_values_override_defaults_and_env_overrides_file() {
    let file =
        "trust_domain = \"acme.corp\"\nclient_svid_ttl = \"30m\"\n[log]\nformat = \"json\"\n";
    let c = Config::from_toml(file).unwrap();
    assert_eq!(c.trust_domain.as_str(), "acme.corp");
    assert_eq!(c.client_svid_ttl, Duration::from_secs(1800));
    assert_eq!(c.log.format, LogFormat::Json);
    let vars = env(&[
        ("TESSERA_TRUST_DOMAIN", "prod.acme.corp"),
        ("TESSERA_ADMIN_UIDS", "1000, 1001"),
        ("TESSERA_TASK_SVID_TTL", "90s"),
        ("TESSERA_TASK_MAX_LIVE_PER_PROCESS", "500"),
        ("TESSERA_AUDIT_RETENTION", "90d"),
        ("TESSERA_EXE_HASH_MAX_BYTES", "1048576"),
        ("TESSERA_REVOCATION_MAX_WATCHERS_PER_IDENTITY", "4"),
        ("TESSERA_REVOCATION_HEARTBEAT_INTERVAL", "250ms"),
        ("TESSERA_JWT_SVID_TTL", "2m"),
        ("TESSERA_CA_JWT_KEY_TTL", "12h"),
    ]);
    let c = Config::from_toml_and_env(file, &vars).unwrap();
    assert_eq!(c.trust_domain.as_str(), "prod.acme.corp");
    assert_eq!(c.client_svid_ttl, Duration::from_secs(1800));
    assert_eq!(c.admin_uids, vec![1000, 1001]);
    assert_eq!(c.task_svid_ttl, Duration::from_secs(90));
    assert_eq!(c.task_max_live_per_process, 500);
    assert_eq!(c.exe_hash_max_bytes, 1 << 20);
    assert_eq!(c.revocation_max_watchers_per_identity, 4);
    assert_eq!(c.revocation_heartbeat_interval, Duration::from_millis(250));
    assert_eq!(c.jwt_svid_ttl, Duration::from_secs(120));
    assert_eq!(c.ca.jwt_key_ttl, Duration::from_secs(12 * 3600));
    assert_eq!(
        c.retention,
        Retention {
            ended_tasks: Some(Duration::from_secs(7 * 24 * 3600)),
            audit: Some(Duration::from_secs(90 * 24 * 3600)),
        }
    );
    let bad = env(&[("TESSERA_TASK_MAX_LIVE_PER_PROCESS", "many")]);
    let err = Config::from_toml_and_env(file, &bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("TESSERA_TASK_MAX_LIVE_PER_PROCESS"), "{err}");
}

#[test]
fn flags_override_env_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, "trust_domain = \"file.example\"\n").unwrap();
    let vars = env(&[
        ("TESSERA_TRUST_DOMAIN", "env.example"),
        ("TESSERA_LOG_FORMAT", "text"),
    ]);
    let flags = Flags {
        trust_domain: Some("flag.example".into()),
        log_format: Some(LogFormat::Json),
        ..Flags::default()
    };
    let c = Config::load(Some(&path), &vars, &flags).unwrap();
    assert_eq!(c.trust_domain.as_str(), "flag.example");
    assert_eq!(c.log.format, LogFormat::Json);
    let c = Config::load(Some(&path), &vars, &Flags::default()).unwrap();
    assert_eq!(c.trust_domain.as_str(), "env.example");

    // A refused flag is named as the flag, not as the key or the variable under it.
    let flags = Flags {
        trust_domain: Some("Bad Domain".into()),
        ..Flags::default()
    };
    let err = Config::load(Some(&path), &vars, &flags).unwrap_err();
    assert_eq!(err.problems().len(), 1, "{err}");
    assert_eq!(
        err.problems()[0].origin,
        Origin::Flag {
            flag: "--trust-domain",
            key: "trust_domain",
        }
    );
}

#[test]
fn a_missing_config_file_is_reported_with_its_path() {
    let err = Config::load(
        Some(Path::new("/nonexistent/tessera.toml")),
        &env(&[]),
        &Flags::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("/nonexistent/tessera.toml"), "{err}");
}

#[test]
fn unknown_keys_are_rejected_with_their_name() {
    let err = Config::from_toml("trust_domian = \"x\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("trust_domian"), "{err}");
    let err = Config::from_toml("[ca]\nmdoe = \"upstream\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("mdoe"), "{err}");
}

#[test]
fn invalid_settings_are_refused() {
    let cases: &[(&str, &str)] = &[
        ("trust_domain = \"Bad Domain\"", "trust_domain"),
        ("client_svid_ttl = \"1s\"", "client_svid_ttl"),
        ("[ca]\nmode = \"upstream\"", "ca.mode"),
        ("[ca]\nttl = \"1h\"", "ca.ttl"),
        ("task_default_lifetime = \"48h\"", "task_default_lifetime"),
        ("task_max_live_per_process = 0", "task_max_live_per_process"),
        ("exe_hash_max_bytes = 0", "exe_hash_max_bytes"),
        ("jwt_svid_ttl = \"1s\"", "jwt_svid_ttl"),
        ("jwt_svid_ttl = \"2h\"", "jwt_svid_ttl"),
        ("[ca]\njwt_key_ttl = \"5s\"", "ca.jwt_key_ttl"),
        ("exe_hash_max_bytes = 17179869185", "exe_hash_max_bytes"),
        (
            "[kubernetes]\nenabled = true\ncgroup_root = \"sys/fs/cgroup\"",
            "kubernetes.cgroup_root",
        ),
        (
            "task_max_live_per_process = 1000001",
            "task_max_live_per_process",
        ),
        (
            "revocation_max_watchers_per_identity = 0",
            "revocation_max_watchers_per_identity",
        ),
        (
            "revocation_heartbeat_interval = \"50ms\"",
            "revocation_heartbeat_interval",
        ),
        (
            "revocation_heartbeat_interval = \"11s\"",
            "revocation_heartbeat_interval",
        ),
        (
            "workload_socket = \"/tmp/x.sock\"\nadmin_socket = \"/tmp/x.sock\"",
            "admin_socket",
        ),
    ];
    for (toml, key) in cases {
        let err = Config::from_toml(toml).unwrap_err().to_string();
        assert!(err.contains(key), "{toml}: {err}");
    }
}

#[test]
fn upstream_mode_carries_its_three_files() {
    let c = Config::from_toml(
        "[ca]\nmode = \"upstream\"\nupstream_cert = \"/ca/int.pem\"\n\
         upstream_key = \"/ca/int.key\"\nupstream_bundle = \"/ca/roots.pem\"\n",
    )
    .unwrap();
    match &c.ca.mode {
        CaMode::Upstream {
            cert_chain,
            key,
            bundle,
        } => {
            assert_eq!(cert_chain, Path::new("/ca/int.pem"));
            assert_eq!(key, Path::new("/ca/int.key"));
            assert_eq!(bundle, Path::new("/ca/roots.pem"));
        }
        other => panic!("{other:?}"),
    }
    let printed = c.to_toml();
    assert_eq!(Config::from_toml(&printed).unwrap(), c);
}

#[test]
fn kubernetes_is_off_by_default_and_configurable_from_file_and_env() {
    let c = Config::default();
    assert!(c.kubernetes.is_none());
    let file = "[kubernetes]\nenabled = true\nkubelet_url = \"https://10.0.0.7:10250\"\n\
                kubelet_server_name = \"node-a\"\nretry_attempts = 3\nretry_interval = \"100ms\"\n";
    let c = Config::from_toml(file).unwrap();
    let k = c.kubernetes.as_ref().unwrap();
    assert_eq!(k.retry_attempts, 3);
    assert_eq!(k.retry_interval, Duration::from_millis(100));
    assert_eq!(k.cgroup_root, Path::new("/sys/fs/cgroup"));
    assert_eq!(k.kubelet_server_name.as_deref(), Some("node-a"));
    let vars = env(&[
        ("TESSERA_KUBERNETES_KUBELET_URL", "https://[fd00::7]:10250"),
        (
            "TESSERA_KUBERNETES_KUBELET_CA",
            "/etc/tessera/kubelet-ca.pem",
        ),
        ("TESSERA_KUBERNETES_KUBELET_SERVER_NAME", ""),
        (
            "TESSERA_KUBERNETES_TOKEN_FILE",
            "/var/run/secrets/tokens/kubelet",
        ),
        ("TESSERA_KUBERNETES_CGROUP_ROOT", "/host/sys/fs/cgroup"),
    ]);
    let c = Config::from_toml_and_env(file, &vars).unwrap();
    let k = c.kubernetes.as_ref().unwrap();
    assert_eq!(k.cgroup_root, Path::new("/host/sys/fs/cgroup"));
    assert_eq!(k.kubelet_url.to_string(), "https://[fd00::7]:10250/");
    assert_eq!(
        k.kubelet_ca.as_deref(),
        Some(Path::new("/etc/tessera/kubelet-ca.pem"))
    );
    assert_eq!(k.kubelet_server_name, None);
    assert_eq!(k.token_file, Path::new("/var/run/secrets/tokens/kubelet"));
    let printed = c.to_toml();
    assert_eq!(Config::from_toml(&printed).unwrap(), c);

    let c = Config::from_toml_and_env("", &env(&[("TESSERA_KUBERNETES_ENABLED", "true")])).unwrap();
    assert!(c.kubernetes.is_some());
    let err = Config::from_toml_and_env("", &env(&[("TESSERA_KUBERNETES_ENABLED", "yes please")]))
        .unwrap_err();
    assert!(
        err.to_string().contains("TESSERA_KUBERNETES_ENABLED"),
        "{err}"
    );
}

#[test]
fn invalid_kubernetes_settings_are_refused() {
    let cases: &[(&str, &str)] = &[
        (
            "kubelet_url = \"http://127.0.0.1:10255\"",
            "kubernetes.kubelet_url",
        ),
        (
            "kubelet_url = \"https://127.0.0.1:10250/pods\"",
            "kubernetes.kubelet_url",
        ),
        ("kubelet_url = \"not a url\"", "kubernetes.kubelet_url"),
        (
            "insecure_skip_kubelet_verify = true\nkubelet_ca = \"/ca.pem\"",
            "kubernetes.insecure_skip_kubelet_verify",
        ),
        ("retry_attempts = 1000", "kubernetes.retry_attempts"),
        ("retry_interval = \"0s\"", "kubernetes.retry_interval"),
        ("request_timeout = \"10m\"", "kubernetes.request_timeout"),
        ("pod_cache_ttl = \"1h\"", "kubernetes.pod_cache_ttl"),
    ];
    for (body, key) in cases {
        let toml = format!("[kubernetes]\nenabled = true\n{body}\n");
        let err = Config::from_toml(&toml).unwrap_err().to_string();
        assert!(err.contains(key), "{toml}: {err}");
        // Disabled, the section is not checked: it is not used.
        Config::from_toml(&toml.replace("enabled = true", "enabled = false")).unwrap();
    }
    let err = Config::from_toml("[kubernetes]\nkubelet_ulr = \"x\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("kubelet_ulr"), "{err}");
}

#[test]
fn bad_env_values_name_the_variable() {
    let err =
        Config::from_toml_and_env("", &env(&[("TESSERA_CLIENT_SVID_TTL", "soon")])).unwrap_err();
    assert!(err.to_string().contains("TESSERA_CLIENT_SVID_TTL"));
}

#[test]
fn two_bad_env_vars_are_both_reported() {
    let vars = env(&[
        ("TESSERA_CLIENT_SVID_TTL", "soon"),
        ("TESSERA_HTTP_LISTEN", "everywhere"),
        // Parses, but out of range: refused by the same pass.
        ("TESSERA_TASK_MAX_LIVE_PER_PROCESS", "0"),
    ]);
    let err = Config::from_toml_and_env("", &vars).unwrap_err();
    let vars: Vec<&str> = err
        .problems()
        .iter()
        .map(|p| match &p.origin {
            Origin::Env { var, .. } => *var,
            other => panic!("{other}"),
        })
        .collect();
    assert_eq!(
        vars,
        [
            "TESSERA_HTTP_LISTEN",
            "TESSERA_CLIENT_SVID_TTL",
            "TESSERA_TASK_MAX_LIVE_PER_PROCESS"
        ],
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains("3 problems"), "{text}");
}

#[test]
fn file_and_env_problems_are_reported_together_each_with_its_source() {
    let vars = env(&[("TESSERA_CA_TTL", "a while")]);
    let err = Config::from_toml_and_env(
        "trust_domain = \"Not A Domain\"\ntask_default_lifetime = \"0s\"\n",
        &vars,
    )
    .unwrap_err();
    let origins: Vec<String> = err
        .problems()
        .iter()
        .map(|p| p.origin.to_string())
        .collect();
    assert_eq!(
        origins,
        [
            "environment variable TESSERA_CA_TTL=\"a while\"",
            "`trust_domain` in the config text",
            "`task_default_lifetime` in the config text",
        ],
        "{err}"
    );
}

#[test]
fn a_file_that_does_not_parse_does_not_hide_bad_variables() {
    let vars = env(&[("TESSERA_LOG_FORMAT", "xml")]);
    let err = Config::from_toml_and_env("trust_domain = ", &vars).unwrap_err();
    assert_eq!(err.problems().len(), 2, "{err}");
    assert!(err.to_string().contains("TESSERA_LOG_FORMAT"), "{err}");
}

#[test]
fn without_a_server_address_the_agent_is_standalone() {
    assert!(Config::default().server.is_none());
    // Other [server] keys alone do not switch cluster mode on.
    let c = Config::from_toml("[server]\nnode_name = \"n1\"\n").unwrap();
    assert!(c.server.is_none());
}

#[test]
fn server_section_parses_with_defaults_from_the_trust_domain() {
    let c = Config::from_toml(
        "trust_domain = \"acme.corp\"\n[server]\naddress = \"tessera-server:8081\"\n\
         bundle_file = \"/etc/tessera/root.pem\"\njoin_token_file = \"/etc/tessera/token\"\n\
         node_name = \"node-a\"\n",
    )
    .unwrap();
    let s = c.server.clone().unwrap();
    assert_eq!(
        s.addresses,
        vec![
            "tessera-server:8081"
                .parse::<http::uri::Authority>()
                .unwrap()
        ]
    );
    assert_eq!(s.server_id, "spiffe://acme.corp/tessera/server");
    assert_eq!(s.node_name.as_str(), "node-a");
    assert_eq!(
        s.proof,
        Some(AttestProof::JoinTokenFile("/etc/tessera/token".into()))
    );
    assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
}

#[test]
fn server_env_overrides_and_the_join_token_is_never_echoed() {
    let vars = env(&[
        ("TESSERA_SERVER_ADDRESS", "10.0.0.1:8081"),
        ("TESSERA_SERVER_BUNDLE_FILE", "/b.pem"),
        ("TESSERA_SERVER_JOIN_TOKEN", "s3cr3t-token"),
        ("TESSERA_SERVER_NODE_NAME", "n2"),
        ("TESSERA_SERVER_ID", "spiffe://tessera.local/tessera/server"),
    ]);
    let c = Config::from_toml_and_env("", &vars).unwrap();
    let s = c.server.clone().unwrap();
    assert_eq!(s.proof, Some(AttestProof::JoinToken("s3cr3t-token".into())));
    assert!(!format!("{s:?}").contains("s3cr3t"));
    assert!(!c.to_toml().contains("s3cr3t"));

    // Two proofs at once are refused, naming where the token came from, not its value.
    let both = env(&[
        ("TESSERA_SERVER_ADDRESS", "10.0.0.1:8081"),
        ("TESSERA_SERVER_BUNDLE_FILE", "/b.pem"),
        ("TESSERA_SERVER_JOIN_TOKEN", "s3cr3t-token"),
        ("TESSERA_SERVER_JOIN_TOKEN_FILE", "/t"),
        ("TESSERA_SERVER_NODE_NAME", "n2"),
    ]);
    let err = Config::from_toml_and_env("", &both)
        .unwrap_err()
        .to_string();
    assert!(err.contains("TESSERA_SERVER_JOIN_TOKEN"), "{err}");
    assert!(!err.contains("s3cr3t"), "{err}");
}

#[test]
fn bad_server_settings_are_refused_together() {
    let err = Config::from_toml(
        "[server]\naddress = \"no-port\"\nserver_id = \"spiffe://other.td/tessera/server\"\n\
         node_name = \"bad/name\"\n",
    )
    .unwrap_err();
    let keys: Vec<String> = err
        .problems()
        .iter()
        .map(|p| p.origin.to_string())
        .collect();
    for key in [
        "server.address",
        "server.server_id",
        "server.bundle_file",
        "server.node_name",
    ] {
        assert!(
            keys.iter().any(|k| k.contains(key)),
            "{key} not in {keys:?}"
        );
    }
}

#[test]
fn several_server_addresses_parse_and_round_trip() {
    let c = Config::from_toml(
        "trust_domain = \"acme.corp\"\n[server]\naddresses = [\"r1:8081\", \"r2:8081\"]\n\
         bundle_file = \"/b.pem\"\nnode_name = \"node-a\"\n",
    )
    .unwrap();
    let s = c.server.clone().unwrap();
    assert_eq!(
        s.addresses,
        vec![
            "r1:8081".parse::<http::uri::Authority>().unwrap(),
            "r2:8081".parse().unwrap()
        ]
    );
    assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
}

#[test]
fn address_and_addresses_together_or_a_repeated_address_are_refused() {
    let err = Config::from_toml(
        "[server]\naddress = \"r1:8081\"\naddresses = [\"r2:8081\"]\nbundle_file = \"/b\"\n\
         node_name = \"n\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("exclude each other"), "{err}");
    let err = Config::from_toml(
        "[server]\naddresses = [\"r1:8081\", \"r1:8081\"]\nbundle_file = \"/b\"\nnode_name = \"n\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("listed twice"), "{err}");
}

#[test]
fn cluster_env_lists_the_replicas_and_the_old_server_names_still_work() {
    let vars = env(&[
        ("TESSERA_CLUSTER_ADDRESSES", "10.0.0.1:8081, 10.0.0.2:8081"),
        ("TESSERA_CLUSTER_BUNDLE_FILE", "/b.pem"),
        ("TESSERA_CLUSTER_NODE_NAME", "n2"),
    ]);
    let c = Config::from_toml_and_env("[server]\naddress = \"file:1\"\n", &vars).unwrap();
    let s = c.server.unwrap();
    assert_eq!(
        s.addresses.len(),
        2,
        "the variable replaces the file's address"
    );
    assert_eq!(s.node_name.as_str(), "n2");
    assert!(crate::config::deprecated_cluster_vars(&vars).is_empty());

    // The new name wins over the old one; the old one alone still works and is reported.
    let both = env(&[
        ("TESSERA_CLUSTER_ADDRESS", "new:1"),
        ("TESSERA_SERVER_ADDRESS", "old:1"),
        ("TESSERA_SERVER_BUNDLE_FILE", "/b.pem"),
        ("TESSERA_SERVER_NODE_NAME", "n3"),
    ]);
    let s = Config::from_toml_and_env("", &both)
        .unwrap()
        .server
        .unwrap();
    assert_eq!(
        s.addresses,
        vec!["new:1".parse::<http::uri::Authority>().unwrap()]
    );
    assert_eq!(s.node_name.as_str(), "n3");
    let old: Vec<&str> = crate::config::deprecated_cluster_vars(&both)
        .into_iter()
        .map(|(_, old)| old)
        .collect();
    assert_eq!(
        old,
        [
            "TESSERA_SERVER_ADDRESS",
            "TESSERA_SERVER_BUNDLE_FILE",
            "TESSERA_SERVER_NODE_NAME"
        ]
    );
}

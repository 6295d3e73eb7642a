use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;

use super::*;

fn load(toml: Option<&str>, env: &[(&str, &str)], flags: &Flags) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.toml");
    if let Some(text) = toml {
        std::fs::write(&path, text).unwrap();
    }
    let env: HashMap<&str, &str> = env.iter().copied().collect();
    Config::load(toml.map(|_| path.as_path()), &env, flags)
}

#[test]
fn defaults_are_valid_and_print_back_to_themselves() {
    let config = load(None, &[], &Flags::default()).unwrap();
    assert_eq!(config.trust_domain.to_string(), "tessera.local");
    assert_eq!(config.database.connect.get_host(), "localhost");
    assert_eq!(config.database.connect.get_database(), Some("tessera"));
    assert_eq!(config.change_retention, Duration::from_secs(86_400));
    assert_eq!(config.audit_retention, None);
    let printed = config.to_toml();
    let again = load(Some(&printed), &[], &Flags::default()).unwrap();
    assert_eq!(again.to_toml(), printed);
}

/// Flags beat the environment, which beats the file.
#[test]
fn layers_override_in_order() {
    let file = "trust_domain = \"file.example\"\nadmin_socket = \"/file.sock\"\n\
                http_listen = \"127.0.0.1:1\"\n[database]\nurl = \"postgres://u@file/db\"\n";
    let env = [
        ("TESSERA_SERVER_ADMIN_SOCKET", "/env.sock"),
        ("TESSERA_SERVER_HTTP_LISTEN", "127.0.0.1:2"),
        ("TESSERA_SERVER_AUDIT_RETENTION", "30d"),
        ("TESSERA_ADMIN_SOCKET", "/the-agents.sock"),
    ];
    let flags = Flags {
        http_listen: Some("127.0.0.1:3".parse().unwrap()),
        ..Flags::default()
    };
    let config = load(Some(file), &env, &flags).unwrap();
    assert_eq!(config.trust_domain.to_string(), "file.example");
    assert_eq!(config.database.connect.get_host(), "file");
    assert_eq!(
        config.admin_socket,
        PathBuf::from("/env.sock"),
        "not the agent's variable"
    );
    assert_eq!(config.http_listen.port(), 3);
    assert_eq!(
        config.audit_retention,
        Some(Duration::from_secs(30 * 86_400))
    );
}

/// Every problem is reported at once, each naming where its value came from.
#[test]
fn every_problem_is_reported_with_its_origin() {
    let file = "trust_domain = \"Not A Domain\"\nchange_retention = \"10s\"\n";
    let env = [
        ("TESSERA_SERVER_DATABASE_MAX_CONNECTIONS", "lots"),
        ("TESSERA_SERVER_DATABASE_URL", "postgres://u:hunter2@db/x"),
    ];
    let error = load(Some(file), &env, &Flags::default()).unwrap_err();
    let text = error.to_string();
    assert_eq!(error.problems.len(), 4, "{text}");
    assert!(text.contains("`trust_domain` in config file"), "{text}");
    assert!(text.contains("`change_retention` in config file"), "{text}");
    assert!(
        text.contains("TESSERA_SERVER_DATABASE_MAX_CONNECTIONS=\"lots\""),
        "{text}"
    );
    assert!(text.contains("must not hold a password"), "{text}");
    assert!(load(Some("unknown_key = 1\n"), &[], &Flags::default()).is_err());
}

#[test]
fn a_password_comes_from_an_owner_only_file_never_the_url() {
    for url in ["postgres://u:pw@db/x", "postgres://u@db/x?password=pw"] {
        let flags = Flags {
            database_url: Some(url.into()),
            ..Flags::default()
        };
        let error = load(None, &[], &flags).unwrap_err();
        assert!(error.to_string().contains("flag --database-url"), "{error}");
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("password");
    std::fs::write(&secret, "s3cret\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let env = [(
        "TESSERA_SERVER_DATABASE_PASSWORD_FILE",
        secret.to_str().unwrap(),
    )];
    let error = load(None, &env, &Flags::default()).unwrap_err();
    assert!(error.to_string().contains("0600 or stricter"), "{error}");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = load(None, &env, &Flags::default()).unwrap();
    assert!(!format!("{config:?}").contains("s3cret"));
    assert!(!config.to_toml().contains("s3cret"));
}

/// The Node API's keys: file, environment and flag, and out-of-range values refused.
#[test]
fn node_api_keys_layer_and_are_bounded() {
    let file = "[ca]\ncert_file = \"/etc/ca.crt\"\nkey_file = \"/etc/ca.key\"\nnode_ca_ttl = \"12h\"\n\
                [listen]\nnode = \"127.0.0.1:1\"\n[node_api]\nheartbeat_interval = \"2s\"\n";
    let env = [
        ("TESSERA_SERVER_LISTEN_NODE", "127.0.0.1:2"),
        ("TESSERA_SERVER_NODE_API_SIGN_SERVER_SVID_PER_MINUTE", "5"),
    ];
    let flags = Flags {
        node_listen: Some("127.0.0.1:3".parse().unwrap()),
        ..Flags::default()
    };
    let config = load(Some(file), &env, &flags).unwrap();
    assert_eq!(
        config.ca.cert_file.as_deref(),
        Some(Path::new("/etc/ca.crt"))
    );
    assert_eq!(config.ca.node_ca_ttl, Duration::from_secs(12 * 3600));
    assert_eq!(config.node_listen.port(), 3);
    assert_eq!(config.node_api.heartbeat_interval, Duration::from_secs(2));
    assert_eq!(config.node_api.sign_server_svid_per_minute, 5);
    let again = load(Some(&config.to_toml()), &[], &Flags::default()).unwrap();
    assert_eq!(again.ca, config.ca);

    let defaults = load(None, &[], &Flags::default()).unwrap();
    assert_eq!(defaults.node_listen, "0.0.0.0:8081".parse().unwrap());
    assert_eq!(defaults.node_api.heartbeat_interval, Duration::from_secs(1));
    assert!(defaults.ca.cert_file.is_none());

    let bad = "[ca]\ncert_file = \"/etc/ca.crt\"\nnode_ca_ttl = \"1m\"\n[node_api]\nheartbeat_interval = \"0s\"\n";
    let err = load(Some(bad), &[], &Flags::default()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("ca.cert_file"), "{text}");
    assert!(text.contains("ca.node_ca_ttl"), "{text}");
    assert!(text.contains("node_api.heartbeat_interval"), "{text}");
}

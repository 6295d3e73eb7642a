//! Certificates the example MCP server (tessera-verify) refuses at the TLS handshake:
//! one hostile certificate per rule, a chain longer than the agent's root allows, and
//! another trust domain's intermediate under a shared upstream root.

#[path = "support/mcp.rs"]
mod support;

use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, IsCa, KeyUsagePurpose};
use serde_json::json;
use support::{
    AgentCa, Env, Leaf, Trust, args, audit, begin, connect, foreign_ca, hostile_tls, mint,
};
use tessera_e2e::{TRUST_DOMAIN, bin};
use tessera_example_agent_runtime::McpConnection;
use tessera_testca::Ca;
use time::OffsetDateTime;

#[tokio::test]
async fn hostile_certificates_are_refused_at_the_handshake() {
    // This server takes its SVID and bundle from PEM files (the path for servers
    // without an agent-issued identity); the others use the Workload API.
    let env = Env::start(Trust::Files, &[]).await.unwrap();
    let ca = AgentCa::load(&env.agent).unwrap();
    // A real task, to copy its id and signed claims into forgeries that differ from it
    // in exactly one property.
    let (_w, task, cred) = begin(&env, &["github/tool/get_pull_request"]).await;
    let leaf = tessera_identity::check_leaf_svid(cred.chain[0].as_ref()).unwrap();
    let claims_der = leaf.claims.as_ref().unwrap().to_der();

    // Control: a forgery with nothing wrong (same id, claims, CA) gets through, so the
    // refusals below are about the one property under test.
    let good = || Leaf {
        claims_der: Some(claims_der.clone()),
        ..Leaf::new(&task.spiffe_id, &ca.issuer)
    };
    let control = async |good: Leaf<'_>| {
        let m = mint(&good).unwrap();
        let conn = McpConnection::connect(&env.server.url, hostile_tls(&ca, m.chain, m.key))
            .await
            .expect("a well-formed certificate from the agent's CA is accepted");
        let out = conn
            .call(
                "get_pull_request",
                args(json!({"repo": "acme/api", "number": 1})),
            )
            .await;
        assert!(out.is_ok(), "{out:?}");
        conn.close().await;
    };
    control(good()).await;

    // Another live task of the same client: its claims are genuine, just not this URI's.
    let (_w2, other_task, other_cred) = begin(&env, &["github/tool/get_pull_request"]).await;
    let other_claims = tessera_identity::check_leaf_svid(other_cred.chain[0].as_ref())
        .unwrap()
        .claims
        .unwrap()
        .to_der();
    // The agent CA's name and key id, but another key: only the signature is wrong.
    let impostor = Ca::from_pem(
        &ca.bundle_pem,
        &rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let (evil, _) = foreign_ca().unwrap();
    let foreign_id = task.spiffe_id.replace(TRUST_DOMAIN, "evil.test");
    // A consistent task of the other trust domain: its claims name that domain too.
    let mut foreign_claims = leaf.claims.clone().unwrap();
    foreign_claims.client_id = "spiffe://evil.test/client/code-reviewer".parse().unwrap();
    foreign_claims.server = "spiffe://evil.test/mcp/github".parse().unwrap();
    let now = OffsetDateTime::now_utc();
    let cases: Vec<(&str, Leaf<'_>, &str)> = vec![
        (
            "another trust domain",
            Leaf {
                claims_der: Some(foreign_claims.to_der()),
                ..Leaf::new(&foreign_id, &evil)
            },
            "trust domain evil.test is not allowed",
        ),
        (
            "expired",
            Leaf {
                claims_der: Some(claims_der.clone()),
                not_before: now - time::Duration::hours(2),
                not_after: now - time::Duration::hours(1),
                ..Leaf::new(&task.spiffe_id, &ca.issuer)
            },
            "certificate expired",
        ),
        (
            "two URI SANs",
            Leaf {
                uris: vec![
                    task.spiffe_id.clone(),
                    format!("spiffe://{TRUST_DOMAIN}/client/other"),
                ],
                claims_der: Some(claims_der.clone()),
                ..Leaf::new(&task.spiffe_id, &ca.issuer)
            },
            "UriSanCount { found: 2 }",
        ),
        (
            "no task claims",
            Leaf::new(&task.spiffe_id, &ca.issuer),
            "MissingClaims",
        ),
        (
            "a CA certificate as the leaf",
            Leaf {
                is_ca: IsCa::Ca(BasicConstraints::Unconstrained),
                ..good()
            },
            "LeafIsCa",
        ),
        (
            "no BasicConstraints",
            Leaf {
                is_ca: IsCa::NoCa,
                ..good()
            },
            "MissingBasicConstraints",
        ),
        (
            "keyCertSign without digitalSignature",
            Leaf {
                key_usages: vec![KeyUsagePurpose::KeyCertSign],
                ..good()
            },
            "MissingDigitalSignature",
        ),
        (
            "digitalSignature plus keyCertSign",
            Leaf {
                key_usages: vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyCertSign,
                ],
                ..good()
            },
            "LeafKeyCertSign",
        ),
        (
            "not yet valid",
            Leaf {
                not_before: now + time::Duration::hours(1),
                not_after: now + time::Duration::hours(2),
                ..good()
            },
            "certificate not valid yet",
        ),
        (
            "signed by another key under the agent CA's name",
            Leaf {
                issuer: &impostor,
                ..good()
            },
            "BadSignature",
        ),
        (
            "claims extension that is not DER",
            Leaf {
                claims_der: Some(b"\x30\x84\xff\xff\xff\xffnot DER".to_vec()),
                ..good()
            },
            "InvalidClaims",
        ),
        (
            "claims of another task",
            Leaf {
                claims_der: Some(other_claims),
                ..good()
            },
            "ClaimsTaskMismatch",
        ),
    ];
    for (name, leaf, log_says) in cases {
        let m = mint(&leaf).unwrap();
        let before = env
            .server
            .log_text()
            .matches("TLS handshake refused")
            .count();
        let result =
            McpConnection::connect(&env.server.url, hostile_tls(&ca, m.chain, m.key)).await;
        assert!(result.is_err(), "{name}: connection was accepted");
        // The client sees the alert before the server has logged why: wait for the line.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut log = env.server.log_text();
        while log.matches("TLS handshake refused").count() <= before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
            log = env.server.log_text();
        }
        assert!(
            log.matches("TLS handshake refused").count() > before,
            "{name}: no handshake refusal logged:\n{log}"
        );
        assert!(
            log.contains(log_says),
            "{name}: log does not say {log_says:?}:\n{log}"
        );
    }
    // The server is still up and serves a good credential.
    control(good()).await;
    // None of them reached the authorizer: the only calls allowed are the two control
    // calls (each connection's `initialize` and notifications are decided too).
    let events = audit(&env);
    assert!(
        events.iter().all(|e| e["peer"] == task.spiffe_id.as_str()),
        "{events:#?}"
    );
    assert!(
        !events.iter().any(|e| e["task"] == other_task.id.as_str()),
        "{events:#?}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e["decision"] == "allow" && e["method"] == "tools/call")
            .count(),
        2,
        "{events:#?}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e["decision"] == "allow" && e["method"] == "initialize")
            .count(),
        2,
        "{events:#?}"
    );
}

// The agent's self-signed root has pathLenConstraint 0 ("signs leaves only"). webpki's
// trust anchors keep only subject, key and name constraints, so tessera-verify applies
// the anchor's constraint itself (tls/path_len.rs): a leaf under an intermediate the
// root signed must be refused at the handshake. Minting that intermediate needs the CA
// key (or a mis-issued CA certificate): this is defence in depth.
#[tokio::test]
async fn a_leaf_under_an_intermediate_beyond_the_roots_path_length_is_refused() {
    let env = Env::start(Trust::Files, &[]).await.unwrap();
    let ca = AgentCa::load(&env.agent).unwrap();
    let (_w, task, cred) = begin(&env, &["github/tool/get_pull_request"]).await;
    let claims = tessera_identity::check_leaf_svid(cred.chain[0].as_ref())
        .unwrap()
        .claims
        .unwrap()
        .to_der();
    let m = mint(&Leaf {
        claims_der: Some(claims),
        via_intermediate: true,
        ..Leaf::new(&task.spiffe_id, &ca.issuer)
    })
    .unwrap();
    assert_eq!(m.chain.len(), 2, "leaf and intermediate are both sent");
    if let Ok(conn) =
        McpConnection::connect(&env.server.url, hostile_tls(&ca, m.chain, m.key)).await
    {
        let out = conn
            .call(
                "get_pull_request",
                args(json!({"repo": "acme/api", "number": 1})),
            )
            .await;
        conn.close().await;
        panic!("a chain one CA longer than the root allows was accepted; its call: {out:?}");
    }
    let log = env.server.log_text();
    assert!(log.contains("PathLenConstraintViolated"), "{log}");
    // The same leaf signed by the root itself is fine: the refusal is the path length.
    let direct = mint(&Leaf {
        claims_der: tessera_identity::check_leaf_svid(cred.chain[0].as_ref())
            .unwrap()
            .claims
            .map(|c| c.to_der()),
        ..Leaf::new(&task.spiffe_id, &ca.issuer)
    })
    .unwrap();
    let conn = McpConnection::connect(&env.server.url, hostile_tls(&ca, direct.chain, direct.key))
        .await
        .expect("the leaf without the intermediate is accepted");
    conn.close().await;
}

/// An upstream PKI shared by two trust domains: a root (no SPIFFE ID) in PEM, and
/// intermediates for `e2e.test` and `evil.test` signed by it, each with its key.
struct SharedUpstream {
    root_pem: String,
    root: rustls_pki_types::CertificateDer<'static>,
    own: (Ca, String, String),
    evil: (Ca, rustls_pki_types::CertificateDer<'static>),
}

fn shared_upstream() -> SharedUpstream {
    let root = Ca::unnamed_root("Corporate Root");
    let intermediate = |td: &str| {
        root.constrained_intermediate(&format!("{td} CA"), &[&format!("spiffe://{td}")], 0)
    };
    let (own, evil) = (intermediate(TRUST_DOMAIN), intermediate("evil.test"));
    let (own_pem, own_key) = (own.cert_pem().to_owned(), own.key_pem().to_owned());
    let evil_cert = evil.cert().clone();
    SharedUpstream {
        root_pem: root.cert_pem().to_owned(),
        root: root.cert().clone(),
        own: (own, own_pem, own_key),
        evil: (evil, evil_cert),
    }
}

/// Issue 13: an agent in upstream mode, its intermediate from a PKI whose root also
/// signed another trust domain's. That domain's CA mints a task SVID of this one, with
/// the genuine claims of a live task: the example server refuses it at the handshake,
/// while the same SVID from this domain's intermediate is served.
#[tokio::test]
async fn another_trust_domains_intermediate_under_a_shared_root_is_refused() {
    let pki = shared_upstream();
    let files = tempfile::tempdir().unwrap();
    let path = |name: &str, text: &str| {
        let p = files.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let (cert, key, bundle) = (
        path("int.pem", &pki.own.1),
        path("int.key", &pki.own.2),
        path("root.pem", &pki.root_pem),
    );
    std::fs::set_permissions(
        &key,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
    )
    .unwrap();
    let agent = tessera_e2e::TestAgent::start(&format!(
        "[ca]\nmode = \"upstream\"\nupstream_cert = \"{}\"\nupstream_key = \"{}\"\n\
         upstream_bundle = \"{}\"\n",
        cert.display(),
        key.display(),
        bundle.display()
    ))
    .await
    .unwrap();
    agent.register_self("code-reviewer").await.unwrap();
    support::register_server(&agent, "github", &bin(support::SERVER_BIN))
        .await
        .unwrap();
    let consent = support::grant(&agent, "code-reviewer", support::CONSENTED)
        .await
        .unwrap();
    let server = support::McpServer::start(&agent, "upstream", Trust::Workload, &[])
        .await
        .unwrap();
    let env = Env {
        agent,
        server,
        consent,
    };
    // The agent's own chain: leaf, then its upstream intermediate; served as usual.
    let (_w, task, cred) = begin(&env, &["github/tool/get_pull_request"]).await;
    assert_eq!(cred.chain.len(), 2, "leaf + upstream intermediate");
    let conn = connect(&env, &cred).await;
    let out = conn
        .call(
            "get_pull_request",
            args(json!({"repo": "acme/api", "number": 1})),
        )
        .await;
    assert!(out.is_ok(), "{out:?}");
    conn.close().await;

    let claims_der = tessera_identity::check_leaf_svid(cred.chain[0].as_ref())
        .unwrap()
        .claims
        .unwrap()
        .to_der();
    let tls = |chain, key| {
        let expected = format!("spiffe://{TRUST_DOMAIN}/mcp/github")
            .parse()
            .unwrap();
        let mut cfg =
            tessera_verify::tls::client_config(&expected, [pki.root.clone()], chain, key).unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        cfg
    };
    // Control: minted with this domain's intermediate, the copy is served, so the
    // refusal below is about the intermediate alone.
    let mut own = mint(&Leaf {
        claims_der: Some(claims_der.clone()),
        ..Leaf::new(&task.spiffe_id, &pki.own.0)
    })
    .unwrap();
    own.chain.push(cred.chain[1].clone());
    let conn = McpConnection::connect(&env.server.url, tls(own.chain, own.key))
        .await
        .expect("this domain's intermediate");
    conn.close().await;

    let mut forged = mint(&Leaf {
        claims_der: Some(claims_der),
        ..Leaf::new(&task.spiffe_id, &pki.evil.0)
    })
    .unwrap();
    forged.chain.push(pki.evil.1.clone());
    let refused = McpConnection::connect(&env.server.url, tls(forged.chain, forged.key)).await;
    if let Ok(conn) = refused {
        let out = conn
            .call(
                "get_pull_request",
                args(json!({"repo": "acme/api", "number": 1})),
            )
            .await;
        panic!("evil.test's CA minted an e2e.test task the server accepted; a call: {out:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !env
        .server
        .log_text()
        .contains("IntermediateForeignTrustDomain")
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        env.server
            .log_text()
            .contains("IntermediateForeignTrustDomain"),
        "{}",
        env.server.log_text()
    );
}

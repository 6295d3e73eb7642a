//! Fuzz targets for every parser that reads hostile input, and a small
//! mutation-based driver that runs them on the stable toolchain.
//!
//! Each target panics only on a broken invariant (a parse that does not
//! round-trip, a panic inside a parser). The same functions back the
//! coverage-guided cargo-fuzz harness in `/fuzz` for longer runs.
//!
//! * this file: the targets (`fuzz_*`) and [`seeds`], valid inputs to start from.
//! * `driver`: the mutation driver ([`Mutator`], [`run_for`]).

#![forbid(unsafe_code)]

mod driver;

pub use driver::{Mutator, run_for};

use std::str::FromStr;

use tessera_identity::{AnyId, NodeCaExtension, Scope, ScopeKind, TaskClaims, TesseraId};

/// SPIFFE and Tessera ID parsing: never panics; what parses prints back identically.
pub fn fuzz_id(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = tessera_identity::validate_spiffe_id(s);
    if let Ok(id) = TesseraId::from_str(s) {
        let printed = id.to_string();
        assert_eq!(printed, s, "TesseraId must round-trip exactly");
        assert_eq!(TesseraId::from_str(&printed).as_ref(), Ok(&id));
    }
    if let Ok(id) = AnyId::from_str(s) {
        assert_eq!(id.to_string(), s, "AnyId must round-trip exactly");
    }
}

/// Scope parsing: what parses prints back identically and covers itself; and the
/// input, as a resource target, gets past a `file:///handbook/*` prefix only without
/// the shapes a file server could read as a path outside `/handbook/`.
pub fn fuzz_scope(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(scope) = Scope::from_str(s) {
        assert_eq!(scope.to_string(), s, "Scope must round-trip exactly");
        assert!(scope.covers(&scope), "a scope covers itself");
    }
    let handbook: Scope = "docs/resource/file:///handbook/*"
        .parse()
        .expect("static scope");
    if handbook.permits(handbook.server(), ScopeKind::Resource, s) {
        // A naive restatement of the rules in tessera-identity's scope docs, so a
        // mistake in their implementation shows up here.
        let path = s.split(['?', '#']).next().unwrap_or(s);
        let path = path.strip_prefix("file://").expect("the prefix matched");
        assert!(!path.contains("//"), "empty segment in {s:?}");
        let lower = s.to_ascii_lowercase();
        for bad in [
            "%2e", "%2f", "%5c", "%25", "\\", "/../", "/./", "/..;", "/.;",
        ] {
            assert!(!lower.contains(bad), "{bad} in {s:?}");
        }
        assert!(!path.ends_with("/..") && !path.ends_with("/."), "{s:?}");
    }
}

/// Claims and node-CA extension decoding: what decodes re-encodes to the same bytes
/// (and, for claims, validates).
pub fn fuzz_claims(data: &[u8]) {
    if let Ok(claims) = TaskClaims::from_der(data) {
        assert_eq!(claims.to_der(), data, "claims must be canonical DER");
        assert!(claims.validate().is_ok(), "decoded claims are valid");
    }
    if let Ok(ext) = NodeCaExtension::from_der(data) {
        assert_eq!(
            ext.to_der(),
            data,
            "node-CA extension must be canonical DER"
        );
    }
}

/// SVID profile checks on arbitrary certificate bytes: never panics; an
/// accepted leaf has exactly the fields the profile promises.
pub fn fuzz_svid(data: &[u8]) {
    if let Ok(leaf) = tessera_identity::check_leaf_svid(data) {
        assert!(leaf.spiffe_id.starts_with("spiffe://"));
        assert!(tessera_identity::validate_spiffe_id(&leaf.spiffe_id).is_ok());
        if let Some(claims) = &leaf.claims {
            assert!(claims.validate().is_ok());
        }
    }
    let _ = tessera_identity::check_signing_cert(data);
    let td: tessera_identity::TrustDomain = "acme.corp".parse().expect("static trust domain");
    if let Ok(ca) = tessera_identity::check_intermediate(data, &td)
        && let Some(node) = &ca.node
    {
        assert_eq!(
            node.trust_domain(),
            &td,
            "a node CA names a node of its own domain"
        );
        assert_eq!(tessera_identity::ca_path_len(data), Ok(Some(0)));
    }
}

/// Agent config parsing and validation: never panics.
pub fn fuzz_config(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = tessera_agent::config::Config::from_toml(s) {
        let again = tessera_agent::config::Config::from_toml(&config.to_toml())
            .unwrap_or_else(|e| panic!("printed config parses: {e}"));
        assert_eq!(again, config, "config must round-trip through TOML");
    }
}

/// A fuzz target and the valid inputs its mutations start from.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Name, as given to the driver.
    pub name: &'static str,
    /// The function under test.
    pub run: fn(&[u8]),
    /// Builds the seed corpus.
    pub seeds: fn() -> Vec<Vec<u8>>,
}

/// Every target.
pub fn targets() -> Vec<Target> {
    vec![
        Target {
            name: "id",
            run: fuzz_id,
            seeds: seeds::ids,
        },
        Target {
            name: "scope",
            run: fuzz_scope,
            seeds: seeds::scopes,
        },
        Target {
            name: "claims",
            run: fuzz_claims,
            seeds: seeds::claims,
        },
        Target {
            name: "svid",
            run: fuzz_svid,
            seeds: seeds::svids,
        },
        Target {
            name: "config",
            run: fuzz_config,
            seeds: seeds::configs,
        },
    ]
}

/// Valid inputs to start mutating from.
pub mod seeds {
    use tessera_identity::{ClientId, Scope, ServerId, TaskClaims, TaskId};

    /// IDs of every shape.
    pub fn ids() -> Vec<Vec<u8>> {
        [
            "spiffe://acme.corp/client/code-reviewer",
            "spiffe://acme.corp/client/code-reviewer/task/01J9Z8Q6W5K3M2N1P0R9S8T7V6",
            "spiffe://acme.corp/mcp/github",
            "spiffe://acme.corp/node/worker-1",
            "spiffe://acme.corp/admin/alice",
            "spiffe://a.b-c_d/x/y/z",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect()
    }

    /// Scopes of every kind.
    pub fn scopes() -> Vec<Vec<u8>> {
        [
            "github/tool/get_pull_request",
            "github/tool/*",
            "github/tool/get_*",
            "docs/resource/file:///handbook/*",
            "github/prompt/review",
            // Resource targets, near the shapes a handbook prefix must refuse.
            "file:///handbook/a/b.md?x=1",
            "file:///handbook/a%20b/c",
            "file:///handbook/..;/etc/passwd",
            "file:///handbook//etc/passwd",
            "file:///handbook/%252e%252e/etc",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect()
    }

    pub(crate) fn sample_claims() -> TaskClaims {
        let client: ClientId = "spiffe://acme.corp/client/code-reviewer"
            .parse()
            .expect("static id");
        TaskClaims {
            version: tessera_identity::TASK_CLAIMS_VERSION,
            task_id: TaskId::new(),
            client_id: client,
            subject: "alice@acme.corp".into(),
            purpose: "review PR 42".into(),
            server: "spiffe://acme.corp/mcp/github"
                .parse::<ServerId>()
                .expect("static id"),
            scopes: vec![
                "github/tool/get_*".parse::<Scope>().expect("static scope"),
                "github/tool/list_pulls"
                    .parse::<Scope>()
                    .expect("static scope"),
            ],
            consent_id: "01J9Z8Q6W5K3M2N1P0R9S8T7V6".into(),
            deadline_unix: 1_900_000_000,
        }
    }

    /// Encoded claims.
    pub fn claims() -> Vec<Vec<u8>> {
        let node = "spiffe://acme.corp/node/worker-1"
            .parse()
            .expect("static id");
        vec![
            sample_claims().to_der(),
            tessera_identity::NodeCaExtension::new(node).to_der(),
        ]
    }

    /// A client leaf and a task leaf with claims.
    pub fn svids() -> Vec<Vec<u8>> {
        use rcgen::{
            CertificateParams, CustomExtension, DistinguishedName, ExtendedKeyUsagePurpose, IsCa,
            KeyPair, KeyUsagePurpose, SanType,
        };
        let ca_key = KeyPair::generate().expect("keygen");
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca_cert = ca.self_signed(&ca_key).expect("ca");
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let leaf = |uri: &str, claims: Option<Vec<u8>>| {
            let key = KeyPair::generate().expect("keygen");
            let mut p = CertificateParams::default();
            p.distinguished_name = DistinguishedName::new();
            p.subject_alt_names = vec![SanType::URI(uri.try_into().expect("ia5"))];
            p.is_ca = IsCa::ExplicitNoCa;
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            if let Some(c) = claims {
                p.custom_extensions.push(CustomExtension::from_oid_content(
                    tessera_identity::TASK_CLAIMS_OID_ARCS,
                    c,
                ));
            }
            p.signed_by(&key, &issuer).expect("leaf").der().to_vec()
        };
        let claims = sample_claims();
        let task_uri = claims.client_id.task(claims.task_id).to_string();
        // A node CA as the cluster's root signs it.
        let node_ca = {
            let key = KeyPair::generate().expect("keygen");
            let mut p = CertificateParams::default();
            p.subject_alt_names = vec![SanType::URI("spiffe://acme.corp".try_into().expect("ia5"))];
            p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
            let node = "spiffe://acme.corp/node/worker-1"
                .parse()
                .expect("static id");
            p.custom_extensions.push(CustomExtension::from_oid_content(
                tessera_identity::NODE_CA_OID_ARCS,
                tessera_identity::NodeCaExtension::new(node).to_der(),
            ));
            p.signed_by(&key, &issuer).expect("node CA").der().to_vec()
        };
        vec![
            leaf("spiffe://acme.corp/client/code-reviewer", None),
            leaf(&task_uri, Some(claims.to_der())),
            ca_cert.der().to_vec(),
            node_ca,
        ]
    }

    /// A full config file.
    pub fn configs() -> Vec<Vec<u8>> {
        vec![
            tessera_agent::config::Config::default()
                .to_toml()
                .into_bytes(),
            b"trust_domain = \"acme.corp\"\nclient_svid_ttl = \"30m\"\n[ca]\nmode = \"upstream\"\n"
                .to_vec(),
        ]
    }
}

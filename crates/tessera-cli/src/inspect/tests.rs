use std::path::Path;

use super::*;
use crate::cert::split_der;
use tessera_testca::rcgen::CustomExtension;
use tessera_testca::{Ca, Minted};
use time::{Duration, OffsetDateTime};

/// The value of the `key:` line of a key/value block, whatever the alignment.
fn field<'t>(text: &'t str, key: &str) -> Option<&'t str> {
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{key}:")))
        .map(str::trim)
}

/// The CA of these tests: `CN=Test CA`, no SPIFFE ID.
fn ca() -> Ca {
    Ca::unnamed_root("Test CA")
}

/// A leaf in the SVID profile with these URI SANs, an optional extension, and a
/// validity ending `ttl` from now.
fn leaf(ca: &Ca, uris: &[&str], extension: Option<CustomExtension>, ttl: Duration) -> Minted {
    let mut leaf = ca.leaf(uris.first().copied().unwrap_or_default());
    leaf.uris = uris.iter().map(|u| (*u).to_owned()).collect();
    leaf.extensions.extend(extension);
    leaf.not_after = OffsetDateTime::now_utc() + ttl;
    leaf.mint()
}

fn chain(leaf: &Minted, ca: &Ca) -> Vec<Vec<u8>> {
    vec![leaf.leaf().to_vec(), ca.cert().to_vec()]
}

#[test]
fn client_svid_shows_id_kind_validity_and_chain() {
    let ca = ca();
    let leaf = leaf(
        &ca,
        &["spiffe://example.org/client/demo"],
        None,
        Duration::hours(1),
    );
    let rendered = render_inspect(&chain(&leaf, &ca), OutputFormat::Text, output::now_unix());
    let text = &rendered.text;
    assert_eq!(rendered.profile_error, None, "{text}");
    assert!(
        text.contains("SPIFFE ID:     spiffe://example.org/client/demo"),
        "{text}"
    );
    assert!(text.contains("kind:          client\n"), "{text}");
    assert!(text.contains("client:        demo\n"), "{text}");
    assert!(text.contains("trust domain:  example.org\n"), "{text}");
    assert!(
        text.contains("(expires in 59m") || text.contains("(expires in 1h"),
        "{text}"
    );
    assert!(text.contains("profile:       ok"), "{text}");
    assert!(
        text.contains("[0] subject: (empty)\n      issuer:  CN=Test CA"),
        "{text}"
    );
    assert!(text.contains("[1] subject: CN=Test CA"), "{text}");
    assert!(!text.contains("task claims"), "{text}");
}

#[test]
fn two_uri_sans_fail_the_profile_but_still_print_what_parses() {
    let ca = ca();
    let leaf = leaf(
        &ca,
        &[
            "spiffe://example.org/client/a",
            "spiffe://example.org/client/b",
        ],
        None,
        Duration::hours(1),
    );
    let rendered = render_inspect(&chain(&leaf, &ca), OutputFormat::Text, output::now_unix());
    let reason = rendered
        .profile_error
        .expect("two URI SANs must fail the profile");
    assert!(!reason.is_empty());
    let text = &rendered.text;
    assert_eq!(
        field(text, "profile"),
        Some(format!("FAILED: {reason}").as_str()),
        "{text}"
    );
    assert!(reason.contains("URI SAN"), "{reason}");
    assert_eq!(
        field(text, "URI SANs"),
        Some("spiffe://example.org/client/a"),
        "{text}"
    );
    assert_eq!(
        field(text, "kind"),
        Some("unknown: a SPIFFE ID needs exactly one URI SAN")
    );
    assert!(text.contains("spiffe://example.org/client/b"), "{text}");
    assert!(text.contains("not after:"), "{text}");
    assert!(text.contains("[1] subject: CN=Test CA"), "{text}");
}

#[test]
fn task_svid_shows_task_parts_and_claims() {
    use tessera_identity::{TASK_CLAIMS_OID_ARCS, TASK_CLAIMS_VERSION};
    let task = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    let uri = format!("spiffe://acme.corp/client/code-reviewer/task/{task}");
    let deadline = output::now_unix() + 600;
    let claims = TaskClaims {
        version: TASK_CLAIMS_VERSION,
        task_id: task.parse().unwrap(),
        client_id: "spiffe://acme.corp/client/code-reviewer".parse().unwrap(),
        subject: "alice@acme.corp".into(),
        purpose: "Review PR #42".into(),
        server: "spiffe://acme.corp/mcp/github".parse().unwrap(),
        scopes: vec![
            "github/tool/get_pull_request".parse().unwrap(),
            "github/tool/list_*".parse().unwrap(),
        ],
        consent_id: "consent-7".into(),
        deadline_unix: deadline,
    };
    let ext = rcgen::CustomExtension::from_oid_content(TASK_CLAIMS_OID_ARCS, claims.to_der());
    let ca = ca();
    let leaf = leaf(&ca, &[&uri], Some(ext), Duration::minutes(5));
    let rendered = render_inspect(&chain(&leaf, &ca), OutputFormat::Text, output::now_unix());
    let text = &rendered.text;
    assert_eq!(rendered.profile_error, None, "{text}");
    assert_eq!(field(text, "kind"), Some("task"), "{text}");
    assert_eq!(field(text, "task id"), Some(task), "{text}");
    assert!(text.contains("\ntask claims:\n"), "{text}");
    assert_eq!(field(text, "  subject"), Some("alice@acme.corp"), "{text}");
    assert_eq!(field(text, "  purpose"), Some("Review PR #42"), "{text}");
    assert_eq!(
        field(text, "  server"),
        Some("spiffe://acme.corp/mcp/github"),
        "{text}"
    );
    assert_eq!(
        field(text, "  scopes"),
        Some("github/tool/get_pull_request"),
        "{text}"
    );
    assert!(text.contains("github/tool/list_*"), "{text}");
    assert_eq!(field(text, "  consent id"), Some("consent-7"), "{text}");
    assert!(
        field(text, "  deadline").unwrap().ends_with("(in 10m)"),
        "{text}"
    );

    let json: Value = serde_json::from_str(
        &render_inspect(&chain(&leaf, &ca), OutputFormat::Json, output::now_unix()).text,
    )
    .unwrap();
    assert_eq!(json["kind"], "task");
    assert_eq!(json["parts"]["task_id"], task);
    assert_eq!(json["claims"]["scopes"][1], "github/tool/list_*");
}

#[test]
fn run_exits_2_when_the_profile_check_fails() {
    let ca = ca();
    let dir = tempfile::tempdir().unwrap();
    let bad = leaf(
        &ca,
        &[
            "spiffe://example.org/client/a",
            "spiffe://example.org/client/b",
        ],
        None,
        Duration::hours(1),
    );
    let file = dir.path().join("bad.pem");
    std::fs::write(&file, &bad.cert_pem).unwrap();
    let code = run(&InspectArgs { file }, OutputFormat::Text).unwrap();
    assert_eq!(code, ExitCode::from(PROFILE_FAILED));

    let good = leaf(
        &ca,
        &["spiffe://example.org/client/demo"],
        None,
        Duration::hours(1),
    );
    let file = dir.path().join("good.der");
    std::fs::write(&file, good.leaf()).unwrap();
    let code = run(&InspectArgs { file }, OutputFormat::Text).unwrap();
    assert_eq!(code, ExitCode::SUCCESS);
}

#[test]
fn expired_leaf_says_how_long_ago() {
    let ca = ca();
    let leaf = leaf(
        &ca,
        &["spiffe://example.org/mcp/github"],
        None,
        Duration::minutes(1),
    );
    let later = output::now_unix() + 3_600;
    let text = render_inspect(&chain(&leaf, &ca), OutputFormat::Text, later).text;
    assert!(text.contains("kind:          server\n"), "{text}");
    assert!(text.contains("server:        github\n"), "{text}");
    assert!(
        text.contains("(expired 59m") || text.contains("(expired 1h"),
        "{text}"
    );
}

#[test]
fn json_report_has_kind_parts_and_profile() {
    let ca = ca();
    let leaf = leaf(
        &ca,
        &["spiffe://example.org/client/demo"],
        None,
        Duration::hours(1),
    );
    let rendered = render_inspect(&chain(&leaf, &ca), OutputFormat::Json, output::now_unix());
    let value: Value = serde_json::from_str(&rendered.text).unwrap();
    assert_eq!(value["spiffe_id"], "spiffe://example.org/client/demo");
    assert_eq!(value["kind"], "client");
    assert_eq!(value["parts"]["client"], "demo");
    assert_eq!(value["profile"]["ok"], true);
    assert_eq!(value["chain"].as_array().unwrap().len(), 2);
}

#[test]
fn reads_pem_chains_and_concatenated_der() {
    let ca = ca();
    let leaf = leaf(
        &ca,
        &["spiffe://example.org/client/demo"],
        None,
        Duration::hours(1),
    );
    let file = Path::new("svid.0.pem");
    let pem_text = format!("{}{}", leaf.cert_pem, ca.cert_pem());
    let from_pem = read_chain(pem_text.as_bytes(), file).unwrap();
    assert_eq!(from_pem, chain(&leaf, &ca));
    let der: Vec<u8> = chain(&leaf, &ca).concat();
    assert_eq!(read_chain(&der, file).unwrap(), chain(&leaf, &ca));
}

#[test]
fn a_key_file_is_refused_without_printing_the_key() {
    let key = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIE4fXd8b3D7y8PzG2qM0l3Y3s0eQ4l5e0QnS8r0bq9nX\n-----END PRIVATE KEY-----\n";
    let err = read_chain(key.as_bytes(), Path::new("svid.0.key")).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("no CERTIFICATE block"), "{text}");
    assert!(text.contains("PRIVATE KEY"), "{text}");
    assert!(!text.contains("MC4CAQ"), "{text}");
}

#[test]
fn garbage_is_neither_pem_nor_der() {
    let err = read_chain(b"hello", Path::new("x")).unwrap_err();
    assert!(err.to_string().contains("neither PEM nor DER"));
}

#[test]
fn split_der_keeps_a_truncated_tail() {
    let ca = ca();
    let mut der = ca.cert().to_vec();
    der.extend_from_slice(&[0x30, 0x82, 0xff]);
    let parts = split_der(&der);
    assert_eq!(parts.len(), 2);
    assert!(CertSummary::parse(&parts[1]).is_err());
}

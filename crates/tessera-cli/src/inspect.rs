//! `tessera svid inspect`: what a certificate file says about an identity, and whether it
//! passes Tessera's X.509-SVID profile.
//!
//! The profile verdict comes from `tessera_identity::check_leaf_svid`, the same check the
//! agent and verifiers run. Everything else is read with x509-parser independently, so a
//! certificate that fails the profile still shows its names, serial, validity and chain.
//! Nothing here verifies signatures or trust: this is a lens, not a verifier.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};
use tessera_identity::{LeafSvid, TaskClaims, TesseraId, check_leaf_svid};

use crate::output::{self, OutputFormat};

/// Exit code when the certificate fails the profile check.
pub const PROFILE_FAILED: u8 = 2;

const EXAMPLES: &str = "\
Examples:
  # Files written by `tessera svid fetch --write` or `spire-agent api fetch x509 -write`:
  tessera svid inspect /tmp/svid/svid.0.pem
  tessera svid inspect --output json leaf.der | jq .claims.scopes

The file may hold PEM (one or more CERTIFICATE blocks, leaf first) or DER (one certificate, or
several concatenated). Exit status: 0 when the leaf passes Tessera's SVID profile, 2 when it
does not (the reason is printed), 1 when the file cannot be read at all.";

/// Arguments of `tessera svid inspect`.
#[derive(Debug, Args)]
#[command(after_long_help = EXAMPLES)]
pub struct InspectArgs {
    /// PEM or DER file with the SVID's certificate chain, leaf first.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// Runs `tessera svid inspect`.
pub fn run(args: &InspectArgs, format: OutputFormat) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let chain = read_chain(&bytes, &args.file)?;
    let rendered = render_inspect(&chain, format, output::now_unix());
    output::print(&rendered.text)?;
    Ok(match rendered.profile_error {
        None => ExitCode::SUCCESS,
        Some(reason) => {
            eprintln!(
                "tessera: {} fails the Tessera SVID profile: {reason}",
                args.file.display()
            );
            ExitCode::from(PROFILE_FAILED)
        }
    })
}

// === reading ===

/// The DER certificates in a PEM or DER file, leaf first.
pub fn read_chain(bytes: &[u8], file: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let looks_pem = bytes.windows(11).any(|w| w == b"-----BEGIN ");
    if looks_pem {
        let blocks = pem::parse_many(bytes)
            .with_context(|| format!("{} looks like PEM but does not parse", file.display()))?;
        let certs: Vec<Vec<u8>> = blocks
            .iter()
            .filter(|b| b.tag() == "CERTIFICATE")
            .map(|b| b.contents().to_vec())
            .collect();
        if certs.is_empty() {
            let tags: Vec<&str> = blocks.iter().map(pem::Pem::tag).collect();
            bail!(
                "no CERTIFICATE block in {} (found: {}); pass the certificate file, e.g. svid.0.pem",
                file.display(),
                if tags.is_empty() {
                    "nothing".to_owned()
                } else {
                    tags.join(", ")
                }
            );
        }
        return Ok(certs);
    }
    if bytes.first() != Some(&0x30) {
        bail!(
            "{} is neither PEM nor DER (a DER certificate starts with a SEQUENCE, byte 0x30)",
            file.display()
        );
    }
    Ok(split_der(bytes))
}

/// Splits concatenated DER values by their outer length, as the Workload API and
/// `GetStatus` deliver chains and bundles. A malformed tail is kept as a last element so
/// the parse error is shown rather than the bytes silently dropped.
pub fn split_der(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        match der_len(bytes) {
            Some(len) if len <= bytes.len() => {
                out.push(bytes[..len].to_vec());
                bytes = &bytes[len..];
            }
            _ => {
                out.push(bytes.to_vec());
                break;
            }
        }
    }
    out
}

/// Total length (header included) of the DER SEQUENCE at the start of `bytes`.
fn der_len(bytes: &[u8]) -> Option<usize> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, rest) = rest.split_first()?;
    if tag != 0x30 {
        return None;
    }
    if first < 0x80 {
        return Some(2 + usize::from(first));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 4 || rest.len() < n {
        return None;
    }
    let len = rest[..n]
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    Some(2 + n + len)
}

// === certificate summaries ===

/// What x509-parser reads from one certificate, independent of any profile.
#[derive(Debug, Clone)]
pub struct CertSummary {
    /// Subject DN, `(empty)` for SVID leaves.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Serial number in lowercase hex, without leading zero bytes.
    pub serial_hex: String,
    /// Start of validity.
    pub not_before_unix: i64,
    /// End of validity.
    pub not_after_unix: i64,
    /// URI SANs, or why they could not be read.
    pub uri_sans: Result<Vec<String>, String>,
    /// BasicConstraints cA.
    pub is_ca: bool,
}

impl CertSummary {
    /// Reads one DER certificate.
    pub fn parse(der: &[u8]) -> Result<Self, String> {
        let (rest, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        if !rest.is_empty() {
            return Err(format!(
                "{} trailing bytes after the certificate",
                rest.len()
            ));
        }
        let dn = |name: &x509_parser::x509::X509Name<'_>| {
            let text = name.to_string();
            if text.is_empty() {
                "(empty)".to_owned()
            } else {
                text
            }
        };
        let uri_sans = match cert.subject_alternative_name() {
            Ok(Some(san)) => Ok(san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect()),
            Ok(None) => Ok(Vec::new()),
            Err(e) => Err(format!("unreadable subjectAltName: {e}")),
        };
        let serial = cert.raw_serial();
        let significant = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
        let serial_hex = if significant == serial.len() {
            "00".to_owned()
        } else {
            hex::encode(&serial[significant..])
        };
        Ok(Self {
            subject: dn(cert.subject()),
            issuer: dn(cert.issuer()),
            serial_hex,
            not_before_unix: cert.validity().not_before.timestamp(),
            not_after_unix: cert.validity().not_after.timestamp(),
            uri_sans,
            is_ca: cert.is_ca(),
        })
    }

    /// The summary as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "subject": self.subject,
            "issuer": self.issuer,
            "serial": self.serial_hex,
            "not_before": output::rfc3339(self.not_before_unix),
            "not_after": output::rfc3339(self.not_after_unix),
            "is_ca": self.is_ca,
            "uri_sans": match &self.uri_sans {
                Ok(uris) => json!(uris),
                Err(e) => json!({ "error": e }),
            },
        })
    }
}

// === identity ===

/// The kind of a Tessera identity and its named parts, for display.
pub fn id_parts(id: &TesseraId) -> (&'static str, Vec<(&'static str, String)>) {
    match id {
        TesseraId::Client(c) => (
            "client",
            vec![
                ("trust domain", c.trust_domain.to_string()),
                ("client", c.name.to_string()),
            ],
        ),
        TesseraId::Task(t) => (
            "task",
            vec![
                ("trust domain", t.client.trust_domain.to_string()),
                ("client", t.client.name.to_string()),
                ("task id", t.task.to_string()),
            ],
        ),
        TesseraId::Server(s) => (
            "server",
            vec![
                ("trust domain", s.trust_domain.to_string()),
                ("server", s.name.to_string()),
            ],
        ),
    }
}

/// What `svid inspect` found, ready to render.
#[derive(Debug)]
struct Inspection {
    chain: Vec<Result<CertSummary, String>>,
    profile: Result<LeafSvid, String>,
}

impl Inspection {
    fn new(der_chain: &[Vec<u8>]) -> Self {
        let profile = match der_chain.first() {
            Some(leaf) => check_leaf_svid(leaf).map_err(|e| e.to_string()),
            None => Err("the file holds no certificate".to_owned()),
        };
        Self {
            chain: der_chain.iter().map(|d| CertSummary::parse(d)).collect(),
            profile,
        }
    }

    /// The URI SANs of the leaf, as far as they can be read.
    fn uris(&self) -> Vec<String> {
        match &self.profile {
            Ok(leaf) => vec![leaf.spiffe_id.clone()],
            Err(_) => match self.chain.first() {
                Some(Ok(CertSummary {
                    uri_sans: Ok(uris), ..
                })) => uris.clone(),
                _ => Vec::new(),
            },
        }
    }

    /// The leaf's Tessera identity: from the profile check, or parsed from a sole URI SAN.
    fn tessera_id(&self) -> Option<TesseraId> {
        match &self.profile {
            Ok(leaf) => leaf.tessera_id.clone(),
            Err(_) => match self.uris().as_slice() {
                [one] => one.parse().ok(),
                _ => None,
            },
        }
    }

    /// `(serial, not_before, not_after)` of the leaf, if known.
    fn leaf_facts(&self) -> Option<(String, i64, i64)> {
        match (&self.profile, self.chain.first()) {
            (Ok(leaf), _) => Some((
                leaf.serial_hex.clone(),
                leaf.not_before_unix,
                leaf.not_after_unix,
            )),
            (Err(_), Some(Ok(c))) => {
                Some((c.serial_hex.clone(), c.not_before_unix, c.not_after_unix))
            }
            _ => None,
        }
    }

    fn claims(&self) -> Option<&TaskClaims> {
        self.profile.as_ref().ok().and_then(|l| l.claims.as_ref())
    }
}

/// The rendered report and, when the leaf fails the profile, why.
#[derive(Debug)]
pub struct Rendered {
    /// Text or JSON for stdout.
    pub text: String,
    /// `Some(reason)` when the leaf fails `check_leaf_svid`: exit with [`PROFILE_FAILED`].
    pub profile_error: Option<String>,
}

/// Inspects a DER chain (leaf first) and renders the report; `now` drives "expires in".
pub fn render_inspect(der_chain: &[Vec<u8>], format: OutputFormat, now: i64) -> Rendered {
    let inspection = Inspection::new(der_chain);
    let text = match format {
        OutputFormat::Text => render_text(&inspection, now),
        OutputFormat::Json => output::json(&render_json(&inspection, now)),
    };
    Rendered {
        text,
        profile_error: inspection.profile.err(),
    }
}

fn render_text(ins: &Inspection, now: i64) -> String {
    let mut pairs: Vec<(&str, String)> = Vec::new();
    match ins.uris().as_slice() {
        [one] => pairs.push(("SPIFFE ID", one.clone())),
        [] => pairs.push(("SPIFFE ID", "(none: the leaf has no URI SAN)".to_owned())),
        many => pairs.push(("URI SANs", many.join("\n"))),
    }
    match ins.tessera_id() {
        Some(id) => {
            let (kind, parts) = id_parts(&id);
            pairs.push(("kind", kind.to_owned()));
            pairs.extend(parts);
        }
        None if ins.uris().len() != 1 => pairs.push((
            "kind",
            "unknown: a SPIFFE ID needs exactly one URI SAN".to_owned(),
        )),
        None => pairs.push(("kind", "not a Tessera client, task or server id".to_owned())),
    }
    if let Some((serial, not_before, not_after)) = ins.leaf_facts() {
        pairs.push(("serial", serial));
        let nb = if not_before > now {
            format!(
                "{} (not yet valid: starts {})",
                output::rfc3339(not_before),
                output::deadline(not_before, now)
            )
        } else {
            output::rfc3339(not_before)
        };
        pairs.push(("not before", nb));
        pairs.push((
            "not after",
            format!(
                "{} ({})",
                output::rfc3339(not_after),
                output::expiry(not_after, now)
            ),
        ));
    }
    pairs.push((
        "profile",
        match &ins.profile {
            Ok(_) => "ok: passes the Tessera X.509-SVID profile".to_owned(),
            Err(reason) => format!("FAILED: {reason}"),
        },
    ));
    let mut text = output::kv(0, &pairs);

    if let Some(c) = ins.claims() {
        text.push_str("\ntask claims:\n");
        text.push_str(&output::kv(
            2,
            &[
                ("version", c.version.to_string()),
                ("task id", c.task_id.to_string()),
                ("client", c.client_id.to_string()),
                ("subject", c.subject.clone()),
                ("purpose", c.purpose.clone()),
                ("server", c.server.to_string()),
                (
                    "scopes",
                    if c.scopes.is_empty() {
                        "(none)".to_owned()
                    } else {
                        c.scopes
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("\n")
                    },
                ),
                ("consent id", c.consent_id.clone()),
                (
                    "deadline",
                    format!(
                        "{} ({})",
                        output::rfc3339(c.deadline_unix),
                        output::deadline(c.deadline_unix, now)
                    ),
                ),
            ],
        ));
    }

    text.push_str("\nchain (leaf first, signatures not verified):\n");
    for (i, cert) in ins.chain.iter().enumerate() {
        match cert {
            Ok(c) => {
                text.push_str(&format!("  [{i}] subject: {}\n", c.subject));
                text.push_str(&format!("      issuer:  {}\n", c.issuer));
            }
            Err(e) => text.push_str(&format!("  [{i}] unreadable: {e}\n")),
        }
    }
    text
}

fn render_json(ins: &Inspection, now: i64) -> Value {
    let id = ins.tessera_id();
    let (kind, parts) = id.as_ref().map_or(("other", Vec::new()), id_parts);
    let parts: serde_json::Map<String, Value> = parts
        .into_iter()
        .map(|(k, v)| (k.replace(' ', "_"), Value::String(v)))
        .collect();
    let uris = ins.uris();
    let facts = ins.leaf_facts();
    json!({
        "spiffe_id": match uris.as_slice() { [one] => json!(one), _ => Value::Null },
        "uri_sans": uris,
        "kind": kind,
        "parts": parts,
        "serial": facts.as_ref().map(|f| f.0.clone()),
        "not_before": facts.as_ref().map(|f| output::rfc3339(f.1)),
        "not_after": facts.as_ref().map(|f| output::rfc3339(f.2)),
        "expires_in_secs": facts.as_ref().map(|f| f.2 - now),
        "profile": match &ins.profile {
            Ok(_) => json!({ "ok": true }),
            Err(reason) => json!({ "ok": false, "error": reason }),
        },
        "claims": ins.claims().map(|c| json!({
            "version": c.version,
            "task_id": c.task_id.to_string(),
            "client": c.client_id.to_string(),
            "subject": c.subject,
            "purpose": c.purpose,
            "server": c.server.to_string(),
            "scopes": c.scopes.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "consent_id": c.consent_id,
            "deadline": output::rfc3339(c.deadline_unix),
        })),
        "chain": ins.chain.iter().map(|c| match c {
            Ok(c) => c.to_json(),
            Err(e) => json!({ "error": e }),
        }).collect::<Vec<_>>(),
    })
}

/// Certificates for tests, built with rcgen.
#[cfg(test)]
pub mod test_certs {
    use rcgen::{
        BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
        ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    };
    use time::{Duration, OffsetDateTime};

    /// A CA certificate with its key.
    pub struct Ca {
        /// The certificate.
        pub cert: rcgen::Certificate,
        /// Its issuer, to sign leaves.
        pub issuer: Issuer<'static, KeyPair>,
    }

    /// A self-signed CA `CN=Test CA`.
    pub fn ca() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "Test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(1);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            cert,
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf in the SVID profile, with these URI SANs, an optional extension, and a
    /// validity ending `ttl` from now.
    pub fn leaf(
        ca: &Ca,
        uris: &[&str],
        extension: Option<CustomExtension>,
        ttl: Duration,
    ) -> rcgen::Certificate {
        let key = KeyPair::generate().unwrap();
        build_leaf(ca, &key, uris, extension, ttl)
    }

    /// Like [`leaf`], for a given key.
    pub fn leaf_with_key(
        ca: &Ca,
        key: &KeyPair,
        uris: &[&str],
        ttl: Duration,
    ) -> rcgen::Certificate {
        build_leaf(ca, key, uris, None, ttl)
    }

    fn build_leaf(
        ca: &Ca,
        key: &KeyPair,
        uris: &[&str],
        extension: Option<CustomExtension>,
        ttl: Duration,
    ) -> rcgen::Certificate {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::ExplicitNoCa;
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + ttl;
        params.custom_extensions.extend(extension);
        params.signed_by(key, &ca.issuer).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::test_certs::{ca, leaf};
    use super::*;
    use time::Duration;

    /// The value of the `key:` line of a key/value block, whatever the alignment.
    fn field<'t>(text: &'t str, key: &str) -> Option<&'t str> {
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{key}:")))
            .map(str::trim)
    }

    fn chain(leaf: &rcgen::Certificate, ca: &test_certs::Ca) -> Vec<Vec<u8>> {
        vec![leaf.der().to_vec(), ca.cert.der().to_vec()]
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
        std::fs::write(&file, bad.pem()).unwrap();
        let code = run(&InspectArgs { file }, OutputFormat::Text).unwrap();
        assert_eq!(code, ExitCode::from(PROFILE_FAILED));

        let good = leaf(
            &ca,
            &["spiffe://example.org/client/demo"],
            None,
            Duration::hours(1),
        );
        let file = dir.path().join("good.der");
        std::fs::write(&file, good.der()).unwrap();
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
        let pem_text = format!("{}{}", leaf.pem(), ca.cert.pem());
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
        let mut der = ca.cert.der().to_vec();
        der.extend_from_slice(&[0x30, 0x82, 0xff]);
        let parts = split_der(&der);
        assert_eq!(parts.len(), 2);
        assert!(CertSummary::parse(&parts[1]).is_err());
    }
}

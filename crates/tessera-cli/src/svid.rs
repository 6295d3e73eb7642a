//! `tessera svid`: fetch X.509-SVIDs from the Workload API like any SPIFFE workload would,
//! and inspect SVID files.
//!
//! `fetch` uses the `spiffe` crate's client on purpose: if it works here, it works for every
//! standard SPIFFE client, which is the point of speaking the Workload API.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::{Args, Subcommand};
use serde_json::json;
use spiffe::transport::{GrpcStatusCode, TransportError};
use spiffe::{WorkloadApiClient, WorkloadApiError, X509Context};
use tessera_identity::TesseraId;

use crate::admin::{current_uid, io_cause};
use crate::cert::{CertSummary, id_parts};
use crate::files::{SvidFileNames, ensure_private_dir, write_svid_files};
use crate::inspect::InspectArgs;
use crate::output::{self, OutputFormat};

const FETCH_EXAMPLES: &str = "\
Examples:
  # Show the identities this process gets (run it as the agent runtime's user):
  tessera svid fetch
  # Write them for tools that read files, like `spire-agent api fetch x509 -write`:
  tessera svid fetch --write /tmp/svid
  tessera svid inspect /tmp/svid/svid.0.pem

With --write DIR, for each SVID N (0 is the default SVID):
  svid.N.pem    the certificate chain, leaf first
  svid.N.key    the private key, PKCS#8 PEM, created with mode 0600
  bundle.N.pem  the CA certificates of the SVID's trust domain
DIR is created with mode 0700 if missing. The private key is never printed.";

/// `tessera svid …`.
#[derive(Debug, Subcommand)]
pub enum SvidCommand {
    /// Fetch this process's X.509-SVIDs and trust bundles from the Workload API.
    #[command(after_long_help = FETCH_EXAMPLES)]
    Fetch(FetchArgs),
    /// Show what an SVID certificate file says and check it against Tessera's SVID profile.
    Inspect(InspectArgs),
}

/// Arguments of `tessera svid fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Also write the SVIDs, keys and bundles into DIR (see below).
    #[arg(long, value_name = "DIR")]
    pub write: Option<PathBuf>,

    /// Give up after this long, e.g. 10s or 1m.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::duration::parse_timeout)]
    pub timeout: Duration,
}

/// Normalizes the workload endpoint: `unix:///abs/path`, `unix:/abs/path` or a bare
/// absolute path become `unix:///abs/path`.
pub fn workload_addr(input: &str) -> Result<String, String> {
    Ok(format!("unix://{}", workload_path(input)?.display()))
}

/// The socket path of the workload endpoint (`unix:///abs/path`, `unix:/abs/path` or a bare
/// absolute path).
pub fn workload_path(input: &str) -> Result<PathBuf, String> {
    let path = if let Some(rest) = input.strip_prefix("unix://") {
        rest
    } else if let Some(rest) = input.strip_prefix("unix:") {
        rest
    } else {
        input
    };
    if !path.starts_with('/') || path.len() < 2 {
        return Err(format!(
            "invalid workload endpoint {input:?}: expected unix:///absolute/path or /absolute/path"
        ));
    }
    Ok(PathBuf::from(path))
}

/// One fetched SVID, as displayed (never with its key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedSvid {
    /// The SVID's SPIFFE ID.
    pub spiffe_id: String,
    /// The Workload API hint (Tessera: the task id for task SVIDs).
    pub hint: Option<String>,
    /// Leaf serial in hex.
    pub serial_hex: String,
    /// Leaf expiry.
    pub not_after_unix: i64,
    /// Certificates in the chain.
    pub chain_len: usize,
}

/// One trust bundle, as displayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedBundle {
    /// The trust domain name.
    pub trust_domain: String,
    /// CA certificates in the bundle.
    pub authorities: usize,
}

/// Runs `tessera svid fetch`.
pub async fn fetch(args: &FetchArgs, socket: &str, format: OutputFormat) -> anyhow::Result<()> {
    let addr = workload_addr(socket).map_err(|e| anyhow!(e))?;
    let context = tokio::time::timeout(args.timeout, async {
        let client = WorkloadApiClient::connect_to(&addr).await?;
        client.fetch_x509_context().await
    })
    .await
    .map_err(|_| {
        anyhow!(
            "no answer from the Workload API at {addr} within {:?}: is tessera-agent running?",
            args.timeout
        )
    })?
    .map_err(|e| workload_error(&e, &addr))?;

    let (svids, bundles) = summarize(&context);
    let written = match &args.write {
        Some(dir) => write_files(dir, &context)?,
        None => Vec::new(),
    };
    output::print(&render_fetch(
        &svids,
        &bundles,
        &written,
        format,
        output::now_unix(),
    ))?;
    Ok(())
}

/// Explains a Workload API failure.
fn workload_error(err: &WorkloadApiError, addr: &str) -> anyhow::Error {
    let uid = current_uid().map_or_else(|| "<uid>".to_owned(), |u| u.to_string());
    let unreachable = || match io_cause(err) {
        Some(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
            anyhow!("cannot open the Workload API socket {addr} as uid {uid}: permission denied")
        }
        Some(io) if io.kind() == std::io::ErrorKind::NotFound => anyhow!(
            "cannot reach the Workload API at {addr}: is tessera-agent running? (no socket at that \
             path; set --socket or SPIFFE_ENDPOINT_SOCKET if it lives elsewhere)"
        ),
        Some(io) => {
            anyhow!("cannot reach the Workload API at {addr}: is tessera-agent running? ({io})")
        }
        None => {
            anyhow!("cannot reach the Workload API at {addr}: is tessera-agent running? ({err})")
        }
    };
    match err {
        WorkloadApiError::NoIdentityIssued | WorkloadApiError::PermissionDenied(_) => anyhow!(
            "tessera-agent at {addr} has no identity for this process (uid {uid}): no registration entry \
             matches it; an admin can add one with `tessera entry create --client NAME --selector unix:uid:{uid}` ({err})"
        ),
        WorkloadApiError::Transport(TransportError::Connect(_)) => unreachable(),
        WorkloadApiError::Transport(TransportError::Status(s))
            if s.code() == GrpcStatusCode::Unavailable =>
        {
            unreachable()
        }
        _ => anyhow!("fetching X.509-SVIDs from {addr} failed: {err}"),
    }
}

/// The displayable facts of a fetched context.
fn summarize(context: &X509Context) -> (Vec<FetchedSvid>, Vec<FetchedBundle>) {
    let svids = context
        .svids()
        .iter()
        .map(|svid| {
            let leaf = CertSummary::parse(svid.leaf().as_bytes()).ok();
            FetchedSvid {
                spiffe_id: svid.spiffe_id().to_string(),
                hint: svid.hint().map(str::to_owned),
                serial_hex: leaf
                    .as_ref()
                    .map_or_else(|| "?".to_owned(), |l| l.serial_hex.clone()),
                not_after_unix: leaf.as_ref().map_or(0, |l| l.not_after_unix),
                chain_len: svid.cert_chain().len(),
            }
        })
        .collect();
    let mut bundles: Vec<FetchedBundle> = context
        .bundle_set()
        .iter()
        .map(|(td, bundle)| FetchedBundle {
            trust_domain: td.to_string(),
            authorities: bundle.authorities().len(),
        })
        .collect();
    bundles.sort_by(|a, b| a.trust_domain.cmp(&b.trust_domain));
    (svids, bundles)
}

/// The fetch report as text or JSON.
pub fn render_fetch(
    svids: &[FetchedSvid],
    bundles: &[FetchedBundle],
    written: &[PathBuf],
    format: OutputFormat,
    now: i64,
) -> String {
    match format {
        OutputFormat::Json => output::json(&json!({
            "svids": svids.iter().map(|s| json!({
                "spiffe_id": s.spiffe_id,
                "kind": kind_of(&s.spiffe_id),
                "hint": s.hint,
                "serial": s.serial_hex,
                "not_after": output::rfc3339(s.not_after_unix),
                "expires_in_secs": s.not_after_unix - now,
                "chain_len": s.chain_len,
            })).collect::<Vec<_>>(),
            "bundles": bundles.iter().map(|b| json!({
                "trust_domain": b.trust_domain,
                "authorities": b.authorities,
            })).collect::<Vec<_>>(),
            "written": written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        })),
        OutputFormat::Text => {
            let mut text = String::new();
            for (i, s) in svids.iter().enumerate() {
                let title = if i == 0 { " (default)" } else { "" };
                text.push_str(&format!("SVID {i}{title}\n"));
                text.push_str(&output::kv(
                    2,
                    &[
                        ("spiffe id", s.spiffe_id.clone()),
                        ("kind", kind_of(&s.spiffe_id).to_owned()),
                        (
                            "hint",
                            s.hint.clone().unwrap_or_else(|| "(none)".to_owned()),
                        ),
                        ("serial", s.serial_hex.clone()),
                        (
                            "expires",
                            format!(
                                "{} ({})",
                                output::rfc3339(s.not_after_unix),
                                output::expiry(s.not_after_unix, now)
                            ),
                        ),
                    ],
                ));
                text.push('\n');
            }
            let domains: Vec<String> = bundles
                .iter()
                .map(|b| format!("{} ({} CA)", b.trust_domain, b.authorities))
                .collect();
            text.push_str(&format!("bundle trust domains: {}\n", domains.join(", ")));
            if !written.is_empty() {
                text.push_str("written:\n");
                for path in written {
                    text.push_str(&format!("  {}\n", path.display()));
                }
            }
            text
        }
    }
}

fn kind_of(spiffe_id: &str) -> &'static str {
    spiffe_id
        .parse::<TesseraId>()
        .map_or("not a Tessera id", |id| id_parts(&id).0)
}

// === writing files ===

/// Writes `svid.N.pem`, `svid.N.key` and `bundle.N.pem` for every SVID into `dir`.
fn write_files(dir: &Path, context: &X509Context) -> anyhow::Result<Vec<PathBuf>> {
    ensure_private_dir(dir)?;
    let mut written = Vec::new();
    for (i, svid) in context.svids().iter().enumerate() {
        let trust_domain = svid.spiffe_id().trust_domain();
        let bundle = context.bundle_set().get(trust_domain).with_context(|| {
            format!("the Workload API sent no bundle for trust domain {trust_domain}")
        })?;
        let chain: Vec<&[u8]> = svid.cert_chain().iter().map(|c| c.as_bytes()).collect();
        let cas: Vec<&[u8]> = bundle.authorities().iter().map(|c| c.as_bytes()).collect();
        let (chain_name, key_name, bundle_name) = (
            format!("svid.{i}.pem"),
            format!("svid.{i}.key"),
            format!("bundle.{i}.pem"),
        );
        written.extend(write_svid_files(
            dir,
            SvidFileNames {
                chain: &chain_name,
                key: &key_name,
                bundle: &bundle_name,
            },
            &chain,
            svid.private_key().as_bytes(),
            &cas,
        )?);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_addr_accepts_unix_uris_and_absolute_paths() {
        assert_eq!(
            workload_addr("unix:///run/tessera/workload.sock").unwrap(),
            "unix:///run/tessera/workload.sock"
        );
        assert_eq!(
            workload_addr("unix:/tmp/w.sock").unwrap(),
            "unix:///tmp/w.sock"
        );
        assert_eq!(workload_addr("/tmp/w.sock").unwrap(), "unix:///tmp/w.sock");
    }

    #[test]
    fn workload_addr_refuses_relative_paths_and_other_schemes() {
        for bad in [
            "w.sock",
            "unix://host/w.sock",
            "tcp://127.0.0.1:8081",
            "unix:///",
            "",
        ] {
            let err = workload_addr(bad).unwrap_err();
            assert!(
                err.contains("expected unix:///absolute/path"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn fetch_text_lists_ids_hints_and_trust_domains() {
        let svids = [
            FetchedSvid {
                spiffe_id: "spiffe://example.org/client/demo".into(),
                hint: None,
                serial_hex: "0a".into(),
                not_after_unix: 1_000 + 3_600,
                chain_len: 2,
            },
            FetchedSvid {
                spiffe_id: "spiffe://example.org/client/demo/task/01JB8X4Q6V3M2N7P5R9T0W1Y2Z"
                    .into(),
                hint: Some("01JB8X4Q6V3M2N7P5R9T0W1Y2Z".into()),
                serial_hex: "0b".into(),
                not_after_unix: 1_000 + 300,
                chain_len: 2,
            },
        ];
        let bundles = [FetchedBundle {
            trust_domain: "example.org".into(),
            authorities: 1,
        }];
        let text = render_fetch(&svids, &bundles, &[], OutputFormat::Text, 1_000);
        assert!(text.starts_with("SVID 0 (default)\n  spiffe id:  spiffe://example.org/client/demo\n  kind:       client\n"), "{text}");
        assert!(
            text.contains("  hint:       01JB8X4Q6V3M2N7P5R9T0W1Y2Z\n"),
            "{text}"
        );
        assert!(text.contains("  kind:       task\n"), "{text}");
        assert!(text.contains("(expires in 5m)"), "{text}");
        assert!(
            text.contains("bundle trust domains: example.org (1 CA)"),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&render_fetch(
            &svids,
            &bundles,
            &[],
            OutputFormat::Json,
            1_000,
        ))
        .unwrap();
        assert_eq!(json["svids"][1]["hint"], "01JB8X4Q6V3M2N7P5R9T0W1Y2Z");
        assert_eq!(json["svids"][0]["expires_in_secs"], 3_600);
    }

    #[test]
    fn write_files_lays_out_chain_key_and_bundle_like_spire() {
        use std::fs;
        use std::os::unix::fs::PermissionsExt;
        use std::sync::Arc;

        use spiffe::{X509Bundle, X509BundleSet, X509Svid};

        use tessera_testca::Ca;

        let ca = Ca::unnamed_root("Test CA");
        let leaf = ca.leaf("spiffe://example.org/client/demo").mint();
        let svid = X509Svid::parse_from_der(leaf.leaf(), leaf.key.secret_der()).unwrap();
        let td = svid.spiffe_id().trust_domain().clone();
        let mut bundles = X509BundleSet::new();
        bundles.add_bundle(X509Bundle::from_x509_authorities(td, &[ca.cert().as_ref()]).unwrap());
        let context = X509Context::new([Arc::new(svid)], bundles);

        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("svid");
        let written = write_files(&dir, &context).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["svid.0.pem", "svid.0.key", "bundle.0.pem"]);

        let mode = |name: &str| fs::metadata(dir.join(name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("svid.0.key"), 0o600);
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );

        let chain = pem::parse_many(fs::read(dir.join("svid.0.pem")).unwrap()).unwrap();
        assert_eq!(chain.len(), 1);
        assert_eq!(chain[0].contents(), leaf.leaf().as_ref());
        let key_text = fs::read_to_string(dir.join("svid.0.key")).unwrap();
        assert!(
            key_text.starts_with("-----BEGIN PRIVATE KEY-----\n"),
            "LF line endings"
        );
        assert_eq!(
            pem::parse(&key_text).unwrap().contents(),
            leaf.key.secret_der()
        );
        let bundle = pem::parse_many(fs::read(dir.join("bundle.0.pem")).unwrap()).unwrap();
        assert_eq!(bundle[0].contents(), ca.cert().as_ref());
    }

    #[tokio::test]
    async fn fetch_from_a_missing_socket_says_the_agent_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("workload.sock");
        let args = FetchArgs {
            write: None,
            timeout: Duration::from_secs(5),
        };
        let err = fetch(&args, &socket.display().to_string(), OutputFormat::Text)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot reach the Workload API at unix://"),
            "{err}"
        );
    }
}

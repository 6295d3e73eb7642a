//! `tessera svid inspect`: what a certificate file says about an identity, and whether it
//! passes Tessera's X.509-SVID profile.
//!
//! The profile verdict comes from `tessera_identity::check_leaf_svid`, the same check the
//! agent and verifiers run. Everything else is read with x509-parser independently, so a
//! certificate that fails the profile still shows its names, serial, validity and chain.
//! Nothing here verifies signatures or trust: this is a lens, not a verifier.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde_json::{Value, json};
use tessera_identity::{LeafSvid, TaskClaims, TesseraId, check_leaf_svid};

use crate::cert::{CertSummary, id_parts, read_chain};
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

#[cfg(test)]
mod tests;

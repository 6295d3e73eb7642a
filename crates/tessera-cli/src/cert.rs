//! Certificate files and what a certificate says about an identity: shared by
//! `svid inspect`, `svid fetch`, `status` and the task commands.

use std::path::Path;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tessera_identity::TesseraId;

use crate::output;

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

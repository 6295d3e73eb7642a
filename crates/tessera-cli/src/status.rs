//! `tessera status`: the agent's trust domain, version, entry count and trust bundle, and in
//! cluster mode its task events waiting for, or rejected by, the server.

use serde_json::json;
use tessera_proto::tessera::v1 as pb;

use crate::admin::Admin;
use crate::cert::{CertSummary, split_der};
use crate::output::{self, OutputFormat};

/// Help text shown after `tessera status --help`.
pub const EXAMPLES: &str = "\
Examples:
  tessera status
  tessera --admin-socket /var/run/tessera/admin.sock status --output json | jq .trust_domain";

/// Runs `tessera status`.
pub async fn run(admin: &mut Admin, format: OutputFormat) -> anyhow::Result<String> {
    let status = admin.status().await?;
    Ok(render(&status, format, output::now_unix()))
}

/// The status as text or JSON; `now` decides the "expires in" wording.
pub fn render(status: &pb::Status, format: OutputFormat, now: i64) -> String {
    let cas: Vec<Result<CertSummary, String>> = split_der(&status.bundle)
        .into_iter()
        .map(|der| CertSummary::parse(&der))
        .collect();
    match format {
        OutputFormat::Json => output::json(&json!({
            "trust_domain": status.trust_domain,
            "version": status.version,
            "entries": status.entries,
            "task_events_journaled": status.task_events_journaled,
            "task_events_rejected": status.task_events_rejected,
            "bundle": cas.iter().map(|ca| match ca {
                Ok(ca) => ca.to_json(),
                Err(err) => json!({ "error": err }),
            }).collect::<Vec<_>>(),
        })),
        OutputFormat::Text => {
            let mut fields = vec![
                ("trust domain", status.trust_domain.clone()),
                ("version", status.version.clone()),
                ("entries", status.entries.to_string()),
            ];
            // Zero on a standalone agent, and on a cluster-mode one with nothing pending:
            // shown only when there is something to look at.
            if status.task_events_journaled > 0 {
                fields.push((
                    "task events journaled",
                    status.task_events_journaled.to_string(),
                ));
            }
            if status.task_events_rejected > 0 {
                fields.push((
                    "task events rejected",
                    format!(
                        "{} (rejected by the server for good; see the agent's log)",
                        status.task_events_rejected
                    ),
                ));
            }
            fields.push(("bundle", format!("{} CA certificate(s)", cas.len())));
            let mut text = output::kv(0, &fields);
            for (i, ca) in cas.iter().enumerate() {
                match ca {
                    Ok(ca) => {
                        text.push_str(&format!("  [{i}] {}\n", ca.subject));
                        text.push_str(&output::kv(
                            6,
                            &[
                                ("serial", ca.serial_hex.clone()),
                                (
                                    "not after",
                                    format!(
                                        "{} ({})",
                                        output::rfc3339(ca.not_after_unix),
                                        output::expiry(ca.not_after_unix, now)
                                    ),
                                ),
                            ],
                        ));
                    }
                    Err(err) => text.push_str(&format!("  [{i}] unreadable certificate: {err}\n")),
                }
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_testca::Ca;

    #[test]
    fn status_lists_each_ca_of_the_bundle() {
        let ca = Ca::unnamed_root("Test CA");
        let mut bundle = ca.cert().to_vec();
        bundle.extend_from_slice(ca.cert());
        let status = pb::Status {
            trust_domain: "example.org".into(),
            version: "0.1.0".into(),
            bundle,
            entries: 2,
            ..Default::default()
        };
        let text = render(&status, OutputFormat::Text, output::now_unix());
        assert!(text.contains("trust domain:  example.org"), "{text}");
        assert!(!text.contains("task events"), "{text}");
        assert!(text.contains("2 CA certificate(s)"), "{text}");
        assert!(text.contains("[1] CN=Test CA"), "{text}");
        let json: serde_json::Value =
            serde_json::from_str(&render(&status, OutputFormat::Json, 0)).unwrap();
        assert_eq!(json["bundle"].as_array().unwrap().len(), 2);
        assert_eq!(json["entries"], 2);
        assert_eq!(json["task_events_rejected"], 0);
    }

    #[test]
    fn rejected_task_events_are_shown_when_there_are_some() {
        let status = pb::Status {
            trust_domain: "example.org".into(),
            task_events_journaled: 4,
            task_events_rejected: 2,
            ..Default::default()
        };
        let text = render(&status, OutputFormat::Text, 0);
        assert!(text.contains("task events journaled:"), "{text}");
        assert!(text.contains("task events rejected:"), "{text}");
        assert!(text.contains("2 (rejected by the server"), "{text}");
        let json: serde_json::Value =
            serde_json::from_str(&render(&status, OutputFormat::Json, 0)).unwrap();
        assert_eq!(json["task_events_rejected"], 2);
        assert_eq!(json["task_events_journaled"], 4);
    }
}

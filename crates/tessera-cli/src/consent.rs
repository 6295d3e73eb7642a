//! `tessera consent`: consent records, which let a client act for a subject on one MCP
//! server with a set of scopes until they expire or are withdrawn.

use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::json;
use tessera_identity::{ClientName, Scope, ServerName};
use tessera_proto::tessera::v1 as pb;

use crate::admin::Admin;
use crate::args::{Checked, Validate, check_scope_servers, parse_expires, parse_subject};
use crate::duration::parse_ttl;
use crate::output::{self, OutputFormat, Table};

const GRANT_EXAMPLES: &str = "\
Examples:
  # alice lets code-reviewer read pull requests on the github MCP server for 8 hours:
  tessera consent grant --client code-reviewer --subject alice@acme.corp \\
      --server github --scope github/tool/get_pull_request --scope github/tool/list_* \\
      --ttl 8h

  # Until a fixed time:
  tessera consent grant --client code-reviewer --subject alice@acme.corp \\
      --server docs --scope 'docs/resource/file:///handbook/*' \\
      --expires 2025-07-01T18:00:00Z

Scopes are <server>/<kind>/<pattern> with kind tool, resource or prompt; a pattern may end
in `*`. Every scope must be for --server: grant one consent per server. A task of the client
may then request any subset of these scopes for this subject.";

const LIST_EXAMPLES: &str = "\
Examples:
  tessera consent list
  tessera consent list --client code-reviewer --all
  tessera consent list --output json | jq -r '.[] | select(.state == \"active\") | .id'";

const SHOW_EXAMPLES: &str = "\
Examples:
  tessera consent show 01JB8X4Q6V3M2N7P5R9T0W1Y2Z";

const WITHDRAW_EXAMPLES: &str = "\
Examples:
  tessera consent withdraw 01JB8X4Q6V3M2N7P5R9T0W1Y2Z

Every live task that relies on the consent ends at once: its SVID is revoked and MCP
servers refuse its very next call. The ids of those tasks are printed.";

/// `tessera consent …`.
#[derive(Debug, Subcommand)]
pub enum ConsentCommand {
    /// Let a client use scopes on one MCP server on behalf of a subject, until an expiry.
    #[command(after_long_help = GRANT_EXAMPLES)]
    Grant(Checked<GrantArgs>),
    /// List consent records (in force only, unless --all).
    #[command(after_long_help = LIST_EXAMPLES)]
    List {
        /// Only consents for this client.
        #[arg(long, value_name = "NAME")]
        client: Option<ClientName>,
        /// Include withdrawn consents.
        #[arg(long)]
        all: bool,
    },
    /// Show one consent record.
    #[command(after_long_help = SHOW_EXAMPLES)]
    Show {
        /// The consent's id, as printed by `tessera consent list`.
        id: String,
    },
    /// Withdraw a consent and end every task that relies on it.
    #[command(after_long_help = WITHDRAW_EXAMPLES)]
    Withdraw {
        /// The consent's id, as printed by `tessera consent list`.
        id: String,
    },
}

/// Arguments of `tessera consent grant`.
#[derive(Debug, Clone, Args)]
pub struct GrantArgs {
    /// The client (agent runtime) the consent is for: the last segment of
    /// spiffe://<td>/client/<NAME>.
    #[arg(long, value_name = "NAME")]
    pub client: ClientName,

    /// On whose behalf the client acts: the human who consents, e.g. alice@acme.corp.
    #[arg(long, value_name = "SUBJECT", value_parser = parse_subject)]
    pub subject: String,

    /// The MCP server name: the last segment of spiffe://<td>/mcp/<NAME>.
    #[arg(long, value_name = "NAME")]
    pub server: ServerName,

    /// A scope, <server>/<kind>/<pattern> (kind: tool, resource, prompt; pattern may end in
    /// `*`); repeat for more. Each must be for --server.
    #[arg(long = "scope", value_name = "SCOPE", required = true)]
    pub scopes: Vec<Scope>,

    /// When the consent expires.
    #[command(flatten)]
    pub expiry: Expiry,
}

/// `--ttl` or `--expires`: exactly one.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct Expiry {
    /// The consent expires this long from now, e.g. 8h or 30d.
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    pub ttl: Option<Duration>,

    /// The consent expires at this time, RFC 3339, e.g. 2025-07-01T18:00:00Z.
    #[arg(long, value_name = "TIME", value_parser = parse_expires)]
    pub expires: Option<i64>,
}

impl Validate for GrantArgs {
    fn validate(&self) -> Result<(), String> {
        check_scope_servers(&self.server, &self.scopes)
    }
}

/// Runs `tessera consent …`.
pub async fn run(
    admin: &mut Admin,
    command: ConsentCommand,
    format: OutputFormat,
) -> anyhow::Result<String> {
    let now = output::now_unix();
    match command {
        ConsentCommand::Grant(Checked(args)) => {
            let consent = admin.grant_consent(grant_request(&args)?).await?;
            Ok(render_consent(&consent, format, now))
        }
        ConsentCommand::List { client, all } => {
            let client = client.map(|c| c.to_string()).unwrap_or_default();
            let consents = admin.list_consents(client, all).await?;
            Ok(render_list(&consents, format, now))
        }
        ConsentCommand::Show { id } => match admin.get_consent(&id).await? {
            Some(consent) => Ok(render_consent(&consent, format, now)),
            None => bail!(not_found(&id)),
        },
        ConsentCommand::Withdraw { id } => match admin.withdraw_consent(&id).await? {
            Some(withdrawn) => Ok(render_withdrawn(&withdrawn, format, now)),
            None => bail!(not_found(&id)),
        },
    }
}

/// The `GrantConsent` request for parsed arguments.
pub fn grant_request(args: &GrantArgs) -> anyhow::Result<pb::GrantConsentRequest> {
    let (expires_at_unix, ttl_secs) = match (args.expiry.ttl, args.expiry.expires) {
        // `parse_ttl` already bounded it to u32 seconds.
        (Some(ttl), _) => (0, u32::try_from(ttl.as_secs())?),
        (None, Some(at)) => (at, 0),
        (None, None) => bail!("give --ttl or --expires"),
    };
    Ok(pb::GrantConsentRequest {
        client: args.client.to_string(),
        subject: args.subject.clone(),
        server: args.server.to_string(),
        scopes: args.scopes.iter().map(ToString::to_string).collect(),
        expires_at_unix,
        ttl_secs,
    })
}

fn not_found(id: &str) -> String {
    format!("no consent with id {id:?}; `tessera consent list --all` shows the existing ones")
}

/// `active`, `expired` or `withdrawn`.
pub fn state(consent: &pb::Consent, now: i64) -> &'static str {
    if consent.withdrawn_at_unix != 0 {
        "withdrawn"
    } else if consent.expires_at_unix <= now {
        "expired"
    } else {
        "active"
    }
}

/// A consent as JSON.
pub fn consent_json(consent: &pb::Consent, now: i64) -> serde_json::Value {
    json!({
        "id": consent.id,
        "client": consent.client,
        "subject": consent.subject,
        "server": consent.server,
        "scopes": consent.scopes,
        "expires_at": output::rfc3339(consent.expires_at_unix),
        "granted_by": consent.granted_by,
        "granted_at": output::rfc3339(consent.granted_at_unix),
        "withdrawn_at": (consent.withdrawn_at_unix != 0)
            .then(|| output::rfc3339(consent.withdrawn_at_unix)),
        "state": state(consent, now),
    })
}

fn consent_pairs(consent: &pb::Consent, now: i64) -> Vec<(&'static str, String)> {
    let state = match state(consent, now) {
        "withdrawn" => format!(
            "withdrawn at {}",
            output::rfc3339(consent.withdrawn_at_unix)
        ),
        other => other.to_owned(),
    };
    vec![
        ("id", consent.id.clone()),
        ("client", consent.client.clone()),
        ("subject", consent.subject.clone()),
        ("server", consent.server.clone()),
        ("scopes", consent.scopes.join("\n")),
        (
            "expires",
            format!(
                "{} ({})",
                output::rfc3339(consent.expires_at_unix),
                output::expiry(consent.expires_at_unix, now)
            ),
        ),
        ("granted by", consent.granted_by.clone()),
        ("granted", output::rfc3339(consent.granted_at_unix)),
        ("state", state),
    ]
}

/// One consent: a key/value block in text, an object in JSON.
pub fn render_consent(consent: &pb::Consent, format: OutputFormat, now: i64) -> String {
    match format {
        OutputFormat::Json => output::json(&consent_json(consent, now)),
        OutputFormat::Text => output::kv(0, &consent_pairs(consent, now)),
    }
}

/// A withdrawn consent and the tasks that ended with it.
pub fn render_withdrawn(
    withdrawn: &pb::WithdrawConsentResponse,
    format: OutputFormat,
    now: i64,
) -> String {
    let consent = withdrawn.consent.clone().unwrap_or_default();
    match format {
        OutputFormat::Json => output::json(&json!({
            "consent": consent_json(&consent, now),
            "ended_tasks": withdrawn.ended_tasks,
        })),
        OutputFormat::Text => {
            let mut pairs = consent_pairs(&consent, now);
            pairs.push((
                "ended tasks",
                if withdrawn.ended_tasks.is_empty() {
                    "(none)".to_owned()
                } else {
                    withdrawn.ended_tasks.join("\n")
                },
            ));
            output::kv(0, &pairs)
        }
    }
}

/// Consents: a table in text, an array in JSON.
pub fn render_list(consents: &[pb::Consent], format: OutputFormat, now: i64) -> String {
    match format {
        OutputFormat::Json => output::json(&serde_json::Value::Array(
            consents.iter().map(|c| consent_json(c, now)).collect(),
        )),
        OutputFormat::Text if consents.is_empty() => {
            "no consents; grant one with `tessera consent \
             grant --client NAME --subject WHO --server NAME --scope SCOPE --ttl 8h`\n"
                .to_owned()
        }
        OutputFormat::Text => {
            let mut table = Table::new([
                "ID", "CLIENT", "SUBJECT", "SERVER", "STATE", "EXPIRES", "SCOPES",
            ]);
            for consent in consents {
                table.row(vec![
                    consent.id.clone(),
                    consent.client.clone(),
                    consent.subject.clone(),
                    consent.server.clone(),
                    state(consent, now).to_owned(),
                    output::deadline(consent.expires_at_unix, now),
                    consent.scopes.join(","),
                ]);
            }
            table.render()
        }
    }
}

#[cfg(test)]
mod tests;

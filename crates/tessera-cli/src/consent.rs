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
mod tests {
    use clap::Parser;

    use super::*;
    use crate::admin::testing::{Mock, serve};
    use crate::cli::{Cli, Command};

    const NOW: i64 = 1_750_000_000;

    fn sample() -> pb::Consent {
        pb::Consent {
            id: "01JB8X4Q6V3M2N7P5R9T0W1Y2Z".into(),
            client: "code-reviewer".into(),
            subject: "alice@acme.corp".into(),
            server: "github".into(),
            scopes: vec![
                "github/tool/get_pull_request".into(),
                "github/tool/list_*".into(),
            ],
            expires_at_unix: NOW + 8 * 3_600,
            granted_by: "uid:0".into(),
            granted_at_unix: NOW,
            withdrawn_at_unix: 0,
        }
    }

    fn command(args: &[&str]) -> ConsentCommand {
        let cli = Cli::try_parse_from(
            ["tessera", "consent"]
                .into_iter()
                .chain(args.iter().copied()),
        )
        .unwrap();
        let Command::Consent(command) = cli.command else {
            panic!()
        };
        command
    }

    #[test]
    fn consent_text_shows_every_fact() {
        let text = render_consent(&sample(), OutputFormat::Text, NOW);
        assert_eq!(
            text,
            "id:          01JB8X4Q6V3M2N7P5R9T0W1Y2Z\n\
             client:      code-reviewer\n\
             subject:     alice@acme.corp\n\
             server:      github\n\
             scopes:      github/tool/get_pull_request\n\
             \x20            github/tool/list_*\n\
             expires:     2025-06-15T23:06:40Z (expires in 8h)\n\
             granted by:  uid:0\n\
             granted:     2025-06-15T15:06:40Z\n\
             state:       active\n"
        );
    }

    #[test]
    fn consent_json_and_states() {
        let mut consent = sample();
        let value: serde_json::Value =
            serde_json::from_str(&render_consent(&consent, OutputFormat::Json, NOW)).unwrap();
        assert_eq!(value["state"], "active");
        assert_eq!(value["withdrawn_at"], serde_json::Value::Null);
        assert_eq!(value["scopes"][1], "github/tool/list_*");
        assert_eq!(value["granted_by"], "uid:0");
        assert_eq!(state(&consent, NOW + 9 * 3_600), "expired");
        consent.withdrawn_at_unix = NOW + 60;
        assert_eq!(state(&consent, NOW), "withdrawn");
        let text = render_consent(&consent, OutputFormat::Text, NOW);
        assert!(
            text.contains("state:       withdrawn at 2025-06-15T15:07:40Z"),
            "{text}"
        );
    }

    #[test]
    fn list_is_a_table_with_state_and_relative_expiry() {
        let mut old = sample();
        old.id = "01OLD".into();
        old.withdrawn_at_unix = NOW - 10;
        let text = render_list(&[sample(), old], OutputFormat::Text, NOW);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("ID  "), "{text}");
        assert!(lines[0].ends_with("STATE      EXPIRES  SCOPES"), "{text}");
        assert!(
            lines[1]
                .contains("  active     in 8h    github/tool/get_pull_request,github/tool/list_*"),
            "{text}"
        );
        assert!(lines[2].contains("  withdrawn  in 8h"), "{text}");
        assert!(render_list(&[], OutputFormat::Text, NOW).contains("tessera consent grant"));
        assert_eq!(render_list(&[], OutputFormat::Json, NOW), "[]\n");
    }

    #[test]
    fn grant_request_sends_ttl_or_absolute_expiry() {
        let Checked(args) = match command(&[
            "grant",
            "--client",
            "demo",
            "--subject",
            "alice",
            "--server",
            "github",
            "--scope",
            "github/tool/*",
            "--ttl",
            "8h",
        ]) {
            ConsentCommand::Grant(args) => args,
            other => panic!("{other:?}"),
        };
        let req = grant_request(&args).unwrap();
        assert_eq!((req.ttl_secs, req.expires_at_unix), (28_800, 0));
        assert_eq!(req.scopes, ["github/tool/*"]);
        let Checked(args) = match command(&[
            "grant",
            "--client",
            "demo",
            "--subject",
            "alice",
            "--server",
            "github",
            "--scope",
            "github/tool/*",
            "--expires",
            "2099-01-01T00:00:00Z",
        ]) {
            ConsentCommand::Grant(args) => args,
            other => panic!("{other:?}"),
        };
        let req = grant_request(&args).unwrap();
        assert_eq!((req.ttl_secs, req.expires_at_unix), (0, 4_070_908_800));
    }

    #[tokio::test]
    async fn grant_list_show_withdraw_against_an_agent() {
        let mock = Mock::default();
        let (_dir, socket) = serve(mock.clone()).await;
        let mut admin = Admin::connect(&socket).await.unwrap();

        let granted = run(
            &mut admin,
            command(&[
                "grant",
                "--client",
                "demo",
                "--subject",
                "alice@acme.corp",
                "--server",
                "github",
                "--scope",
                "github/tool/get_pull_request",
                "--scope",
                "github/prompt/review",
                "--ttl",
                "8h",
            ]),
            OutputFormat::Json,
        )
        .await
        .unwrap();
        let granted: serde_json::Value = serde_json::from_str(&granted).unwrap();
        let id = granted["id"].as_str().unwrap().to_owned();
        assert_eq!(granted["client"], "demo");
        assert_eq!(granted["scopes"][1], "github/prompt/review");
        assert_eq!(granted["state"], "active");
        assert_eq!(granted["granted_by"], "uid:0");

        // Two tasks rely on it, one of another consent.
        {
            let mut state = mock.0.lock().unwrap();
            for (task, consent) in [
                ("01T1", id.as_str()),
                ("01T2", id.as_str()),
                ("01T3", "other"),
            ] {
                state.tasks.push(pb::Task {
                    id: task.into(),
                    consent_id: consent.into(),
                    ..pb::Task::default()
                });
            }
        }

        let shown = run(&mut admin, command(&["show", &id]), OutputFormat::Text)
            .await
            .unwrap();
        assert!(
            shown.starts_with(&format!("id:          {id}\n")),
            "{shown}"
        );
        assert!(
            shown.contains("expires in 8h") || shown.contains("expires in 7h 59m"),
            "{shown}"
        );
        let listed = run(
            &mut admin,
            command(&["list", "--client", "demo"]),
            OutputFormat::Text,
        )
        .await
        .unwrap();
        assert!(listed.lines().nth(1).unwrap().starts_with(&id), "{listed}");
        let listed = run(
            &mut admin,
            command(&["list", "--client", "other"]),
            OutputFormat::Json,
        )
        .await
        .unwrap();
        assert_eq!(listed, "[]\n");

        let withdrawn = run(&mut admin, command(&["withdraw", &id]), OutputFormat::Text)
            .await
            .unwrap();
        assert!(
            withdrawn.contains("state:        withdrawn at "),
            "{withdrawn}"
        );
        assert!(
            withdrawn.ends_with("ended tasks:  01T1\n              01T2\n"),
            "{withdrawn}"
        );
        // Withdrawn consents are hidden unless --all.
        let listed = run(&mut admin, command(&["list"]), OutputFormat::Json)
            .await
            .unwrap();
        assert_eq!(listed, "[]\n");
        let listed = run(&mut admin, command(&["list", "--all"]), OutputFormat::Json)
            .await
            .unwrap();
        let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
        assert_eq!(listed[0]["state"], "withdrawn");

        let again = run(&mut admin, command(&["withdraw", &id]), OutputFormat::Json)
            .await
            .unwrap();
        let again: serde_json::Value = serde_json::from_str(&again).unwrap();
        assert_eq!(again["ended_tasks"], serde_json::json!([]));

        for missing in [["show", "01NOPE"], ["withdraw", "01NOPE"]] {
            let err = run(&mut admin, command(&missing), OutputFormat::Text)
                .await
                .unwrap_err();
            assert!(
                err.to_string().starts_with("no consent with id \"01NOPE\""),
                "{err}"
            );
        }
    }
}

//! `tessera entry`: registration entries, which map attested selectors to a client identity.

use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::json;
use tessera_identity::{ClientName, ServerName};
use tessera_proto::tessera::v1 as pb;

use crate::admin::Admin;
use crate::duration::{format_secs, parse_ttl};
use crate::output::{self, OutputFormat, Table};

const CREATE_EXAMPLES: &str = "\
Examples:
  # uid 1001 running exactly /opt/cr becomes spiffe://<td>/client/code-reviewer:
  tessera entry create --client code-reviewer \\
      --selector unix:uid:1001 \\
      --selector unix:sha256:$(sha256sum /opt/cr | cut -d' ' -f1) \\
      --svid-ttl 30m

  # On Kubernetes, by namespace and service account:
  tessera entry create --client code-reviewer \\
      --selector k8s:ns:agents --selector k8s:sa:code-reviewer

A caller gets the identity only if it matches every selector of the entry.";

const LIST_EXAMPLES: &str = "\
Examples:
  tessera entry list
  tessera entry list --output json | jq -r '.[].id'";

const SHOW_EXAMPLES: &str = "\
Examples:
  tessera entry show 01JB8X4Q6V3M2N7P5R9T0W1Y2Z";

const DELETE_EXAMPLES: &str = "\
Examples:
  tessera entry delete 01JB8X4Q6V3M2N7P5R9T0W1Y2Z

Workloads matched only by this entry get no new SVIDs; SVIDs already issued stay valid
until they expire.";

/// `tessera entry …`.
#[derive(Debug, Subcommand)]
pub enum EntryCommand {
    /// Register a workload: selectors that a caller must all match to get a client identity.
    #[command(after_long_help = CREATE_EXAMPLES)]
    Create(CreateArgs),
    /// List every registration entry.
    #[command(after_long_help = LIST_EXAMPLES)]
    List,
    /// Show one registration entry.
    #[command(after_long_help = SHOW_EXAMPLES)]
    Show {
        /// The entry's id, as printed by `tessera entry list`.
        id: String,
    },
    /// Delete a registration entry; for a client entry, also end every live task of
    /// that client.
    #[command(after_long_help = DELETE_EXAMPLES)]
    Delete {
        /// The entry's id, as printed by `tessera entry list`.
        id: String,
    },
}

/// Arguments of `tessera entry create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The client name, the last segment of spiffe://<td>/client/<NAME>: 1 to 128 characters of
    /// [a-zA-Z0-9._-].
    #[arg(
        long,
        value_name = "NAME",
        required_unless_present = "server",
        conflicts_with = "server"
    )]
    pub client: Option<ClientName>,

    /// Register an MCP server instead: matching callers get spiffe://<td>/mcp/<NAME>.
    #[arg(long, value_name = "NAME")]
    pub server: Option<ServerName>,

    /// A selector the caller must match, as TYPE:VALUE; repeat for more (all must match).
    ///
    /// For example unix:uid:<uid>, unix:sha256:<sha256 of the executable, hex>,
    /// k8s:ns:<namespace>, k8s:sa:<service account>. The agent decides which types it knows
    /// and refuses the entry otherwise.
    #[arg(long = "selector", value_name = "TYPE:VALUE", required = true, value_parser = parse_selector)]
    pub selectors: Vec<String>,

    /// Lifetime of the client SVIDs issued for this entry, e.g. 30m or 1h; the agent's
    /// default when omitted.
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    pub svid_ttl: Option<Duration>,
}

/// Checks a selector's shape: `TYPE:VALUE`, no whitespace, and for `unix:sha256` a
/// SHA-256 in hex. The agent remains the judge of which selector types exist.
pub fn parse_selector(input: &str) -> Result<String, String> {
    let Some((kind, value)) = input.split_once(':') else {
        return Err(format!(
            "selector {input:?} has no colon; write TYPE:VALUE, e.g. unix:uid:1001 or k8s:ns:agents"
        ));
    };
    if kind.is_empty() || value.is_empty() {
        return Err(format!(
            "selector {input:?} needs both a type and a value, e.g. unix:uid:1001"
        ));
    }
    if let Some(hex) = input.strip_prefix("unix:sha256:") {
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "selector {input:?}: unix:sha256 takes the 64 hex digits of the executable's SHA-256 \
                 (the first field of `sha256sum FILE`)"
            ));
        }
        return Ok(format!("unix:sha256:{}", hex.to_ascii_lowercase()));
    }
    if input.chars().any(char::is_whitespace) {
        return Err(format!("selector {input:?} contains whitespace"));
    }
    Ok(input.to_owned())
}

/// Runs `tessera entry …`.
pub async fn run(
    admin: &mut Admin,
    command: EntryCommand,
    format: OutputFormat,
) -> anyhow::Result<String> {
    match command {
        EntryCommand::Create(args) => {
            let svid_ttl_secs = match args.svid_ttl {
                // `parse_ttl` already bounded it to u32 seconds.
                Some(ttl) => u32::try_from(ttl.as_secs())?,
                None => 0,
            };
            let entry = admin
                .create_entry(pb::CreateEntryRequest {
                    client: args.client.map(|c| c.to_string()).unwrap_or_default(),
                    server: args.server.map(|s| s.to_string()).unwrap_or_default(),
                    selectors: args.selectors,
                    svid_ttl_secs,
                })
                .await?;
            Ok(render_entry(&entry, format))
        }
        EntryCommand::List => {
            let entries = admin.list_entries().await?;
            Ok(render_list(&entries, format))
        }
        EntryCommand::Show { id } => match admin.get_entry(&id).await? {
            Some(entry) => Ok(render_entry(&entry, format)),
            None => bail!(not_found(&id)),
        },
        EntryCommand::Delete { id } => {
            let Some(ended) = admin.delete_entry(&id).await? else {
                bail!(not_found(&id));
            };
            Ok(match format {
                OutputFormat::Text if ended.is_empty() => format!("deleted entry {id}\n"),
                OutputFormat::Text => format!(
                    "deleted entry {id}; ended its client's tasks:\n{}\n",
                    ended.join("\n")
                ),
                OutputFormat::Json => {
                    output::json(&json!({ "id": id, "deleted": true, "ended_tasks": ended }))
                }
            })
        }
    }
}

fn not_found(id: &str) -> String {
    format!("no entry with id {id:?}; `tessera entry list` shows the existing ones")
}

/// An entry as JSON.
pub fn entry_json(entry: &pb::Entry) -> serde_json::Value {
    json!({
        "id": entry.id,
        "client": (!entry.client.is_empty()).then_some(&entry.client),
        "server": (!entry.server.is_empty()).then_some(&entry.server),
        "spiffe_id": entry.spiffe_id,
        "selectors": entry.selectors,
        "svid_ttl_secs": (entry.svid_ttl_secs != 0).then_some(entry.svid_ttl_secs),
        "created_at": output::rfc3339(entry.created_at_unix),
    })
}

fn ttl_text(entry: &pb::Entry) -> String {
    if entry.svid_ttl_secs == 0 {
        "agent default".to_owned()
    } else {
        format_secs(u64::from(entry.svid_ttl_secs))
    }
}

/// One entry: a key/value block in text, an object in JSON.
pub fn render_entry(entry: &pb::Entry, format: OutputFormat) -> String {
    match format {
        OutputFormat::Json => output::json(&entry_json(entry)),
        OutputFormat::Text => output::kv(
            0,
            &[
                ("id", entry.id.clone()),
                ("spiffe id", entry.spiffe_id.clone()),
                if entry.server.is_empty() {
                    ("client", entry.client.clone())
                } else {
                    ("server", entry.server.clone())
                },
                ("selectors", entry.selectors.join("\n")),
                ("svid ttl", ttl_text(entry)),
                ("created", output::rfc3339(entry.created_at_unix)),
            ],
        ),
    }
}

/// All entries: a table in text, an array in JSON.
pub fn render_list(entries: &[pb::Entry], format: OutputFormat) -> String {
    match format {
        OutputFormat::Json => output::json(&serde_json::Value::Array(
            entries.iter().map(entry_json).collect(),
        )),
        OutputFormat::Text if entries.is_empty() => {
            "no entries; add one with `tessera entry create --client NAME --selector TYPE:VALUE`\n"
                .to_owned()
        }
        OutputFormat::Text => {
            let mut table = Table::new(["ID", "SPIFFE ID", "TTL", "SELECTORS"]);
            for entry in entries {
                table.row(vec![
                    entry.id.clone(),
                    entry.spiffe_id.clone(),
                    if entry.svid_ttl_secs == 0 {
                        "default".to_owned()
                    } else {
                        format_secs(u64::from(entry.svid_ttl_secs))
                    },
                    entry.selectors.join(","),
                ]);
            }
            table.render()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> pb::Entry {
        pb::Entry {
            id: "01JB8X4Q6V3M2N7P5R9T0W1Y2Z".into(),
            client: "code-reviewer".into(),
            selectors: vec!["unix:uid:1001".into(), "unix:path:/opt/cr".into()],
            svid_ttl_secs: 1_800,
            created_at_unix: 0,
            spiffe_id: "spiffe://acme.corp/client/code-reviewer".into(),
            server: String::new(),
        }
    }

    #[test]
    fn selector_needs_type_and_value() {
        assert_eq!(parse_selector("unix:uid:1001").unwrap(), "unix:uid:1001");
        assert!(parse_selector("uid1001").unwrap_err().contains("no colon"));
        assert!(parse_selector(":1001").is_err());
        assert!(parse_selector("unix:").is_err());
        assert!(parse_selector("unix:path:/a b").is_err());
    }

    #[test]
    fn sha256_selector_must_be_64_hex_digits_and_is_lowercased() {
        let hex = "AB".repeat(32);
        assert_eq!(
            parse_selector(&format!("unix:sha256:{hex}")).unwrap(),
            format!("unix:sha256:{}", "ab".repeat(32))
        );
        let err = parse_selector("unix:sha256:abc  /usr/bin/x").unwrap_err();
        assert!(err.contains("64 hex digits"), "{err}");
    }

    #[test]
    fn entry_text_names_id_spiffe_id_and_every_selector() {
        let text = render_entry(&sample(), OutputFormat::Text);
        assert_eq!(
            text,
            "id:         01JB8X4Q6V3M2N7P5R9T0W1Y2Z\n\
             spiffe id:  spiffe://acme.corp/client/code-reviewer\n\
             client:     code-reviewer\n\
             selectors:  unix:uid:1001\n\
             \x20           unix:path:/opt/cr\n\
             svid ttl:   30m\n\
             created:    1970-01-01T00:00:00Z\n"
        );
    }

    #[test]
    fn entry_json_has_null_ttl_for_the_default() {
        let mut entry = sample();
        entry.svid_ttl_secs = 0;
        let value: serde_json::Value =
            serde_json::from_str(&render_entry(&entry, OutputFormat::Json)).unwrap();
        assert_eq!(value["svid_ttl_secs"], serde_json::Value::Null);
        assert_eq!(value["selectors"][1], "unix:path:/opt/cr");
    }

    #[test]
    fn list_is_an_aligned_table() {
        let mut other = sample();
        other.id = "01X".into();
        other.svid_ttl_secs = 0;
        let text = render_list(&[sample(), other], OutputFormat::Text);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ID                          SPIFFE ID"));
        assert!(lines[2].starts_with("01X                         spiffe://"));
        assert!(lines[1].ends_with("unix:uid:1001,unix:path:/opt/cr"));
        assert!(lines[2].contains("default"));
    }

    #[tokio::test]
    async fn create_show_list_delete_against_an_agent() {
        use crate::admin::testing::{Mock, serve};
        use crate::cli::{Cli, Command};
        use clap::Parser;

        let (_dir, socket) = serve(Mock::default()).await;
        let mut admin = Admin::connect(&socket).await.unwrap();
        let command = |args: &[&str]| {
            let cli =
                Cli::try_parse_from(["tessera", "entry"].into_iter().chain(args.iter().copied()))
                    .unwrap();
            let Command::Entry(command) = cli.command else {
                panic!()
            };
            command
        };

        let created = run(
            &mut admin,
            command(&[
                "create",
                "--client",
                "demo",
                "--selector",
                "unix:uid:1001",
                "--svid-ttl",
                "1h",
            ]),
            OutputFormat::Json,
        )
        .await
        .unwrap();
        let created: serde_json::Value = serde_json::from_str(&created).unwrap();
        let id = created["id"].as_str().unwrap().to_owned();
        assert_eq!(created["spiffe_id"], "spiffe://example.org/client/demo");
        assert_eq!(created["svid_ttl_secs"], 3_600);

        let shown = run(&mut admin, command(&["show", &id]), OutputFormat::Text)
            .await
            .unwrap();
        assert!(shown.contains("selectors:  unix:uid:1001"), "{shown}");
        let listed = run(&mut admin, command(&["list"]), OutputFormat::Text)
            .await
            .unwrap();
        assert!(listed.contains(&id), "{listed}");

        let deleted = run(&mut admin, command(&["delete", &id]), OutputFormat::Text)
            .await
            .unwrap();
        assert_eq!(deleted, format!("deleted entry {id}\n"));
        for again in [["show", id.as_str()], ["delete", id.as_str()]] {
            let err = run(&mut admin, command(&again), OutputFormat::Text)
                .await
                .unwrap_err();
            assert!(
                err.to_string()
                    .starts_with(&format!("no entry with id {id:?}")),
                "{err}"
            );
        }
    }

    #[test]
    fn empty_list_says_how_to_add_one() {
        assert!(render_list(&[], OutputFormat::Text).contains("tessera entry create"));
        assert_eq!(render_list(&[], OutputFormat::Json), "[]\n");
    }
}

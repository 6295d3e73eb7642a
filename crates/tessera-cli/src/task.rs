//! `tessera task`: tasks, each with its own short-lived SVID.
//!
//! `list` and `revoke` are admin commands on the admin socket (every client's tasks);
//! `begin`, `end` and `mine` speak the Tasks API on the workload socket as the calling
//! process, for agent runtimes driven by shell scripts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::json;
use tessera_identity::{ClientName, Scope};
use tessera_proto::tessera::v1 as pb;
use zeroize::Zeroizing;

use crate::admin::{Admin, AdminTarget};
use crate::args::{
    Checked, ServerArg, Validate, check_scope_servers, parse_purpose, parse_subject,
};
use crate::cert::split_der;
use crate::duration::parse_ttl;
use crate::files::{SvidFileNames, ensure_private_dir, write_svid_files};
use crate::output::{self, OutputFormat, Table};
use crate::tasks_api::TasksApi;

const LIST_EXAMPLES: &str = "\
Examples:
  sudo tessera task list
  sudo tessera task list --client code-reviewer --all
  sudo tessera task list --output json | jq -r '.[].id'

Talks to the admin socket and shows every client's tasks; a runtime sees its own with
`tessera task mine`.";

const REVOKE_EXAMPLES: &str = "\
Examples:
  sudo tessera task revoke 01JB8X4Q6V3M2N7P5R9T0W1Y2Z

The task's SVID is revoked at once and MCP servers refuse its very next call, even on an
open connection.";

const BEGIN_ABOUT: &str = "\
Begin a task as this process's client identity and get its SVID.

Talks to the Tasks API on the workload socket (--socket); no admin rights are needed: the
agent attests the calling process exactly as for `svid fetch`, and refuses the task unless a
live consent of that client for --subject and --server covers every --scope.

`tessera task begin` exits right away, so by default the task is bound to the process that
ran it (its parent: the shell script) instead of to `tessera` itself: the task ends when
that script exits, when its deadline passes, on `tessera task end`, or when the consent is
withdrawn. --no-bind-to-parent binds it to this short-lived process instead, which ends it
almost immediately; that is only useful for testing.

The task id is printed alone on the first line, then its SPIFFE ID, deadline and scopes.
The private key is never printed: use --write DIR, or pick the SVID from the Workload API
stream, where it appears with hint = task id.";

const BEGIN_EXAMPLES: &str = "\
Examples:
  # In the runtime's shell script:
  TASK=$(tessera task begin --server github --subject alice@acme.corp \\
      --scope github/tool/get_pull_request --purpose 'review PR 42' \\
      --lifetime 15m --write \"$HOME/.task-svid\" | head -1)
  curl --cert \"$HOME/.task-svid/svid.pem\" --key \"$HOME/.task-svid/key.pem\" \\
      --cacert \"$HOME/.task-svid/bundle.pem\" https://github-mcp.internal/mcp ...
  tessera task end \"$TASK\"

With --write DIR:
  svid.pem    the task SVID's certificate chain, leaf first
  key.pem     its private key, PKCS#8 PEM, created with mode 0600
  bundle.pem  the CA certificates of the trust domain
DIR is created with mode 0700 if missing.";

const END_EXAMPLES: &str = "\
Examples:
  tessera task end 01JB8X4Q6V3M2N7P5R9T0W1Y2Z

Ends one of this client's own tasks (workload socket); its SVID is revoked at once.";

const MINE_EXAMPLES: &str = "\
Examples:
  tessera task mine
  tessera task mine --all --output json

Lists this process's client's own tasks, live first (workload socket).";

/// `tessera task …`.
#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// List every client's tasks on this agent (admin socket; live only, unless --all).
    #[command(after_long_help = LIST_EXAMPLES)]
    List {
        /// Only tasks of this client.
        #[arg(long, value_name = "NAME")]
        client: Option<ClientName>,
        /// Include ended tasks.
        #[arg(long)]
        all: bool,
    },
    /// End any client's task as an administrator (admin socket).
    #[command(after_long_help = REVOKE_EXAMPLES)]
    Revoke {
        /// The task's id, as printed by `tessera task list`.
        id: String,
    },
    /// Begin a task as this process's client identity and get its SVID (workload socket).
    #[command(long_about = BEGIN_ABOUT, after_long_help = BEGIN_EXAMPLES)]
    Begin(Checked<BeginArgs>),
    /// End one of this client's own tasks (workload socket).
    #[command(after_long_help = END_EXAMPLES)]
    End {
        /// The task's id, as printed by `tessera task begin`.
        id: String,
    },
    /// List this client's own tasks (workload socket; live only, unless --all).
    #[command(after_long_help = MINE_EXAMPLES)]
    Mine {
        /// Include ended tasks.
        #[arg(long)]
        all: bool,
    },
}

/// Arguments of `tessera task begin`.
#[derive(Debug, Clone, Args)]
pub struct BeginArgs {
    /// The MCP server: its name (github) or SPIFFE ID (spiffe://<td>/mcp/github).
    #[arg(long, value_name = "SERVER")]
    pub server: ServerArg,

    /// A scope the task needs, <server>/<kind>/<pattern>; repeat for more. Each must be for
    /// --server and covered by a live consent.
    #[arg(long = "scope", value_name = "SCOPE", required = true)]
    pub scopes: Vec<Scope>,

    /// On whose behalf: the human the consent was granted for, e.g. alice@acme.corp.
    #[arg(long, value_name = "SUBJECT", value_parser = parse_subject)]
    pub subject: String,

    /// What the task is for, shown in the audit log and the SVID's claims.
    #[arg(long, value_name = "TEXT", default_value = "", hide_default_value = true, value_parser = parse_purpose)]
    pub purpose: String,

    /// How long the task may live, e.g. 15m; the agent's default when omitted. The agent
    /// caps it at the consent's expiry.
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    pub lifetime: Option<Duration>,

    /// Which client identity to act as, when this process has several.
    #[arg(long, value_name = "NAME")]
    pub client: Option<ClientName>,

    /// Write svid.pem, key.pem and bundle.pem into DIR (created with mode 0700).
    #[arg(long, value_name = "DIR")]
    pub write: Option<PathBuf>,

    /// Bind the task to this `tessera` process rather than to its parent (see above).
    #[arg(long)]
    pub no_bind_to_parent: bool,
}

impl Validate for BeginArgs {
    fn validate(&self) -> Result<(), String> {
        check_scope_servers(&self.server.name, &self.scopes)
    }
}

/// Runs `tessera task …`, connecting to the admin socket or the workload endpoint as the
/// subcommand needs.
pub async fn run(
    command: TaskCommand,
    admin: impl Into<AdminTarget>,
    socket: &str,
    format: OutputFormat,
) -> anyhow::Result<String> {
    let now = output::now_unix();
    let admin = admin.into();
    match command {
        TaskCommand::List { client, all } => {
            let mut admin = Admin::open(&admin).await?;
            let client = client.map(|c| c.to_string()).unwrap_or_default();
            let tasks = admin.list_all_tasks(client, all).await?;
            Ok(render_list(&tasks, format, now, all))
        }
        TaskCommand::Revoke { id } => {
            let mut admin = Admin::open(&admin).await?;
            match admin.revoke_task(&id).await? {
                Some(task) => Ok(render_task(&task, format, now)),
                None => bail!("no task with id {id:?}; `tessera task list --all` shows them"),
            }
        }
        TaskCommand::Begin(Checked(args)) => {
            let mut api = TasksApi::connect(socket).await?;
            begin(&mut api, &args, format).await
        }
        TaskCommand::End { id } => {
            let mut api = TasksApi::connect(socket).await?;
            let task = api.end(&id).await?;
            Ok(render_task(&task, format, now))
        }
        TaskCommand::Mine { all } => {
            let mut api = TasksApi::connect(socket).await?;
            let tasks = api.list(all).await?;
            Ok(render_list(&tasks, format, now, all))
        }
    }
}

/// The `BeginTask` request for parsed arguments.
pub fn begin_request(args: &BeginArgs) -> anyhow::Result<pb::BeginTaskRequest> {
    Ok(pb::BeginTaskRequest {
        purpose: args.purpose.clone(),
        subject: args.subject.clone(),
        server: args.server.raw.clone(),
        scopes: args.scopes.iter().map(ToString::to_string).collect(),
        // `parse_ttl` already bounded it to u32 seconds.
        lifetime_secs: match args.lifetime {
            Some(lifetime) => u32::try_from(lifetime.as_secs())?,
            None => 0,
        },
        client: args
            .client
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        bind_to_parent: !args.no_bind_to_parent,
    })
}

/// `tessera task begin`: begins the task, writes its files if asked, and renders it.
async fn begin(
    api: &mut TasksApi,
    args: &BeginArgs,
    format: OutputFormat,
) -> anyhow::Result<String> {
    // Refuse an unusable directory before a task exists.
    if let Some(dir) = &args.write {
        ensure_private_dir(dir)?;
    }
    let response = api.begin(begin_request(args)?).await?;
    let task = response
        .task
        .ok_or_else(|| anyhow!("tessera-agent answered BeginTask without the task"))?;
    let mut svid = response
        .svid
        .ok_or_else(|| anyhow!("tessera-agent answered BeginTask without the SVID"))?;
    let key = Zeroizing::new(std::mem::take(&mut svid.x509_svid_key));
    let written = match &args.write {
        None => Vec::new(),
        Some(dir) => match write_task_files(dir, &svid, &key) {
            Ok(written) => written,
            Err(err) => {
                // Nothing can use the task now; do not leave it live until the script exits.
                let ended = match api.end(&task.id).await {
                    Ok(_) => format!("task {} was ended", task.id),
                    Err(end) => format!("task {} is still live ({end:#})", task.id),
                };
                return Err(err.context(ended));
            }
        },
    };
    Ok(render_begun(
        &task,
        &svid.spiffe_id,
        &written,
        format,
        output::now_unix(),
    ))
}

/// Writes `svid.pem`, `key.pem` and `bundle.pem` of a task SVID into `dir`.
fn write_task_files(
    dir: &Path,
    svid: &pb::TaskSvid,
    key_der: &[u8],
) -> anyhow::Result<Vec<PathBuf>> {
    let chain = split_der(&svid.x509_svid);
    let bundle = split_der(&svid.bundle);
    if chain.is_empty() || key_der.is_empty() {
        bail!("tessera-agent sent an empty SVID for the task");
    }
    let chain: Vec<&[u8]> = chain.iter().map(Vec::as_slice).collect();
    let bundle: Vec<&[u8]> = bundle.iter().map(Vec::as_slice).collect();
    write_svid_files(
        dir,
        SvidFileNames {
            chain: "svid.pem",
            key: "key.pem",
            bundle: "bundle.pem",
        },
        &chain,
        key_der,
        &bundle,
    )
    .with_context(|| format!("cannot write the task SVID into {}", dir.display()))
}

/// `live` or `ended(<reason>)`.
pub fn state(task: &pb::Task) -> String {
    if task.ended_at_unix == 0 {
        "live".to_owned()
    } else if task.end_reason.is_empty() {
        "ended".to_owned()
    } else {
        format!("ended({})", task.end_reason)
    }
}

/// A task as JSON.
pub fn task_json(task: &pb::Task, now: i64) -> serde_json::Value {
    let live = task.ended_at_unix == 0;
    json!({
        "id": task.id,
        "spiffe_id": task.spiffe_id,
        "client": task.client,
        "subject": task.subject,
        "server": task.server,
        "scopes": task.scopes,
        "purpose": task.purpose,
        "consent_id": task.consent_id,
        "begun_at": output::rfc3339(task.begun_at_unix),
        "deadline": output::rfc3339(task.deadline_unix),
        "deadline_in_secs": live.then(|| task.deadline_unix - now),
        "state": if live { "live" } else { "ended" },
        "ended_at": (!live).then(|| output::rfc3339(task.ended_at_unix)),
        "end_reason": (!live).then(|| task.end_reason.clone()),
        "pid": (task.pid != 0).then_some(task.pid),
    })
}

fn deadline_text(task: &pb::Task, now: i64) -> String {
    if task.ended_at_unix == 0 {
        format!(
            "{} ({})",
            output::rfc3339(task.deadline_unix),
            output::deadline(task.deadline_unix, now)
        )
    } else {
        output::rfc3339(task.deadline_unix)
    }
}

/// One task: a key/value block in text, an object in JSON.
pub fn render_task(task: &pb::Task, format: OutputFormat, now: i64) -> String {
    match format {
        OutputFormat::Json => output::json(&task_json(task, now)),
        OutputFormat::Text => {
            let mut state = state(task);
            if task.ended_at_unix != 0 {
                state.push_str(&format!(" at {}", output::rfc3339(task.ended_at_unix)));
            }
            output::kv(
                0,
                &[
                    ("id", task.id.clone()),
                    ("spiffe id", task.spiffe_id.clone()),
                    ("client", task.client.clone()),
                    ("subject", task.subject.clone()),
                    ("server", task.server.clone()),
                    ("scopes", task.scopes.join("\n")),
                    ("purpose", task.purpose.clone()),
                    ("consent", task.consent_id.clone()),
                    ("begun", output::rfc3339(task.begun_at_unix)),
                    ("deadline", deadline_text(task, now)),
                    ("state", state),
                ],
            )
        }
    }
}

/// A task just begun: its id alone on the first line (for `| head -1`), then its SPIFFE
/// ID, deadline, scopes and the files written.
pub fn render_begun(
    task: &pb::Task,
    spiffe_id: &str,
    written: &[PathBuf],
    format: OutputFormat,
    now: i64,
) -> String {
    let written_text: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
    match format {
        OutputFormat::Json => output::json(&json!({
            "task": task_json(task, now),
            "svid_spiffe_id": spiffe_id,
            "written": written_text,
        })),
        OutputFormat::Text => {
            let mut pairs = vec![
                ("spiffe id", spiffe_id.to_owned()),
                ("deadline", deadline_text(task, now)),
                ("scopes", task.scopes.join("\n")),
            ];
            if task.pid != 0 {
                pairs.push((
                    "bound to",
                    format!("pid {} (the task ends when it exits)", task.pid),
                ));
            }
            if !written_text.is_empty() {
                pairs.push(("written", written_text.join("\n")));
            }
            format!("{}\n{}", task.id, output::kv(0, &pairs))
        }
    }
}

/// Tasks: a table in text, an array in JSON.
pub fn render_list(tasks: &[pb::Task], format: OutputFormat, now: i64, all: bool) -> String {
    match format {
        OutputFormat::Json => output::json(&serde_json::Value::Array(
            tasks.iter().map(|t| task_json(t, now)).collect(),
        )),
        OutputFormat::Text if tasks.is_empty() => if all {
            "no tasks\n"
        } else {
            "no live tasks (--all shows ended ones)\n"
        }
        .to_owned(),
        OutputFormat::Text => {
            let mut table = Table::new([
                "ID", "CLIENT", "SUBJECT", "SERVER", "STATE", "DEADLINE", "SCOPES",
            ]);
            for task in tasks {
                table.row(vec![
                    task.id.clone(),
                    task.client.clone(),
                    task.subject.clone(),
                    task.server.clone(),
                    state(task),
                    if task.ended_at_unix == 0 {
                        output::deadline(task.deadline_unix, now)
                    } else {
                        "-".to_owned()
                    },
                    task.scopes.join(","),
                ]);
            }
            table.render()
        }
    }
}

#[cfg(test)]
mod tests;

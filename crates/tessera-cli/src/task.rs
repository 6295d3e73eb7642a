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

use crate::admin::Admin;
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
    admin_socket: &Path,
    socket: &str,
    format: OutputFormat,
) -> anyhow::Result<String> {
    let now = output::now_unix();
    match command {
        TaskCommand::List { client, all } => {
            let mut admin = Admin::connect(admin_socket).await?;
            let client = client.map(|c| c.to_string()).unwrap_or_default();
            let tasks = admin.list_all_tasks(client, all).await?;
            Ok(render_list(&tasks, format, now, all))
        }
        TaskCommand::Revoke { id } => {
            let mut admin = Admin::connect(admin_socket).await?;
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
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};
    use crate::{admin, tasks_api};

    const NOW: i64 = 1_750_000_000;

    fn sample() -> pb::Task {
        pb::Task {
            id: "01JB8X4Q6V3M2N7P5R9T0W1Y2Z".into(),
            spiffe_id: "spiffe://acme.corp/client/code-reviewer/task/01JB8X4Q6V3M2N7P5R9T0W1Y2Z"
                .into(),
            client: "code-reviewer".into(),
            subject: "alice@acme.corp".into(),
            server: "github".into(),
            scopes: vec!["github/tool/get_pull_request".into()],
            purpose: "review PR 42".into(),
            consent_id: "01CONSENT".into(),
            begun_at_unix: NOW - 60,
            deadline_unix: NOW + 240,
            ended_at_unix: 0,
            end_reason: String::new(),
            pid: 4242,
        }
    }

    fn command(args: &[&str]) -> TaskCommand {
        let cli = Cli::try_parse_from(["tessera", "task"].into_iter().chain(args.iter().copied()))
            .unwrap();
        let Command::Task(command) = cli.command else {
            panic!()
        };
        command
    }

    #[test]
    fn list_shows_state_and_deadline_in_words() {
        let mut ended = sample();
        ended.id = "01ENDED".into();
        ended.ended_at_unix = NOW - 5;
        ended.end_reason = "consent_withdrawn".into();
        let text = render_list(&[sample(), ended], OutputFormat::Text, NOW, true);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].starts_with("ID                          CLIENT         SUBJECT"),
            "{text}"
        );
        assert!(
            lines[1].ends_with(
                "github  live                      in 4m     github/tool/get_pull_request"
            ),
            "{text}"
        );
        assert!(
            lines[2].contains("github  ended(consent_withdrawn)  -         github/tool/"),
            "{text}"
        );
        assert!(render_list(&[], OutputFormat::Text, NOW, false).contains("--all"));
        let json: serde_json::Value =
            serde_json::from_str(&render_list(&[sample()], OutputFormat::Json, NOW, false))
                .unwrap();
        assert_eq!(json[0]["state"], "live");
        assert_eq!(json[0]["deadline_in_secs"], 240);
        assert_eq!(json[0]["end_reason"], serde_json::Value::Null);
    }

    #[test]
    fn task_text_and_json() {
        let mut task = sample();
        let text = render_task(&task, OutputFormat::Text, NOW);
        assert!(
            text.starts_with("id:         01JB8X4Q6V3M2N7P5R9T0W1Y2Z\n"),
            "{text}"
        );
        assert!(
            text.contains("deadline:   2025-06-15T15:10:40Z (in 4m)\n"),
            "{text}"
        );
        assert!(text.ends_with("state:      live\n"), "{text}");
        task.ended_at_unix = NOW;
        task.end_reason = "revoked".into();
        let text = render_task(&task, OutputFormat::Text, NOW);
        assert!(
            text.ends_with("state:      ended(revoked) at 2025-06-15T15:06:40Z\n"),
            "{text}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render_task(&task, OutputFormat::Json, NOW)).unwrap();
        assert_eq!(json["state"], "ended");
        assert_eq!(json["end_reason"], "revoked");
        assert_eq!(json["deadline_in_secs"], serde_json::Value::Null);
        assert_eq!(json["pid"], 4242);
    }

    #[test]
    fn begun_text_puts_the_task_id_alone_on_the_first_line() {
        let written = [PathBuf::from("/d/svid.pem"), PathBuf::from("/d/key.pem")];
        let text = render_begun(
            &sample(),
            &sample().spiffe_id,
            &written,
            OutputFormat::Text,
            NOW,
        );
        assert_eq!(
            text,
            "01JB8X4Q6V3M2N7P5R9T0W1Y2Z\n\
             spiffe id:  spiffe://acme.corp/client/code-reviewer/task/01JB8X4Q6V3M2N7P5R9T0W1Y2Z\n\
             deadline:   2025-06-15T15:10:40Z (in 4m)\n\
             scopes:     github/tool/get_pull_request\n\
             bound to:   pid 4242 (the task ends when it exits)\n\
             written:    /d/svid.pem\n\
             \x20           /d/key.pem\n"
        );
        let json: serde_json::Value = serde_json::from_str(&render_begun(
            &sample(),
            "spiffe://x",
            &[],
            OutputFormat::Json,
            NOW,
        ))
        .unwrap();
        assert_eq!(json["task"]["id"], "01JB8X4Q6V3M2N7P5R9T0W1Y2Z");
        assert_eq!(json["svid_spiffe_id"], "spiffe://x");
    }

    #[tokio::test]
    async fn list_and_revoke_against_an_agent() {
        let mock = admin::testing::Mock::default();
        {
            let mut state = mock.0.lock().unwrap();
            let mut other = sample();
            other.id = "01OTHER".into();
            other.client = "other".into();
            state.tasks.extend([sample(), other]);
        }
        let (_dir, admin_socket) = admin::testing::serve(mock.clone()).await;
        let run = |args: &'static [&'static str], format| {
            let admin_socket = admin_socket.clone();
            async move { run(command(args), &admin_socket, "/nonexistent.sock", format).await }
        };

        let listed = run(&["list"], OutputFormat::Text).await.unwrap();
        assert_eq!(listed.lines().count(), 3, "{listed}");
        let listed = run(&["list", "--client", "code-reviewer"], OutputFormat::Json)
            .await
            .unwrap();
        let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
        assert_eq!(listed.as_array().unwrap().len(), 1);
        assert_eq!(listed[0]["id"], "01JB8X4Q6V3M2N7P5R9T0W1Y2Z");

        let revoked = run(&["revoke", "01OTHER"], OutputFormat::Text)
            .await
            .unwrap();
        assert!(
            revoked.contains("state:      ended(revoked) at "),
            "{revoked}"
        );
        let live = run(&["list"], OutputFormat::Text).await.unwrap();
        assert!(!live.contains("01OTHER"), "{live}");
        let all = run(&["list", "--all"], OutputFormat::Text).await.unwrap();
        assert!(all.contains("ended(revoked)"), "{all}");

        let err = run(&["revoke", "01NOPE"], OutputFormat::Text)
            .await
            .unwrap_err();
        assert!(
            err.to_string().starts_with("no task with id \"01NOPE\""),
            "{err}"
        );
    }

    #[tokio::test]
    async fn begin_writes_the_svid_and_prints_the_task_id_first() {
        let mock = tasks_api::testing::Mock::default();
        mock.0
            .lock()
            .unwrap()
            .consented
            .push("github/tool/get_pull_request".into());
        let (_sock_dir, socket) = tasks_api::testing::serve(mock.clone()).await;
        let socket = format!("unix://{}", socket.display());
        let out = tempfile::tempdir().unwrap();
        let dir = out.path().join("svid");
        let dir_arg = dir.display().to_string();
        let args = [
            "begin",
            "--server",
            "github",
            "--subject",
            "alice@acme.corp",
            "--scope",
            "github/tool/get_pull_request",
            "--purpose",
            "review PR 42",
            "--lifetime",
            "15m",
            "--write",
            &dir_arg,
        ];
        let stdout = run(
            command(&args),
            Path::new("/nonexistent.sock"),
            &socket,
            OutputFormat::Text,
        )
        .await
        .unwrap();

        let (task, begun) = {
            let state = mock.0.lock().unwrap();
            (state.tasks[0].clone(), state.begun[0].clone())
        };
        assert_eq!(stdout.lines().next(), Some(task.id.as_str()), "{stdout}");
        assert!(
            stdout.contains(&format!("\nspiffe id:  {}\n", task.spiffe_id)),
            "{stdout}"
        );
        assert!(stdout.contains("deadline:   "), "{stdout}");
        assert!(
            stdout.contains("scopes:     github/tool/get_pull_request\n"),
            "{stdout}"
        );
        assert!(begun.bind_to_parent, "bound to the parent by default");
        assert_eq!(begun.lifetime_secs, 900);
        assert_eq!(begun.purpose, "review PR 42");
        assert!(!mock.0.lock().unwrap().missing_header);

        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("key.pem")), 0o600);
        let key = fs::read_to_string(dir.join("key.pem")).unwrap();
        assert!(
            key.starts_with("-----BEGIN PRIVATE KEY-----\n"),
            "PKCS#8 PEM"
        );
        assert!(!stdout.contains("PRIVATE KEY"), "the key is never printed");
        let chain = pem::parse_many(fs::read(dir.join("svid.pem")).unwrap()).unwrap();
        assert_eq!(chain.len(), 2, "leaf and CA");
        let leaf = crate::cert::CertSummary::parse(chain[0].contents()).unwrap();
        assert_eq!(leaf.uri_sans, Ok(vec![task.spiffe_id.clone()]));
        let bundle = pem::parse_many(fs::read(dir.join("bundle.pem")).unwrap()).unwrap();
        assert_eq!(bundle.len(), 1);
        assert_eq!(bundle[0].contents(), chain[1].contents());
    }

    #[tokio::test]
    async fn begin_refused_prints_the_agents_reason_and_end_and_mine_work() {
        let mock = tasks_api::testing::Mock::default();
        mock.0
            .lock()
            .unwrap()
            .consented
            .push("github/tool/*".into());
        let (_sock_dir, socket) = tasks_api::testing::serve(mock.clone()).await;
        let socket = socket.display().to_string();
        let nowhere = Path::new("/nonexistent.sock");
        let begin = |scope: &'static str| {
            command(&[
                "begin",
                "--server",
                "github",
                "--subject",
                "alice",
                "--scope",
                scope,
                "--no-bind-to-parent",
            ])
        };

        let err = run(
            begin("github/tool/merge"),
            nowhere,
            &socket,
            OutputFormat::Text,
        )
        .await
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "refused: no live consent of client demo for subject \"alice\" on server \"github\" \
             covers [\"github/tool/merge\"]"
        );

        let begun = run(begin("github/tool/*"), nowhere, &socket, OutputFormat::Json)
            .await
            .unwrap();
        assert!(!mock.0.lock().unwrap().begun[1].bind_to_parent);
        let begun: serde_json::Value = serde_json::from_str(&begun).unwrap();
        let id = begun["task"]["id"].as_str().unwrap().to_owned();

        let mine = run(command(&["mine"]), nowhere, &socket, OutputFormat::Text)
            .await
            .unwrap();
        assert!(mine.lines().nth(1).unwrap().starts_with(&id), "{mine}");

        let ended = run(command(&["end", &id]), nowhere, &socket, OutputFormat::Text)
            .await
            .unwrap();
        assert!(ended.contains("state:      ended(ended) at "), "{ended}");
        let mine = run(command(&["mine"]), nowhere, &socket, OutputFormat::Text)
            .await
            .unwrap();
        assert_eq!(mine, "no live tasks (--all shows ended ones)\n");
        let mine = run(
            command(&["mine", "--all"]),
            nowhere,
            &socket,
            OutputFormat::Json,
        )
        .await
        .unwrap();
        let mine: serde_json::Value = serde_json::from_str(&mine).unwrap();
        assert_eq!(mine[0]["end_reason"], "ended");

        let err = run(
            command(&["end", "01NOPE"]),
            nowhere,
            &socket,
            OutputFormat::Text,
        )
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), "no task 01NOPE for this client");
    }
}

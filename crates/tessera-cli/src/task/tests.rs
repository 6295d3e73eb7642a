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
        spiffe_id: "spiffe://acme.corp/client/code-reviewer/task/01JB8X4Q6V3M2N7P5R9T0W1Y2Z".into(),
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
    let cli =
        Cli::try_parse_from(["tessera", "task"].into_iter().chain(args.iter().copied())).unwrap();
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
        lines[1]
            .ends_with("github  live                      in 4m     github/tool/get_pull_request"),
        "{text}"
    );
    assert!(
        lines[2].contains("github  ended(consent_withdrawn)  -         github/tool/"),
        "{text}"
    );
    assert!(render_list(&[], OutputFormat::Text, NOW, false).contains("--all"));
    let json: serde_json::Value =
        serde_json::from_str(&render_list(&[sample()], OutputFormat::Json, NOW, false)).unwrap();
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

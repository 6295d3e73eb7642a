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
        lines[1].contains("  active     in 8h    github/tool/get_pull_request,github/tool/list_*"),
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

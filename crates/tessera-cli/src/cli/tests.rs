use std::time::Duration;

use clap::CommandFactory;
use clap::error::ErrorKind;

use super::*;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("tessera").chain(args.iter().copied()))
}

#[test]
fn command_tree_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn every_subcommand_long_help_has_an_example() {
    let mut root = Cli::command();
    root.build();
    let mut stack: Vec<(String, clap::Command)> = vec![("tessera".into(), root)];
    while let Some((path, mut cmd)) = stack.pop() {
        for sub in cmd.get_subcommands() {
            stack.push((format!("{path} {}", sub.get_name()), sub.clone()));
        }
        // `tessera help …` mirrors the tree without the help texts.
        if path.split(' ').any(|part| part == "help") || cmd.has_subcommands() {
            continue;
        }
        let help = cmd.render_long_help().to_string();
        assert!(
            help.contains("Examples:"),
            "`{path} --help` lacks an example:\n{help}"
        );
    }
}

#[test]
fn globals_have_documented_defaults() {
    // Skip when the environment overrides a default.
    if std::env::var_os("TESSERA_ADMIN_SOCKET").is_some()
        || std::env::var_os("SPIFFE_ENDPOINT_SOCKET").is_some()
    {
        return;
    }
    let cli = parse(&["status"]).unwrap();
    assert_eq!(
        cli.global.admin_socket,
        PathBuf::from("/run/tessera/admin.sock")
    );
    assert_eq!(cli.global.socket, "unix:///run/tessera/workload.sock");
    assert_eq!(cli.global.output, OutputFormat::Text);
}

#[test]
fn globals_are_accepted_after_the_subcommand() {
    let cli = parse(&[
        "entry",
        "list",
        "--output",
        "json",
        "--admin-socket",
        "/tmp/a.sock",
    ])
    .unwrap();
    assert_eq!(cli.global.output, OutputFormat::Json);
    assert_eq!(cli.global.admin_socket, PathBuf::from("/tmp/a.sock"));
    assert!(matches!(cli.command, Command::Entry(EntryCommand::List)));
}

#[test]
fn unknown_output_format_is_refused() {
    let err = parse(&["--output", "yaml", "status"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidValue);
}

#[test]
fn entry_create_parses_client_selectors_and_ttl() {
    let hex = "ab".repeat(32);
    let sha = format!("unix:sha256:{hex}");
    let cli = parse(&[
        "entry",
        "create",
        "--client",
        "code-reviewer",
        "--selector",
        "unix:uid:1001",
        "--selector",
        &sha,
        "--svid-ttl",
        "30m",
    ])
    .unwrap();
    let Command::Entry(EntryCommand::Create(args)) = cli.command else {
        panic!("wrong command: {:?}", cli.command)
    };
    assert_eq!(
        args.client.as_ref().map(|c| c.as_str()),
        Some("code-reviewer")
    );
    assert_eq!(args.selectors, vec!["unix:uid:1001".to_owned(), sha]);
    assert_eq!(args.svid_ttl, Some(Duration::from_secs(1_800)));
}

#[test]
fn entry_create_refuses_a_bad_client_name() {
    let err = parse(&[
        "entry",
        "create",
        "--client",
        "code reviewer",
        "--selector",
        "unix:uid:1",
    ])
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueValidation);
    assert!(err.to_string().contains("--client"), "{err}");
    let err = parse(&[
        "entry",
        "create",
        "--client",
        "a/b",
        "--selector",
        "unix:uid:1",
    ])
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueValidation);
}

#[test]
fn entry_create_refuses_a_selector_without_colon() {
    let err = parse(&[
        "entry",
        "create",
        "--client",
        "demo",
        "--selector",
        "uid1001",
    ])
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueValidation);
    assert!(err.to_string().contains("no colon"), "{err}");
}

#[test]
fn entry_create_requires_a_selector() {
    let err = parse(&["entry", "create", "--client", "demo"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
}

#[test]
fn entry_create_refuses_a_ttl_without_unit() {
    let err = parse(&[
        "entry",
        "create",
        "--client",
        "demo",
        "--selector",
        "unix:uid:1",
        "--svid-ttl",
        "30",
    ])
    .unwrap_err();
    assert!(err.to_string().contains("missing unit"), "{err}");
}

#[test]
fn entry_show_and_delete_take_an_id() {
    let cli = parse(&["entry", "show", "01A"]).unwrap();
    assert!(matches!(cli.command, Command::Entry(EntryCommand::Show { id }) if id == "01A"));
    let cli = parse(&["entry", "delete", "01A"]).unwrap();
    assert!(matches!(cli.command, Command::Entry(EntryCommand::Delete { id }) if id == "01A"));
    let err = parse(&["entry", "delete"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
}

#[test]
fn audit_parses_paging_and_follow() {
    let cli = parse(&["audit", "--after", "12", "--limit", "5", "--follow"]).unwrap();
    let Command::Audit(args) = cli.command else {
        panic!()
    };
    assert_eq!((args.after, args.limit, args.follow), (12, Some(5), true));
    let cli = parse(&["audit"]).unwrap();
    let Command::Audit(args) = cli.command else {
        panic!()
    };
    assert_eq!((args.after, args.limit, args.follow), (0, None, false));
    assert!(parse(&["audit", "--limit", "0"]).is_err());
    assert!(parse(&["audit", "--after", "-1"]).is_err());
}

#[test]
fn svid_fetch_parses_write_and_timeout() {
    let cli = parse(&["svid", "fetch", "--write", "/tmp/svid", "--timeout", "3s"]).unwrap();
    let Command::Svid(SvidCommand::Fetch(args)) = cli.command else {
        panic!()
    };
    assert_eq!(args.write, Some(PathBuf::from("/tmp/svid")));
    assert_eq!(args.timeout, Duration::from_secs(3));
    let cli = parse(&["svid", "fetch"]).unwrap();
    let Command::Svid(SvidCommand::Fetch(args)) = cli.command else {
        panic!()
    };
    assert_eq!(args.timeout, Duration::from_secs(10));
    assert!(parse(&["svid", "fetch", "--timeout", "0s"]).is_err());
}

#[test]
fn svid_inspect_takes_a_file() {
    let cli = parse(&["svid", "inspect", "svid.0.pem"]).unwrap();
    let Command::Svid(SvidCommand::Inspect(args)) = cli.command else {
        panic!()
    };
    assert_eq!(args.file, PathBuf::from("svid.0.pem"));
    let err = parse(&["svid", "inspect"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
}

#[test]
fn status_takes_no_arguments() {
    assert!(matches!(
        parse(&["status"]).unwrap().command,
        Command::Status
    ));
    assert!(parse(&["status", "extra"]).is_err());
}

#[test]
fn consent_grant_parses_scopes_and_ttl() {
    let cli = parse(&[
        "consent",
        "grant",
        "--client",
        "code-reviewer",
        "--subject",
        "alice@acme.corp",
        "--server",
        "github",
        "--scope",
        "github/tool/get_pull_request",
        "--scope",
        "github/tool/list_*",
        "--ttl",
        "8h",
    ])
    .unwrap();
    let Command::Consent(ConsentCommand::Grant(args)) = cli.command else {
        panic!("wrong command: {:?}", cli.command)
    };
    assert_eq!(args.client.as_str(), "code-reviewer");
    assert_eq!(args.subject, "alice@acme.corp");
    assert_eq!(args.server.as_str(), "github");
    let scopes: Vec<String> = args.scopes.iter().map(ToString::to_string).collect();
    assert_eq!(
        scopes,
        ["github/tool/get_pull_request", "github/tool/list_*"]
    );
    assert_eq!(args.expiry.ttl, Some(Duration::from_secs(8 * 3_600)));
    assert_eq!(args.expiry.expires, None);
}

fn grant(extra: &[&str]) -> Result<Cli, clap::Error> {
    let mut args = vec![
        "consent",
        "grant",
        "--client",
        "demo",
        "--subject",
        "alice",
        "--server",
        "github",
    ];
    args.extend_from_slice(extra);
    parse(&args)
}

#[test]
fn consent_grant_takes_an_absolute_expiry() {
    let cli = grant(&[
        "--scope",
        "github/tool/*",
        "--expires",
        "2099-01-01T00:00:00Z",
    ])
    .unwrap();
    let Command::Consent(ConsentCommand::Grant(args)) = cli.command else {
        panic!()
    };
    assert_eq!(args.expiry.expires, Some(4_070_908_800));
    assert_eq!(args.expiry.ttl, None);
    let err = grant(&[
        "--scope",
        "github/tool/*",
        "--expires",
        "2001-01-01T00:00:00Z",
    ])
    .unwrap_err();
    assert!(err.to_string().contains("in the past"), "{err}");
}

#[test]
fn consent_grant_needs_exactly_one_of_ttl_and_expires() {
    let err = grant(&["--scope", "github/tool/*"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
    let err = grant(&[
        "--scope",
        "github/tool/*",
        "--ttl",
        "1h",
        "--expires",
        "2099-01-01T00:00:00Z",
    ])
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
    let err = grant(&["--ttl", "1h"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
}

#[test]
fn consent_grant_refuses_a_malformed_scope() {
    for (bad, why) in [
        ("github/tol/x", "scope kind \"tol\" is unknown"),
        ("github/tool", "not of the form <server>/<kind>/<pattern>"),
        ("github/tool/a*b", "`*` is only allowed at the end"),
    ] {
        let err = grant(&["--scope", bad, "--ttl", "1h"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ValueValidation, "{bad}: {err}");
        let text = err.to_string();
        assert!(text.contains("--scope"), "{text}");
        assert!(text.contains(why), "{bad}: {text}");
    }
}

#[test]
fn consent_grant_refuses_a_scope_for_another_server() {
    let err = grant(&[
        "--scope",
        "github/tool/*",
        "--scope",
        "docs/resource/file:///handbook/*",
        "--ttl",
        "1h",
    ])
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueValidation);
    let text = err.to_string();
    assert!(
        text.contains(
            "--scope docs/resource/file:///handbook/* is for server \"docs\", not for --server \"github\""
        ),
        "{text}"
    );
}

#[test]
fn consent_grant_refuses_bad_names_and_subjects() {
    let base = [
        "consent",
        "grant",
        "--scope",
        "github/tool/*",
        "--ttl",
        "1h",
    ];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        parse(&args).unwrap_err()
    };
    let err = with(&["--client", "a b", "--subject", "s", "--server", "github"]);
    assert!(err.to_string().contains("--client"), "{err}");
    let err = with(&["--client", "demo", "--subject", "s", "--server", "git/hub"]);
    assert!(err.to_string().contains("--server"), "{err}");
    let err = with(&["--client", "demo", "--subject", "", "--server", "github"]);
    assert!(err.to_string().contains("subject is empty"), "{err}");
}

#[test]
fn consent_list_show_withdraw() {
    let cli = parse(&["consent", "list", "--client", "demo", "--all"]).unwrap();
    assert!(matches!(
        cli.command,
        Command::Consent(ConsentCommand::List { client: Some(c), all: true }) if c.as_str() == "demo"
    ));
    let cli = parse(&["consent", "list"]).unwrap();
    assert!(matches!(
        cli.command,
        Command::Consent(ConsentCommand::List {
            client: None,
            all: false
        })
    ));
    let cli = parse(&["consent", "show", "01C"]).unwrap();
    assert!(matches!(cli.command, Command::Consent(ConsentCommand::Show { id }) if id == "01C"));
    let cli = parse(&["consent", "withdraw", "01C"]).unwrap();
    assert!(
        matches!(cli.command, Command::Consent(ConsentCommand::Withdraw { id }) if id == "01C")
    );
    let err = parse(&["consent", "withdraw"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
}

fn begin(extra: &[&str]) -> Result<Cli, clap::Error> {
    let mut args = vec!["task", "begin", "--subject", "alice"];
    args.extend_from_slice(extra);
    parse(&args)
}

#[test]
fn task_begin_binds_to_the_parent_by_default() {
    let cli = begin(&[
        "--server",
        "github",
        "--scope",
        "github/tool/get_pull_request",
        "--purpose",
        "review PR 42",
        "--lifetime",
        "15m",
        "--client",
        "demo",
        "--write",
        "/tmp/t",
    ])
    .unwrap();
    let Command::Task(TaskCommand::Begin(args)) = cli.command else {
        panic!("wrong command: {:?}", cli.command)
    };
    let req = crate::task::begin_request(&args).unwrap();
    assert!(req.bind_to_parent);
    assert_eq!(req.server, "github");
    assert_eq!(req.scopes, ["github/tool/get_pull_request"]);
    assert_eq!(req.purpose, "review PR 42");
    assert_eq!(req.lifetime_secs, 900);
    assert_eq!(req.client, "demo");
    assert_eq!(args.write, Some(PathBuf::from("/tmp/t")));

    let cli = begin(&[
        "--server",
        "spiffe://acme.corp/mcp/github",
        "--scope",
        "github/tool/*",
        "--no-bind-to-parent",
    ])
    .unwrap();
    let Command::Task(TaskCommand::Begin(args)) = cli.command else {
        panic!()
    };
    let req = crate::task::begin_request(&args).unwrap();
    assert!(!req.bind_to_parent);
    assert_eq!(req.server, "spiffe://acme.corp/mcp/github");
    assert_eq!(
        (req.lifetime_secs, req.client.as_str(), req.purpose.as_str()),
        (0, "", "")
    );
}

#[test]
fn task_begin_refuses_bad_and_foreign_scopes() {
    let err = begin(&["--server", "github", "--scope", "github/tools/x"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueValidation);
    assert!(err.to_string().contains("scope kind"), "{err}");
    let err = begin(&[
        "--server",
        "spiffe://acme.corp/mcp/github",
        "--scope",
        "gitlab/tool/x",
    ])
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueValidation);
    assert!(
        err.to_string()
            .contains("--scope gitlab/tool/x is for server \"gitlab\""),
        "{err}"
    );
    let err = begin(&[
        "--server",
        "spiffe://acme.corp/client/x",
        "--scope",
        "x/tool/y",
    ])
    .unwrap_err();
    assert!(err.to_string().contains("--server"), "{err}");
    let err = begin(&["--server", "github"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
    let err = parse(&[
        "task",
        "begin",
        "--server",
        "github",
        "--scope",
        "github/tool/x",
    ])
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
}

#[test]
fn task_list_revoke_end_mine() {
    let cli = parse(&["task", "list", "--client", "demo", "--all"]).unwrap();
    assert!(matches!(
        cli.command,
        Command::Task(TaskCommand::List { client: Some(c), all: true }) if c.as_str() == "demo"
    ));
    let cli = parse(&["task", "revoke", "01T"]).unwrap();
    assert!(matches!(cli.command, Command::Task(TaskCommand::Revoke { id }) if id == "01T"));
    let cli = parse(&["task", "end", "01T"]).unwrap();
    assert!(matches!(cli.command, Command::Task(TaskCommand::End { id }) if id == "01T"));
    let cli = parse(&["task", "mine", "--all"]).unwrap();
    assert!(matches!(
        cli.command,
        Command::Task(TaskCommand::Mine { all: true })
    ));
    assert!(parse(&["task", "end"]).is_err());
    assert!(parse(&["task", "list", "--client", "a/b"]).is_err());
}

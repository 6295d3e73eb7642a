//! The command tree: global flags and one subcommand per concept.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::audit::AuditArgs;
use crate::consent::ConsentCommand;
use crate::entry::EntryCommand;
use crate::output::OutputFormat;
use crate::svid::SvidCommand;
use crate::task::TaskCommand;

const ABOUT_LONG: &str = "\
Admin and developer CLI for a Tessera node agent.

Tessera gives each AI agent runtime (a \"client\") an attested SPIFFE identity, and each task it
runs its own short-lived X.509-SVID, so MCP servers can check who is calling, for which task,
on whose behalf, on every request.

Admin commands (entry, consent, task list/revoke, status, audit) talk to tessera-agent's admin
socket and usually need root or the agent's user. `svid fetch` and `task begin/end/mine` talk to
the workload socket as the calling process, exactly like an agent runtime would.";

const EXAMPLES: &str = "\
Examples:
  # Register an agent runtime by uid and binary hash:
  sudo tessera entry create --client code-reviewer \\
      --selector unix:uid:1001 \\
      --selector unix:sha256:$(sha256sum /opt/cr | cut -d' ' -f1)
  # alice lets it read pull requests for 8 hours:
  sudo tessera consent grant --client code-reviewer --subject alice@acme.corp \\
      --server github --scope github/tool/get_pull_request --ttl 8h
  # As that runtime's user, see the identity it gets:
  tessera svid fetch --write /tmp/svid && tessera svid inspect /tmp/svid/svid.0.pem
  # Watch what the agent decides:
  sudo tessera audit --follow";

/// The `tessera` command.
#[derive(Debug, Parser)]
#[command(
    name = "tessera",
    version,
    about = "Admin and developer CLI for a Tessera node agent",
    long_about = ABOUT_LONG,
    after_long_help = EXAMPLES
)]
pub struct Cli {
    /// Flags every subcommand accepts.
    #[command(flatten)]
    pub global: GlobalArgs,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand accepts.
#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// The agent's Admin API socket.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "PATH",
        env = "TESSERA_ADMIN_SOCKET",
        default_value = "/run/tessera/admin.sock"
    )]
    pub admin_socket: PathBuf,

    /// The SPIFFE Workload API endpoint: unix:///abs/path or /abs/path.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "ADDR",
        env = "SPIFFE_ENDPOINT_SOCKET",
        default_value = "unix:///run/tessera/workload.sock"
    )]
    pub socket: String,

    /// Output format.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_enum,
        value_name = "FORMAT",
        default_value_t = OutputFormat::Text
    )]
    pub output: OutputFormat,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage registration entries: which workloads get which client identity.
    #[command(subcommand)]
    Entry(EntryCommand),
    /// Grant, list and withdraw consents: which client may act for whom, on which MCP server.
    #[command(subcommand)]
    Consent(ConsentCommand),
    /// Tasks: list or revoke any client's (admin), or begin and end this process's own.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Show the agent's trust domain, version, entry count and CA certificates.
    #[command(after_long_help = crate::status::EXAMPLES)]
    Status,
    /// Read the agent's audit log, optionally following new records.
    Audit(AuditArgs),
    /// Fetch X.509-SVIDs from the Workload API, or inspect SVID files.
    #[command(subcommand)]
    Svid(SvidCommand),
}

#[cfg(test)]
mod tests {
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
        assert_eq!(args.client.as_str(), "code-reviewer");
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
}

//! `tessera`: the admin and developer CLI for a Tessera node agent.
//!
//! Exit status: 0 on success, 1 on any error (printed as `error: …` on stderr), 2 for usage
//! errors and for `svid inspect` on a certificate that fails the SVID profile.
//!
//! * `cli`: the command tree and global flags; `args`, `duration`: argument types and
//!   checks shared by the commands.
//! * `entry`, `consent`, `task`, `status`, `audit`: one module per admin command;
//!   `node`: the cluster's nodes, against tessera-server's admin socket.
//! * `svid`: `svid fetch` and the `svid` command tree; `inspect`: `svid inspect`.
//! * `demo`: `tessera demo`: its stage, its story and its Python and Node part.
//! * `admin`, `tasks_api`, `transport`: the Admin API and Tasks API connections over
//!   unix sockets, and their failures as sentences; `remote`: a server's Admin API over
//!   mTLS with an admin SVID (`--server-url`).
//! * `cert`: certificate files and what a certificate says; `files`: writing SVIDs
//!   to disk privately; `output`: tables, key/value blocks, JSON and time formats.

mod admin;
mod args;
mod audit;
mod cert;
mod cli;
mod consent;
mod demo;
mod duration;
mod entry;
mod files;
mod inspect;
mod node;
mod output;
mod remote;
mod status;
mod svid;
mod task;
mod tasks_api;
mod transport;

use std::process::ExitCode;

use clap::Parser;

use crate::admin::Admin;
use crate::cli::{Cli, Command};
use crate::svid::SvidCommand;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        // `tessera audit | head` closes our stdout: that is a normal way to stop.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Dispatches a parsed command line.
async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let format = cli.global.output;
    match cli.command {
        Command::Entry(command) => {
            let mut admin = Admin::open(&cli.global.admin_target()).await?;
            output::print(&entry::run(&mut admin, command, format).await?)?;
        }
        Command::Consent(command) => {
            let mut admin = Admin::open(&cli.global.admin_target()).await?;
            output::print(&consent::run(&mut admin, command, format).await?)?;
        }
        Command::Node(command) => {
            output::print(&node::run(&cli.global.admin_target(), command, format).await?)?;
        }
        Command::Task(command) => {
            let text = task::run(
                command,
                cli.global.admin_target(),
                &cli.global.socket,
                format,
            )
            .await?;
            output::print(&text)?;
        }
        Command::Status => {
            let mut admin = Admin::open(&cli.global.admin_target()).await?;
            output::print(&status::run(&mut admin, format).await?)?;
        }
        Command::Audit(args) => {
            let mut admin = Admin::open(&cli.global.admin_target()).await?;
            audit::run(&mut admin, args, format).await?;
        }
        Command::Svid(SvidCommand::Fetch(args)) => {
            svid::fetch(&args, &cli.global.socket, format).await?;
        }
        Command::Svid(SvidCommand::Inspect(args)) => return inspect::run(&args, format),
        Command::Demo(args) => demo::run(&args).await?,
    }
    Ok(ExitCode::SUCCESS)
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

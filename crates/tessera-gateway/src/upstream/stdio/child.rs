//! The child process: spawned, read, logged, and restarted when it exits.

use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::StdioConfig;
use super::bridge::{Bridge, Generation, STDIN_QUEUE};
use super::lines::{Line, LineReader, sanitize_for_log};

/// How long a child has to exit after its stdin closes (MCP's stdio shutdown) before
/// it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// The longest stderr line read whole; longer ones are logged by size.
const STDERR_LINE_BYTES: usize = 16 << 10;
/// The most of one stderr line written to the log.
const STDERR_LOG_CHARS: usize = 4096;
/// The log target of the child's stderr, so operators can filter it
/// (`RUST_LOG=tessera_gateway::upstream::stdio::stderr=warn`).
const STDERR_TARGET: &str = "tessera_gateway::upstream::stdio::stderr";

/// A started child and its pipes.
#[derive(Debug)]
pub(super) struct Spawned {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    stderr: ChildStderr,
    pid: Option<u32>,
}

/// Starts the configured command: a cleared environment plus what the config passes,
/// its own process group (so that a terminal's Ctrl-C reaches the gateway, which then
/// shuts the child down in order, and so that the whole group can be killed), killed
/// if its handle is dropped.
pub(super) fn spawn(config: &StdioConfig) -> std::io::Result<Spawned> {
    let mut cmd = Command::new(&config.command);
    cmd.args(&config.args).env_clear();
    for key in &config.inherit_env {
        if let Some(value) = std::env::var_os(key) {
            cmd.env(key, value);
        }
    }
    cmd.envs(&config.env);
    if let Some(cwd) = &config.cwd {
        cmd.current_dir(cwd);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let mut child = cmd.spawn()?;
    let pipe = |what| std::io::Error::other(format!("the child's {what} was not piped"));
    Ok(Spawned {
        pid: child.id(),
        stdin: child.stdin.take().ok_or_else(|| pipe("stdin"))?,
        stdout: child.stdout.take().ok_or_else(|| pipe("stdout"))?,
        stderr: child.stderr.take().ok_or_else(|| pipe("stderr"))?,
        child,
    })
}

/// Runs children until `stop`: each is initialized and served until it exits, then
/// the next is started after a backoff (doubling from `restart_backoff` up to
/// `restart_backoff_max`, back to the start after a run at least that long).
pub(super) async fn supervise(bridge: Arc<Bridge>, first: Spawned, stop: CancellationToken) {
    let config = &bridge.config;
    let mut next = Some(first);
    let mut backoff = config.restart_backoff;
    loop {
        let spawned = match next.take().map_or_else(|| spawn(config), Ok) {
            Ok(spawned) => spawned,
            Err(e) => {
                tracing::error!(
                    child = %bridge.name, command = %config.command, error = %e,
                    "could not start the stdio upstream; retrying in {}",
                    humantime::format_duration(backoff)
                );
                if stop
                    .run_until_cancelled(tokio::time::sleep(backoff))
                    .await
                    .is_none()
                {
                    break;
                }
                backoff = (backoff * 2).min(config.restart_backoff_max);
                continue;
            }
        };
        let started = Instant::now();
        let pid = spawned.pid;
        let Some(why) = serve_child(&bridge, spawned, &stop).await else {
            break;
        };
        if started.elapsed() >= config.restart_backoff_max {
            backoff = config.restart_backoff;
        }
        tracing::warn!(
            child = %bridge.name, pid,
            "stdio upstream {why}; restarting in {}",
            humantime::format_duration(backoff)
        );
        if stop
            .run_until_cancelled(tokio::time::sleep(backoff))
            .await
            .is_none()
        {
            break;
        }
        backoff = (backoff * 2).min(config.restart_backoff_max);
    }
    bridge.stop();
}

/// Serves one child until it exits (`Some(what happened)`) or `stop` (`None`).
async fn serve_child(
    bridge: &Arc<Bridge>,
    spawned: Spawned,
    stop: &CancellationToken,
) -> Option<String> {
    let Spawned {
        mut child,
        stdin,
        stdout,
        stderr,
        pid,
    } = spawned;
    tracing::info!(child = %bridge.name, pid, "started the stdio upstream");
    let (tx, rx) = mpsc::channel(STDIN_QUEUE);
    let run = Arc::new(Generation::new(pid, tx));
    let writer = tokio::spawn(write_lines(stdin, rx));
    tokio::spawn(log_stderr(stderr, bridge.name.clone(), pid));
    let mut reader = tokio::spawn(read_stdout(Arc::clone(bridge), Arc::clone(&run), stdout));
    let serve = async {
        match bridge.initialize(&run).await {
            Ok(()) => {
                tracing::info!(child = %bridge.name, pid, "stdio upstream initialized");
                bridge.publish(Some(Arc::clone(&run)));
                std::future::pending::<String>().await
            }
            Err(e) => e,
        }
    };
    let outcome = tokio::select! {
        () = stop.cancelled() => None,
        status = child.wait() => Some(describe(status)),
        _ = &mut reader => Some("closed its stdout".to_owned()),
        why = serve => Some(format!("failed to initialize: {why}")),
    };
    bridge.publish(None);
    let why = outcome.as_deref().unwrap_or("was stopped");
    run.close(why);
    reader.abort();
    if outcome.is_none() {
        // MCP's stdio shutdown: close its stdin, give it a moment, then kill it.
        writer.abort();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, child.wait()).await;
    }
    kill(&mut child, pid).await;
    writer.abort();
    outcome
}

fn describe(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => format!("exited ({status})"),
        Err(e) => format!("could not be waited for ({e})"),
    }
}

/// Kills the child and whatever it started in its process group (`npx` runs the
/// server as a grandchild, which killing `npx` alone would leave behind).
async fn kill(child: &mut Child, pid: Option<u32>) {
    // The child leads its own group (`process_group(0)` at spawn) and is not reaped yet,
    // so its pid, the group's id, cannot have been reused by another process.
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

async fn write_lines(mut stdin: ChildStdin, mut rx: mpsc::Receiver<Vec<u8>>) {
    while let Some(mut line) = rx.recv().await {
        line.push(b'\n');
        if let Err(e) = async {
            stdin.write_all(&line).await?;
            stdin.flush().await
        }
        .await
        {
            tracing::debug!(error = %e, "stdio bridge: writing to the child's stdin");
            return;
        }
    }
}

async fn read_stdout(bridge: Arc<Bridge>, run: Arc<Generation>, stdout: ChildStdout) {
    let mut lines = LineReader::new(stdout, bridge.config.max_message_bytes);
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => bridge.on_child_line(&run, line),
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(child = %bridge.name, pid = run.pid, error = %e, "reading the stdio upstream's stdout");
                return;
            }
        }
    }
}

/// The child's stderr, line by line, to the log under [`STDERR_TARGET`].
async fn log_stderr(stderr: ChildStderr, name: String, pid: Option<u32>) {
    let mut lines = LineReader::new(stderr, STDERR_LINE_BYTES);
    while let Ok(Some(line)) = lines.next_line().await {
        match line {
            Line::Complete(line) => tracing::info!(
                target: STDERR_TARGET, child = %name, pid,
                "{}", sanitize_for_log(&line, STDERR_LOG_CHARS)
            ),
            Line::Oversized { bytes } => tracing::warn!(
                target: STDERR_TARGET, child = %name, pid, bytes,
                "stdio upstream wrote a stderr line over {STDERR_LINE_BYTES} bytes; dropped"
            ),
        }
    }
}

#[cfg(test)]
impl Spawned {
    /// Everything the child writes to stderr until it exits.
    pub(super) async fn stderr_for_test(mut self) -> String {
        use tokio::io::AsyncReadExt;
        let mut out = String::new();
        self.stderr.read_to_string(&mut out).await.unwrap();
        let _ = self.child.wait().await;
        out
    }
}

//! Binding the agent's unix sockets with deliberate modes.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, bail};
use futures::{Stream, StreamExt};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::attest::PeerConn;

/// Binds `path` with `mode`. A stale socket left by a crashed agent is replaced;
/// a live one (another agent answering) or a non-socket file is an error.
pub fn bind(path: &Path, mode: u32) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .with_context(|| format!("creating socket directory {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "{} is in use by a running process (another tessera-agent?)",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale socket {}", path.display()))?;
        }
        Ok(_) => bail!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode {mode:o} on {}", path.display()))?;
    Ok(listener)
}

/// Accepted connections with their peer credentials. A connection whose
/// credentials cannot be read is dropped (and logged), never served.
pub fn incoming(listener: UnixListener) -> impl Stream<Item = std::io::Result<PeerConn>> {
    UnixListenerStream::new(listener).filter_map(|conn| async move {
        match conn.and_then(PeerConn::new) {
            Ok(c) => Some(Ok(c)),
            Err(e) => {
                tracing::warn!(error = %e, "dropping connection: cannot read peer credentials");
                None
            }
        }
    })
}

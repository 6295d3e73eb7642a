//! The optional JSON-lines audit sink: every committed audit record, one line each.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use tessera_store::AuditRecord;
use tokio::sync::broadcast;

use crate::drain;

/// Appends records from `rx` to `path` (created 0600) until the drain starts.
pub(crate) async fn run(
    path: PathBuf,
    mut rx: broadcast::Receiver<AuditRecord>,
    drain: drain::Watch,
) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path);
    let mut file = match file {
        Ok(f) => std::io::BufWriter::new(f),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot open the audit log; audit records stay in the store only");
            return;
        }
    };
    loop {
        let record = tokio::select! {
            _ = drain.signaled() => break,
            r = rx.recv() => r,
        };
        match record {
            Ok(r) => {
                let line = serde_json::to_string(&r).expect("audit record serializes");
                if let Err(e) = writeln!(file, "{line}").and_then(|_| file.flush()) {
                    tracing::error!(path = %path.display(), error = %e, "writing the audit log failed");
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                // The store still has them; say so rather than pretend the file is complete.
                tracing::error!(
                    missed = n,
                    "audit log sink fell behind; records are in the store (tessera audit)"
                );
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
    let _ = file.flush();
}

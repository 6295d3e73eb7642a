//! Audit events: every decision as a `tracing` event (target `tessera_verify::audit`),
//! and optionally as one JSON object per line in a file.
//!
//! Fields: `client`, `task`, `subject`, `server`, `method`, `target`, `decision`
//! (`allow`/`deny`), `reason` (stable, see [`crate::Reason::as_str`]), `policy_ids`,
//! `latency_us`, `peer` (the full SPIFFE ID), `detail`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tessera_identity::ServerId;

use crate::decision::Decision;
use crate::peer::Peer;
use crate::request::McpRequest;

/// The `tracing` target of audit events.
pub const AUDIT_TARGET: &str = "tessera_verify::audit";

/// Where decisions are recorded. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct AuditLog {
    file: Option<Arc<Mutex<File>>>,
}

// === impl AuditLog ===

impl AuditLog {
    /// Audit through `tracing` only.
    pub fn tracing_only() -> Self {
        Self { file: None }
    }

    /// Audit through `tracing` and as JSON lines appended to `path` (created 0600-ish by
    /// umask; rotate it externally with copy-truncate).
    ///
    /// # Errors
    /// The I/O error opening the file.
    pub fn with_json_file(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            file: Some(Arc::new(Mutex::new(file))),
        })
    }

    /// Records one decision.
    pub fn record(
        &self,
        server: &ServerId,
        peer: &Peer,
        request: &McpRequest,
        decision: &Decision,
        latency: Duration,
    ) {
        trace(server, peer, request, decision, latency);
        let Some(file) = &self.file else { return };
        let ts_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let line = serde_json::json!({
            "ts_ms": ts_ms,
            "peer": peer.spiffe_id(),
            "client": peer.client().map(|c| c.name.to_string()),
            "task": peer.task().map(|t| t.task.to_string()),
            "subject": peer.claims().map(|c| c.subject.as_str()),
            "server": server.name.to_string(),
            "method": request.method.as_str(),
            "target": request.target,
            "decision": if decision.allowed { "allow" } else { "deny" },
            "reason": decision.reason.as_str(),
            "policy_ids": decision.policy_ids,
            "detail": decision.detail,
            "latency_us": latency.as_micros() as u64,
        });
        let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = writeln!(f, "{line}") {
            tracing::error!(error = %e, "tessera-verify: writing the audit file failed");
        }
    }
}

/// Emits the `tracing` audit event.
pub(crate) fn trace(
    server: &ServerId,
    peer: &Peer,
    request: &McpRequest,
    decision: &Decision,
    latency: Duration,
) {
    tracing::info!(
        target: AUDIT_TARGET,
        peer = %peer.spiffe_id(),
        client = peer.client().map(|c| c.name.as_str()).unwrap_or(""),
        task = %peer.task().map(|t| t.task.to_string()).unwrap_or_default(),
        subject = peer.claims().map(|c| c.subject.as_str()).unwrap_or(""),
        server = %server.name,
        method = request.method.as_str(),
        target = %request.target,
        decision = if decision.allowed { "allow" } else { "deny" },
        reason = decision.reason.as_str(),
        policy_ids = ?decision.policy_ids,
        detail = %decision.detail,
        latency_us = latency.as_micros() as u64,
        "authorization decision"
    );
}

//! One audit record: what the log stores and the writer publishes to followers.

/// One audit log record.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AuditRecord {
    /// Position in the log; strictly increasing, never reused.
    pub seq: i64,
    /// When it was written, unix milliseconds.
    pub at_unix_ms: i64,
    /// What happened, e.g. `entry.create`.
    pub kind: String,
    /// Who did it, e.g. the admin's uid or a SPIFFE ID. May be empty for the system itself.
    pub actor: String,
    /// Structured details of the event.
    pub detail: serde_json::Value,
}

//! Tasks: per-task SVIDs bounded by consent, and their revocation.

mod consent;
mod manager;
mod revocation;
mod service;

pub use consent::{ConsentCache, ConsentDenied};
pub use manager::{BeginRequest, EndReason, TaskConfig, TaskError, TaskManager, TaskView};
pub use revocation::{RevocationFeed, RevokedSet};
pub use service::{RevocationsService, TasksService, task_to_proto};

//! Tasks: per-task SVIDs bounded by consent, and their revocation.

mod consent;
#[cfg(test)]
mod hooks;
mod manager;
mod request;
mod revocation;
mod service;
mod watch;

pub use consent::{ConsentCache, ConsentDenied};
pub use manager::{
    BeginRequest, EndReason, Entitlement, TaskConfig, TaskError, TaskManager, TaskView,
};
pub use revocation::{RevocationFeed, RevokedSet};
pub use service::{TasksService, task_to_proto};
pub use watch::RevocationsService;

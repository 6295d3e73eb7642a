//! Tasks: per-task SVIDs bounded by consent, and their revocation.

mod consent;
#[cfg(test)]
mod hooks;
mod manager;
mod request;
mod revocation;
mod service;
mod watch;

pub(crate) use consent::ConsentCache;
pub(crate) use manager::{
    BeginRequest, EndReason, Entitlement, TaskConfig, TaskError, TaskManager, TaskView,
};
pub(crate) use revocation::RevokedSet;
pub(crate) use service::{TasksService, task_to_proto};
pub(crate) use watch::RevocationsService;

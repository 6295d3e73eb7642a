//! Tasks: per-task SVIDs bounded by consent, and their revocation.

mod consent;
mod follow;
#[cfg(test)]
mod hooks;
mod manager;
mod request;
mod revocation;
mod service;
mod watch;

pub(crate) use consent::ConsentCache;
#[cfg(test)]
pub(crate) use manager::tests::{Fixture, fixture_with, request as test_request};
pub(crate) use manager::{
    BeginRequest, EndReason, Entitlement, TaskConfig, TaskError, TaskManager, TaskView,
};
pub(crate) use revocation::FeedConfig;
pub(crate) use service::{TasksService, task_to_proto};
pub(crate) use watch::RevocationsService;

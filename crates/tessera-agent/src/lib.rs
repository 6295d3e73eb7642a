//! The Tessera node agent.
//!
//! It attests the processes that call it on a unix socket and serves them
//! X.509-SVIDs through the standard SPIFFE Workload API, so any SPIFFE client
//! gets its identity from it. The binary is `tessera-agent`; this library
//! exists so the pieces can be tested and reused.

pub mod admin;
pub mod agent;
pub mod attest;
pub mod audit_log;
mod caller;
pub mod config;
pub mod h2_authority;
pub mod http;
mod jwt_keys;
pub mod logging;
pub mod metrics;
pub mod retention;
pub mod socket;
pub mod svids;
pub mod tasks;
pub mod workload;

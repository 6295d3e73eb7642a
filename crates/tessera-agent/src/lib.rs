//! The Tessera node agent.
//!
//! It attests the processes that call it on a unix socket and serves them
//! X.509-SVIDs through the standard SPIFFE Workload API, so any SPIFFE client
//! gets its identity from it. The binary is `tessera-agent`; this library
//! exists so the pieces can be tested and reused.
//!
//! * `agent`: the wiring: opens the CA and store, starts the listeners, runs until shutdown.
//! * `config`: settings from defaults, TOML file, `TESSERA_*` environment and flags.
//! * `socket`: binding the unix sockets with deliberate modes.
//! * `h2_authority`: the layer under HTTP/2 that lets stock gRPC clients name a socket
//!   by its path.
//! * `caller`: admitting a request's caller: the peer the kernel reports, and its attestation.
//! * `attest`: who is calling, from the kernel (unix) and the kubelet (Kubernetes).
//! * `workload`: the SPIFFE Workload API.
//! * `svids`: the SVID cache: client SVIDs per entry, rotated, republished on change.
//! * `tasks`: the Tasks API, task lifecycle, consent checks and the revocation feed.
//! * `admin`: the Admin API on the admin socket.
//! * `audit_log`: the optional JSON-lines audit sink.
//! * `retention`: deleting ended tasks and audit records past their age.
//! * `http`, `metrics`, `logging`: `/healthz`, `/readyz`, `/metrics`, and structured logs.

pub mod admin;
pub mod agent;
pub mod attest;
pub mod audit_log;
mod caller;
pub mod config;
pub mod drain;
pub mod h2_authority;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod retention;
pub mod socket;
mod status;
pub mod svids;
pub mod tasks;
pub mod workload;

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
//! * `node`: cluster mode: node attestation, the node CA, renewal, mTLS to the server.
//! * `admin`: the Admin API on the admin socket.
//! * `audit_log`: the optional JSON-lines audit sink.
//! * `retention`: deleting ended tasks and audit records past their age.
//! * `http`, `metrics`, `logging`: `/healthz`, `/readyz`, `/metrics`, and structured logs.
//!
//! The public surface is what the binary, the fuzz targets and the end-to-end tests use:
//! [`agent::run`], [`config`], [`logging`], [`attest`]'s selectors and
//! [`h2_authority::Rewriter`]; every other module is private to the crate, and the two
//! lints below keep it that way.

#![warn(missing_docs)]
#![warn(unreachable_pub)]

mod admin;
pub mod agent;
pub mod attest;
mod audit_log;
mod caller;
pub mod config;
mod drain;
pub mod h2_authority;
mod http;
mod jwt_keys;
mod jwt_trust;
pub mod logging;
mod metrics;
mod node;
mod retention;
mod socket;
mod status;
mod svids;
mod tasks;
mod workload;

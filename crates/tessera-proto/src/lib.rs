//! Generated gRPC code for Tessera's protos, and nothing else.
//!
//! - [`workload`]: the SPIFFE Workload API (`SpiffeWorkloadAPI`, no proto package).
//! - [`tessera::v1`]: Tessera's own services (Admin; later Tasks and Revocations).

#![allow(missing_docs, clippy::all, missing_debug_implementations)]

/// The SPIFFE Workload API, wire-compatible with the spec.
pub mod workload {
    tonic::include_proto!("_");
}

/// Tessera's own APIs.
pub mod tessera {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("tessera.v1");
    }
}

/// Metadata key every Workload API request must carry with the value `true`.
pub const WORKLOAD_HEADER: &str = "workload.spiffe.io";

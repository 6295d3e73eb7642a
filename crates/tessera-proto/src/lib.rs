//! Generated gRPC code for Tessera's protos, and the one transport every client of the
//! agent's sockets needs.
//!
//! - [`workload`]: the SPIFFE Workload API (`SpiffeWorkloadAPI`, no proto package).
//! - [`tessera::v1`]: Tessera's own services (Admin, Tasks, Revocations; Node and
//!   ClusterAdmin, served by tessera-server).
//! - [`connect_unix`]: a tonic channel over a unix socket.

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

/// An endpoint for [`connect_unix`], to set timeouts and keep-alives on. Its URI is a
/// placeholder: the connector ignores it and dials the socket.
pub fn unix_endpoint() -> tonic::transport::Endpoint {
    tonic::transport::Endpoint::from_static("http://tessera.invalid")
}

/// Connects `endpoint` (from [`unix_endpoint`]) to the unix socket at `path`.
///
/// The connection is made eagerly, so a missing socket or a refused `connect(2)` shows up
/// here (as an error whose source chain holds the `io::Error`) rather than on the first
/// call.
///
/// # Errors
/// The transport error of the first connection attempt.
pub async fn connect_unix(
    endpoint: tonic::transport::Endpoint,
    path: &std::path::Path,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
}

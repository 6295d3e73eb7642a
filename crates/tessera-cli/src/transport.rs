//! gRPC channels over unix sockets, shared by the Admin API (admin socket) and the Tasks
//! API (workload socket).

use std::path::Path;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

/// How long to wait for a socket to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long any single call may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Connects a gRPC channel to the unix socket at `path`.
///
/// The connection is made eagerly, so a missing socket or a refused `connect(2)` shows up
/// here (as an error whose source chain holds the `io::Error`) rather than on the first call.
pub async fn connect_unix(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    // The URI is a placeholder: the connector below ignores it and dials the socket.
    Endpoint::from_static("http://tessera.invalid")
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
}

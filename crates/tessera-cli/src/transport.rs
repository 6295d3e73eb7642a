//! gRPC channels over unix sockets, shared by the Admin API (admin socket) and the Tasks
//! API (workload socket).

use std::path::Path;
use std::time::Duration;

use tonic::transport::Channel;

/// How long to wait for a socket to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long any single call may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Connects a gRPC channel to the unix socket at `path` (eagerly: a missing socket
/// is an error here, not on the first call).
pub async fn connect_unix(path: &Path) -> Result<Channel, tonic::transport::Error> {
    tessera_proto::connect_unix(
        tessera_proto::unix_endpoint()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT),
        path,
    )
    .await
}

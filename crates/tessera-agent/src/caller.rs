//! Caller admission on the agent's sockets: who is at the other end of a
//! request's connection (the kernel's word, carried by the connection) and what
//! attestation makes of them. The Workload, Tasks and Revocations APIs, and the
//! Admin API's owner check, admit callers through here and nowhere else.

use tessera_proto::WORKLOAD_HEADER;
use tonic::{Request, Status};

use crate::attest::{Attestation, Attestor, Needs, PeerInfo};
use crate::metrics::{Metrics, ResultLabel};

/// The message SPIRE uses for a request without the Workload API's header;
/// clients and operators recognise it.
const MISSING_HEADER: &str = "security header missing from request";

/// What a caller that cannot be attested is told, whatever the reason: the
/// reason goes to the agent's log only.
pub(crate) const NO_IDENTITY: &str = "no identity issued";

/// An attested caller.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The connection's peer, as the kernel reported it at accept.
    pub(crate) peer: PeerInfo,
    /// The selectors attestation read for it just now.
    pub(crate) attestation: Attestation,
}

impl Caller {
    /// Attests the peer of `req`, reading what `needs` asks for.
    ///
    /// # Errors
    /// `INTERNAL` if the connection carries no peer (a bug), `PERMISSION_DENIED`
    /// ([`NO_IDENTITY`]) if attestation fails.
    pub(crate) async fn admit<T>(
        req: &Request<T>,
        attestor: &Attestor,
        metrics: &Metrics,
        needs: Needs,
    ) -> Result<Caller, Status> {
        let peer = peer_of(req)?;
        let attestation = attest(attestor, metrics, &peer, needs).await?;
        Ok(Caller { peer, attestation })
    }
}

/// The Workload API's `workload.spiffe.io: true` header, or `INVALID_ARGUMENT`.
pub(crate) fn check_header<T>(req: &Request<T>) -> Result<(), Status> {
    match req.metadata().get(WORKLOAD_HEADER) {
        Some(v) if v == "true" => Ok(()),
        _ => Err(Status::invalid_argument(MISSING_HEADER)),
    }
}

/// The peer the connection of `req` was accepted from.
pub(crate) fn peer_of<T>(req: &Request<T>) -> Result<PeerInfo, Status> {
    req.extensions()
        .get::<PeerInfo>()
        .cloned()
        .ok_or_else(|| Status::internal("connection carries no peer credentials"))
}

/// Attests `peer`; a failure is counted, logged with its reason, and answered
/// with [`NO_IDENTITY`] alone.
async fn attest(
    attestor: &Attestor,
    metrics: &Metrics,
    peer: &PeerInfo,
    needs: Needs,
) -> Result<Attestation, Status> {
    attestor.attest(peer, needs).await.map_err(|e| {
        metrics
            .attestations
            .get_or_create(&ResultLabel { result: "error" })
            .inc();
        tracing::info!(conn = peer.conn_id, pid = ?peer.pid, error = %e, "attestation failed");
        // The caller learns nothing about why beyond "no identity".
        Status::permission_denied(NO_IDENTITY)
    })
}

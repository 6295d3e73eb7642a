//! `tessera.v1.Node` on the server's TLS listener: attestation, renewal, MCP server SVIDs,
//! the registration stream (`sync`), task events from the nodes (`report`), the
//! cluster's revocation feed (`revocations`) and the nodes' JWT keys (`PublishJwtKeys`,
//! stored by `node_jwt_keys`). Every RPC but `Attest` requires an active node's
//! SVID (`caller`); `tls` is the listener.

mod caller;
mod rate;
mod report;
mod revocations;
mod sync;
pub(crate) mod tls;

pub(crate) use sync::node_to_proto;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tessera_authority::{AuthorityError, SvidSpec};
use tessera_identity::{NodeId, NodeName, ServerId, ServerName, TrustDomain};
use tessera_proto::tessera::v1 as pb;
use tessera_proto::tessera::v1::node_server::Node as NodeRpc;
use tonic::{Request, Response, Status};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::attest::{AttestError, Attestors};
use crate::ca::ServerCa;
use crate::config::NodeApiConfig;
use crate::metrics::Metrics;
use crate::wire::store_status;
use crate::{AttestationKind, EntryKind, MAX_ATTESTATION_EVIDENCE_LEN, Replica};

/// Largest public key accepted (a P-256 SubjectPublicKeyInfo is 91 bytes).
const MAX_PUBLIC_KEY_LEN: usize = 512;

/// How long a credential answer waits for this replica's copy to hold the node's change.
const APPLY_WAIT: Duration = Duration::from_secs(2);

/// Audit kind written when the root signs an MCP server SVID for a node.
const KIND_SERVER_SVID: &str = "node.server_svid";

/// Largest request the Node service decodes, refused before it is parsed: a
/// `ReportTaskEvents` batch of 1,000 events (a few hundred bytes each, typically) fits with
/// room to spare; the other requests are far smaller and bounded field by field.
pub(crate) const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// The `tessera.v1.Node` service of a replica.
#[derive(Clone)]
pub(crate) struct NodeService {
    replica: Arc<Replica>,
    ca: Arc<ServerCa>,
    attestors: Attestors,
    trust_domain: TrustDomain,
    config: NodeApiConfig,
    server_svid_ttl: Duration,
    sign_limit: Arc<rate::PerNode>,
    metrics: Arc<Metrics>,
}

impl NodeService {
    /// A service signing with `ca` and reading nodes from `replica`.
    pub(crate) fn new(
        replica: Arc<Replica>,
        ca: Arc<ServerCa>,
        attestors: Attestors,
        config: NodeApiConfig,
        server_svid_ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> NodeService {
        let trust_domain = ca.authority().trust_domain().clone();
        let sign_limit = Arc::new(rate::PerNode::per_minute(
            config.sign_server_svid_per_minute,
        ));
        NodeService {
            replica,
            ca,
            attestors,
            trust_domain,
            config,
            server_svid_ttl,
            sign_limit,
            metrics,
        }
    }

    /// Counts a call's outcome.
    fn counted<T>(&self, rpc: &'static str, result: Result<T, Status>) -> Result<T, Status> {
        let code = result
            .as_ref()
            .map_or_else(Status::code, |_| tonic::Code::Ok);
        self.metrics.node_call(rpc, code);
        result
    }

    async fn caller<T>(&self, req: &Request<T>) -> Result<NodeId, Status> {
        caller::node_of(req, &self.trust_domain, &self.ca.bundle(), &self.replica).await
    }

    /// Signs a node SVID and a node CA for `node`'s two keys and records the CA, which
    /// the store refuses for an evicted node.
    async fn credentials(
        &self,
        node: &NodeId,
        svid_key: &[u8],
        ca_key: &[u8],
    ) -> Result<pb::NodeCredentials, Status> {
        let authority = self.ca.authority();
        let node_id = node.to_string();
        let node_ca = authority
            .sign_node_ca(node, ca_key)
            .map_err(authority_status)?;
        let svid = authority
            .issue_for_key(
                &SvidSpec {
                    spiffe_id: &node_id,
                    ttl: Duration::from_secs(
                        u64::try_from(node_ca.not_after_unix - node_ca.not_before_unix)
                            .unwrap_or(0),
                    ),
                    not_after_cap: Some(node_ca.not_after_unix),
                    claims: None,
                },
                svid_key,
            )
            .map_err(authority_status)?;
        let written = self
            .replica
            .store()
            .record_node_ca(
                node.name.as_str(),
                &node_ca.serial_hex,
                node_ca.not_after_unix,
                &format!("node:{}", node.name),
            )
            .await
            .map_err(|e| match e {
                crate::ServerStoreError::Conflict(crate::Conflict::NodeEvicted { .. }) => {
                    Status::permission_denied(format!("node {} was evicted", node.name))
                }
                e => store_status(e),
            })?;
        // The node's next call may well come right back here: let this replica's copy
        // hold it first (bounded; the caller check falls back to PostgreSQL anyway).
        let _ =
            tokio::time::timeout(APPLY_WAIT, self.replica.wait_for_version(written.version)).await;
        tracing::info!(node = %node.name, ca_serial = node_ca.serial_hex, svid_serial = svid.serial_hex, "node credentials issued");
        Ok(pb::NodeCredentials {
            node_id,
            renew_after_unix: svid.half_life_unix().min(node_ca.renew_at_unix()),
            node_svid_chain: svid.chain_der,
            node_ca_chain: node_ca.chain_der,
            bundle: self.ca.bundle(),
        })
    }
}

// === impl NodeService: the RPCs ===

impl NodeService {
    async fn attest_inner(
        &self,
        request: Request<pb::AttestRequest>,
    ) -> Result<Response<pb::AttestResponse>, Status> {
        let remote = request
            .extensions()
            .get::<tls::PeerInfo>()
            .and_then(|i| i.remote);
        let r = request.into_inner();
        // Keys first: a bad key must not burn a single-use token.
        check_public_key("node_svid_public_key", &r.node_svid_public_key)?;
        check_public_key("node_ca_public_key", &r.node_ca_public_key)?;
        let (kind, evidence) = match r.proof {
            Some(pb::attest_request::Proof::JoinToken(t)) => (AttestationKind::JoinToken, t),
            Some(pb::attest_request::Proof::K8sPsat(t)) => (AttestationKind::K8sPsat, t),
            None => {
                return Err(Status::invalid_argument(
                    "a proof (join_token or k8s_psat) is required",
                ));
            }
        };
        if evidence.len() > MAX_ATTESTATION_EVIDENCE_LEN {
            return Err(Status::invalid_argument(format!(
                "the proof is larger than {MAX_ATTESTATION_EVIDENCE_LEN} bytes"
            )));
        }
        let Some(attestor) = self.attestors.get(kind) else {
            return Err(Status::failed_precondition(format!(
                "this server does not accept {} attestation",
                kind.as_str()
            )));
        };
        let written = attestor
            .attest(&evidence, &r.node_name)
            .await
            .map_err(|e| match e {
                AttestError::Refused(reason) => {
                    tracing::warn!(
                        ?remote,
                        node = r.node_name,
                        kind = kind.as_str(),
                        reason,
                        "attestation refused"
                    );
                    Status::permission_denied(reason)
                }
                AttestError::Unavailable(reason) => {
                    tracing::warn!(node = r.node_name, reason, "attestation unavailable");
                    Status::unavailable("attestation is unavailable; retry later")
                }
                AttestError::Store(e) => store_status(e),
            })?;
        let name: NodeName = written
            .value
            .name
            .parse()
            .map_err(|_| Status::internal("the attested node name is not a SPIFFE segment"))?;
        let node = NodeId::new(self.trust_domain.clone(), name);
        tracing::info!(node = %node.name, kind = kind.as_str(), ?remote, "node attested");
        let credentials = self
            .credentials(&node, &r.node_svid_public_key, &r.node_ca_public_key)
            .await?;
        Ok(Response::new(pb::AttestResponse {
            credentials: Some(credentials),
        }))
    }
    async fn renew_inner(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        let node = self.caller(&request).await?;
        let r = request.into_inner();
        check_public_key("node_svid_public_key", &r.node_svid_public_key)?;
        check_public_key("node_ca_public_key", &r.node_ca_public_key)?;
        let credentials = self
            .credentials(&node, &r.node_svid_public_key, &r.node_ca_public_key)
            .await?;
        Ok(Response::new(pb::RenewResponse {
            credentials: Some(credentials),
        }))
    }
    async fn sign_server_svid_inner(
        &self,
        request: Request<pb::SignServerSvidRequest>,
    ) -> Result<Response<pb::SignServerSvidResponse>, Status> {
        let node = self.caller(&request).await?;
        let r = request.into_inner();
        if !self.sign_limit.take(node.name.as_str()) {
            return Err(Status::resource_exhausted(format!(
                "node {} asked for more than {} server SVIDs a minute",
                node.name, self.config.sign_server_svid_per_minute
            )));
        }
        let server: ServerName = r
            .server
            .parse()
            .map_err(|e| Status::invalid_argument(format!("server {:?}: {e}", r.server)))?;
        check_public_key("public_key", &r.public_key)?;
        let has_entry = self
            .replica
            .state()
            .entries
            .values()
            .any(|e| e.kind == EntryKind::Server && e.client == server.as_str());
        if !has_entry {
            return Err(Status::permission_denied(format!(
                "no server entry for {server}"
            )));
        }
        let ttl = match r.ttl_secs {
            0 => self.server_svid_ttl,
            secs => Duration::from_secs(secs.into()).min(self.server_svid_ttl),
        };
        let id = ServerId::new(self.trust_domain.clone(), server.clone()).to_string();
        let svid = self
            .ca
            .authority()
            .issue_for_key(
                &SvidSpec {
                    spiffe_id: &id,
                    ttl,
                    not_after_cap: None,
                    claims: None,
                },
                &r.public_key,
            )
            .map_err(authority_status)?;
        if let Err(error) = self
            .replica
            .store()
            .append_audit(
                KIND_SERVER_SVID,
                &format!("node:{}", node.name),
                &json!({ "node": node.name.as_str(), "spiffe_id": id, "serial": svid.serial_hex, "not_after": svid.not_after_unix }),
            )
            .await
        {
            // An SVID the audit log does not hold is not handed out.
            return Err(store_status(error));
        }
        Ok(Response::new(pb::SignServerSvidResponse {
            svid_chain: svid.chain_der,
        }))
    }
}

impl NodeService {
    async fn report_task_events_inner(
        &self,
        request: Request<pb::ReportTaskEventsRequest>,
    ) -> Result<Response<pb::ReportTaskEventsResponse>, Status> {
        let node = self.caller(&request).await?;
        let report::Parsed {
            events,
            mut rejected,
            last_seq,
        } = report::parse(request.into_inner(), &self.trust_domain)?;
        for r in &rejected {
            tracing::warn!(node = %node.name, seq = r.seq, reason = r.message, "malformed task event rejected");
        }
        self.metrics
            .task_events_rejected(pb::TaskEventRejection::Malformed, rejected.len());
        let (seqs, events): (Vec<u64>, Vec<crate::TaskEvent>) = events.into_iter().unzip();
        if !events.is_empty() {
            let reported = self
                .replica
                .store()
                .report_task_events(node.name.as_str(), &events)
                .await
                .map_err(store_status)?;
            self.metrics.report(events.len());
            self.metrics.revocations_published(reported.published);
            self.metrics.task_events_rejected(
                pb::TaskEventRejection::TaskOfAnotherNode,
                reported.contested.len(),
            );
            tracing::debug!(
                node = %node.name,
                events = events.len(),
                begun = reported.begun,
                ended = reported.ended,
                revoked_at_begin = reported.revoked_at_begin.len(),
                contested = reported.contested.len(),
                version = reported.revocation_version,
                "task events stored"
            );
            rejected.extend(reported.contested.iter().map(|c| pb::RejectedTaskEvent {
                seq: seqs[c.index],
                reason: pb::TaskEventRejection::TaskOfAnotherNode.into(),
                message: format!(
                    "task {} was reported by another node first; it is revoked (reason \"{}\")",
                    c.task_id,
                    crate::REASON_CONTESTED
                ),
            }));
            rejected.sort_by_key(|r| r.seq);
        }
        // Committed (or rejected for good): the agent may drop these from its journal.
        Ok(Response::new(pb::ReportTaskEventsResponse {
            acknowledged_seq: last_seq,
            rejected,
        }))
    }
}

impl NodeService {
    async fn publish_jwt_keys_inner(
        &self,
        request: Request<pb::PublishJwtKeysRequest>,
    ) -> Result<Response<pb::PublishJwtKeysResponse>, Status> {
        let node = self.caller(&request).await?;
        let keys = request.into_inner().keys;
        // Counted before anything is parsed; the store checks each key's shape.
        if keys.len() > tessera_identity::MAX_NODE_JWT_KEYS {
            return Err(Status::invalid_argument(format!(
                "at most {} JWT keys a node",
                tessera_identity::MAX_NODE_JWT_KEYS
            )));
        }
        let keys = keys
            .into_iter()
            .map(|k| crate::NodeJwtKey::new(k.kid, k.x, k.y, k.not_after_unix))
            .collect();
        let written = self
            .replica
            .store()
            .publish_node_jwt_keys(node.name.as_str(), keys, &format!("node:{}", node.name))
            .await
            .map_err(|e| match e {
                crate::ServerStoreError::Conflict(
                    conflict @ crate::Conflict::JwtKeyOfAnotherNode { .. },
                ) => {
                    tracing::warn!(node = %node.name, %conflict, "JWT key of another node refused");
                    Status::permission_denied(conflict.to_string())
                }
                crate::ServerStoreError::Conflict(crate::Conflict::NodeEvicted { .. }) => {
                    Status::permission_denied(format!("node {} was evicted", node.name))
                }
                e => store_status(e),
            })?;
        Ok(Response::new(pb::PublishJwtKeysResponse {
            version: written.version,
        }))
    }
}

#[tonic::async_trait]
impl NodeRpc for NodeService {
    async fn publish_jwt_keys(
        &self,
        request: Request<pb::PublishJwtKeysRequest>,
    ) -> Result<Response<pb::PublishJwtKeysResponse>, Status> {
        let result = self.publish_jwt_keys_inner(request).await;
        self.counted("PublishJwtKeys", result)
    }

    async fn attest(
        &self,
        request: Request<pb::AttestRequest>,
    ) -> Result<Response<pb::AttestResponse>, Status> {
        let result = self.attest_inner(request).await;
        self.counted("Attest", result)
    }

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        let result = self.renew_inner(request).await;
        self.counted("Renew", result)
    }

    async fn sign_server_svid(
        &self,
        request: Request<pb::SignServerSvidRequest>,
    ) -> Result<Response<pb::SignServerSvidResponse>, Status> {
        let result = self.sign_server_svid_inner(request).await;
        self.counted("SignServerSvid", result)
    }

    type SyncStream = sync::SyncStream;

    async fn sync(
        &self,
        request: Request<pb::SyncRequest>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let node = self.counted("Sync", self.caller(&request).await)?;
        let since = request.into_inner().since_version;
        if since < 0 {
            return Err(Status::invalid_argument(
                "since_version must not be negative",
            ));
        }
        Ok(Response::new(sync::start(
            Arc::clone(&self.replica),
            self.trust_domain.clone(),
            node,
            since,
            self.config.heartbeat_interval,
            self.metrics.sync_stream(),
        )))
    }

    async fn report_task_events(
        &self,
        request: Request<pb::ReportTaskEventsRequest>,
    ) -> Result<Response<pb::ReportTaskEventsResponse>, Status> {
        let result = self.report_task_events_inner(request).await;
        self.counted("ReportTaskEvents", result)
    }

    type FollowRevocationsStream = revocations::FollowStream;

    async fn follow_revocations(
        &self,
        request: Request<pb::FollowRevocationsRequest>,
    ) -> Result<Response<Self::FollowRevocationsStream>, Status> {
        let node = self.counted("FollowRevocations", self.caller(&request).await)?;
        Ok(Response::new(revocations::start(
            Arc::clone(&self.replica),
            self.trust_domain.clone(),
            node,
            request.into_inner(),
            self.config.heartbeat_interval,
            Arc::clone(&self.metrics),
        )))
    }
}

/// Refuses anything but a DER SubjectPublicKeyInfo of an ECDSA P-256 key, before a
/// token is consumed or the root signs.
fn check_public_key(field: &str, der: &[u8]) -> Result<(), Status> {
    if der.is_empty() || der.len() > MAX_PUBLIC_KEY_LEN {
        return Err(Status::invalid_argument(format!(
            "{field}: expected a P-256 SubjectPublicKeyInfo (DER)"
        )));
    }
    let bad =
        || Status::invalid_argument(format!("{field}: not a P-256 SubjectPublicKeyInfo (DER)"));
    let (rest, spki) = SubjectPublicKeyInfo::from_der(der).map_err(|_| bad())?;
    if !rest.is_empty() {
        return Err(bad());
    }
    let p256 = x509_parser::oid_registry::OID_EC_P256;
    let curve_ok = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .is_some_and(|oid| oid == p256);
    match spki.parsed() {
        Ok(PublicKey::EC(point))
            if curve_ok && point.data().len() == 65 && point.data()[0] == 4 =>
        {
            Ok(())
        }
        _ => Err(bad()),
    }
}

/// The gRPC answer for a signing failure; details of internal ones go to the log only.
fn authority_status(error: AuthorityError) -> Status {
    match error {
        AuthorityError::UnsupportedPublicKey(_) | AuthorityError::InvalidRequest(_) => {
            Status::invalid_argument(error.to_string())
        }
        error => {
            tracing::error!(%error, "signing failed");
            Status::internal("signing failed; see the server's log")
        }
    }
}

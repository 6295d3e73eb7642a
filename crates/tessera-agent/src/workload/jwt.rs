//! JWT-SVIDs on the Workload API: `FetchJWTSVID`, `FetchJWTBundles`, `ValidateJWTSVID`.
//!
//! Callers are admitted as for X.509-SVIDs (the Workload API header, then attestation
//! of the connection's peer). A caller gets tokens for its own identities only: with no
//! `spiffe_id`, one per client (or server) identity it attests as; with a task's SPIFFE
//! ID, a task token if that task is live and bound to the calling process. Anything else
//! is `PERMISSION_DENIED` with the same message, so a caller cannot probe which tasks
//! exist.
//!
//! In cluster mode the keys are the node's ([`tessera_authority::JwtKeyOwner::Node`]):
//! they sign client and task tokens only (an MCP server's JWT-SVID is refused with
//! `jwt_node_key_may_not_sign`), and the bundle served and validated against is the
//! union of every node's keys ([`JwtTrust`]). A task token signed by another node's key
//! names a task this agent does not hold: the cluster's revocation set, which this agent
//! follows from the server, decides whether it has ended.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tessera_authority::{JwtAuthority, JwtKeyOwner, JwtSvidSpec};
use tessera_identity::{
    JwtSvidError, MAX_AUDIENCE_LEN, MAX_AUDIENCES, TaskSpiffeId, TesseraId, validate_jwt_svid,
};
use tessera_proto::workload::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse,
};
use tessera_store::EntryKind;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::attest::{Attestation, Attestor, PeerInfo};
use crate::caller::{Caller, NO_IDENTITY, check_header};
use crate::jwt_trust::JwtTrust;
use crate::metrics::Metrics;
use crate::svids::SvidCache;
use crate::tasks::TaskManager;

type BundleStream = Pin<Box<dyn Stream<Item = Result<JwtBundlesResponse, Status>> + Send>>;

/// How old the cluster's revocation set may be (its `current_as_of`) for this agent to
/// vouch that another node's task has not ended: the verifiers' default staleness bound.
const FOREIGN_TASK_STALENESS_MS: i64 = 30_000;

/// The refusal of an MCP server JWT-SVID in cluster mode.
const NODE_KEY_MAY_NOT_SIGN: &str = "jwt_node_key_may_not_sign: in cluster mode this node's JWT \
     keys sign client and task identities only; an MCP server authenticates with its X.509-SVID";

/// The JWT half of the Workload API.
#[derive(Clone, Debug)]
pub(crate) struct JwtApi {
    authority: Arc<JwtAuthority>,
    trust: JwtTrust,
    ttl: Duration,
    cache: Arc<SvidCache>,
    tasks: Arc<TaskManager>,
    attestor: Arc<Attestor>,
    metrics: Arc<Metrics>,
    shutdown: crate::drain::Watch,
}

impl JwtApi {
    /// Serves JWT-SVIDs lasting `ttl` (capped by a task's deadline), signed by `trust`'s
    /// authority, validated against `trust`'s bundle.
    pub(crate) fn new(
        trust: JwtTrust,
        ttl: Duration,
        cache: Arc<SvidCache>,
        tasks: Arc<TaskManager>,
        attestor: Arc<Attestor>,
        metrics: Arc<Metrics>,
        shutdown: crate::drain::Watch,
    ) -> JwtApi {
        JwtApi {
            authority: Arc::clone(trust.authority()),
            trust,
            ttl,
            cache,
            tasks,
            attestor,
            metrics,
            shutdown,
        }
    }

    /// Attests the caller and requires it to hold at least one identity.
    async fn admit<T>(
        &self,
        rpc: &'static str,
        req: &Request<T>,
    ) -> Result<(PeerInfo, Attestation), Status> {
        let caller = Caller::admit(
            req,
            &self.attestor,
            &self.metrics,
            self.cache.current().needs,
        )
        .await?;
        if self
            .cache
            .current()
            .identities_for(&caller.attestation)
            .is_empty()
        {
            tracing::info!(pid = caller.attestation.pid, rpc, "caller matches no entry");
            return Err(Status::permission_denied(NO_IDENTITY));
        }
        Ok((caller.peer, caller.attestation))
    }

    pub(crate) async fn fetch_svid(
        &self,
        req: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        check_header(&req)?;
        check_request_audiences(&req.get_ref().audience)?;
        let (_, att) = self.admit("FetchJWTSVID", &req).await?;
        let JwtsvidRequest {
            audience,
            spiffe_id,
        } = req.into_inner();
        let now = OffsetDateTime::now_utc();
        let snapshot = self.cache.current();
        let identities = snapshot.identities_for(&att);

        let mut svids = Vec::new();
        let sign = |spiffe_id: &str, task, cap| {
            self.authority
                .sign(
                    &JwtSvidSpec {
                        spiffe_id,
                        audience: &audience,
                        ttl: self.ttl,
                        not_after_cap: cap,
                        task,
                    },
                    now,
                )
                .map_err(|e| {
                    tracing::error!(error = %e, "signing a JWT-SVID failed");
                    Status::internal("signing the JWT-SVID failed")
                })
        };
        let named: Vec<_> = identities
            .iter()
            .filter(|e| spiffe_id.is_empty() || e.spiffe_id == spiffe_id)
            .collect();
        let node_keys = self.authority.owner() == JwtKeyOwner::Node;
        if node_keys && named.iter().any(|e| e.entry.kind == EntryKind::Server) {
            // Named explicitly, or the caller's only identities: say why there is none.
            if !spiffe_id.is_empty() || named.iter().all(|e| e.entry.kind == EntryKind::Server) {
                return Err(Status::permission_denied(NODE_KEY_MAY_NOT_SIGN));
            }
        }
        for entry in named
            .into_iter()
            .filter(|e| !node_keys || e.entry.kind != EntryKind::Server)
        {
            let issued = sign(&entry.spiffe_id, None, None)?;
            svids.push(Jwtsvid {
                spiffe_id: entry.spiffe_id.clone(),
                svid: issued.token,
                hint: entry.entry.client.clone(),
            });
        }
        if svids.is_empty() && spiffe_id.parse::<TaskSpiffeId>().is_ok() {
            let grant = self
                .tasks
                .grant_jwt(att.pid, &spiffe_id, self.ttl, now.unix_timestamp());
            if let Some((claims, exp)) = grant {
                let issued = sign(&spiffe_id, Some(&claims), Some(exp))?;
                tracing::info!(task = %claims.task_id, jti = %issued.jti, exp = issued.expires_unix, "task JWT-SVID issued");
                svids.push(Jwtsvid {
                    spiffe_id: spiffe_id.clone(),
                    svid: issued.token,
                    hint: claims.task_id.to_string(),
                });
            }
        }
        if svids.is_empty() {
            // Not one of the caller's identities, nor a live task of its process.
            return Err(Status::permission_denied(NO_IDENTITY));
        }
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    pub(crate) async fn fetch_bundles(
        &self,
        req: Request<JwtBundlesRequest>,
    ) -> Result<Response<BundleStream>, Status> {
        check_header(&req)?;
        let (peer, _) = self.admit("FetchJWTBundles", &req).await?;
        let mut bundles = self.trust.subscribe();
        let first = bundles_response(&bundles.borrow_and_update());
        let (tx, out) = mpsc::channel(4);
        tx.try_send(Ok(first)).expect("fresh channel has room");
        let (attestor, cache, metrics) = (
            Arc::clone(&self.attestor),
            Arc::clone(&self.cache),
            Arc::clone(&self.metrics),
        );
        let shutdown = self.shutdown.clone();
        metrics.open_streams.inc();
        crate::socket::spawn_in_conn_span(async move {
            loop {
                tokio::select! {
                    _ = tx.closed() => break,
                    _ = shutdown.signaled() => break,
                    r = bundles.changed() => if r.is_err() { break },
                }
                // Full state on every key rotation, to a caller that still attests.
                let snapshot = cache.current();
                let still = match attestor.attest(&peer, snapshot.needs).await {
                    Ok(att) => !snapshot.identities_for(&att).is_empty(),
                    Err(_) => false,
                };
                if !still {
                    let _ = tx.send(Err(Status::permission_denied(NO_IDENTITY))).await;
                    break;
                }
                let msg = bundles_response(&bundles.borrow_and_update());
                if tx.send(Ok(msg)).await.is_err() {
                    break;
                }
            }
            metrics.open_streams.dec();
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }

    pub(crate) async fn validate(
        &self,
        req: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        check_header(&req)?;
        let r = req.get_ref();
        if r.audience.is_empty() || r.svid.is_empty() {
            return Err(Status::invalid_argument("audience and svid are required"));
        }
        self.admit("ValidateJWTSVID", &req).await?;
        let ValidateJwtsvidRequest { audience, svid } = req.into_inner();
        let bundle = self.trust.bundle();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let valid = validate_jwt_svid(&svid, [&*bundle], &audience, now).map_err(refused)?;
        if let TesseraId::Task(id) = &valid.subject {
            self.check_task_not_ended(&id.task.to_string(), &valid.kid)?;
        }
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id: valid.subject.to_string(),
            claims: Some(to_struct(valid.claims.to_json_map())),
        }))
    }
}

impl JwtApi {
    /// A task token is revoked with its task, whatever its `exp` says. This node's own
    /// tokens: its task table says. Another node's (cluster mode): the cluster's revoked
    /// set, which must be current, or the answer is a refusal (fail closed).
    fn check_task_not_ended(&self, task_id: &str, kid: &str) -> Result<(), Status> {
        if self.trust.is_own_key(kid) {
            if self.tasks.is_live(task_id) {
                return Ok(());
            }
            return Err(Status::invalid_argument(
                "invalid JWT-SVID: jwt_task_ended: its task has ended",
            ));
        }
        let feed = self.tasks.feed();
        if feed.contains(task_id) {
            return Err(Status::invalid_argument(
                "invalid JWT-SVID: jwt_task_ended: its task has ended (revoked in the cluster)",
            ));
        }
        let now_ms = i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
            .unwrap_or(i64::MAX);
        let age_ms = now_ms.saturating_sub(feed.current_as_of_ms());
        if age_ms > FOREIGN_TASK_STALENESS_MS {
            return Err(Status::invalid_argument(format!(
                "invalid JWT-SVID: jwt_revocations_stale: the task is another node's and this \
                 agent has not heard the cluster's revocations for {} s",
                age_ms / 1000
            )));
        }
        Ok(())
    }
}

/// The Workload API answer for a refused token: the rule's stable name and what it says
/// (never the token itself).
fn refused(e: JwtSvidError) -> Status {
    Status::invalid_argument(format!("invalid JWT-SVID: {}: {e}", e.reason()))
}

/// `audience` as FetchJWTSVID takes it: required, bounded.
fn check_request_audiences(audience: &[String]) -> Result<(), Status> {
    if audience.is_empty() {
        return Err(Status::invalid_argument("audience is required"));
    }
    if audience.len() > MAX_AUDIENCES
        || audience
            .iter()
            .any(|a| a.is_empty() || a.len() > MAX_AUDIENCE_LEN)
    {
        return Err(Status::invalid_argument(format!(
            "audience: 1 to {MAX_AUDIENCES} values of 1 to {MAX_AUDIENCE_LEN} bytes"
        )));
    }
    Ok(())
}

fn bundles_response(bundle: &tessera_identity::JwtBundle) -> JwtBundlesResponse {
    JwtBundlesResponse {
        bundles: HashMap::from([(bundle.trust_domain().id_string(), bundle.to_jwks())]),
    }
}

fn to_struct(map: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map
            .into_iter()
            .map(|(k, v)| (k, to_value(v)))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn to_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        // Claims hold unix seconds and the like: well inside f64's exact integers.
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(to_value).collect(),
        }),
        serde_json::Value::Object(m) => Kind::StructValue(to_struct(m)),
    };
    prost_types::Value { kind: Some(kind) }
}

//! `tessera.v1.ClusterAdmin` on the server's admin socket: join tokens, nodes, eviction.
//! Same caller check as `tessera.v1.Admin` (the kernel's uid of the socket's peer).

use tessera_proto::tessera::v1 as pb;
use tessera_proto::tessera::v1::cluster_admin_server::ClusterAdmin;
use tonic::{Request, Response, Status};

use crate::admin::AdminService;
use crate::node_api::node_to_proto;
use crate::wire::store_status;
use crate::{MAX_JOIN_TOKEN_TTL_SECS, NewJoinToken};

/// Lifetime of a join token when the request names none.
const DEFAULT_JOIN_TOKEN_TTL_SECS: i64 = 3600;

#[tonic::async_trait]
impl ClusterAdmin for AdminService {
    async fn create_join_token(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        let actor = self.authorize("CreateJoinToken", &request)?;
        let r = request.into_inner();
        let ttl_secs = match i64::from(r.ttl_secs) {
            0 => DEFAULT_JOIN_TOKEN_TTL_SECS,
            secs if secs > MAX_JOIN_TOKEN_TTL_SECS => {
                return Err(Status::invalid_argument(format!(
                    "ttl_secs must be at most {MAX_JOIN_TOKEN_TTL_SECS}"
                )));
            }
            secs => secs,
        };
        let issued = self
            .replica()
            .store()
            .create_join_token(
                NewJoinToken {
                    ttl_secs,
                    node: (!r.node_name.is_empty()).then_some(r.node_name),
                },
                &actor,
            )
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::CreateJoinTokenResponse {
            token: issued.token,
            id: issued.record.id,
            expires_at_unix: issued.record.expires_at,
        }))
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        self.authorize("ListNodes", &request)?;
        let nodes = self
            .replica()
            .state()
            .nodes
            .values()
            .map(node_to_proto)
            .collect();
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn evict_node(
        &self,
        request: Request<pb::EvictNodeRequest>,
    ) -> Result<Response<pb::EvictNodeResponse>, Status> {
        let actor = self.authorize("EvictNode", &request)?;
        let name = request.into_inner().name;
        let written = self
            .replica()
            .store()
            .evict_node(&name, &actor)
            .await
            .map_err(store_status)?;
        let node = self.applied(written).await;
        Ok(Response::new(pb::EvictNodeResponse {
            node: Some(node_to_proto(&node)),
        }))
    }
}

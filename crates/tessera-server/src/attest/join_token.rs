//! The join-token attestor: a single-use token an administrator created
//! (`tessera node token create`) proves the node, once.

use crate::attest::{AttestError, NodeAttestor};
use crate::{AttestationKind, Conflict, Node, NotFound, PgStore, ServerStoreError, Written};

/// Attests nodes with join tokens through [`PgStore::attest_node_with_join_token`]: the
/// token is consumed in the transaction that registers the node, so a second use is
/// refused whichever replica it reaches.
#[derive(Clone, Debug)]
pub struct JoinTokenAttestor {
    store: PgStore,
}

impl JoinTokenAttestor {
    /// An attestor writing through `store`.
    pub fn new(store: PgStore) -> JoinTokenAttestor {
        JoinTokenAttestor { store }
    }
}

#[tonic::async_trait]
impl NodeAttestor for JoinTokenAttestor {
    fn kind(&self) -> AttestationKind {
        AttestationKind::JoinToken
    }

    async fn attest(
        &self,
        evidence: &str,
        requested_name: &str,
    ) -> Result<Written<Node>, AttestError> {
        match self
            .store
            .attest_node_with_join_token(evidence, requested_name)
            .await
        {
            Ok(written) => Ok(written),
            // Every way a token fails to prove the node is one refusal to the caller: a
            // prober learns nothing about which tokens exist. The store's error (token
            // id, never the token) goes to the log.
            Err(
                e @ (ServerStoreError::Invalid(_)
                | ServerStoreError::NotFound(NotFound::JoinToken)
                | ServerStoreError::Conflict(
                    Conflict::JoinTokenUsed { .. }
                    | Conflict::JoinTokenExpired { .. }
                    | Conflict::JoinTokenForOtherNode { .. },
                )),
            ) => {
                tracing::warn!(node = requested_name, error = %e, "join token refused");
                Err(AttestError::Refused("invalid join token".into()))
            }
            Err(ServerStoreError::Unavailable(e)) => Err(AttestError::Unavailable(e.to_string())),
            Err(e) => Err(AttestError::Store(e)),
        }
    }
}

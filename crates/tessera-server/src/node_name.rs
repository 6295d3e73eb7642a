//! The node-name rule, shared by node registration and join tokens.

use crate::ServerStoreError;
use crate::error::InvalidInput;

/// A node name is one SPIFFE path segment under Tessera's rule, the one client and
/// server names follow (tessera-identity checks it; a `NodeName` type of its own belongs
/// there with the node identity).
pub(crate) fn validate_node_name(name: &str) -> Result<(), ServerStoreError> {
    name.parse::<tessera_identity::ClientName>()
        .map(drop)
        .map_err(|error| {
            InvalidInput::NodeName {
                name: name.chars().take(128).collect(),
                reason: error.to_string(),
            }
            .into()
        })
}

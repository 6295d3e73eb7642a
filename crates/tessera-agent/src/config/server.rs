//! `[server]`: cluster mode. With `server.addresses` (or the single `server.address`)
//! set the agent joins a tessera-server (node attestation, a node CA, registrations
//! synchronized from the server); unset, it is the standalone agent.

use std::fmt;
use std::path::PathBuf;

use tessera_identity::{NodeName, TrustDomain};

use super::file::{FileServer, Layers};

/// Path of the server's own SPIFFE ID under the trust domain, its default `server_id`.
pub const DEFAULT_SERVER_ID_PATH: &str = "/tessera/server";

/// Most server addresses one agent may list: replicas of one control plane, not a
/// directory of hosts.
pub(crate) const MAX_SERVER_ADDRESSES: usize = 32;

/// Where the kernel keeps the host name; `server.node_name` defaults to it.
const HOSTNAME_FILE: &str = "/proc/sys/kernel/hostname";

/// The cluster's control plane and how this node proves itself to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// `host:port` of each server replica's node listener (TLS), never empty. The agent
    /// talks to one at a time and moves to another (in an order shuffled per agent, so a
    /// fleet spreads out) when a connection cannot be made or breaks.
    pub addresses: Vec<http::uri::Authority>,
    /// The SPIFFE ID the server must present; `spiffe://<td>/tessera/server` by default.
    pub server_id: String,
    /// PEM root certificate(s) of the cluster, pinned at first contact. Later the bundle
    /// the server returns with the node's credentials (which verify under these roots)
    /// is used.
    pub bundle_file: PathBuf,
    /// How the node attests at first start; `None` is allowed when credentials are
    /// already in the data directory (the agent refuses to start without either).
    pub proof: Option<AttestProof>,
    /// The node name asked for; the host name by default.
    pub node_name: NodeName,
}

/// The proof of the node the agent presents to `Attest`, once.
#[derive(Clone, PartialEq, Eq)]
pub enum AttestProof {
    /// A single-use join token given in the config or environment.
    JoinToken(String),
    /// A file holding a single-use join token (read when attesting).
    JoinTokenFile(PathBuf),
    /// A projected Kubernetes service-account token (audience `tessera-server`), read
    /// when attesting.
    K8sPsatFile(PathBuf),
}

/// Never prints the token itself.
impl fmt::Debug for AttestProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttestProof::JoinToken(_) => f.write_str("JoinToken(<redacted>)"),
            AttestProof::JoinTokenFile(p) => f.debug_tuple("JoinTokenFile").field(p).finish(),
            AttestProof::K8sPsatFile(p) => f.debug_tuple("K8sPsatFile").field(p).finish(),
        }
    }
}

/// The `[server]` section, typed; `None` for a standalone agent (or with problems
/// recorded in `l`).
pub(super) fn parse(
    l: &mut Layers,
    s: FileServer,
    trust_domain: Option<&TrustDomain>,
) -> Option<ServerConfig> {
    let listed: Vec<&str> = match (s.address.is_empty(), s.addresses.is_empty()) {
        (true, true) => return None,
        (false, true) => vec![s.address.as_str()],
        (true, false) => s.addresses.iter().map(String::as_str).collect(),
        (false, false) => {
            l.refuse(
                "server.addresses",
                "server.address and server.addresses exclude each other: list every replica in server.addresses",
            );
            return None;
        }
    };
    let mut ok = true;
    let key = if s.addresses.is_empty() {
        "server.address"
    } else {
        "server.addresses"
    };
    let mut addresses = Vec::with_capacity(listed.len());
    if listed.len() > MAX_SERVER_ADDRESSES {
        l.refuse(key, format!("at most {MAX_SERVER_ADDRESSES} addresses"));
        ok = false;
    }
    for text in listed {
        match text.trim().parse::<http::uri::Authority>() {
            Ok(a) if a.port_u16().is_some() && !a.host().is_empty() => {
                if addresses.contains(&a) {
                    l.refuse(key, format!("{a} is listed twice"));
                    ok = false;
                } else {
                    addresses.push(a);
                }
            }
            Ok(_) => {
                l.refuse(key, format!("{text:?} must be host:port"));
                ok = false;
            }
            Err(e) => {
                l.refuse(key, format!("{text:?} must be host:port: {e}"));
                ok = false;
            }
        }
    }
    let addresses = (!addresses.is_empty()).then_some(addresses);
    let server_id = match (trust_domain, s.server_id.as_str()) {
        (Some(td), "") => Some(format!("{}{DEFAULT_SERVER_ID_PATH}", td.id_string())),
        (Some(td), id) => {
            let prefix = format!("{}/", td.id_string());
            if id.starts_with(&prefix) && id.len() > prefix.len() && !id.contains(['?', '#']) {
                Some(id.to_owned())
            } else {
                l.refuse(
                    "server.server_id",
                    format!("must be a SPIFFE ID with a path in the trust domain ({prefix}...)"),
                );
                None
            }
        }
        (None, _) => None,
    };
    let bundle_file = s.bundle_file.clone();
    if bundle_file.is_none() {
        l.refuse(
            "server.bundle_file",
            "is required in cluster mode: the cluster's root, pinned at first contact",
        );
        ok = false;
    }
    let proofs = [
        s.join_token
            .filter(|t| !t.is_empty())
            .map(AttestProof::JoinToken),
        s.join_token_file.map(AttestProof::JoinTokenFile),
        s.k8s_psat_token_file.map(AttestProof::K8sPsatFile),
    ];
    let mut proofs = proofs.into_iter().flatten();
    let proof = proofs.next();
    if proofs.next().is_some() {
        l.refuse(
            "server.join_token",
            "server.join_token, server.join_token_file and server.k8s_psat_token_file exclude each other: set one",
        );
        ok = false;
    }
    let node_name = if s.node_name.is_empty() {
        match std::fs::read_to_string(HOSTNAME_FILE) {
            Ok(host) => host.trim().parse::<NodeName>().map_err(|e| {
                format!(
                    "the host name {:?} is no node name ({e}): set server.node_name",
                    host.trim()
                )
            }),
            Err(e) => Err(format!(
                "the host name cannot be read ({e}): set server.node_name"
            )),
        }
    } else {
        s.node_name.parse::<NodeName>().map_err(|e| e.to_string())
    };
    let node_name = match node_name {
        Ok(n) => Some(n),
        Err(reason) => {
            l.refuse("server.node_name", reason);
            None
        }
    };
    Some(ServerConfig {
        addresses: addresses?,
        server_id: server_id?,
        bundle_file: bundle_file?,
        proof,
        node_name: node_name?,
    })
    .filter(|_| ok)
}

/// Back to the file's shape, for printing. A join token given inline is not printed:
/// `print-config` output ends up in tickets and logs.
pub(super) fn to_file(s: Option<&ServerConfig>) -> FileServer {
    let Some(s) = s else {
        return FileServer::default();
    };
    let (address, addresses) = match s.addresses.as_slice() {
        [one] => (one.to_string(), Vec::new()),
        many => (
            String::new(),
            many.iter().map(ToString::to_string).collect(),
        ),
    };
    let mut f = FileServer {
        address,
        addresses,
        server_id: s.server_id.clone(),
        bundle_file: Some(s.bundle_file.clone()),
        node_name: s.node_name.to_string(),
        ..FileServer::default()
    };
    match &s.proof {
        None => {}
        Some(AttestProof::JoinToken(_)) => f.join_token = Some("<redacted>".into()),
        Some(AttestProof::JoinTokenFile(p)) => f.join_token_file = Some(p.clone()),
        Some(AttestProof::K8sPsatFile(p)) => f.k8s_psat_token_file = Some(p.clone()),
    }
    f
}

//! Tessera's three identity shapes, each a SPIFFE ID:
//!
//! | kind   | SPIFFE ID                                   | type             |
//! |--------|---------------------------------------------|------------------|
//! | client | `spiffe://<td>/client/<name>`               | [`ClientId`]     |
//! | task   | `spiffe://<td>/client/<name>/task/<ulid>`   | [`TaskSpiffeId`] |
//! | server | `spiffe://<td>/mcp/<name>`                  | [`ServerId`]     |
//!
//! Every type parses exactly what it prints. Parsing runs the generic SPIFFE check
//! ([`validate_spiffe_id`]) first, then requires one of the shapes above; any other valid
//! SPIFFE ID is refused with [`IdError::UnrecognizedPath`].

use std::fmt;
use std::str::FromStr;

use crate::error::IdError;
pub use crate::kind::IdKind;
use crate::name::{ClientName, ServerName};
use crate::spiffe_id::validate_spiffe_id;
use crate::task_id::TaskId;
use crate::trust_domain::{SCHEME_PREFIX, TrustDomain};

/// First path segment of client and task ids.
const CLIENT_SEGMENT: &str = "client";
/// Third path segment of task ids.
const TASK_SEGMENT: &str = "task";
/// First path segment of MCP server ids.
const SERVER_SEGMENT: &str = "mcp";

/// The SPIFFE ID of a client (an attested agent runtime): `spiffe://<td>/client/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId {
    /// The trust domain the client belongs to.
    pub trust_domain: TrustDomain,
    /// The client's name, the last path segment.
    pub name: ClientName,
}

/// The SPIFFE ID of one task of a client: `spiffe://<td>/client/<name>/task/<ulid>`.
///
/// A plain SPIFFE verifier sees an ordinary ID; Tessera reads client and task from the path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskSpiffeId {
    /// The client running the task.
    pub client: ClientId,
    /// The task.
    pub task: TaskId,
}

/// The SPIFFE ID of an MCP server: `spiffe://<td>/mcp/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerId {
    /// The trust domain the server belongs to.
    pub trust_domain: TrustDomain,
    /// The server's name, the last path segment; the same name scopes use.
    pub name: ServerName,
}

/// Any Tessera identity: what a certificate's URI SAN may name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TesseraId {
    /// An agent runtime's own identity.
    Client(ClientId),
    /// A task's identity.
    Task(TaskSpiffeId),
    /// An MCP server's identity.
    Server(ServerId),
}

// === impl ClientId ===

impl ClientId {
    /// The client `name` in trust domain `trust_domain`.
    pub fn new(trust_domain: TrustDomain, name: ClientName) -> Self {
        Self { trust_domain, name }
    }

    /// The trust domain the client belongs to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The id of task `task` of this client.
    pub fn task(&self, task: TaskId) -> TaskSpiffeId {
        TaskSpiffeId {
            client: self.clone(),
            task,
        }
    }
}

impl FromStr for ClientId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse()? {
            TesseraId::Client(id) => Ok(id),
            other => Err(IdError::WrongKind {
                expected: IdKind::Client,
                found: other.kind(),
            }),
        }
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME_PREFIX}{}/{CLIENT_SEGMENT}/{}",
            self.trust_domain, self.name
        )
    }
}

// === impl TaskSpiffeId ===

impl TaskSpiffeId {
    /// The id of task `task` of `client`.
    pub fn new(client: ClientId, task: TaskId) -> Self {
        Self { client, task }
    }

    /// The trust domain of the client running the task.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.client.trust_domain
    }
}

impl FromStr for TaskSpiffeId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse()? {
            TesseraId::Task(id) => Ok(id),
            other => Err(IdError::WrongKind {
                expected: IdKind::Task,
                found: other.kind(),
            }),
        }
    }
}

impl fmt::Display for TaskSpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{TASK_SEGMENT}/{}", self.client, self.task)
    }
}

// === impl ServerId ===

impl ServerId {
    /// The MCP server `name` in trust domain `trust_domain`.
    pub fn new(trust_domain: TrustDomain, name: ServerName) -> Self {
        Self { trust_domain, name }
    }

    /// The trust domain the server belongs to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }
}

impl FromStr for ServerId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse()? {
            TesseraId::Server(id) => Ok(id),
            other => Err(IdError::WrongKind {
                expected: IdKind::Server,
                found: other.kind(),
            }),
        }
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME_PREFIX}{}/{SERVER_SEGMENT}/{}",
            self.trust_domain, self.name
        )
    }
}

// === impl TesseraId ===

impl TesseraId {
    /// The trust domain of the identity.
    pub fn trust_domain(&self) -> &TrustDomain {
        match self {
            Self::Client(id) => id.trust_domain(),
            Self::Task(id) => id.trust_domain(),
            Self::Server(id) => id.trust_domain(),
        }
    }

    /// Which shape the identity has.
    pub fn kind(&self) -> IdKind {
        match self {
            Self::Client(_) => IdKind::Client,
            Self::Task(_) => IdKind::Task,
            Self::Server(_) => IdKind::Server,
        }
    }
}

impl FromStr for TesseraId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (trust_domain, path) = validate_spiffe_id(s)?;
        let unrecognized = || IdError::UnrecognizedPath {
            path: path.to_owned(),
        };
        // `validate_spiffe_id` guarantees an empty path or one starting with '/'.
        let Some(segments) = path.strip_prefix('/') else {
            return Err(unrecognized());
        };
        let segments: Vec<&str> = segments.split('/').collect();
        match segments.as_slice() {
            [CLIENT_SEGMENT, name] => Ok(Self::Client(ClientId {
                trust_domain,
                name: name.parse()?,
            })),
            [CLIENT_SEGMENT, name, TASK_SEGMENT, task] => Ok(Self::Task(TaskSpiffeId {
                client: ClientId {
                    trust_domain,
                    name: name.parse()?,
                },
                task: task.parse()?,
            })),
            [SERVER_SEGMENT, name] => Ok(Self::Server(ServerId {
                trust_domain,
                name: name.parse()?,
            })),
            _ => Err(unrecognized()),
        }
    }
}

impl fmt::Display for TesseraId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Client(id) => id.fmt(f),
            Self::Task(id) => id.fmt(f),
            Self::Server(id) => id.fmt(f),
        }
    }
}

impl From<ClientId> for TesseraId {
    fn from(id: ClientId) -> Self {
        Self::Client(id)
    }
}

impl From<TaskSpiffeId> for TesseraId {
    fn from(id: TaskSpiffeId) -> Self {
        Self::Task(id)
    }
}

impl From<ServerId> for TesseraId {
    fn from(id: ServerId) -> Self {
        Self::Server(id)
    }
}

/// `TryFrom<&str>` for each id type, delegating to `FromStr`.
macro_rules! try_from_str {
    ($($ty:ty),*) => {$(
        impl TryFrom<&str> for $ty {
            type Error = IdError;

            fn try_from(s: &str) -> Result<Self, Self::Error> {
                s.parse()
            }
        }
    )*};
}

try_from_str!(ClientId, TaskSpiffeId, ServerId, TesseraId);

#[cfg(test)]
mod tests {
    use super::*;

    const ULID: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

    #[test]
    fn parses_each_shape_and_prints_it_back() {
        let client = "spiffe://acme.corp/client/code-reviewer".to_owned();
        let task = format!("{client}/task/{ULID}");
        let server = "spiffe://acme.corp/mcp/github".to_owned();

        let c: ClientId = client.parse().unwrap();
        assert_eq!(c.trust_domain().as_str(), "acme.corp");
        assert_eq!(c.name.as_str(), "code-reviewer");
        assert_eq!(c.to_string(), client);

        let t: TaskSpiffeId = task.parse().unwrap();
        assert_eq!(t.client, c);
        assert_eq!(t.task.to_string(), ULID);
        assert_eq!(t.trust_domain().as_str(), "acme.corp");
        assert_eq!(t.to_string(), task);
        assert_eq!(c.task(t.task), t);

        let s: ServerId = server.parse().unwrap();
        assert_eq!(s.name.as_str(), "github");
        assert_eq!(s.to_string(), server);

        for (input, kind) in [
            (&client, IdKind::Client),
            (&task, IdKind::Task),
            (&server, IdKind::Server),
        ] {
            let id: TesseraId = input.parse().unwrap();
            assert_eq!(id.kind(), kind);
            assert_eq!(&id.to_string(), input);
            assert_eq!(id.trust_domain().as_str(), "acme.corp");
        }
    }

    #[test]
    fn rejects_valid_spiffe_ids_of_other_shapes() {
        let long_name = "x".repeat(129);
        let long_client = format!("spiffe://td/client/{long_name}");
        let cases: Vec<(&str, String, IdError)> = vec![
            (
                "trust domain id",
                "spiffe://td".into(),
                IdError::UnrecognizedPath { path: "".into() },
            ),
            (
                "client without name",
                "spiffe://td/client".into(),
                IdError::UnrecognizedPath {
                    path: "/client".into(),
                },
            ),
            (
                "client with extra segment",
                "spiffe://td/client/a/extra".into(),
                IdError::UnrecognizedPath {
                    path: "/client/a/extra".into(),
                },
            ),
            (
                "task without id",
                "spiffe://td/client/a/task".into(),
                IdError::UnrecognizedPath {
                    path: "/client/a/task".into(),
                },
            ),
            (
                "task with extra segment",
                format!("spiffe://td/client/a/task/{ULID}/x"),
                IdError::UnrecognizedPath {
                    path: format!("/client/a/task/{ULID}/x"),
                },
            ),
            (
                "wrong third segment",
                format!("spiffe://td/client/a/tasks/{ULID}"),
                IdError::UnrecognizedPath {
                    path: format!("/client/a/tasks/{ULID}"),
                },
            ),
            (
                "uppercase kind segment",
                "spiffe://td/Client/a".into(),
                IdError::UnrecognizedPath {
                    path: "/Client/a".into(),
                },
            ),
            (
                "unknown kind",
                "spiffe://td/ns/default/sa/x".into(),
                IdError::UnrecognizedPath {
                    path: "/ns/default/sa/x".into(),
                },
            ),
            (
                "server with extra segment",
                "spiffe://td/mcp/github/x".into(),
                IdError::UnrecognizedPath {
                    path: "/mcp/github/x".into(),
                },
            ),
            (
                "task id not a ulid",
                "spiffe://td/client/a/task/not-a-ulid".into(),
                IdError::InvalidTaskId {
                    value: "not-a-ulid".into(),
                },
            ),
            (
                "lowercase ulid",
                format!("spiffe://td/client/a/task/{}", ULID.to_lowercase()),
                IdError::InvalidTaskId {
                    value: ULID.to_lowercase(),
                },
            ),
            (
                "client name too long",
                long_client,
                IdError::NameTooLong { len: 129, max: 128 },
            ),
            (
                "generic rule still applies",
                "spiffe://td/client/a/".into(),
                IdError::TrailingSlash,
            ),
        ];
        for (case, input, want) in cases {
            assert_eq!(
                input.parse::<TesseraId>().unwrap_err(),
                want,
                "case: {case}"
            );
        }
    }

    #[test]
    fn typed_parsers_reject_other_kinds() {
        let client = "spiffe://td/client/a";
        let task = format!("{client}/task/{ULID}");
        let server = "spiffe://td/mcp/a";
        let wrong = |expected, found| IdError::WrongKind { expected, found };
        assert_eq!(
            task.parse::<ClientId>().unwrap_err(),
            wrong(IdKind::Client, IdKind::Task)
        );
        assert_eq!(
            server.parse::<ClientId>().unwrap_err(),
            wrong(IdKind::Client, IdKind::Server)
        );
        assert_eq!(
            client.parse::<TaskSpiffeId>().unwrap_err(),
            wrong(IdKind::Task, IdKind::Client)
        );
        assert_eq!(
            client.parse::<ServerId>().unwrap_err(),
            wrong(IdKind::Server, IdKind::Client)
        );
    }
}

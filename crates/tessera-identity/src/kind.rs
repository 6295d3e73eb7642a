//! The three shapes of Tessera identity. Its own module because both the ID
//! parsers ([`crate::id`]) and their error type ([`crate::error`]) name it.

use std::fmt;

/// Which of the three Tessera identity shapes an id has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdKind {
    /// An agent runtime: `spiffe://td/client/<name>`.
    Client,
    /// One task of an agent runtime: `spiffe://td/client/<name>/task/<ulid>`.
    Task,
    /// An MCP server: `spiffe://td/mcp/<name>`.
    Server,
}

impl IdKind {
    /// Lowercase name of the kind: `client`, `task` or `server`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Task => "task",
            Self::Server => "server",
        }
    }
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

//! One `tracing` span per accepted connection, so that every line logged about a
//! connection names it.
//!
//! A server opens a [`ConnectionSpan`] when it accepts a TCP connection, runs the TLS
//! handshake and everything it serves on the connection inside it
//! (`tracing::Instrument::instrument(fut, conn.span().clone())`), records the peer once
//! the handshake has proven it ([`ConnectionSpan::record_peer`]), and inserts a clone
//! into every request's extensions next to the `Arc<Peer>`. Every line then carries
//! `conn{id=<n> remote=<addr> peer=<spiffe id>}`: the verifier's refusal of a client
//! certificate (before there is a peer), and each decision of the connection's requests
//! with its audit record. [`crate::mcp::Enforced`] enters the span it finds in a
//! request's extensions, because rmcp runs handlers on its own session tasks, outside
//! the connection's future. Over HTTP/2 hyper serves each stream on a task of its
//! executor: give it one that instruments what it spawns with the current span (the
//! example server's `InConnection`), or those streams' lines lose the connection.
//!
//! Messages do not repeat the crate's name: the event's target
//! (`tessera_verify::…`) says where it comes from.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::Span;

use crate::peer::Peer;

/// Ids of connections accepted by this process, from 1.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The span of one accepted connection: `conn{id, remote, peer}`. Cheap to clone (a
/// handle on the same span).
#[derive(Clone, Debug)]
pub struct ConnectionSpan {
    id: u64,
    span: Span,
}

impl ConnectionSpan {
    /// Opens the span of a connection just accepted from `remote`, with a new id; its
    /// `peer` stays empty until [`Self::record_peer`].
    pub fn accepted(remote: impl fmt::Display) -> Self {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!(
            "conn",
            id,
            remote = %remote,
            peer = tracing::field::Empty
        );
        Self { id, span }
    }

    /// Records the peer the handshake proved; call it once, after the handshake.
    pub fn record_peer(&self, peer: &Peer) {
        self.span
            .record("peer", tracing::field::display(peer.spiffe_id()));
    }

    /// The connection's id, unique within this process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The span, to instrument the connection's futures with or to enter.
    pub fn span(&self) -> &Span {
        &self.span
    }
}

#[cfg(test)]
mod tests;

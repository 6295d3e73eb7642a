//! Where a request's peer comes from: the `Arc<Peer>` the server inserted per TLS
//! connection, found in rmcp's request or notification context (see [`super`]), and
//! the connection's span next to it (see [`crate::conn`]).

use std::sync::Arc;

use rmcp::model::Extensions;
use rmcp::service::{NotificationContext, RequestContext, RoleServer};

use crate::conn::ConnectionSpan;
use crate::peer::Peer;

/// The peer of a request: an `Arc<Peer>` in `ctx.extensions`, or in the extensions of the
/// `http::request::Parts` rmcp stores there for streamable HTTP.
pub fn peer_from_context(ctx: &RequestContext<RoleServer>) -> Option<Arc<Peer>> {
    peer_from_extensions(&ctx.extensions)
}

/// The peer of a notification, found like [`peer_from_context`].
pub fn peer_from_notification(ctx: &NotificationContext<RoleServer>) -> Option<Arc<Peer>> {
    peer_from_extensions(&ctx.extensions)
}

fn peer_from_extensions(extensions: &Extensions) -> Option<Arc<Peer>> {
    if let Some(p) = extensions.get::<Arc<Peer>>() {
        return Some(p.clone());
    }
    extensions
        .get::<http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Arc<Peer>>())
        .cloned()
}

/// Runs `f` inside the span of the connection the request came on, when the server put
/// a [`ConnectionSpan`] into its extensions: rmcp runs handlers on its session tasks,
/// outside the connection's future, so its lines would otherwise name no connection.
pub(super) fn in_connection<R>(extensions: &Extensions, f: impl FnOnce() -> R) -> R {
    match connection_of(extensions) {
        Some(conn) => conn.span().in_scope(f),
        None => f(),
    }
}

/// The [`ConnectionSpan`] of a request, found like its peer.
pub(super) fn connection_of(extensions: &Extensions) -> Option<ConnectionSpan> {
    if let Some(c) = extensions.get::<ConnectionSpan>() {
        return Some(c.clone());
    }
    extensions
        .get::<http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<ConnectionSpan>())
        .cloned()
}

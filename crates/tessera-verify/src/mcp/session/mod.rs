//! Binding MCP session ids to the peer that opened them.
//!
//! rmcp accepts any request carrying a known `Mcp-Session-Id`, whoever sends it; the MCP
//! spec asks servers to bind session ids to the principal that created them. This tower
//! layer sits in front of rmcp's `StreamableHttpService` (inside the per-connection
//! service that inserts the `Arc<Peer>`):
//!
//! - a response that creates a session (a request without `Mcp-Session-Id` answered with
//!   one) binds that id to the peer's identity (the task SPIFFE ID for tasks, so even
//!   another task of the same client cannot reuse it);
//! - a request presenting a session id bound to another peer, or an id it never bound, is
//!   answered **HTTP 404** without reaching rmcp. 404 is what the spec prescribes for an
//!   unknown or terminated session: conforming clients (rmcp's included) then start a new
//!   session instead of failing hard as they do on 403, and the answer does not reveal
//!   that the id exists;
//! - a successful `DELETE` unbinds the id.
//!
//! A request without an `Arc<Peer>` extension is answered 401: that only happens when the
//! server forgot to insert it, and failing closed makes the mistake visible.
//!
//! ## Bounds
//!
//! Every authenticated peer can open sessions, so the table has hard limits
//! ([`SessionLimits`]): at most `max_sessions` in all (default 100,000, some 50 MiB) and
//! `max_sessions_per_peer` per SPIFFE ID (default 64); a session unused for `idle_ttl`
//! (default 10 minutes, twice rmcp's own session keep-alive) is forgotten. Binding a
//! session past a limit forgets the least recently used one: the peer's own when it is
//! over its share, so one peer cannot push out everyone else's sessions. A forgotten
//! session's next request gets 404 and its client opens a new one; hand the ids to the
//! session manager with [`SessionBinding::on_evict`] so that it closes them too, else
//! they live on in it until its keep-alive ends them. Every operation is O(1) under
//! the table's lock: an index by id, and two intrusive LRU lists (all sessions, and
//! each peer's).

mod table;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode};

use crate::peer::Peer;
use table::{Owner, Table};

/// The MCP session header.
const SESSION_HEADER: &str = "mcp-session-id";

/// How many sessions a [`SessionBinding`] holds, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionLimits {
    /// Sessions bound at once, over all peers. Default 100,000 (each costs about 500
    /// bytes here, estimated from an entry's parts: its id, owner id, links and its
    /// owner's list; besides what the session manager keeps).
    pub max_sessions: usize,
    /// Sessions one peer (one SPIFFE ID) holds at once. Default 64.
    pub max_sessions_per_peer: usize,
    /// A session unused this long is forgotten. Default 10 minutes.
    pub idle_ttl: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            max_sessions: 100_000,
            max_sessions_per_peer: 64,
            idle_ttl: Duration::from_secs(600),
        }
    }
}

impl SessionLimits {
    /// These limits with `max_sessions` (at least 1).
    pub fn with_max_sessions(mut self, max_sessions: usize) -> Self {
        self.max_sessions = max_sessions.max(1);
        self
    }

    /// These limits with `max_sessions_per_peer` (at least 1).
    pub fn with_max_sessions_per_peer(mut self, max: usize) -> Self {
        self.max_sessions_per_peer = max.max(1);
        self
    }

    /// These limits with `idle_ttl`.
    pub fn with_idle_ttl(mut self, idle_ttl: Duration) -> Self {
        self.idle_ttl = idle_ttl;
        self
    }
}

/// Called with the ids of sessions the table forgot (over a limit or idle), outside
/// the table's lock.
type EvictHook = Box<dyn Fn(Vec<String>) + Send + Sync>;

/// The table of session id → owner. Shared by every connection of one server.
pub struct SessionBinding {
    table: Mutex<Table>,
    limits: SessionLimits,
    on_evict: Option<EvictHook>,
}

impl std::fmt::Debug for SessionBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionBinding")
            .field("limits", &self.limits)
            .field("len", &self.len())
            .field("on_evict", &self.on_evict.is_some())
            .finish()
    }
}

/// A tower layer applying [`SessionBinding`]. Clone it into every connection's stack.
#[derive(Clone, Debug)]
pub struct SessionBindingLayer {
    binding: Arc<SessionBinding>,
}

/// The service made by [`SessionBindingLayer`].
#[derive(Clone, Debug)]
pub struct SessionBindingService<S> {
    inner: S,
    binding: Arc<SessionBinding>,
}

// === impl SessionBinding ===

impl SessionBinding {
    /// A table with `limits`.
    pub fn new(limits: SessionLimits) -> Self {
        Self {
            table: Mutex::new(Table::default()),
            limits,
            on_evict: None,
        }
    }

    /// Calls `hook` with the ids of the sessions the table forgets (past a limit, or
    /// idle), outside its lock, on the task that bound or checked a session: e.g. to
    /// close them in rmcp's session manager (spawn that, it is async), so that the
    /// limits bound its sessions too.
    pub fn on_evict(mut self, hook: impl Fn(Vec<String>) + Send + Sync + 'static) -> Self {
        self.on_evict = Some(Box::new(hook));
        self
    }

    /// The limits.
    pub fn limits(&self) -> SessionLimits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn evicted(&self, ids: Vec<Arc<str>>) {
        if ids.is_empty() {
            return;
        }
        tracing::debug!(
            count = ids.len(),
            "sessions forgotten (idle or over a limit)"
        );
        if let Some(hook) = &self.on_evict {
            hook(ids.iter().map(|id| id.to_string()).collect());
        }
    }

    /// Whether `peer` may use session `id` (it is bound to `peer` and not idle past the
    /// TTL); refreshes its use time.
    pub fn check(&self, id: &str, peer: &Peer) -> bool {
        let mut expired = None;
        let ok = {
            let mut t = self.lock();
            match t.by_id.get(id).copied() {
                Some(i) if t.node(i).used.elapsed() >= self.limits.idle_ttl => {
                    expired = Some(t.remove(i));
                    false
                }
                Some(i) if t.node(i).owner.is(peer) => {
                    t.touch(i);
                    true
                }
                _ => false,
            }
        };
        self.evicted(expired.into_iter().collect());
        ok
    }

    /// Binds session `id` to `peer`. An id already bound keeps its first owner. Past a
    /// limit, the least recently used session goes: `peer`'s own if it holds its share,
    /// else the oldest of all; sessions idle past the TTL go first.
    pub fn bind(&self, id: &str, peer: &Peer) {
        let mut gone = Vec::new();
        {
            let mut t = self.lock();
            if t.by_id.contains_key(id) {
                return;
            }
            // A few idle sessions from the cold end per bind: enough to keep ahead of
            // binds, never a walk through the table.
            for _ in 0..4 {
                match t.oldest(None) {
                    Some(i) if t.node(i).used.elapsed() >= self.limits.idle_ttl => {
                        gone.push(t.remove(i));
                    }
                    _ => break,
                }
            }
            let owner = Owner::of(peer);
            while t.owned_by(&owner) >= self.limits.max_sessions_per_peer {
                let Some(i) = t.oldest(Some(&owner)) else {
                    break;
                };
                gone.push(t.remove(i));
            }
            while t.len() >= self.limits.max_sessions {
                let Some(i) = t.oldest(None) else { break };
                gone.push(t.remove(i));
            }
            t.insert(id, owner);
        }
        self.evicted(gone);
    }

    /// Forgets session `id`.
    pub fn unbind(&self, id: &str) {
        let mut t = self.lock();
        if let Some(i) = t.by_id.get(id).copied() {
            t.remove(i);
        }
    }

    /// Number of bound sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is bound.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// === impl SessionBindingLayer ===

impl SessionBindingLayer {
    /// A layer with a fresh table with the default [`SessionLimits`].
    pub fn new() -> Self {
        Self::with_limits(SessionLimits::default())
    }

    /// A layer with a fresh table with `limits`.
    pub fn with_limits(limits: SessionLimits) -> Self {
        Self::with_binding(Arc::new(SessionBinding::new(limits)))
    }

    /// A layer over an existing table.
    pub fn with_binding(binding: Arc<SessionBinding>) -> Self {
        Self { binding }
    }

    /// The table.
    pub fn binding(&self) -> &Arc<SessionBinding> {
        &self.binding
    }
}

impl Default for SessionBindingLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> tower::Layer<S> for SessionBindingLayer {
    type Service = SessionBindingService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionBindingService {
            inner,
            binding: self.binding.clone(),
        }
    }
}

fn status<RB: Default>(code: StatusCode) -> Response<RB> {
    let mut r = Response::new(RB::default());
    *r.status_mut() = code;
    r
}

impl<S, B, RB> tower::Service<Request<B>> for SessionBindingService<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(peer) = req.extensions().get::<Arc<Peer>>().cloned() else {
            tracing::warn!("HTTP request without a peer identity refused (401)");
            return Box::pin(async { Ok(status(StatusCode::UNAUTHORIZED)) });
        };
        // A clone of the header shares its bytes: no copy of the id per request.
        let presented: Option<HeaderValue> = req.headers().get(SESSION_HEADER).cloned();
        let id = match presented.as_ref().map(HeaderValue::to_str) {
            None => None,
            Some(Ok(id)) => Some(id),
            Some(Err(_)) => return Box::pin(async { Ok(status(StatusCode::BAD_REQUEST)) }),
        };
        if let Some(id) = id
            && !self.binding.check(id, &peer)
        {
            tracing::warn!(peer = %peer.spiffe_id(), "session id not bound to this peer; answering 404");
            return Box::pin(async { Ok(status(StatusCode::NOT_FOUND)) });
        }
        let is_delete = req.method() == Method::DELETE;
        // The clone that was polled ready serves this call; a fresh clone is left behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let binding = self.binding.clone();
        Box::pin(async move {
            let resp = inner.call(req).await?;
            match presented {
                None => {
                    if let Some(Ok(id)) = resp.headers().get(SESSION_HEADER).map(|v| v.to_str()) {
                        binding.bind(id, &peer);
                    }
                }
                Some(id) if is_delete && resp.status().is_success() => {
                    // Checked to be text above.
                    if let Ok(id) = id.to_str() {
                        binding.unbind(id);
                    }
                }
                Some(_) => {}
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests;

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

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Request, Response, StatusCode};
use tessera_identity::{ClientId, ServerId, TaskSpiffeId};

use crate::peer::Peer;

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

/// The identity a session is bound to: the peer's SPIFFE ID, kept as the parsed id and
/// compared as such (the ids print exactly what they parse, so this is string
/// equality) because formatting the id on every request cost more than the lookup.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Owner {
    Task(TaskSpiffeId),
    Client(ClientId),
    Server(ServerId),
}

impl Owner {
    fn of(peer: &Peer) -> Self {
        match peer {
            Peer::Task { task, .. } => Self::Task(task.clone()),
            Peer::Client { client, .. } => Self::Client(client.clone()),
            Peer::Server { server, .. } => Self::Server(server.clone()),
        }
    }

    fn is(&self, peer: &Peer) -> bool {
        match (self, peer) {
            (Self::Task(owner), Peer::Task { task, .. }) => owner == task,
            (Self::Client(owner), Peer::Client { client, .. }) => owner == client,
            (Self::Server(owner), Peer::Server { server, .. }) => owner == server,
            _ => false,
        }
    }
}

/// No node: the end of a list.
const NIL: usize = usize::MAX;

/// Links of one doubly linked list through the node slab.
#[derive(Clone, Copy, Debug)]
struct Links {
    prev: usize,
    next: usize,
}

const UNLINKED: Links = Links {
    prev: NIL,
    next: NIL,
};

/// A list's ends and length.
#[derive(Clone, Copy, Debug)]
struct Ends {
    /// The most recently used.
    head: usize,
    /// The least recently used.
    tail: usize,
    len: usize,
}

const EMPTY: Ends = Ends {
    head: NIL,
    tail: NIL,
    len: 0,
};

#[derive(Debug)]
struct Node {
    id: Arc<str>,
    owner: Owner,
    used: Instant,
    /// In the list of all sessions.
    all: Links,
    /// In the list of its owner's sessions.
    mine: Links,
}

/// Which of a node's two lists.
#[derive(Clone, Copy)]
enum List {
    All,
    Mine,
}

/// Sessions in a slab of nodes, found by id, each on two LRU lists (all sessions, and
/// its owner's), so that use, binding, eviction and removal are all O(1).
#[derive(Debug)]
struct Table {
    nodes: Vec<Option<Node>>,
    free: Vec<usize>,
    by_id: HashMap<Arc<str>, usize>,
    by_owner: HashMap<Owner, Ends>,
    all: Ends,
}

impl Default for Table {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            by_owner: HashMap::new(),
            all: EMPTY,
        }
    }
}

impl Table {
    fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("linked nodes are occupied")
    }

    fn node_mut(&mut self, i: usize) -> &mut Node {
        self.nodes[i].as_mut().expect("linked nodes are occupied")
    }

    fn links(&mut self, i: usize, list: List) -> &mut Links {
        let n = self.node_mut(i);
        match list {
            List::All => &mut n.all,
            List::Mine => &mut n.mine,
        }
    }

    fn ends(&mut self, i: usize, list: List) -> &mut Ends {
        match list {
            List::All => &mut self.all,
            List::Mine => {
                let owner = &self.nodes[i]
                    .as_ref()
                    .expect("linked nodes are occupied")
                    .owner;
                self.by_owner
                    .get_mut(owner)
                    .expect("an owner's list exists while it has sessions")
            }
        }
    }

    fn unlink(&mut self, i: usize, list: List) {
        let Links { prev, next } = *self.links(i, list);
        if prev != NIL {
            self.links(prev, list).next = next;
        }
        if next != NIL {
            self.links(next, list).prev = prev;
        }
        let ends = self.ends(i, list);
        if ends.head == i {
            ends.head = next;
        }
        if ends.tail == i {
            ends.tail = prev;
        }
        ends.len -= 1;
        *self.links(i, list) = UNLINKED;
    }

    fn push_front(&mut self, i: usize, list: List) {
        let ends = self.ends(i, list);
        let old_head = ends.head;
        ends.head = i;
        if ends.tail == NIL {
            ends.tail = i;
        }
        ends.len += 1;
        *self.links(i, list) = Links {
            prev: NIL,
            next: old_head,
        };
        if old_head != NIL {
            self.links(old_head, list).prev = i;
        }
    }

    fn touch(&mut self, i: usize) {
        self.node_mut(i).used = Instant::now();
        for list in [List::All, List::Mine] {
            if self.ends(i, list).head != i {
                self.unlink(i, list);
                self.push_front(i, list);
            }
        }
    }

    fn insert(&mut self, id: &str, owner: Owner) {
        let id: Arc<str> = Arc::from(id);
        self.by_owner.entry(owner.clone()).or_insert(EMPTY);
        let node = Node {
            id: id.clone(),
            owner,
            used: Instant::now(),
            all: UNLINKED,
            mine: UNLINKED,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i] = Some(node);
                i
            }
            None => {
                self.nodes.push(Some(node));
                self.nodes.len() - 1
            }
        };
        self.by_id.insert(id, i);
        self.push_front(i, List::All);
        self.push_front(i, List::Mine);
    }

    /// Removes node `i`; returns its id.
    fn remove(&mut self, i: usize) -> Arc<str> {
        self.unlink(i, List::All);
        self.unlink(i, List::Mine);
        let node = self.nodes[i].take().expect("linked nodes are occupied");
        if self.by_owner.get(&node.owner).is_some_and(|e| e.len == 0) {
            self.by_owner.remove(&node.owner);
        }
        self.by_id.remove(&node.id);
        self.free.push(i);
        node.id
    }

    fn len(&self) -> usize {
        self.by_id.len()
    }

    /// The least recently used session of all, or of `owner`.
    fn oldest(&self, owner: Option<&Owner>) -> Option<usize> {
        let ends = match owner {
            None => &self.all,
            Some(o) => self.by_owner.get(o)?,
        };
        (ends.tail != NIL).then_some(ends.tail)
    }

    fn owned_by(&self, owner: &Owner) -> usize {
        self.by_owner.get(owner).map_or(0, |e| e.len)
    }
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
            "tessera-verify: sessions forgotten (idle or over a limit)"
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
            tracing::warn!("tessera-verify: HTTP request without a peer identity refused (401)");
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
            tracing::warn!(peer = %peer.spiffe_id(), "tessera-verify: session id not bound to this peer; answering 404");
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
mod tests {
    use std::convert::Infallible;

    use tower::{Layer, Service, ServiceExt};

    use super::*;
    use crate::testutil::task_peer;

    /// A stand-in for rmcp: opens session "s-1" for a request without one.
    fn fake_rmcp()
    -> impl Service<Request<()>, Response = Response<String>, Error = Infallible, Future = impl Send>
    + Clone
    + Send
    + 'static {
        tower::service_fn(|req: Request<()>| async move {
            let mut resp = Response::new("ok".to_owned());
            if !req.headers().contains_key(SESSION_HEADER) {
                resp.headers_mut()
                    .insert(SESSION_HEADER, "s-1".parse().unwrap());
            }
            Ok::<_, Infallible>(resp)
        })
    }

    fn request(peer: Option<&Arc<Peer>>, session: Option<&str>, method: Method) -> Request<()> {
        let mut b = Request::builder().method(method).uri("/mcp");
        if let Some(s) = session {
            b = b.header(SESSION_HEADER, s);
        }
        let mut r = b.body(()).unwrap();
        if let Some(p) = peer {
            r.extensions_mut().insert(p.clone());
        }
        r
    }

    #[tokio::test]
    async fn hijacked_session_id_is_refused_with_404() {
        let layer = SessionBindingLayer::new();
        let svc = layer.layer(fake_rmcp());
        let alice = Arc::new(task_peer(&["github/tool/*"]));
        let mallory = Arc::new(Peer::Client {
            client: "spiffe://acme.corp/client/mallory".parse().unwrap(),
            serial_hex: "01".into(),
            not_after_unix: i64::MAX,
        });

        let r = svc
            .clone()
            .oneshot(request(Some(&alice), None, Method::POST))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(layer.binding().len(), 1);

        let r = svc
            .clone()
            .oneshot(request(Some(&alice), Some("s-1"), Method::POST))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "owner may use its session");

        let r = svc
            .clone()
            .oneshot(request(Some(&mallory), Some("s-1"), Method::POST))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "another peer may not");

        let r = svc
            .clone()
            .oneshot(request(Some(&alice), Some("never-issued"), Method::POST))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "unknown ids are refused");

        let r = svc
            .clone()
            .oneshot(request(None, None, Method::POST))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "no peer extension");

        let r = svc
            .clone()
            .oneshot(request(Some(&alice), Some("s-1"), Method::DELETE))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(layer.binding().is_empty(), "DELETE unbinds");
    }

    /// The owner is the SPIFFE ID, not the certificate: the same task on a rotated SVID
    /// keeps its session, another task of the same client, the client itself or a
    /// server with the same name do not get it.
    #[test]
    fn sessions_belong_to_the_spiffe_id() {
        let binding = SessionBinding::new(SessionLimits::default());
        let task = task_peer(&["github/tool/*"]);
        binding.bind("s", &task);
        let Peer::Task {
            client,
            task: task_id,
            claims,
            not_after_unix,
            ..
        } = task.clone()
        else {
            unreachable!()
        };
        let rotated = Peer::Task {
            client: client.clone(),
            task: task_id.clone(),
            claims: claims.clone(),
            serial_hex: "43".into(),
            not_after_unix: not_after_unix + 60,
        };
        assert!(binding.check("s", &task));
        assert!(binding.check("s", &rotated), "same task, rotated SVID");
        let sibling = Peer::Task {
            client: client.clone(),
            task: client.task(tessera_identity::TaskId::new()),
            claims,
            serial_hex: "42".into(),
            not_after_unix,
        };
        assert!(!binding.check("s", &sibling), "another task of the client");
        let runtime = Peer::Client {
            client: client.clone(),
            serial_hex: "42".into(),
            not_after_unix,
        };
        assert!(!binding.check("s", &runtime), "the client's own SVID");
        binding.bind("c", &runtime);
        assert!(binding.check("c", &runtime));
        assert!(!binding.check("c", &task), "a task of the client");
        let server = Peer::Server {
            server: format!("spiffe://{}/mcp/{}", client.trust_domain(), client.name)
                .parse()
                .unwrap(),
            serial_hex: "42".into(),
            not_after_unix,
        };
        assert!(!binding.check("c", &server), "a server of the same name");
        assert_eq!(
            Owner::of(&task) == Owner::of(&rotated),
            task.spiffe_id() == rotated.spiffe_id()
        );
    }

    /// A new task of the test client.
    fn task_of(_: usize) -> Peer {
        let Peer::Task {
            client,
            claims,
            not_after_unix,
            ..
        } = task_peer(&["github/tool/*"])
        else {
            unreachable!()
        };
        Peer::Task {
            task: client.task(tessera_identity::TaskId::new()),
            client,
            claims,
            serial_hex: "42".into(),
            not_after_unix,
        }
    }

    /// However many peers open sessions, the table holds at most its cap, all of them
    /// recently used.
    #[test]
    fn the_table_has_a_hard_cap() {
        let binding = SessionBinding::new(
            SessionLimits::default()
                .with_max_sessions(1000)
                .with_idle_ttl(Duration::from_secs(3600)),
        );
        for i in 0..5000 {
            binding.bind(&format!("s-{i}"), &task_of(i));
        }
        assert!(binding.len() <= 1000, "{} sessions bound", binding.len());
    }

    /// One peer opening sessions past its share only forgets its own; many peers
    /// together push out the least recently used, not a session in use.
    #[test]
    fn one_peer_cannot_push_out_the_others() {
        let binding = SessionBinding::new(
            SessionLimits::default()
                .with_max_sessions(100)
                .with_max_sessions_per_peer(10),
        );
        let victim = task_of(0);
        binding.bind("victim", &victim);
        let mallory = task_of(1);
        for i in 0..1000 {
            binding.bind(&format!("m-{i}"), &mallory);
        }
        assert_eq!(binding.len(), 11);
        assert!(binding.check("victim", &victim));
        assert!(
            binding.check("m-999", &mallory),
            "its newest session is kept"
        );
        assert!(!binding.check("m-0", &mallory), "its oldest went");
        for i in 0..1000 {
            binding.bind(&format!("p-{i}"), &task_of(i));
            if i % 10 == 0 {
                assert!(binding.check("victim", &victim), "after {i} peers");
            }
            assert!(binding.len() <= 100);
        }
        assert!(binding.check("victim", &victim));
        binding.unbind("victim");
        assert!(!binding.check("victim", &victim));
        assert_eq!(binding.len(), 99);
    }

    /// Sessions forgotten past a limit or idle past the TTL are handed to the hook
    /// (to close them in the session manager) and refused afterwards.
    #[test]
    fn forgotten_sessions_go_to_the_hook() {
        let gone = Arc::new(Mutex::new(Vec::<String>::new()));
        let binding = SessionBinding::new(
            SessionLimits::default()
                .with_max_sessions(3)
                .with_idle_ttl(Duration::from_millis(200)),
        )
        .on_evict({
            let gone = gone.clone();
            move |ids| gone.lock().unwrap().extend(ids)
        });
        let peers: Vec<Peer> = (0..5).map(task_of).collect();
        for (i, p) in peers.iter().enumerate() {
            binding.bind(&format!("s-{i}"), p);
        }
        assert_eq!(*gone.lock().unwrap(), ["s-0", "s-1"]);
        assert_eq!(binding.len(), 3);
        std::thread::sleep(Duration::from_millis(300));
        assert!(!binding.check("s-4", &peers[4]), "idle past the TTL");
        assert_eq!(gone.lock().unwrap().last().map(String::as_str), Some("s-4"));
        binding.bind("s-5", &peers[0]);
        assert_eq!(binding.len(), 1, "idle sessions go when another is bound");
        assert!(binding.check("s-5", &peers[0]));
    }
}

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

/// The table of session id → owner. Shared by every connection of one server.
#[derive(Debug)]
pub struct SessionBinding {
    table: Mutex<HashMap<String, (Owner, Instant)>>,
    idle_ttl: Duration,
    max_entries: usize,
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
#[derive(Clone, Debug, PartialEq, Eq)]
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

// === impl SessionBinding ===

impl SessionBinding {
    /// A table whose entries are forgotten after `idle_ttl` without use once it holds
    /// more than `max_entries`.
    pub fn new(idle_ttl: Duration, max_entries: usize) -> Self {
        Self {
            table: Mutex::new(HashMap::new()),
            idle_ttl,
            max_entries,
        }
    }

    /// Whether `peer` may use session `id` (it is bound to `peer`); refreshes its use time.
    pub fn check(&self, id: &str, peer: &Peer) -> bool {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        match t.get_mut(id) {
            Some((owner, used)) if owner.is(peer) => {
                *used = Instant::now();
                true
            }
            _ => false,
        }
    }

    /// Binds session `id` to `peer`. An id already bound keeps its first owner.
    pub fn bind(&self, id: &str, peer: &Peer) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if t.len() >= self.max_entries {
            let ttl = self.idle_ttl;
            t.retain(|_, (_, used)| used.elapsed() < ttl);
        }
        t.entry(id.to_owned())
            .or_insert_with(|| (Owner::of(peer), Instant::now()));
    }

    /// Forgets session `id`.
    pub fn unbind(&self, id: &str) {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Number of bound sessions.
    pub fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no session is bound.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// === impl SessionBindingLayer ===

impl SessionBindingLayer {
    /// A layer with a fresh table (idle TTL 1 hour once over 100,000 sessions).
    pub fn new() -> Self {
        Self::with_binding(Arc::new(SessionBinding::new(
            Duration::from_secs(3600),
            100_000,
        )))
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
        let binding = SessionBinding::new(Duration::from_secs(60), 10);
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
}

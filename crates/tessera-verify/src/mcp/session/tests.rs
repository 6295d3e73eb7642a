use std::convert::Infallible;

use tower::{Layer, Service, ServiceExt};

use super::*;
use crate::peer::Credential;
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
        credential: Credential::Certificate {
            serial_hex: "01".into(),
            not_after_unix: i64::MAX,
            node_ca_serials: Vec::new(),
        },
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
        credential,
        ..
    } = task.clone()
    else {
        unreachable!()
    };
    let rotated = Peer::Task {
        client: client.clone(),
        task: task_id.clone(),
        claims: claims.clone(),
        credential: Credential::Certificate {
            serial_hex: "43".into(),
            not_after_unix: credential.not_after_unix() + 60,
            node_ca_serials: Vec::new(),
        },
    };
    assert!(binding.check("s", &task));
    assert!(binding.check("s", &rotated), "same task, rotated SVID");
    let sibling = Peer::Task {
        client: client.clone(),
        task: client.task(tessera_identity::TaskId::new()),
        claims,
        credential: credential.clone(),
    };
    assert!(!binding.check("s", &sibling), "another task of the client");
    let runtime = Peer::Client {
        client: client.clone(),
        credential: credential.clone(),
    };
    assert!(!binding.check("s", &runtime), "the client's own SVID");
    binding.bind("c", &runtime);
    assert!(binding.check("c", &runtime));
    assert!(!binding.check("c", &task), "a task of the client");
    let server = Peer::Server {
        server: format!("spiffe://{}/mcp/{}", client.trust_domain(), client.name)
            .parse()
            .unwrap(),
        credential: credential.clone(),
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
        credential,
        ..
    } = task_peer(&["github/tool/*"])
    else {
        unreachable!()
    };
    Peer::Task {
        task: client.task(tessera_identity::TaskId::new()),
        client,
        claims,
        credential: credential.clone(),
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

//! A TCP forwarder that stands between one agent and the server replicas, so a test can
//! partition that node: [`Forwarder::cut`] drops every open connection and refuses new
//! ones (the agent sees its streams fail and its reconnects refused), [`Forwarder::heal`]
//! lets connections through again. Nothing is decrypted: the agent's mTLS to the server
//! goes through unchanged (the agent pins the server's SPIFFE ID, not a host name).
//!
//! Each new connection goes to the first upstream that accepts it, in order, which also
//! makes the forwarder a stand-in for a Kubernetes Service in front of the replicas: when
//! one replica dies, the next connection reaches the other.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// The forwarder; stops (and drops every connection) on drop.
pub struct Forwarder {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

struct Shared {
    upstreams: Mutex<Vec<String>>,
    cut: AtomicBool,
    /// Open connections' copy tasks, aborted (their sockets closed) by `cut`.
    conns: Mutex<Vec<AbortHandle>>,
    accepted: AtomicU64,
    refused: AtomicU64,
}

impl Forwarder {
    /// Listens on a free loopback port and forwards to `upstreams` (`host:port`).
    pub async fn start(upstreams: &[&str]) -> std::io::Result<Forwarder> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstreams: Mutex::new(upstreams.iter().map(|s| s.to_string()).collect()),
            cut: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Forwarder {
            addr,
            shared,
            accept,
        })
    }

    /// `host:port` to point the agent at.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Partitions: closes every forwarded connection now and refuses new ones until
    /// [`Self::heal`].
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        for conn in self.shared.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }

    /// Ends the partition: new connections are forwarded again.
    pub fn heal(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// Whether the forwarder is cut.
    pub fn is_cut(&self) -> bool {
        self.shared.cut.load(Ordering::SeqCst)
    }

    /// Connections forwarded so far, and connections refused while cut.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.accepted.load(Ordering::SeqCst),
            self.shared.refused.load(Ordering::SeqCst),
        )
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.accept.abort();
        for conn in self.shared.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        if shared.cut.load(Ordering::SeqCst) {
            // Refused: closed before a byte is read, so the agent's TLS handshake fails.
            shared.refused.fetch_add(1, Ordering::SeqCst);
            drop(inbound);
            continue;
        }
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let upstreams = shared.upstreams.lock().unwrap().clone();
        let task = tokio::spawn(forward(inbound, upstreams));
        let mut conns = shared.conns.lock().unwrap();
        conns.retain(|c| !c.is_finished());
        // A cut that raced this accept must not miss the new connection.
        if shared.cut.load(Ordering::SeqCst) {
            task.abort();
        } else {
            conns.push(task.abort_handle());
        }
    }
}

async fn forward(mut inbound: TcpStream, upstreams: Vec<String>) {
    for upstream in &upstreams {
        if let Ok(mut outbound) = TcpStream::connect(upstream).await {
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            return;
        }
    }
    // No upstream answered: the inbound connection closes, as a dead Service would.
}

//! Which server replica the node talks to. The agent lists every replica
//! (`server.addresses`); each new connection of a channel (the first, and every one after
//! a break) is made by [`Replicas::connect`], which starts at the replica that last
//! worked and moves on through the others until one completes TCP and TLS. Every RPC
//! and stream rides one channel, so all of them move together: a replica killed under a
//! `Sync` stream breaks it, the stream's own backoff reopens it, and the reconnect lands
//! on a live replica.
//!
//! The order is shuffled once per agent so a fleet spreads over the replicas instead of
//! piling onto the first one listed, and stays put while a replica works (no rebalancing:
//! a connection is long-lived and cheap to keep).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rand::seq::SliceRandom;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Deadline for TCP + TLS to one replica; a silent one costs this much before the next
/// is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One replica: where to dial and the name TLS sends (SNI; the certificate check is by
/// SPIFFE ID, not by this name).
#[derive(Debug)]
struct Replica {
    address: http::uri::Authority,
    server_name: ServerName<'static>,
}

/// The server's replicas, in this agent's order, and the one in use.
#[derive(Debug)]
pub(crate) struct Replicas {
    replicas: Vec<Replica>,
    /// Index of the replica the last successful connection went to.
    current: AtomicUsize,
}

/// Why no replica could be reached (or an address was unusable).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// An address that does not make a TLS server name.
    #[error("the server address {address}: {reason}")]
    Address { address: String, reason: String },
}

impl Replicas {
    /// The replicas at `addresses` (not empty), in a random order.
    pub(crate) fn new(addresses: &[http::uri::Authority]) -> Result<Arc<Replicas>, ConnectError> {
        let mut replicas = addresses
            .iter()
            .map(|address| {
                let host = address
                    .host()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned();
                let server_name =
                    ServerName::try_from(host).map_err(|e| ConnectError::Address {
                        address: address.to_string(),
                        reason: e.to_string(),
                    })?;
                Ok(Replica {
                    address: address.clone(),
                    server_name,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if replicas.is_empty() {
            return Err(ConnectError::Address {
                address: String::new(),
                reason: "no server address".into(),
            });
        }
        replicas.shuffle(&mut rand::rng());
        Ok(Arc::new(Replicas {
            replicas,
            current: AtomicUsize::new(0),
        }))
    }

    /// The replica in use (or to be tried first), for messages.
    pub(crate) fn current(&self) -> &http::uri::Authority {
        &self.replicas[self.current.load(Ordering::Relaxed) % self.replicas.len()].address
    }

    /// Every replica, comma-separated, for messages naming "the server".
    pub(crate) fn describe(&self) -> String {
        let mut all: Vec<String> = self
            .replicas
            .iter()
            .map(|r| r.address.to_string())
            .collect();
        all.sort();
        all.join(", ")
    }

    /// A TLS connection over `tls` to the first replica that answers, starting with the
    /// current one. Each is tried once per call; the callers (the channel's users) back
    /// off between calls, so a cluster with every replica down is not hammered.
    pub(crate) async fn connect(
        &self,
        tls: Arc<ClientConfig>,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let n = self.replicas.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last_error = None;
        for step in 0..n {
            let i = (start + step) % n;
            let replica = &self.replicas[i];
            match tokio::time::timeout(CONNECT_TIMEOUT, dial(replica, Arc::clone(&tls))).await {
                Ok(Ok(stream)) => {
                    let moved = i != start % n;
                    self.current.store(i, Ordering::Relaxed);
                    if moved {
                        tracing::warn!(server = %replica.address, "moved to another tessera-server replica");
                    }
                    tracing::info!(server = %replica.address, "connected to tessera-server");
                    return Ok(stream);
                }
                Ok(Err(error)) => {
                    tracing::warn!(server = %replica.address, %error, "tessera-server replica unreachable; trying the next");
                    last_error = Some(error);
                }
                Err(_) => {
                    tracing::warn!(server = %replica.address, timeout = ?CONNECT_TIMEOUT, "tessera-server replica did not answer; trying the next");
                    last_error = Some(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "{} did not answer within {CONNECT_TIMEOUT:?}",
                            replica.address
                        ),
                    ));
                }
            }
        }
        // The next attempt starts one further on, so a replica that accepts TCP but
        // fails later (TLS, a full backlog) is not retried first forever.
        self.current.store((start + 1) % n, Ordering::Relaxed);
        Err(last_error.unwrap_or_else(|| std::io::Error::other("no server replica")))
    }
}

async fn dial(replica: &Replica, tls: Arc<ClientConfig>) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(replica.address.as_str()).await?;
    tcp.set_nodelay(true)?;
    tokio_rustls::TlsConnector::from(tls)
        .connect(replica.server_name.clone(), tcp)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_replica_is_kept_once_in_some_order() {
        let addresses: Vec<http::uri::Authority> = ["a:1", "b:2", "[::1]:3"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let r = Replicas::new(&addresses).unwrap();
        assert_eq!(r.describe(), "[::1]:3, a:1, b:2");
        assert!(addresses.contains(r.current()));
    }

    #[test]
    fn an_empty_list_is_refused() {
        assert!(Replicas::new(&[]).is_err());
    }

    #[tokio::test]
    async fn a_dead_replica_is_skipped_for_a_live_one() {
        // A port nothing listens on (bound, then closed) and a live TCP listener: the
        // connection reaches the listener whatever the shuffled order. The TLS handshake
        // fails (the listener speaks no TLS), so the call errs, but only after dialing
        // the live one, which the accept proves.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap();
        let r = Replicas::new(&[
            dead.to_string().parse().unwrap(),
            live_addr.to_string().parse().unwrap(),
        ])
        .unwrap();
        let accepted = tokio::spawn(async move {
            let (s, _) = live.accept().await.unwrap();
            drop(s);
        });
        let tls = super::super::tls::client_config(
            "spiffe://t.test/tessera/server",
            &[test_root()],
            None,
        )
        .unwrap();
        assert!(r.connect(tls).await.is_err());
        tokio::time::timeout(Duration::from_secs(10), accepted)
            .await
            .expect("the live replica was dialed")
            .unwrap();
    }

    fn test_root() -> Vec<u8> {
        use rustls::pki_types::pem::PemObject;
        let root = tessera_authority::Authority::generate_cluster_root(
            &"t.test".parse().unwrap(),
            Duration::from_secs(3600),
        )
        .unwrap();
        rustls::pki_types::CertificateDer::from_pem_slice(root.cert_pem.as_bytes())
            .unwrap()
            .to_vec()
    }
}

//! Where the server's own SVID and the trust bundles come from, and the one seam through
//! which they reach TLS.
//!
//! Two sources feed the same seam, linkerd-style: a [`TrustPublisher`] validates material
//! into a [`TrustMaterial`] *before* publishing it on a `tokio::sync::watch`, and the TLS
//! config ([`crate::tls`]) reads the current [`TrustSource`] value on every handshake. A bad
//! update never replaces good material.
//!
//! - [`workload`]: the SPIFFE Workload API through `spiffe::X509Source`; the own SVID is
//!   picked by its SPIFFE ID `spiffe://<td>/mcp/<server>`, never "whatever is first".
//!   JWT bundles (JWKS) come from the same agent's `FetchJWTBundles` stream.
//! - [`files`]: PEM files (bundle, chain, key) and an optional JWKS file, polled for
//!   changes.
//!
//! The JWT bundles validate JWT-SVIDs presented to the token endpoint
//! ([`crate::oauth::token_endpoint`]); they ride in the same [`TrustMaterial`], so one
//! seam carries everything a server trusts.

pub(crate) mod anchor_limits;
pub mod files;
mod jwt_bundles;
mod material;
pub mod workload;

use std::sync::Arc;

use tokio::sync::watch;

pub(crate) use material::provider;
pub use material::{TrustError, TrustMaterial};

/// The receiving end of the trust seam: the latest validated [`TrustMaterial`], if any yet.
///
/// Cheap to clone; reading is a short read lock on the `watch` value.
#[derive(Clone, Debug)]
pub struct TrustSource {
    rx: watch::Receiver<Option<Arc<TrustMaterial>>>,
}

/// The sending end of the trust seam. Only validated material can be published.
#[derive(Debug)]
pub struct TrustPublisher {
    tx: watch::Sender<Option<Arc<TrustMaterial>>>,
}

// === impl TrustSource ===

impl TrustSource {
    /// A new, empty seam: publish on the [`TrustPublisher`], read from the [`TrustSource`].
    pub fn channel() -> (TrustPublisher, TrustSource) {
        let (tx, rx) = watch::channel(None);
        (TrustPublisher { tx }, TrustSource { rx })
    }

    /// A source that always holds `material` (tests, fixed deployments).
    pub fn from_static(material: TrustMaterial) -> TrustSource {
        // A receiver keeps the last value after its sender is gone, and `ready` returns at
        // once on a value that is already there.
        let (_tx, rx) = watch::channel(Some(Arc::new(material)));
        TrustSource { rx }
    }

    /// The current material; `None` until the first valid material was published.
    pub fn current(&self) -> Option<Arc<TrustMaterial>> {
        self.rx.borrow().clone()
    }

    /// Waits until material is available and returns it.
    ///
    /// # Errors
    /// [`TrustError::Closed`] if the publisher went away before publishing anything.
    pub async fn ready(&self) -> Result<Arc<TrustMaterial>, TrustError> {
        let mut rx = self.rx.clone();
        let guard = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| TrustError::Closed)?;
        Ok(guard.clone().expect("waited for Some"))
    }

    /// A receiver that is notified on every published change.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<TrustMaterial>>> {
        self.rx.clone()
    }
}

// === impl TrustPublisher ===

impl TrustPublisher {
    /// Publishes already-validated material; readers see it on their next handshake.
    pub fn publish(&self, material: TrustMaterial) {
        tracing::info!(
            own_id = %material.own_id(),
            not_after_unix = material.not_after_unix(),
            trust_domains = ?material.trust_domains().map(|t| t.as_str()).collect::<Vec<_>>(),
            jwt_keys = material.jwt_bundles().values().map(|b| b.keys().len()).sum::<usize>(),
            "new trust material published"
        );
        self.tx.send_replace(Some(Arc::new(material)));
    }

    /// Whether any [`TrustSource`] is still listening.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

//! Which JWT keys this agent trusts and serves (`FetchJWTBundles`, `ValidateJWTSVID`):
//! standalone, its own; in cluster mode, its own and every other node's
//! ([`crate::node::ClusterJwtKeys`]), recomputed when either changes and when one of the
//! other nodes' keys reaches its `not_after`.

use std::sync::Arc;
use std::time::Duration;

use tessera_authority::JwtAuthority;
use tessera_identity::JwtBundle;
use tokio::sync::watch;

use crate::drain;
use crate::node::{OtherNodesKeys, jwt_union};

/// The JWT bundle of this agent's trust domain as it validates and serves it.
#[derive(Debug, Clone)]
pub(crate) struct JwtTrust {
    authority: Arc<JwtAuthority>,
    bundle: watch::Receiver<Arc<JwtBundle>>,
}

impl JwtTrust {
    /// A standalone agent: its own keys are the trust domain's.
    pub(crate) fn standalone(authority: Arc<JwtAuthority>) -> JwtTrust {
        let bundle = authority.subscribe_bundle();
        JwtTrust { authority, bundle }
    }

    /// A cluster-mode agent: its own keys and `others`, kept current by a task that
    /// ends with `drain`.
    pub(crate) fn cluster(
        authority: Arc<JwtAuthority>,
        others: watch::Receiver<Arc<OtherNodesKeys>>,
        drain: drain::Watch,
    ) -> JwtTrust {
        let now = unix_now();
        let (first, next_expiry) = jwt_union(&authority.bundle(), &others.borrow(), now);
        let (tx, bundle) = watch::channel(Arc::new(first));
        tokio::spawn(combine(
            authority.subscribe_bundle(),
            others,
            tx,
            next_expiry,
            drain,
        ));
        JwtTrust { authority, bundle }
    }

    /// This agent's signer.
    pub(crate) fn authority(&self) -> &Arc<JwtAuthority> {
        &self.authority
    }

    /// The bundle now.
    pub(crate) fn bundle(&self) -> Arc<JwtBundle> {
        Arc::clone(&self.bundle.borrow())
    }

    /// The bundle now and on every change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<JwtBundle>> {
        self.bundle.clone()
    }

    /// Whether key `kid` is this agent's own (its tokens' tasks are in its task table),
    /// as opposed to another node's.
    pub(crate) fn is_own_key(&self, kid: &str) -> bool {
        self.authority.bundle().key(kid).is_some()
    }
}

async fn combine(
    mut own: watch::Receiver<Arc<JwtBundle>>,
    mut others: watch::Receiver<Arc<OtherNodesKeys>>,
    tx: watch::Sender<Arc<JwtBundle>>,
    mut next_expiry: Option<i64>,
    drain: drain::Watch,
) {
    loop {
        // Wake at the next expiry (a second late, so the key has passed its not_after).
        let until_expiry = next_expiry.map_or(Duration::from_secs(3600), |t| {
            Duration::from_secs(u64::try_from(t - unix_now()).unwrap_or(0) + 1)
        });
        tokio::select! {
            () = drain.signaled() => return,
            r = own.changed() => if r.is_err() { return },
            r = others.changed() => if r.is_err() { return },
            () = tokio::time::sleep(until_expiry) => {}
        }
        let own_bundle = Arc::clone(&own.borrow_and_update());
        let others_now = Arc::clone(&others.borrow_and_update());
        let (bundle, next) = jwt_union(&own_bundle, &others_now, unix_now());
        next_expiry = next;
        tx.send_if_modified(|cur| {
            if **cur == bundle {
                false
            } else {
                *cur = Arc::new(bundle);
                true
            }
        });
    }
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

//! Test fixtures of this crate: the sample trust domain, task and server, and the
//! captured log. Certificates come from `tessera_testca`.

pub(crate) mod logs;

use tessera_identity::TaskClaims;
use time::OffsetDateTime;

use crate::peer::{Credential, Peer, TokenCredential};

pub(crate) const TD: &str = "acme.corp";
pub(crate) const TASK_ULID: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
pub(crate) const SERVER: &str = "spiffe://acme.corp/mcp/github";

pub(crate) fn task_id_str(td: &str) -> String {
    format!("spiffe://{td}/client/code-reviewer/task/{TASK_ULID}")
}

/// Claims for the sample task of `td` on server github, with `scopes`.
pub(crate) fn claims(td: &str, scopes: &[&str], deadline_unix: i64) -> TaskClaims {
    TaskClaims {
        version: tessera_identity::TASK_CLAIMS_VERSION,
        task_id: TASK_ULID.parse().unwrap(),
        client_id: format!("spiffe://{td}/client/code-reviewer")
            .parse()
            .unwrap(),
        subject: "alice@acme.corp".into(),
        purpose: "review PR 42".into(),
        server: format!("spiffe://{td}/mcp/github").parse().unwrap(),
        scopes: scopes.iter().map(|s| s.parse().unwrap()).collect(),
        consent_id: "consent-1".into(),
        deadline_unix,
    }
}

/// A task peer built directly (no certificate), valid for an hour.
pub(crate) fn task_peer(scopes: &[&str]) -> Peer {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let c = claims(TD, scopes, now + 3600);
    Peer::Task {
        client: c.client_id.clone(),
        task: c.client_id.task(c.task_id),
        claims: c,
        credential: Credential::Certificate {
            serial_hex: "42".into(),
            not_after_unix: now + 3600,
            node_ca_serials: Vec::new(),
        },
    }
}

/// The sample task (granted `task_scopes`, live for an hour) as an access token's
/// peer: its scopes narrowed to `token_scopes`, the token ending in `exp_in` seconds.
pub(crate) fn bearer_peer(
    task_scopes: &[&str],
    token_scopes: &[&str],
    jti: &str,
    exp_in: i64,
    cert_bound: bool,
) -> Peer {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let token_scopes: Vec<_> = token_scopes.iter().map(|s| s.parse().unwrap()).collect();
    Peer::task_from_access_token(
        claims(TD, task_scopes, now + 3600),
        &token_scopes,
        TokenCredential {
            jti: jti.into(),
            exp_unix: now + exp_in,
            cert_bound,
        },
    )
    .unwrap()
}

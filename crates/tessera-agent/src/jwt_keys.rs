//! Drives the JWT signing key's rotation schedule.

use std::sync::Arc;
use std::time::Duration;

use tessera_authority::JwtAuthority;
use time::OffsetDateTime;

use crate::drain;

/// Ticks `authority`'s rotation until the drain starts: often enough that each phase (a sixth
/// of `key_ttl`) starts within a twelfth of a key's life, and at least every 30 s.
pub(crate) async fn run(authority: Arc<JwtAuthority>, key_ttl: Duration, drain: drain::Watch) {
    let period = (key_ttl / 12).clamp(Duration::from_secs(1), Duration::from_secs(30));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = drain.signaled() => return,
            _ = tick.tick() => {}
        }
        let authority = Arc::clone(&authority);
        // Key generation and the state file's fsync are blocking work.
        let result =
            tokio::task::spawn_blocking(move || authority.tick(OffsetDateTime::now_utc())).await;
        match result {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "JWT key rotation failed; will retry"),
            Err(e) => tracing::error!(error = %e, "JWT key rotation panicked"),
        }
    }
}

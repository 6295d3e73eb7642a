//! The wall clock, as the server records it (the agent store's units).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in unix seconds. A clock before 1970 reads as 0.
pub(crate) fn unix_secs() -> i64 {
    since_epoch().as_secs().try_into().unwrap_or(i64::MAX)
}

/// Now, in unix milliseconds. A clock before 1970 reads as 0.
pub(crate) fn unix_millis() -> i64 {
    since_epoch().as_millis().try_into().unwrap_or(i64::MAX)
}

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

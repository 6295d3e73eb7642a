//! The guard that holds new tasks off a consent while it is being withdrawn. Its
//! own module because the store owns it, withdrawals set it and BeginTask reads it.

use std::collections::HashMap;
use std::sync::Arc;

/// Consents with a withdrawal in progress in this process, by id: the `now` of the
/// withdrawal, and how many withdrawals of that id are in progress. While sealed,
/// [`crate::Store::begin_task`] refuses the consent as if withdrawn, so the set of tasks to end
/// stops growing while their revocations are prepared outside the writer.
#[derive(Debug, Default)]
pub(crate) struct Sealed(std::sync::Mutex<HashMap<String, (i64, u32)>>);

impl Sealed {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (i64, u32)>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// If `consent_id` is being withdrawn, the withdrawal's time.
    pub(crate) fn check(&self, consent_id: &str) -> Option<i64> {
        self.lock().get(consent_id).map(|(at, _)| *at)
    }

    /// Seals `consent_id` until the guard drops (also on cancellation).
    pub(crate) fn seal(self: &Arc<Self>, consent_id: &str, at: i64) -> SealGuard {
        self.lock()
            .entry(consent_id.to_owned())
            .and_modify(|(_, count)| *count += 1)
            .or_insert((at, 1));
        SealGuard {
            sealed: Arc::clone(self),
            consent_id: consent_id.to_owned(),
        }
    }
}

/// Unseals its consent when dropped.
pub(crate) struct SealGuard {
    sealed: Arc<Sealed>,
    consent_id: String,
}

impl Drop for SealGuard {
    fn drop(&mut self) {
        let mut sealed = self.sealed.lock();
        if let Some((_, count)) = sealed.get_mut(&self.consent_id) {
            *count -= 1;
            if *count == 0 {
                sealed.remove(&self.consent_id);
            }
        }
    }
}

//! The cache of slices: bounded, and a caller cannot pin it. Generic over what it holds
//! (a [`super::Slice`]), so that it needs nothing of the slices but their count of
//! policies.
//!
//! Resource names come from requests (any URI within a task's scopes), so a task can
//! ask for as many distinct slices as it likes, with names as long as a request body.
//! The cache holds at most [`MAX_SLICES`] slices and [`MAX_CACHE_BYTES`] of estimated
//! memory (names, plus a per-slice and per-policy estimate); a name longer than
//! [`MAX_CACHED_NAME_BYTES`] is never cached (its slice is computed per request, a
//! cost its own requests pay). Past either bound a slice is evicted by CLOCK (second
//! chance): a hit only sets a flag under the read lock, and an insertion looks at a
//! bounded number of slots for one not used since the hand last passed, so names
//! requested once (a scan of chosen URIs) go first and the slices in use stay, and no
//! operation walks the whole cache under the lock.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cedar_policy::EntityUid;

/// At most this many (action, resource, client) slices are kept.
pub(crate) const MAX_SLICES: usize = 4096;

/// At most this much estimated memory is kept in slices (see [`Slot::weight`]).
pub(crate) const MAX_CACHE_BYTES: usize = 16 << 20;

/// A slice whose resource or client name is longer than this is not cached: one such
/// name would otherwise take the room of many ordinary ones.
pub(crate) const MAX_CACHED_NAME_BYTES: usize = 1024;

/// Estimated bytes of one cached slice besides its names: the `Arc<Slice>`, its vectors,
/// the three index maps' entries and the slot.
const SLOT_OVERHEAD_BYTES: usize = 512;

/// Estimated bytes per policy a slice evaluates: the cloned policy (its AST is shared
/// with the full set behind `Arc`s) and its entries in the slice's `PolicySet` maps.
pub(super) const PER_POLICY_BYTES: usize = 256;

/// Slots an insertion looks at for one not used since the hand last passed, before it
/// takes the one under the hand anyway: bounds the work under the write lock.
const CLOCK_SWEEP: usize = 32;

/// The cached slices: a CLOCK ring of slots, and an index keyed by action, then
/// resource, then client, so that a lookup borrows the request's uids instead of
/// cloning them into a tuple. (The counts are `pub(super)` for the sibling tests,
/// which check them against the bounds.)
#[derive(Debug)]
pub(super) struct Cache<T> {
    pub(super) index: HashMap<EntityUid, HashMap<EntityUid, HashMap<EntityUid, usize>>>,
    /// `None` for a slot freed by an eviction that made room by bytes.
    pub(super) slots: Vec<Option<Slot<T>>>,
    free: Vec<usize>,
    /// The CLOCK hand: the next slot an insertion looks at.
    hand: usize,
    pub(super) len: usize,
    pub(super) bytes: usize,
}

#[derive(Debug)]
pub(super) struct Slot<T> {
    action: EntityUid,
    pub(super) resource: EntityUid,
    client: EntityUid,
    pub(super) slice: Arc<T>,
    /// Set by every hit (under the read lock), cleared when the hand passes.
    pub(super) used: AtomicBool,
    /// Estimated bytes: the names, [`SLOT_OVERHEAD_BYTES`], and [`PER_POLICY_BYTES`] per
    /// policy the slice evaluates.
    pub(super) weight: usize,
}

/// The byte length of a uid's id, as the cache counts it.
fn name_len(uid: &EntityUid) -> usize {
    uid.id().unescaped().len()
}

// Not derived: a derived `Default` would ask `T: Default`.
impl<T> Default for Cache<T> {
    fn default() -> Self {
        Self {
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            hand: 0,
            len: 0,
            bytes: 0,
        }
    }
}

impl<T> Cache<T> {
    pub(super) fn get(
        &self,
        action: &EntityUid,
        resource: &EntityUid,
        client: &EntityUid,
    ) -> Option<usize> {
        self.index
            .get(action)
            .and_then(|by_resource| by_resource.get(resource))
            .and_then(|by_client| by_client.get(client))
            .copied()
    }

    pub(super) fn slot(&self, i: usize) -> Option<&Slot<T>> {
        self.slots.get(i).and_then(Option::as_ref)
    }

    /// Caches `slice` (which evaluates `policies` policies per request) unless it is
    /// already there (another thread computed it meanwhile) or too big to cache;
    /// returns the cached one, if any.
    pub(super) fn insert(
        &mut self,
        action: &EntityUid,
        resource: &EntityUid,
        client: &EntityUid,
        slice: &Arc<T>,
        policies: usize,
    ) -> Option<Arc<T>> {
        if let Some(i) = self.get(action, resource, client) {
            return self.slot(i).map(|s| Arc::clone(&s.slice));
        }
        let names = name_len(resource) + name_len(client);
        if name_len(resource).max(name_len(client)) > MAX_CACHED_NAME_BYTES {
            return None;
        }
        let weight = names + name_len(action) + SLOT_OVERHEAD_BYTES + PER_POLICY_BYTES * policies;
        if weight > MAX_CACHE_BYTES {
            return None;
        }
        while self.len >= MAX_SLICES || self.bytes + weight > MAX_CACHE_BYTES {
            if !self.evict_one() {
                return None;
            }
        }
        let slot = Slot {
            action: action.clone(),
            resource: resource.clone(),
            client: client.clone(),
            slice: Arc::clone(slice),
            used: AtomicBool::new(false),
            weight,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        self.index
            .entry(action.clone())
            .or_default()
            .entry(resource.clone())
            .or_default()
            .insert(client.clone(), i);
        self.len += 1;
        self.bytes += weight;
        Some(Arc::clone(slice))
    }

    /// Evicts one slot: the first of the next [`CLOCK_SWEEP`] under the hand not used
    /// since the hand last passed it, else the last of them in use. Whether it evicted
    /// one.
    fn evict_one(&mut self) -> bool {
        let n = self.slots.len();
        if n == 0 {
            return false;
        }
        let (mut victim, mut fallback) = (None, None);
        for _ in 0..CLOCK_SWEEP {
            let i = self.hand % n;
            self.hand = (i + 1) % n;
            let Some(slot) = self.slot(i) else { continue };
            if !slot.used.swap(false, Ordering::Relaxed) {
                victim = Some(i);
                break;
            }
            fallback = Some(i);
        }
        // Every slot looked at was in use (or free): the last one in use goes. If all
        // were free, nothing is evicted this time and the hand has moved on.
        let victim = victim.or(fallback);
        let Some(slot) = victim.and_then(|i| self.slots[i].take().map(|s| (i, s))) else {
            return false;
        };
        let (i, slot) = slot;
        if let Some(by_resource) = self.index.get_mut(&slot.action) {
            if let Some(by_client) = by_resource.get_mut(&slot.resource) {
                by_client.remove(&slot.client);
                if by_client.is_empty() {
                    by_resource.remove(&slot.resource);
                }
            }
            if by_resource.is_empty() {
                self.index.remove(&slot.action);
            }
        }
        self.free.push(i);
        self.len -= 1;
        self.bytes -= slot.weight;
        true
    }
}

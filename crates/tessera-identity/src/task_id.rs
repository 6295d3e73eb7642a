//! Task ids: ULIDs, sortable by creation time and unguessable.

use std::fmt;
use std::str::FromStr;

use ulid::Ulid;

use crate::error::IdError;

/// Length of a canonical ULID string.
const ULID_LEN: usize = 26;

/// The id of one task, a ULID printed in its canonical 26-character uppercase
/// Crockford base32 form.
///
/// Parsing accepts only that canonical form: the `ulid` crate would also take lowercase,
/// which would give one task two spellings (and two SPIFFE IDs). Refusing them keeps
/// `Display` and `FromStr` an exact round trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(Ulid);

// === impl TaskId ===

impl TaskId {
    /// A fresh task id from the system clock and the thread-local RNG (`Ulid::new()`).
    #[allow(
        clippy::new_without_default,
        reason = "a random id is not a sensible `Default`"
    )]
    pub fn new() -> Self {
        Self(Ulid::new())
    }

    /// Wraps an existing ULID (e.g. one read back from the store).
    pub fn from_ulid(u: Ulid) -> Self {
        Self(u)
    }

    /// The ULID inside.
    pub fn ulid(&self) -> Ulid {
        self.0
    }
}

impl FromStr for TaskId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || IdError::InvalidTaskId {
            value: s.to_owned(),
        };
        if s.len() != ULID_LEN {
            return Err(invalid());
        }
        let ulid = Ulid::from_string(s).map_err(|_| invalid())?;
        // The decoder is lenient about case; only the canonical spelling is accepted.
        if ulid.to_string() != s {
            return Err(invalid());
        }
        Ok(Self(ulid))
    }
}

impl TryFrom<&str> for TaskId {
    type Error = IdError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `Ulid`'s Display is the canonical uppercase form.
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<Ulid> for TaskId {
    fn from(u: Ulid) -> Self {
        Self(u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_canonical_form() {
        let id = TaskId::new();
        let s = id.to_string();
        assert_eq!(s.len(), ULID_LEN);
        assert_eq!(s.parse::<TaskId>().unwrap(), id);
        let fixed = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
        assert_eq!(fixed.parse::<TaskId>().unwrap().to_string(), fixed);
        assert_eq!(TaskId::from_ulid(id.ulid()), id);
    }

    #[test]
    fn rejects_non_canonical_task_ids() {
        let cases = [
            ("empty", ""),
            ("lowercase", "01arz3ndektsv4rrffq69g5fav"),
            ("mixed case", "01ARZ3NDEKTSV4RRFFQ69G5FAv"),
            ("too short", "01ARZ3NDEKTSV4RRFFQ69G5FA"),
            ("too long", "01ARZ3NDEKTSV4RRFFQ69G5FAVX"),
            ("excluded letter U", "01ARZ3NDEKTSV4RRFFQ69G5FAU"),
            ("overflow", "81ARZ3NDEKTSV4RRFFQ69G5FAV"),
            ("uuid", "0190f3c8-8f5e-7a44-9b6e-2f1e7a3c9d10"),
            ("not a ulid", "not-a-ulid"),
        ];
        for (case, input) in cases {
            assert_eq!(
                input.parse::<TaskId>().unwrap_err(),
                IdError::InvalidTaskId {
                    value: input.to_owned()
                },
                "case: {case}"
            );
        }
    }
}

//! Workload attestation: who is calling, from the kernel's point of view.

mod peer;
mod selector;
pub(crate) mod sys;
mod unix;

pub use peer::{PeerConn, PeerInfo};
pub use selector::{Selector, SelectorError};
pub use unix::{AttestError, Attestation, UnixAttestor};

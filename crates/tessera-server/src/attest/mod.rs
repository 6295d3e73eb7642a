//! Node attestation: how a node proves its name to the server once, before it holds a
//! node SVID.
//!
//! * `k8s_psat`: Kubernetes projected service-account tokens, checked with TokenReview.

pub mod k8s_psat;

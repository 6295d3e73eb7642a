//! rustls configs: the server side that requires (or, for servers that also accept
//! bearer tokens, allows) and checks SPIFFE client certificates, and the client side
//! that agent runtimes use to pin an MCP server's identity.
//!
//! rustls' built-in `WebPkiClientVerifier` takes a fixed root store and knows nothing of
//! trust domains or the SVID profile, and spiffe-rustls only builds from a live
//! `X509Source` with private verifier types; our material changes at runtime from either
//! source (Workload API or files), so [`SpiffeClientVerifier`] reads the current
//! [`TrustSource`] on every handshake and delegates path validation to a webpki verifier
//! built once per bundle version.
//!
//! Both sides enforce cluster mode's issuance split: a chain carrying a node CA (an
//! intermediate with Tessera's node-CA extension) must end in a client or task leaf, so
//! a stolen node CA key cannot pass for an MCP server, a node or an administrator.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tessera_identity::{
    CaBinding, IdKind, ServerId, TrustDomain, check_intermediate, check_leaf_svid,
};

use crate::peer::{Peer, serial_hex_of};
use crate::revocation::RevocationWatcher;
use crate::trust::TrustSource;
use crate::trust::anchor_limits::AnchorLimits;
use crate::trust::provider;

/// Why a TLS config could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// rustls refused the configuration (versions, key, certificate).
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
    /// The bundle for the client config is empty or unusable.
    #[error("bundle: {0}")]
    Bundle(String),
}

/// Which trust domains a [`SpiffeClientVerifier`] accepts client certificates from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum TrustDomainPolicy {
    /// The own trust domain plus an explicit allow-list.
    AllowList(BTreeSet<TrustDomain>),
    /// Any trust domain that has a bundle. Spelled `dangerous_*` on the builder.
    AnyWithBundle,
}

/// What an intermediate CA a peer presents must say of its trust domain.
///
/// One naming another trust domain than the leaf's is always refused (see
/// [`tessera_identity::check_intermediate`]); this decides about one naming none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IntermediatePolicy {
    /// Accept intermediates without a SPIFFE ID, as a corporate PKI issues them to an
    /// agent in upstream mode.
    AllowUnnamed,
    /// Every intermediate must carry `spiffe://<td>` of the leaf's trust domain.
    RequireNamed,
}

/// Builds the server-side rustls config: a client certificate (mandatory unless
/// [`ServerTlsBuilder::client_certificate_optional`]) that chains to the bundle of an
/// allowed trust domain and fits the SVID profile, and the own SVID served from the
/// current trust material.
#[derive(Clone, Debug)]
pub struct ServerTlsBuilder {
    source: TrustSource,
    policy: TrustDomainPolicy,
    intermediates: IntermediatePolicy,
    mandatory: bool,
    revocations: Option<RevocationWatcher>,
}

// === impl ServerTlsBuilder ===

impl ServerTlsBuilder {
    /// Accepts clients of the own trust domain only (the default).
    pub fn new(source: TrustSource) -> Self {
        Self {
            source,
            policy: TrustDomainPolicy::AllowList(BTreeSet::new()),
            intermediates: IntermediatePolicy::AllowUnnamed,
            mandatory: true,
            revocations: None,
        }
    }

    /// Refuses, in the handshake, a client chain through the CA of a node `revocations`
    /// already holds as evicted (cluster mode). The authorizer refuses such a peer on
    /// every request anyway (and so a connection made before the eviction); this
    /// spares the connection. A stale feed refuses here only what it knows; the
    /// authorizer then fails closed.
    pub fn refuse_evicted_node_cas(mut self, revocations: RevocationWatcher) -> Self {
        self.revocations = Some(revocations);
        self
    }

    /// Lets a client connect without a certificate, for a server that also accepts
    /// OAuth bearer tokens (MCP SDK clients dial with a CA bundle and a token, not a
    /// client certificate).
    ///
    /// A certificate that *is* presented is still verified in full (chain, trust domain,
    /// SVID profile) and the handshake fails if it does not pass: a connection either
    /// proves a SPIFFE identity or proves none, never a bad one. Use it only when every
    /// request then goes through [`crate::oauth::BearerAuthLayer`] with bearer tokens
    /// accepted: that layer answers a request with neither a certificate nor a token
    /// `401`, and [`crate::mcp::Enforced`] refuses any request that reaches it without a
    /// peer. Keep the default (required) for mTLS-only servers.
    pub fn client_certificate_optional(mut self) -> Self {
        self.mandatory = false;
        self
    }

    /// Also accepts clients of `trust_domain`, if the trust material holds its bundle.
    pub fn allow_trust_domain(mut self, trust_domain: TrustDomain) -> Self {
        if let TrustDomainPolicy::AllowList(set) = &mut self.policy {
            set.insert(trust_domain);
        }
        self
    }

    /// Accepts clients of *any* trust domain whose bundle the material holds. Every
    /// federated bundle then becomes a source of valid callers: only for labs.
    pub fn dangerous_allow_any_trust_domain(mut self) -> Self {
        self.policy = TrustDomainPolicy::AnyWithBundle;
        self
    }

    /// Refuses a client chain with an intermediate CA that carries no SPIFFE ID.
    ///
    /// An intermediate naming another trust domain is refused either way. An unnamed
    /// one is accepted by default, as upstream PKIs issue them; but when several trust
    /// domains' intermediates come from one upstream root that is also in a bundle, the
    /// root signs them all, and only the names tell them apart. Issue intermediates with
    /// a URI SAN `spiffe://<td>` and require it here.
    pub fn require_trust_domain_on_intermediates(mut self) -> Self {
        self.intermediates = IntermediatePolicy::RequireNamed;
        self
    }

    /// The client-certificate verifier alone (to compose your own `ServerConfig`).
    pub fn client_verifier(&self) -> Arc<SpiffeClientVerifier> {
        Arc::new(SpiffeClientVerifier {
            source: self.source.clone(),
            policy: self.policy.clone(),
            intermediates: self.intermediates,
            mandatory: self.mandatory,
            revocations: self.revocations.clone(),
            provider: provider(),
        })
    }

    /// The cert resolver alone: serves the current own SVID.
    pub fn cert_resolver(&self) -> Arc<OwnSvidResolver> {
        Arc::new(OwnSvidResolver {
            source: self.source.clone(),
        })
    }

    /// A complete rustls `ServerConfig` (TLS 1.2 and 1.3, ring). Set `alpn_protocols` on
    /// the result to what your HTTP server speaks (e.g. `h2`, `http/1.1`).
    ///
    /// # Errors
    /// [`TlsError::Rustls`] if rustls refuses the protocol versions.
    pub fn build(&self) -> Result<ServerConfig, TlsError> {
        Ok(ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(self.client_verifier())
            .with_cert_resolver(self.cert_resolver()))
    }
}

/// A rustls client-certificate verifier over the live [`TrustSource`].
///
/// Per handshake: the leaf must fit the SVID profile and be a Tessera client, task (with
/// claims) or server id ([`Peer::from_leaf_der`]); its trust domain must be the own one or
/// allowed; every intermediate presented must name that trust domain or none
/// ([`ServerTlsBuilder::require_trust_domain_on_intermediates`]), and a chain with a node
/// CA (cluster mode) must end in a client or task leaf; then webpki validates
/// the chain against that trust domain's bundle only, at `now` (signatures, validity,
/// clientAuth EKU).
pub struct SpiffeClientVerifier {
    source: TrustSource,
    policy: TrustDomainPolicy,
    intermediates: IntermediatePolicy,
    mandatory: bool,
    revocations: Option<RevocationWatcher>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for SpiffeClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeClientVerifier")
            .field("policy", &self.policy)
            .field("intermediates", &self.intermediates)
            .field("mandatory", &self.mandatory)
            .finish_non_exhaustive()
    }
}

fn refuse(reason: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(reason))))
}

/// A refusal reason that is just text.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refusal(String);

/// An intermediate CA without a SPIFFE ID, where one naming the trust domain is required.
#[derive(Debug, thiserror::Error)]
#[error("intermediate CA names no trust domain; spiffe://{0} is required")]
struct UnnamedIntermediate(TrustDomain);

/// Refuses `intermediates` (everything the peer sent after its leaf, whether or not
/// the path uses it) that name another trust domain than `td`, or, per `policy`, none;
/// and, when one is a node CA, a leaf of a kind a node CA may not sign.
///
/// The issuance split (cluster mode): a node CA's key lives on a node, so a chain
/// through one may end only in a client or task leaf, never an MCP server, a node or an
/// administrator. Node CAs are told by their extension, never by the chain's length,
/// and any node CA sent along counts, used by the path or not. A node CA must have
/// pathLen 0 (checked here), so webpki also refuses one that signed another CA. A plain
/// intermediate (no node-CA extension) is the trust domain's own CA, as an upstream PKI
/// issues it to the server or a standalone agent, and may sign any leaf: Tessera's
/// root signs no plain intermediates, only node CAs, each with the extension.
///
/// Returns the serials of the node CAs among them (for the eviction check).
fn check_intermediates(
    intermediates: &[CertificateDer<'_>],
    td: &TrustDomain,
    policy: IntermediatePolicy,
    leaf_kind: Option<IdKind>,
) -> Result<Vec<String>, rustls::Error> {
    let mut node_cas = Vec::new();
    for der in intermediates {
        let ca = check_intermediate(der.as_ref(), td).map_err(refuse)?;
        match ca.binding {
            CaBinding::Named => {}
            CaBinding::Unnamed if policy == IntermediatePolicy::AllowUnnamed => {}
            CaBinding::Unnamed => return Err(refuse(UnnamedIntermediate(td.clone()))),
        }
        ca.check_may_issue(leaf_kind).map_err(refuse)?;
        if ca.node.is_some() {
            node_cas.push(serial_hex_of(der.as_ref()).map_err(refuse)?);
        }
    }
    Ok(node_cas)
}

/// A chain through the CA of a node the revocation feed holds as evicted.
#[derive(Debug, thiserror::Error)]
#[error("issued through the CA of evicted node {node} (serial {serial})")]
struct EvictedNodeCa {
    node: String,
    serial: String,
}

/// The identity kind of a peer, for the issuance split.
fn peer_kind(peer: &Peer) -> IdKind {
    match peer {
        Peer::Task { .. } => IdKind::Task,
        Peer::Client { .. } => IdKind::Client,
        Peer::Server { .. } => IdKind::Server,
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The bundle changes at runtime and this must borrow from `self`; sending no hints
        // is allowed (RFC 8446 §4.2.4) and SPIFFE clients present their SVID regardless.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let result = self.verify(end_entity, intermediates, now);
        if let Err(e) = &result {
            tracing::info!(error = %e, "client certificate refused");
        }
        result
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl SpiffeClientVerifier {
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let material = self
            .source
            .current()
            .ok_or_else(|| rustls::Error::General("no trust material yet".into()))?;
        let peer = Peer::from_leaf_der(end_entity.as_ref()).map_err(refuse)?;
        let td = peer.trust_domain();
        let own = material.own_id().trust_domain();
        let allowed = td == own
            || match &self.policy {
                TrustDomainPolicy::AllowList(set) => set.contains(td),
                TrustDomainPolicy::AnyWithBundle => true,
            };
        if !allowed {
            return Err(refuse(Refusal(format!(
                "trust domain {td} is not allowed (own: {own})"
            ))));
        }
        let node_cas = check_intermediates(
            intermediates,
            td,
            self.intermediates,
            Some(peer_kind(&peer)),
        )?;
        // Refused at once when the feed already holds the node as evicted; the
        // authorizer refuses every request of a connection made before it did.
        if let Some(feed) = &self.revocations
            && let Some((serial, node)) = feed.evicted_node_ca(node_cas.iter().map(String::as_str))
        {
            return Err(refuse(EvictedNodeCa { node, serial }));
        }
        // Anchored in the leaf's own trust domain's bundle, never another allowed one.
        let verifier = material
            .client_verifier(td)
            .ok_or(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            ))?;
        let verified = verifier.verify_client_cert(end_entity, intermediates, now)?;
        if let Some((roots, limits)) = material.anchor_limits(td) {
            limits
                .check(
                    roots,
                    end_entity,
                    intermediates,
                    now,
                    webpki::KeyUsage::client_auth(),
                    &self.provider,
                )
                .map_err(refuse)?;
        }
        Ok(verified)
    }
}

/// Serves the own SVID from the current trust material on every handshake.
#[derive(Debug)]
pub struct OwnSvidResolver {
    source: TrustSource,
}

impl ResolvesServerCert for OwnSvidResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.source.current().map(|m| m.certified_key().clone())
    }
}

/// A server-certificate verifier for agent runtimes: the server must present exactly
/// `expected` (`spiffe://<td>/mcp/<server>`), fit the SVID profile, and chain to `roots`
/// through no node CA (in cluster mode MCP server SVIDs come from the root, so a server
/// leaf a node CA signed is a stolen node key impersonating a server).
///
/// The TLS server name the client connects with is ignored: SPIFFE identity replaces DNS
/// names (SVIDs carry no DNS SAN), so pass any name, e.g. `ServerName::try_from("mcp")`.
pub struct ExpectedServerVerifier {
    expected: String,
    trust_domain: TrustDomain,
    intermediates: IntermediatePolicy,
    roots: Arc<RootCertStore>,
    limits: AnchorLimits,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for ExpectedServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExpectedServerVerifier")
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl ExpectedServerVerifier {
    /// A verifier for `expected`, trusting the CA certificates in `bundle` (DER).
    ///
    /// # Errors
    /// [`TlsError::Bundle`] if `bundle` is empty or a certificate is not a usable anchor.
    pub fn new(
        expected: &ServerId,
        bundle: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Result<Self, TlsError> {
        let bundle: Vec<_> = bundle.into_iter().collect();
        let limits = AnchorLimits::of(&bundle).map_err(TlsError::Bundle)?;
        let mut roots = RootCertStore::empty();
        for cert in bundle {
            roots
                .add(cert)
                .map_err(|e| TlsError::Bundle(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(TlsError::Bundle("empty bundle".into()));
        }
        Ok(Self {
            expected: expected.to_string(),
            trust_domain: expected.trust_domain().clone(),
            intermediates: IntermediatePolicy::AllowUnnamed,
            roots: Arc::new(roots),
            limits,
            provider: provider(),
        })
    }

    /// Refuses a server chain with an intermediate CA that carries no SPIFFE ID (see
    /// [`ServerTlsBuilder::require_trust_domain_on_intermediates`]); one naming another
    /// trust domain is refused either way.
    pub fn require_trust_domain_on_intermediates(mut self) -> Self {
        self.intermediates = IntermediatePolicy::RequireNamed;
        self
    }
}

impl ServerCertVerifier for ExpectedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let leaf = check_leaf_svid(end_entity.as_ref()).map_err(refuse)?;
        // The split first: a server leaf through a node CA is a stolen node key at work,
        // and says so whatever identity it claims.
        check_intermediates(
            intermediates,
            &self.trust_domain,
            self.intermediates,
            leaf.kind,
        )?;
        if leaf.spiffe_id != self.expected {
            return Err(refuse(Refusal(format!(
                "server presented {:?}, expected {:?}",
                leaf.spiffe_id, self.expected
            ))));
        }
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        self.limits
            .check(
                &self.roots,
                end_entity,
                intermediates,
                now,
                webpki::KeyUsage::server_auth(),
                &self.provider,
            )
            .map_err(refuse)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A rustls `ClientConfig` for an agent runtime: presents `chain` + `key` (e.g. a task
/// SVID picked by hint from the Workload API) and accepts only a server presenting exactly
/// `expected`, chaining to `bundle`. Set `alpn_protocols` on the result as needed.
///
/// # Errors
/// [`TlsError`] for an unusable bundle, or a key rustls refuses.
pub fn client_config(
    expected: &ServerId,
    bundle: impl IntoIterator<Item = CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ClientConfig, TlsError> {
    let verifier = Arc::new(ExpectedServerVerifier::new(expected, bundle)?);
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)?)
}

/// A rustls `ClientConfig` that presents no certificate and accepts only a server
/// presenting exactly `expected`, chaining to `bundle`: for a runtime that
/// authenticates with a bearer token (`Authorization: Bearer`) to a server that made
/// client certificates optional ([`ServerTlsBuilder::client_certificate_optional`]).
///
/// # Errors
/// [`TlsError`] for an unusable bundle.
pub fn client_config_without_certificate(
    expected: &ServerId,
    bundle: impl IntoIterator<Item = CertificateDer<'static>>,
) -> Result<ClientConfig, TlsError> {
    let verifier = Arc::new(ExpectedServerVerifier::new(expected, bundle)?);
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

#[cfg(test)]
mod node_ca_tests;
#[cfg(test)]
mod tests;

//! Connection spans over real TLS handshakes, read back from the formatted log.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;
use time::OffsetDateTime;
use tracing::Instrument;

use super::*;
use crate::authz::Authorizer;
use crate::authz::policy::PolicyStore;
use crate::request::McpRequest;
use crate::revocation::RevocationWatcher;
use crate::testutil::logs::formatted;
use tessera_testca::Ca;

use crate::testutil::{SERVER, TD, claims, task_id_str};
use crate::tls::{ServerTlsBuilder, client_config};
use crate::trust::{TrustMaterial, TrustSource};

const POLICIES: &str = r#"@id("reviewers") permit(principal, action, resource);"#;

/// One connection served the way the crate docs show: the handshake inside the
/// connection's span, the peer recorded, then a decision per tool (one audit line each).
async fn serve_one(
    server: Arc<ServerConfig>,
    client: ClientConfig,
    authz: Arc<Authorizer>,
    tools: &'static [&'static str],
) -> ConnectionSpan {
    let (a, b) = tokio::io::duplex(16 * 1024);
    let conn = ConnectionSpan::accepted("in-memory");
    let recorded = conn.clone();
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let served = tokio::spawn(
        async move {
            let Ok(tls) = acceptor.accept(a).await else {
                return;
            };
            let peer = Peer::from_chain(tls.get_ref().1.peer_certificates()).unwrap();
            recorded.record_peer(&peer);
            for tool in tools {
                authz.check(&peer, &McpRequest::call_tool(*tool, None));
            }
        }
        .instrument(conn.span().clone()),
    );
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    // Held until the server side is done: a client gone at once could make the server's
    // post-handshake write (TLS 1.3 tickets) fail its accept.
    let _client = connector
        .connect(ServerName::try_from("mcp").unwrap(), b)
        .await;
    served.await.unwrap();
    conn
}

/// The log lines holding `marker`.
fn lines_with(marker: &str) -> Vec<String> {
    let text = String::from_utf8(formatted().lock().unwrap().clone()).unwrap();
    text.lines()
        .filter(|l| l.contains(marker))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn every_line_of_a_connection_carries_its_id_and_peer() {
    // The capturing subscriber must be installed before the first line.
    let _ = formatted();
    let ca = Ca::root(TD);
    let (chain, key) = ca.leaf(SERVER).mint().into_parts();
    let material = TrustMaterial::new(
        SERVER.parse().unwrap(),
        chain,
        key,
        BTreeMap::from([(TD.parse().unwrap(), vec![ca.cert().clone()])]),
        OffsetDateTime::now_utc().unix_timestamp(),
    )
    .unwrap();
    let server = Arc::new(
        ServerTlsBuilder::new(TrustSource::from_static(material))
            .build()
            .unwrap(),
    );
    let policies = Arc::new(
        PolicyStore::from_strs(POLICIES, &crate::authz::schema_with_arguments("{}")).unwrap(),
    );
    let authz = Arc::new(Authorizer::new(
        SERVER.parse().unwrap(),
        policies,
        RevocationWatcher::from_static([], []),
    ));
    let mut task = ca.leaf(&task_id_str(TD));
    task.claims_der = Some(
        claims(
            TD,
            &["github/tool/*"],
            OffsetDateTime::now_utc().unix_timestamp() + 3600,
        )
        .to_der(),
    );
    let (chain, key) = task.mint().into_parts();
    let client = || {
        client_config(
            &SERVER.parse().unwrap(),
            [ca.cert().clone()],
            chain.clone(),
            key.clone_key(),
        )
        .unwrap()
    };

    let first = serve_one(
        server.clone(),
        client(),
        authz.clone(),
        &["conn_span_first_a", "conn_span_first_b"],
    )
    .await;
    let second = serve_one(
        server.clone(),
        client(),
        authz.clone(),
        &["conn_span_second"],
    )
    .await;
    assert_ne!(first.id(), second.id());

    // Both decisions of the first connection, and only they, name it and its peer.
    let want = format!(
        "conn{{id={} remote=in-memory peer={}}}",
        first.id(),
        task_id_str(TD)
    );
    for tool in ["conn_span_first_a", "conn_span_first_b"] {
        let lines = lines_with(tool);
        assert_eq!(lines.len(), 1, "{tool}: {lines:#?}");
        assert!(lines[0].contains(&want), "{want} missing: {}", lines[0]);
        assert!(
            !lines[0].contains("tessera-verify:"),
            "messages do not repeat the crate name: {}",
            lines[0]
        );
    }
    let lines = lines_with("conn_span_second");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains(&format!("conn{{id={} ", second.id())) && !lines[0].contains(&want),
        "the second connection's line names it, not the first: {}",
        lines[0]
    );

    // A client certificate the verifier refuses: its refusal, logged inside the
    // handshake before there is a peer, names the connection too.
    let foreign = Ca::root("evil.example");
    let mut evil = foreign.leaf(&task_id_str("evil.example"));
    evil.claims_der = Some(claims("evil.example", &["github/tool/*"], 1_900_000_000).to_der());
    let (evil_chain, evil_key) = evil.mint().into_parts();
    let refused_client = client_config(
        &SERVER.parse().unwrap(),
        [ca.cert().clone()],
        evil_chain,
        evil_key,
    )
    .unwrap();
    let refused = serve_one(server, refused_client, authz, &[]).await;
    let lines = lines_with(&format!("conn{{id={} remote=in-memory}}", refused.id()));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("client certificate refused")),
        "the refusal names its connection: {lines:#?}"
    );
}

//! Cluster-wide revocation across processes (issue 16): a real PostgreSQL, two
//! `tessera-server` replicas, cluster-mode `tessera-agent`s on "nodes" A, B and C, the
//! example MCP server (tessera-verify) fed by a node's agent, and this process as the
//! agent runtime (Tasks API + the SPIFFE Workload API stream, the example runtime's
//! library for mTLS MCP calls). A task that ends anywhere is refused everywhere: on a
//! connection that was already open, through partitions, crashes of an agent, a replica
//! and PostgreSQL.
//!
//! Partitions are made by a TCP forwarder between a node's agent and the replicas
//! (`support/forwarder.rs`). Verifiers whose freshness is under test run with a 5 s
//! staleness bound instead of the default 30 s, so "goes stale, fails closed, recovers"
//! fits in a test; the mechanism does not depend on the number.
//!
//! Needs the binaries: `cargo build --bins -p tessera-agent -p tessera-cli -p
//! tessera-server -p tessera-example-mcp-server -p tessera-example-agent-runtime`.
//! Each test starts its own cluster; they run one at a time (the machine's two cores).

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/fake_node.rs"]
mod fake_node;
#[path = "support/forwarder.rs"]
mod forwarder;
#[path = "support/mcp.rs"]
mod mcp;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cluster::{
    Cluster, RunningTask, call, task_on, until, until_allowed, until_refused, until_refused_as,
};
use forwarder::Forwarder;
use futures::StreamExt;
use mcp::{McpServer, Trust};
use tessera_e2e::TestAgent;
use tessera_proto::tessera::v1::revocation_update::Update;
use tessera_proto::tessera::v1::revocations_client::RevocationsClient;
use tessera_proto::tessera::v1::{
    EvictNodeRequest, FollowRevocationsRequest, ListAllTasksRequest, ListAuditRequest,
    ReportTaskEventsRequest, TaskBegun, TaskEvent, WatchRevocationsRequest, WithdrawConsentRequest,
    task_event,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One cluster at a time: each is PostgreSQL, two replicas, up to three agents and two
/// MCP servers, on a 2-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Staleness bound of the verifiers whose freshness a test watches (see the module doc).
const STALENESS: &str = "5";

const GENEROUS: Duration = Duration::from_secs(30);

/// Whether `out` is a refusal with `reason`.
fn refused_as(out: &tessera_example_agent_runtime::CallOutcome, reason: &str) -> bool {
    out.denial_reason() == Some(reason)
}

/// The MCP server fed by `agent`, with `extra` flags.
async fn mcp_server(agent: &TestAgent, tag: &str, extra: &[&str]) -> McpServer {
    McpServer::start(agent, tag, Trust::Workload, extra)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log_text()))
}

/// Whether the server (replica `r`) knows task `id`.
async fn server_knows(cl: &Cluster, r: usize, id: &str) -> bool {
    let resp = cl.replicas[r]
        .admin()
        .await
        .list_all_tasks(ListAllTasksRequest {
            client: String::new(),
            include_ended: true,
        })
        .await;
    resp.is_ok_and(|r| r.into_inner().tasks.iter().any(|t| t.id == id))
}

#[tokio::test]
async fn forwarder_cut_drops_open_connections_and_refuses_new_ones_until_healed() {
    // An echo server behind the forwarder.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = echo.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let fwd = Forwarder::start(&[&echo_addr]).await.unwrap();
    let roundtrip = |mut s: tokio::net::TcpStream| async move {
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await?;
        anyhow::ensure!(&buf == b"ping", "echo answered {buf:?}");
        Ok::<_, anyhow::Error>(s)
    };
    let open = tokio::net::TcpStream::connect(fwd.address()).await.unwrap();
    let mut open = roundtrip(open).await.unwrap();

    fwd.cut();
    // The open connection is closed: a read ends (EOF or reset), never hangs.
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), open.read(&mut buf))
        .await
        .expect("the cut closes the open connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // A new connection is refused before a byte goes through.
    let new = tokio::net::TcpStream::connect(fwd.address()).await.unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(5), roundtrip(new))
        .await
        .expect("refused, not hung");
    assert!(
        refused.is_err(),
        "a connection went through a cut forwarder"
    );

    fwd.heal();
    let again = tokio::net::TcpStream::connect(fwd.address()).await.unwrap();
    roundtrip(again).await.expect("forwarded again after heal");
    let (accepted, refused) = fwd.counts();
    assert_eq!((accepted, refused), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_task_on_node_a_refuses_the_next_call_on_an_open_connection_at_node_c() {
    let _one = SERIAL.lock().await;
    let Some(cl) = Cluster::start("cluster_revocation").await else {
        return;
    };
    let a = cl.agent("node-a", &cl.r1().node, "").await;
    let c = cl.agent("node-c", &cl.r2().node, "").await;
    cl.register(&[&a, &c]).await;
    let server_c = mcp_server(&c, "c", &[]).await;

    let task = RunningTask::begin(&a).await;
    let conn = task.connect(&server_c.url).await.unwrap();
    let out = call(&conn).await;
    assert!(
        out.is_ok(),
        "A's task at C's server before EndTask: {out:?}"
    );

    let start = Instant::now();
    task.end().await;
    let end_rtt = start.elapsed();
    let (out, after) = until_refused(&conn, GENEROUS).await;
    assert!(refused_as(&out, "revoked"), "{out:?}");
    // The same connection: the server accepted exactly one for this task.
    let accepted = server_c
        .log_text()
        .lines()
        .filter(|l| l.contains("connection accepted") && l.contains(&task.task.spiffe_id))
        .count();
    assert_eq!(accepted, 1, "server log:\n{}", server_c.log_text());
    eprintln!(
        "EndTask on A -> refused at C on the open connection {:?} after EndTask answered \
         (EndTask {end_rtt:?})",
        after
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_verifier_watching_a_cluster_mode_agent_fails_closed_with_an_upgrade_error() {
    let _one = SERIAL.lock().await;
    let Some(cl) = Cluster::start("cluster_revocation").await else {
        return;
    };
    let c = cl.agent("node-c", &cl.r1().node, "").await;
    // A verifier is an attested workload; this process stands in for one.
    cl.register(&[&c]).await;
    // What every tessera-verify before Follow does: Revocations.Watch, the full set.
    let mut old = RevocationsClient::new(TestAgent::channel(&c.workload).await.unwrap());
    let refused = match old.watch(WatchRevocationsRequest {}).await {
        Err(status) => status,
        // A stream that fails on its first message is the same refusal.
        Ok(stream) => match stream.into_inner().next().await {
            Some(Err(status)) => status,
            other => panic!("a cluster-mode agent served the legacy Watch: {other:?}"),
        },
    };
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    let msg = refused.message().to_lowercase();
    assert!(
        msg.contains("cluster") && msg.contains("follow") && msg.contains("upgrade"),
        "the error tells the operator what to do: {refused:?}"
    );
    // The new protocol on the same socket is served.
    let mut new = RevocationsClient::new(TestAgent::channel(&c.workload).await.unwrap())
        .follow(FollowRevocationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(GENEROUS, new.next())
        .await
        .expect("Follow answers")
        .expect("stream open")
        .expect("a message");
    assert!(
        matches!(first.update, Some(Update::Snapshot(_))),
        "Follow starts with a snapshot: {first:?}"
    );
    assert!(first.current_as_of_unix_ms > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_withdrawn_at_the_server_refuses_its_tasks_from_every_node() {
    let _one = SERIAL.lock().await;
    let Some(cl) = Cluster::start("cluster_revocation").await else {
        return;
    };
    let a = cl.agent("node-a", &cl.r1().node, "").await;
    let b = cl.agent("node-b", &cl.r2().node, "").await;
    let c = cl.agent("node-c", &cl.r1().node, "").await;
    let consent = cl.register(&[&a, &b, &c]).await;
    let server_c = mcp_server(&c, "c", &[]).await;

    let mut open = Vec::new();
    for agent in [&a, &b, &c] {
        let task = RunningTask::begin(agent).await;
        assert_eq!(task.task.consent_id, consent);
        let conn = task.connect(&server_c.url).await.unwrap();
        assert!(call(&conn).await.is_ok());
        open.push((agent, task, conn));
    }

    cl.r2()
        .admin()
        .await
        .withdraw_consent(WithdrawConsentRequest {
            id: consent.clone(),
        })
        .await
        .unwrap();

    for (agent, task, conn) in &open {
        let (out, after) = until_refused(conn, GENEROUS).await;
        assert!(refused_as(&out, "revoked"), "{out:?}");
        eprintln!(
            "withdrawal -> task {} refused at C after {after:?}",
            task.task.id
        );
        // Each node ended its own task, with the reason.
        until(
            "the task ends on its node, as consent_withdrawn",
            GENEROUS,
            || async {
                task_on(agent, &task.task.id)
                    .await
                    .is_some_and(|t| t.ended_at_unix != 0 && t.end_reason == "consent_withdrawn")
            },
        )
        .await;
    }
}

/// The task `id` as the server (replica `r`) holds it.
async fn server_task(cl: &Cluster, r: usize, id: &str) -> Option<tessera_proto::tessera::v1::Task> {
    cl.replicas[r]
        .admin()
        .await
        .list_all_tasks(ListAllTasksRequest {
            client: String::new(),
            include_ended: true,
        })
        .await
        .ok()?
        .into_inner()
        .tasks
        .into_iter()
        .find(|t| t.id == id)
}

/// A compromised node learns task ids from the SPIFFE IDs presented to it, and reports one
/// of them as its own before the owner does (here: while the owner is cut off). It gains
/// nothing: the owner's begin is rejected alone, so the owner's reporting goes on (a task
/// begun and ended there afterwards is refused at C), and the contested task id is
/// revoked everywhere at once (fail closed), audited naming both nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_id_another_node_reported_first_is_revoked_and_the_owner_reports_on() {
    let _one = SERIAL.lock().await;
    let Some(cl) = Cluster::start("cluster_revocation").await else {
        return;
    };
    let fa = Forwarder::start(&[&cl.r1().node]).await.unwrap();
    let a = cl.agent("node-a", &fa.address(), "").await;
    let c = cl.agent("node-c", &cl.r2().node, "").await;
    let consent = cl.register(&[&a, &c]).await;
    let server_c = mcp_server(&c, "c", &[]).await;
    let token = cl.r1().join_token("node-f").await;
    let mut fake = fake_node::attest(
        &cl.r2().node,
        &fake_node::bundle_of(&cl.ca.join("ca.crt")),
        &token,
        "node-f",
    )
    .await;

    // A is cut off: its begin waits in its journal.
    fa.cut();
    let task = RunningTask::begin(&a).await;
    let at_c = task.connect(&server_c.url).await.unwrap();
    assert!(call(&at_c).await.is_ok());
    // The fake node claims the id first, with a deadline seconds away (were the
    // revocation kept only that long, the task would be valid again after it).
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let claim = TaskEvent {
        seq: 1,
        event: Some(task_event::Event::Begun(TaskBegun {
            task_id: task.task.id.clone(),
            spiffe_id: task.task.spiffe_id.clone(),
            client: task.task.client.clone(),
            subject: task.task.subject.clone(),
            server: task.task.server.clone(),
            scopes: task.task.scopes.clone(),
            consent_id: consent.clone(),
            begun_at_unix_ms: now_ms,
            deadline_unix: now_ms / 1000 + 5,
            serials: Vec::new(),
        })),
    };
    let answer = fake
        .report_task_events(ReportTaskEventsRequest {
            events: vec![claim.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((answer.acknowledged_seq, answer.rejected.len()), (1, 0));
    assert!(server_knows(&cl, 0, &task.task.id).await);

    // Healed: A's begin reaches the server, which revokes the contested id everywhere.
    fa.heal();
    let (out, after) = until_refused(&at_c, GENEROUS * 2).await;
    assert!(refused_as(&out, "revoked"), "{out:?}");
    eprintln!("heal -> contested task refused at C after {after:?}");
    let held = server_task(&cl, 0, &task.task.id).await.unwrap();
    assert_eq!(held.end_reason, "contested");
    // Ownership is not handed over: the task is still the fake node's to report.
    let again = fake
        .report_task_events(ReportTaskEventsRequest {
            events: vec![claim],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.rejected.is_empty(), "{again:?}");
    until("A ends the task the server revoked", GENEROUS, || async {
        task_on(&a, &task.task.id)
            .await
            .is_some_and(|t| t.ended_at_unix != 0)
    })
    .await;

    // A's reporting is not stuck behind the rejected begin: a task begun and ended on A
    // now is refused at C through A's journal and the server.
    let second = RunningTask::begin(&a).await;
    let second_at_c = second.connect(&server_c.url).await.unwrap();
    assert!(call(&second_at_c).await.is_ok());
    second.end().await;
    let (out, after) = until_refused(&second_at_c, GENEROUS).await;
    assert!(refused_as(&out, "revoked"), "{out:?}");
    eprintln!("A's next EndTask -> refused at C after {after:?}");

    let metrics = || async {
        reqwest::get(format!("http://{}/metrics", a.http))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    until("A's journal is empty", GENEROUS, || async {
        metrics().await.contains("tessera_task_journal_depth 0")
    })
    .await;
    let text = metrics().await;
    let line = "tessera_task_events_rejected_total{reason=\"task_of_another_node\"} 1";
    assert!(text.contains(line), "{line} not in:\n{text}");
    assert!(
        a.log_text()
            .contains("the server rejected a task event for good"),
        "A warns of the rejection:\n{}",
        a.log_text()
    );
    let audit = cl
        .r1()
        .admin()
        .await
        .list_audit(ListAuditRequest {
            after_seq: 0,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    let contested: Vec<serde_json::Value> = audit
        .iter()
        .filter(|r| r.kind == "task.contested")
        .map(|r| serde_json::from_str(&r.detail_json).unwrap())
        .collect();
    let [detail] = &contested[..] else {
        panic!("one task.contested record: {audit:?}");
    };
    assert_eq!(
        (&detail["task"], &detail["owner"], &detail["node"]),
        (
            &serde_json::json!(task.task.id),
            &serde_json::json!("node-f"),
            &serde_json::json!("node-a")
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tessera_task_revoke_at_the_server_is_refused_everywhere_while_the_node_is_cut_off() {
    let _one = SERIAL.lock().await;
    let Some(cl) = Cluster::start("cluster_revocation").await else {
        return;
    };
    let fa = Forwarder::start(&[&cl.r1().node]).await.unwrap();
    let a = cl.agent("node-a", &fa.address(), "").await;
    let c = cl.agent("node-c", &cl.r2().node, "").await;
    cl.register(&[&a, &c]).await;
    let server_a = mcp_server(&a, "a", &[]).await;
    let server_c = mcp_server(&c, "c", &[]).await;

    let task = RunningTask::begin(&a).await;
    let at_a = task.connect(&server_a.url).await.unwrap();
    let at_c = task.connect(&server_c.url).await.unwrap();
    assert!(call(&at_a).await.is_ok() && call(&at_c).await.is_ok());
    // The server must know the task to revoke it (its begin reached it from A's journal).
    until("the server learns of A's task", GENEROUS, || {
        server_knows(&cl, 0, &task.task.id)
    })
    .await;

    fa.cut();
    let out = cl.cli(0, &["task", "revoke", &task.task.id]);
    assert!(
        out.status.success(),
        "tessera task revoke at the server: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cl.logs()
    );
    // Published by the server itself: node C's verifier refuses, A being unreachable.
    let (out, after) = until_refused(&at_c, GENEROUS).await;
    assert!(refused_as(&out, "revoked"), "{out:?}");
    eprintln!("revoke at the server -> refused at C after {after:?} (A cut off)");

    // Healed, A learns it too: ends the task itself (reason "revoked") and its own
    // verifiers refuse.
    fa.heal();
    until(
        "A ends the task the server revoked",
        GENEROUS * 2,
        || async {
            task_on(&a, &task.task.id)
                .await
                .is_some_and(|t| t.ended_at_unix != 0 && t.end_reason == "revoked")
        },
    )
    .await;
    let (out, _) = until_refused(&at_a, GENEROUS).await;
    assert!(refused_as(&out, "revoked"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_nodes_svids_are_refused_everywhere_even_on_open_connections() {
    let _one = SERIAL.lock().await;
    let Some(cl) = Cluster::start("cluster_revocation").await else {
        return;
    };
    let a = cl.agent("node-a", &cl.r1().node, "").await;
    let b = cl.agent("node-b", &cl.r2().node, "").await;
    let c = cl.agent("node-c", &cl.r1().node, "").await;
    cl.register(&[&a, &b, &c]).await;
    let server_a = mcp_server(&a, "a", &[]).await;
    let server_c = mcp_server(&c, "c", &[]).await;

    // A live task on B, in use at A's and C's servers; and one on A as a control.
    let on_b = RunningTask::begin(&b).await;
    let b_at_a = on_b.connect(&server_a.url).await.unwrap();
    let b_at_c = on_b.connect(&server_c.url).await.unwrap();
    let on_a = RunningTask::begin(&a).await;
    let a_at_c = on_a.connect(&server_c.url).await.unwrap();
    for conn in [&b_at_a, &b_at_c, &a_at_c] {
        assert!(call(conn).await.is_ok());
    }

    cl.r2()
        .cluster_admin()
        .await
        .unwrap()
        .evict_node(EvictNodeRequest {
            name: "node-b".into(),
        })
        .await
        .unwrap();

    for (name, conn) in [("A", &b_at_a), ("C", &b_at_c)] {
        let (out, after) = until_refused(conn, GENEROUS).await;
        assert!(refused_as(&out, "revoked"), "{out:?}");
        eprintln!("eviction -> B's task refused at {name}'s server after {after:?}");
    }
    // The audit record of the refusal names the evicted node (the caller is told only
    // "revoked"). The server writes its audit file a moment after the decision.
    until("the audit names node-b", GENEROUS, || async {
        std::fs::read_to_string(&server_c.audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|e| {
                e["reason"] == "revoked"
                    && e["task"] == on_b.task.id.as_str()
                    && e["detail"].as_str().is_some_and(|d| d.contains("node-b"))
            })
    })
    .await;
    // A new connection with B's SVID does not get a call through either.
    if let Ok(conn) = on_b.connect(&server_c.url).await {
        let out = call(&conn).await;
        assert!(!out.is_ok(), "a new connection through B's CA: {out:?}");
    }
    // Node A's task is untouched.
    assert!(call(&a_at_c).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30s_partition_ends_tasks_locally_at_once_fails_closed_past_the_bound_and_heals() {
    let _one = SERIAL.lock().await;
    let Some(cl) = Cluster::start("cluster_revocation").await else {
        return;
    };
    let fa = Forwarder::start(&[&cl.r1().node]).await.unwrap();
    let a = cl.agent("node-a", &fa.address(), "").await;
    let c = cl.agent("node-c", &cl.r2().node, "").await;
    cl.register(&[&a, &c]).await;
    let stale = ["--revocation-staleness-secs", STALENESS];
    let server_a = mcp_server(&a, "a", &stale).await;
    let server_c = mcp_server(&c, "c", &stale).await;

    let ended = RunningTask::begin(&a).await; // ended during the partition
    let live = RunningTask::begin(&a).await; // stays live throughout
    let on_c = RunningTask::begin(&c).await;
    let ended_at_a = ended.connect(&server_a.url).await.unwrap();
    let ended_at_c = ended.connect(&server_c.url).await.unwrap();
    let live_at_a = live.connect(&server_a.url).await.unwrap();
    let live_at_c = live.connect(&server_c.url).await.unwrap();
    let c_at_c = on_c.connect(&server_c.url).await.unwrap();
    for conn in [&ended_at_a, &ended_at_c, &live_at_a, &live_at_c, &c_at_c] {
        assert!(call(conn).await.is_ok());
    }

    fa.cut();
    let cut_at = Instant::now();
    ended.end().await; // A keeps serving: EndTask works cut off.
    // A's own verifier refuses at once: the end is in A's feed, not waiting on the server.
    let (out, local) = until_refused(&ended_at_a, Duration::from_secs(3)).await;
    assert!(refused_as(&out, "revoked"), "{out:?}");
    // C has not heard (the only way there is through the server): still allowed.
    assert!(call(&ended_at_c).await.is_ok());

    // Past the bound A's verifier has no cluster view it may trust: A's live task is
    // refused there as stale, while C (connected) stays fresh and serves it.
    let (out, went_stale) = until_refused(&live_at_a, GENEROUS).await;
    assert!(refused_as(&out, "revocation_feed_stale"), "{out:?}");
    let stale_after = cut_at.elapsed();
    assert!(
        stale_after >= Duration::from_secs(4),
        "stale only past the bound, not at the cut: {stale_after:?}"
    );
    while cut_at.elapsed() < Duration::from_secs(30) {
        assert!(call(&c_at_c).await.is_ok(), "C's verifier stays fresh");
        assert!(call(&live_at_c).await.is_ok(), "A's live task is good at C");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        call(&ended_at_c).await.is_ok(),
        "partitioned: C cannot know yet"
    );

    fa.heal();
    let healed_at = Instant::now();
    let (out, reached_c) = until_refused(&ended_at_c, GENEROUS * 2).await;
    assert!(refused_as(&out, "revoked"), "{out:?}");
    until_allowed(&live_at_a, GENEROUS * 2).await;
    assert_eq!(call(&ended_at_a).await.denial_reason(), Some("revoked"));
    eprintln!(
        "partition: A's verifier refused the ended task {local:?} after EndTask; went stale \
         {stale_after:?} after the cut ({went_stale:?} of polling); after heal the end reached \
         C in {reached_c:?}, A's verifier fresh again by {:?}",
        healed_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_journaled_before_kill_9_of_the_agent_reaches_node_c_after_restart() {
    let _one = SERIAL.lock().await;
    let Some(cl) = Cluster::start("cluster_revocation").await else {
        return;
    };
    let fa = Forwarder::start(&[&cl.r1().node]).await.unwrap();
    let mut a = cl.agent("node-a", &fa.address(), "").await;
    let c = cl.agent("node-c", &cl.r2().node, "").await;
    cl.register(&[&a, &c]).await;
    let server_c = mcp_server(&c, "c", &[]).await;

    let task = RunningTask::begin(&a).await;
    let at_c = task.connect(&server_c.url).await.unwrap();
    assert!(call(&at_c).await.is_ok());

    // Cut first, so the end cannot leave A before the kill: after EndTask answered, A's
    // durable journal is the only place it exists.
    fa.cut();
    task.end().await;
    a.kill(); // SIGKILL right after EndTask returned
    assert!(call(&at_c).await.is_ok(), "C cannot have heard yet");

    fa.heal();
    a.spawn().await.unwrap();
    let (out, after) = until_refused(&at_c, GENEROUS * 2).await;
    assert!(
        refused_as(&out, "revoked"),
        "{out:?}\nagent log:\n{}",
        a.log_text()
    );
    eprintln!("kill -9 after EndTask: refused at C {after:?} after A's restart began");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_server_replica_under_load_loses_no_revocation() {
    let _one = SERIAL.lock().await;
    let Some(mut cl) = Cluster::start("cluster_revocation").await else {
        return;
    };
    // Every node reaches the replicas through a "Service" that tries r1 first, then r2.
    let upstreams = cl.node_addresses();
    let upstreams: Vec<&str> = upstreams.iter().map(String::as_str).collect();
    let (fa, fb, fc) = (
        Forwarder::start(&upstreams).await.unwrap(),
        Forwarder::start(&upstreams).await.unwrap(),
        Forwarder::start(&upstreams).await.unwrap(),
    );
    let a = cl.agent("node-a", &fa.address(), "").await;
    let b = cl.agent("node-b", &fb.address(), "").await;
    let c = cl.agent("node-c", &fc.address(), "").await;
    cl.register(&[&a, &b, &c]).await;

    // Load: two runtimes begin and end tasks in a loop, on A and on B.
    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = Vec::new();
    for agent in [&a, &b] {
        let stop = stop.clone();
        let endpoint = agent.endpoint();
        loops.push(tokio::spawn(async move {
            let w = tessera_example_agent_runtime::Workload::connect(&endpoint)
                .await
                .unwrap();
            let mut ended = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let task = w
                    .begin_task(&tessera_example_agent_runtime::TaskRequest {
                        server: "github".into(),
                        scopes: vec!["github/tool/get_pull_request".into()],
                        subject: cluster::SUBJECT.into(),
                        purpose: "load".into(),
                        lifetime_secs: 0,
                    })
                    .await
                    .expect("BeginTask never waits on the server");
                w.end_task(&task.id).await.expect("EndTask");
                ended.push(task.id);
            }
            ended
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    cl.replicas[0].kill(); // SIGKILL mid-load
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::SeqCst);
    let mut ended = HashSet::new();
    for l in loops {
        ended.extend(l.await.unwrap());
    }
    assert!(ended.len() > 10, "the load ran: {} tasks", ended.len());

    // Every one reaches node C's feed (a Follow client on C's workload socket).
    let mut feed = RevocationsClient::new(TestAgent::channel(&c.workload).await.unwrap())
        .follow(FollowRevocationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut seen = HashSet::new();
    let deadline = Instant::now() + GENEROUS * 2;
    while !ended.is_subset(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, feed.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} of {} ended tasks never reached C\n{}",
                    ended.difference(&seen).count(),
                    ended.len(),
                    cl.logs()
                )
            })
            .expect("feed open")
            .expect("feed message");
        let revoked = match msg.update {
            Some(Update::Snapshot(s)) => s.revoked,
            Some(Update::Delta(d)) => d.revoked,
            _ => continue,
        };
        seen.extend(revoked.into_iter().map(|r| r.task_id));
    }
    // And the surviving replica holds every one as ended, in PostgreSQL.
    let tasks = cl
        .r2()
        .admin()
        .await
        .list_all_tasks(ListAllTasksRequest {
            client: String::new(),
            include_ended: true,
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    let stored: HashSet<_> = tasks
        .iter()
        .filter(|t| t.ended_at_unix != 0)
        .map(|t| t.id.clone())
        .collect();
    let missing = ended.difference(&stored).count();
    assert_eq!(missing, 0, "ended tasks missing at the server");
    eprintln!(
        "replica killed under load: all {} ended tasks reached C and the server",
        ended.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_fails_closed_meanwhile_and_recovers_by_itself() {
    let _one = SERIAL.lock().await;
    let Some(mut cl) = Cluster::start("cluster_revocation").await else {
        return;
    };
    let a = cl.agent("node-a", &cl.r1().node, "").await;
    let c = cl.agent("node-c", &cl.r2().node, "").await;
    cl.register(&[&a, &c]).await;
    let server_c = mcp_server(&c, "c", &["--revocation-staleness-secs", STALENESS]).await;
    let ended = RunningTask::begin(&a).await;
    let live = RunningTask::begin(&a).await;
    let ended_at_c = ended.connect(&server_c.url).await.unwrap();
    let live_at_c = live.connect(&server_c.url).await.unwrap();
    assert!(call(&ended_at_c).await.is_ok() && call(&live_at_c).await.is_ok());

    cl.pg.stop().await.unwrap();
    ended.end().await; // the agent journals it; the server cannot store it now
    // Without PostgreSQL no replica may vouch for the cluster's set: C's verifier goes
    // stale past its bound and refuses (fail closed), never serves a stale "allowed".
    let (out, _) = until_refused(&live_at_c, GENEROUS).await;
    assert!(refused_as(&out, "revocation_feed_stale"), "{out:?}");

    cl.pg.start_again().await.unwrap();
    // Stale until the replicas vouch again, then revoked: the end A journaled during the
    // outage reached the server and C.
    let recovered = until_refused_as(&ended_at_c, "revoked", GENEROUS * 2).await;
    until_allowed(&live_at_c, GENEROUS * 2).await;
    // Writes work again at the server, and reach the agents.
    let consent = cl.r1().grant(&["github/tool/list_pulls"]).await;
    until("a new consent reaches C", GENEROUS, || {
        cluster::has_live_consent(&c, &consent)
    })
    .await;
    eprintln!("PostgreSQL restarted: the end reached C {recovered:?} after it was back");
}

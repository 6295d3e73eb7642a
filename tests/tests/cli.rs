//! The `tessera` CLI against a real agent.

use std::time::Duration;

use tessera_e2e::{TRUST_DOMAIN, TestAgent};
use tessera_proto::tessera::v1::tasks_client::TasksClient;
use tessera_proto::tessera::v1::{
    EndTaskRequest, GrantConsentRequest, RevokeTaskRequest, WithdrawConsentRequest,
};
use tonic::Code;

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn entry_created_by_the_cli_takes_effect_without_restart() {
    let agent = TestAgent::start("").await.unwrap();
    let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    assert!(
        client.fetch_x509_svid().await.is_err(),
        "not registered yet"
    );

    let exe = std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
    let uid = nix::unistd::geteuid();
    let out = agent.cli(&[
        "entry",
        "create",
        "--client",
        "code-reviewer",
        "--selector",
        &format!("unix:uid:{uid}"),
        "--selector",
        &format!("unix:path:{}", exe.display()),
        "--output",
        "json",
    ]);
    let created: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let id = created["id"].as_str().expect("entry id").to_owned();

    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(
        svid.spiffe_id().to_string(),
        format!("spiffe://{TRUST_DOMAIN}/client/code-reviewer")
    );

    let listed = stdout(&agent.cli(&["entry", "list"]));
    assert!(
        listed.contains(&id) && listed.contains("code-reviewer"),
        "{listed}"
    );
    let shown = stdout(&agent.cli(&["entry", "show", &id]));
    assert!(shown.contains(&format!("unix:uid:{uid}")), "{shown}");

    stdout(&agent.cli(&["entry", "delete", &id]));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        client.fetch_x509_svid().await.is_err(),
        "deleted entry no longer grants an identity"
    );

    let out = agent.cli(&["entry", "show", &id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&id));

    let audit = stdout(&agent.cli(&["audit", "--output", "json"]));
    assert!(
        audit.contains("entry.create") && audit.contains("entry.delete"),
        "{audit}"
    );
}

#[tokio::test]
async fn bad_selectors_and_names_are_refused_with_a_reason() {
    let agent = TestAgent::start("").await.unwrap();
    // Refused locally by the CLI.
    let out = agent.cli(&[
        "entry",
        "create",
        "--client",
        "Bad Name",
        "--selector",
        "unix:uid:1",
    ]);
    assert!(!out.status.success());
    // Refused by the agent: a selector type it cannot attest.
    let out = agent.cli(&[
        "entry",
        "create",
        "--client",
        "ok",
        "--selector",
        "unix:pid:1",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unix:pid"), "{err}");
}

#[tokio::test]
async fn svid_fetch_writes_files_that_inspect_reads() {
    let agent = TestAgent::start("").await.unwrap();
    let cli = std::fs::canonicalize(tessera_e2e::bin("tessera")).unwrap();
    agent
        .admin_client()
        .await
        .unwrap()
        .create_entry(tessera_proto::tessera::v1::CreateEntryRequest {
            client: "shell-runtime".into(),
            selectors: vec![format!("unix:path:{}", cli.display())],
            svid_ttl_secs: 0,
            server: String::new(),
        })
        .await
        .unwrap();
    let dir = agent.dir.path().join("svid-out");
    stdout(&agent.cli(&["svid", "fetch", "--write", dir.to_str().unwrap()]));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("svid.0.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let inspected =
        stdout(&agent.cli(&["svid", "inspect", dir.join("svid.0.pem").to_str().unwrap()]));
    assert!(
        inspected.contains(&format!("spiffe://{TRUST_DOMAIN}/client/shell-runtime")),
        "{inspected}"
    );
}

/// What the agent says when it refuses: an administrator learns what to fix; a workload
/// asking about a task learns nothing beyond what it sent.
#[tokio::test]
async fn refusals_say_what_to_fix_and_a_workload_learns_no_more() {
    let agent = TestAgent::start("").await.unwrap();
    agent.register_self("code-reviewer").await.unwrap();
    let mut admin = agent.admin_client().await.unwrap();

    // A subject longer than the store takes: its reason, not "see the agent's log".
    let err = admin
        .grant_consent(GrantConsentRequest {
            client: "code-reviewer".into(),
            subject: "a".repeat(300),
            server: "github".into(),
            scopes: vec!["github/tool/get_pull_request".into()],
            expires_at_unix: 0,
            ttl_secs: 3600,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("subject"), "{err:?}");

    let consent = agent
        .grant(
            "code-reviewer",
            "alice@acme.corp",
            "github",
            &["github/tool/get_*"],
        )
        .await
        .unwrap();
    let withdraw = WithdrawConsentRequest {
        id: consent.clone(),
    };
    admin.withdraw_consent(withdraw.clone()).await.unwrap();
    let err = admin.withdraw_consent(withdraw).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message()
            .starts_with(&format!("consent {consent} has already been withdrawn")),
        "{err:?}"
    );

    let unknown = "01JD0000000000000000000000";
    let err = admin
        .revoke_task(RevokeTaskRequest {
            task_id: unknown.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::NotFound, format!("no task {unknown}").as_str())
    );
    let mut tasks = TasksClient::new(TestAgent::channel(&agent.workload).await.unwrap());
    let err = tasks
        .end_task(EndTaskRequest {
            task_id: unknown.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (
            Code::NotFound,
            format!("no task {unknown} for this client").as_str()
        )
    );
}

#[tokio::test]
async fn admin_socket_refuses_other_uids() {
    // Root runs CI; drop to nobody for one CLI call to prove the uid check.
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let agent = TestAgent::start("").await.unwrap();
    // Loosen the socket mode so only the agent's own uid check stands in the way.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&agent.admin, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        agent.admin.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(tessera_e2e::bin("tessera"))
        .arg("--admin-socket")
        .arg(&agent.admin)
        .args(["entry", "list"])
        .output()
        .expect("setpriv (util-linux)");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("65534"), "{err}");
}

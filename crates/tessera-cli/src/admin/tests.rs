use super::*;

#[test]
fn permission_denied_names_the_uid_and_the_fix() {
    let err = status_message(
        tonic::Code::PermissionDenied,
        "",
        Path::new("/run/tessera/admin.sock"),
        Some(1001),
    );
    assert_eq!(
        err.to_string(),
        "the admin socket refused uid 1001: run as the agent's user or root"
    );
}

#[test]
fn unavailable_asks_whether_the_agent_runs() {
    let err = status_message(tonic::Code::Unavailable, "", Path::new("/tmp/a.sock"), None);
    assert_eq!(
        err.to_string(),
        "cannot reach tessera-agent at /tmp/a.sock: is it running?"
    );
}

#[tokio::test]
async fn connecting_to_a_missing_socket_says_the_agent_is_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let err = Admin::connect(&socket).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "cannot reach tessera-agent at {}: is it running?",
            socket.display()
        )),
        "{text}"
    );
}

#[tokio::test]
async fn a_refusing_agent_names_our_uid() {
    let mock = testing::Mock::default();
    mock.0.lock().unwrap().deny = true;
    let (_dir, socket) = testing::serve(mock).await;
    let mut admin = Admin::connect(&socket).await.unwrap();
    let err = admin.status().await.unwrap_err().to_string();
    let uid = current_uid().unwrap();
    assert!(
        err.starts_with(&format!(
            "the admin socket refused uid {uid}: run as the agent's user or root"
        )),
        "{err}"
    );
}

#[test]
fn current_uid_is_known_on_linux() {
    assert!(current_uid().is_some());
}

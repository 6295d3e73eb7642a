use std::time::Duration;

use sqlx::Connection as _;
use sqlx::postgres::PgConnection;

use super::*;

/// A started server answers on its socket and on TCP with the password (and refuses TCP
/// without it); stopped, it refuses; started again, it has kept its data.
#[tokio::test]
async fn server_serves_stops_and_restarts_with_its_data() {
    let Some(mut pg) = PgServer::start_or_skip("pgtest").await else {
        return;
    };
    eprintln!("PostgreSQL started in {:?}", pg.started_in());
    let options = pg.create_database().await.unwrap();
    let mut conn = PgConnection::connect_with(&options).await.unwrap();
    sqlx::raw_sql("CREATE TABLE t (v int); INSERT INTO t VALUES (42)")
        .execute(&mut conn)
        .await
        .unwrap();
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(user, SUPERUSER);
    conn.close().await.unwrap();

    let database = options.get_database().unwrap().to_owned();
    let mut tcp = PgConnection::connect(&pg.tcp_url(&database)).await.unwrap();
    let v: i32 = sqlx::query_scalar("SELECT v FROM t")
        .fetch_one(&mut tcp)
        .await
        .unwrap();
    assert_eq!(v, 42);
    tcp.close().await.unwrap();
    let wrong = pg.tcp_url(&database).replace(&pg.password, "wrong");
    assert!(PgConnection::connect(&wrong).await.is_err());

    pg.stop().await.unwrap();
    assert!(!pg.is_running());
    assert!(PgConnection::connect_with(&options).await.is_err());

    pg.start_again().await.unwrap();
    let mut conn = PgConnection::connect_with(&options).await.unwrap();
    let v: i32 = sqlx::query_scalar("SELECT v FROM t")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(v, 42);
}

/// Each database asked for is new and empty.
#[tokio::test]
async fn databases_are_fresh() {
    let Some(pg) = PgServer::start_or_skip("pgtest").await else {
        return;
    };
    let a = pg.create_database().await.unwrap();
    let b = pg.create_database().await.unwrap();
    assert_ne!(a.get_database(), b.get_database());
    let mut conn = PgConnection::connect_with(&a).await.unwrap();
    sqlx::raw_sql("CREATE TABLE only_in_a (v int)")
        .execute(&mut conn)
        .await
        .unwrap();
    let mut conn = PgConnection::connect_with(&b).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(tables, 0);
}

/// Dropping the server stops its process and removes its directory.
#[tokio::test]
async fn drop_kills_the_server_and_removes_its_directory() {
    let Some(pg) = PgServer::start_or_skip("pgtest").await else {
        return;
    };
    let dir = pg.socket_dir().to_owned();
    let pid = pg.child.as_ref().unwrap().id();
    drop(pg);
    assert!(!dir.exists());
    // The postmaster is gone (reaped by the drop, so not even a zombie).
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

/// As root, the server runs as the `postgres` user, not as root.
#[tokio::test]
async fn server_does_not_run_as_root() {
    let Some(pg) = PgServer::start_or_skip("pgtest").await else {
        return;
    };
    let pid = pg.child.as_ref().unwrap().id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let uid: u32 = uid_line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_ne!(uid, 0, "{uid_line}");
    if nix::unistd::Uid::effective().is_root() {
        let postgres = User::from_name(SUPERUSER).unwrap().unwrap();
        assert_eq!(uid, postgres.uid.as_raw());
    } else {
        assert_eq!(uid, nix::unistd::Uid::effective().as_raw());
    }
}

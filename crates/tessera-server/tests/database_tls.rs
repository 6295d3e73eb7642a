//! PostgreSQL over TLS: `database.url` with `sslmode=verify-full` and `sslrootcert`
//! reaches a server whose certificate chains to that CA, and refuses one that does not.

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use sqlx::postgres::PgConnectOptions;
use tessera_pgtest::PgServer;
use tessera_server::{PgStore, PgStoreOptions};

/// A CA's PEM and a server certificate (for `localhost` and 127.0.0.1) it signed, with
/// the server's key.
fn ca_and_server() -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca_pem, cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn the_store_verifies_postgres_certificate_when_told_to() {
    let (ca, cert, key) = ca_and_server();
    let pg = match PgServer::start_with_tls(&cert, &key).await {
        Ok(pg) => pg,
        Err(error @ tessera_pgtest::PgTestError::NoBinaries { .. })
            if !tessera_pgtest::required() =>
        {
            eprintln!("SKIPPED: database TLS: {error}");
            return;
        }
        Err(error) => panic!("{error}"),
    };
    let database = pg.create_database().await.unwrap();
    let database = database.get_database().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &ca).unwrap();
    let url = |ca: &std::path::Path| {
        format!(
            "postgres://{}@localhost:{}/{database}?sslmode=verify-full&sslrootcert={}",
            tessera_pgtest::SUPERUSER,
            pg.port(),
            ca.display()
        )
    };
    let options = |url: &str| -> PgConnectOptions {
        url.parse::<PgConnectOptions>()
            .unwrap()
            .password(pg.password())
    };

    let store = PgStore::connect(options(&url(&ca_path)), &PgStoreOptions::default())
        .await
        .unwrap();
    store.ping().await.unwrap();
    let (other_ca, _, _) = ca_and_server();
    let other_path = dir.path().join("other.pem");
    std::fs::write(&other_path, &other_ca).unwrap();
    let refused = PgStore::connect(options(&url(&other_path)), &PgStoreOptions::default()).await;
    assert!(refused.is_err(), "a certificate from another CA is refused");
    let plain = format!(
        "postgres://{}@localhost:{}/{database}?sslmode=disable",
        tessera_pgtest::SUPERUSER,
        pg.port()
    );
    // The same server without TLS still works (so the check above is about the CA).
    PgStore::connect(options(&plain), &PgStoreOptions::default())
        .await
        .unwrap();
    // And TLS was really in use on the verified connection.
    let encrypted: bool = sqlx_scalar(&url(&ca_path), pg.password()).await;
    assert!(encrypted);
}

async fn sqlx_scalar(url: &str, password: &str) -> bool {
    use sqlx::Connection as _;
    let options: PgConnectOptions = url.parse::<PgConnectOptions>().unwrap().password(password);
    let mut conn = sqlx::PgConnection::connect_with(&options).await.unwrap();
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

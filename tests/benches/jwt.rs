//! JWT-SVIDs: validation per token, signing, and the Workload API's JWT RPCs over the
//! unix socket of a real `tessera-agent`, with raw ES256 sign/verify of the same key
//! type as the baseline, all in one run.
//!
//! - (a) `tessera_identity::validate_jwt_svid`, a client token;
//! - (b) the same, a task token carrying its claims (decoded and checked against `sub`);
//! - (c) raw ES256 verify (`jsonwebtoken::crypto::verify`) of the same signing input: the
//!   floor (a) stands on;
//! - (d) raw ES256 sign; (e) `JwtAuthority::sign`, a task token;
//! - (f) FetchJWTSVID, client token, `spiffe` crate client, sequential;
//! - (g) FetchJWTSVID of a task token (raw tonic: the task's SPIFFE ID);
//! - (h) ValidateJWTSVID of a task token (raw tonic).
//!
//! Target: (a) and (b) p99 under 30 µs.
//!
//! ```text
//! cargo bench -p tessera-e2e --bench jwt
//! ```
//!
//! Builds the release agent first (`TESSERA_BENCH_NO_BUILD=1` skips that).

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use rcgen::KeyPair;
use tessera_authority::{JwtAuthority, JwtKeyPolicy, JwtSvidSpec};
use tessera_e2e::{Samples, TRUST_DOMAIN, TestAgent};
use tessera_identity::{ClientId, TaskClaims, TaskId, validate_jwt_svid};
use tessera_proto::WORKLOAD_HEADER;
use tessera_proto::tessera::v1::BeginTaskRequest;
use tessera_proto::tessera::v1::tasks_client::TasksClient;
use tessera_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tessera_proto::workload::{JwtsvidRequest, ValidateJwtsvidRequest};
use time::OffsetDateTime;

const CLIENT: &str = "bench-jwt";
const AUD: &str = "https://mcp.bench.test/github";
const N_LOCAL: usize = 20_000;
const N_RPC: usize = 2_000;
const WARMUP: usize = 200;
const TARGET_P99: Duration = Duration::from_micros(30);

struct Row {
    name: &'static str,
    samples: Samples,
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn time_n(n: usize, mut f: impl FnMut()) -> Samples {
    for _ in 0..WARMUP {
        f();
    }
    let mut s = Samples(Vec::with_capacity(n));
    for _ in 0..n {
        let t = Instant::now();
        f();
        s.0.push(t.elapsed());
    }
    s
}

fn task_claims(deadline: i64) -> (String, TaskClaims) {
    let client: ClientId = format!("spiffe://{TRUST_DOMAIN}/client/{CLIENT}")
        .parse()
        .unwrap();
    let task = TaskId::new();
    let claims = TaskClaims {
        version: tessera_identity::TASK_CLAIMS_VERSION,
        task_id: task,
        client_id: client.clone(),
        subject: "alice@bench.test".into(),
        purpose: "review pull request 42 and summarise the open comments".into(),
        server: format!("spiffe://{TRUST_DOMAIN}/mcp/github")
            .parse()
            .unwrap(),
        scopes: [
            "github/tool/get_pull_request",
            "github/tool/list_*",
            "github/prompt/review",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect(),
        consent_id: "consent-01J9ZBENCH".into(),
        deadline_unix: deadline,
    };
    (client.task(task).to_string(), claims)
}

fn local_rows(rows: &mut Vec<Row>) {
    let dir = tempfile::tempdir().unwrap();
    let auth = JwtAuthority::open(
        TRUST_DOMAIN.parse().unwrap(),
        dir.path().join("ca"),
        JwtKeyPolicy::default(),
    )
    .unwrap();
    let now = OffsetDateTime::now_utc();
    let audience = vec![AUD.to_owned()];
    let client_id = format!("spiffe://{TRUST_DOMAIN}/client/{CLIENT}");
    let client_token = auth
        .sign(
            &JwtSvidSpec {
                spiffe_id: &client_id,
                audience: &audience,
                ttl: Duration::from_secs(300),
                not_after_cap: None,
                task: None,
            },
            now,
        )
        .unwrap()
        .token;
    let (task_id, claims) = task_claims(now.unix_timestamp() + 3600);
    let task_spec = JwtSvidSpec {
        spiffe_id: &task_id,
        audience: &audience,
        ttl: Duration::from_secs(300),
        not_after_cap: None,
        task: Some(&claims),
    };
    let task_token = auth.sign(&task_spec, now).unwrap().token;
    let bundle = auth.bundle();
    let t = now.unix_timestamp();

    rows.push(Row {
        name: "(a) validate_jwt_svid, client token",
        samples: time_n(N_LOCAL, || {
            std::hint::black_box(validate_jwt_svid(&client_token, [&*bundle], AUD, t).unwrap());
        }),
    });
    rows.push(Row {
        name: "(b) validate_jwt_svid, task token with claims",
        samples: time_n(N_LOCAL, || {
            std::hint::black_box(validate_jwt_svid(&task_token, [&*bundle], AUD, t).unwrap());
        }),
    });

    // The same key type and the same signing input, with nothing around it.
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let encoding = EncodingKey::from_ec_der(&key.serialize_der());
    let jwk = tessera_identity::JwtKey::from_sec1("k", key.public_key_raw())
        .unwrap()
        .to_jwk();
    let decoding =
        DecodingKey::from_ec_components(jwk["x"].as_str().unwrap(), jwk["y"].as_str().unwrap())
            .unwrap();
    let (input, _) = task_token.rsplit_once('.').unwrap();
    let input = input.as_bytes().to_vec();
    let sig = jsonwebtoken::crypto::sign(&input, &encoding, Algorithm::ES256).unwrap();
    rows.push(Row {
        name: "(c) raw ES256 verify (baseline)",
        samples: time_n(N_LOCAL, || {
            assert!(
                jsonwebtoken::crypto::verify(&sig, &input, &decoding, Algorithm::ES256).unwrap()
            );
        }),
    });
    rows.push(Row {
        name: "(d) raw ES256 sign (baseline)",
        samples: time_n(N_LOCAL / 4, || {
            std::hint::black_box(
                jsonwebtoken::crypto::sign(&input, &encoding, Algorithm::ES256).unwrap(),
            );
        }),
    });
    rows.push(Row {
        name: "(e) JwtAuthority::sign, task token",
        samples: time_n(N_LOCAL / 4, || {
            std::hint::black_box(auth.sign(&task_spec, now).unwrap());
        }),
    });
}

fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert(WORKLOAD_HEADER, "true".parse().expect("ascii"));
    req
}

async fn rpc_rows(rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let agent = TestAgent::start("").await?;
    agent.register_self(CLIENT).await?;
    agent
        .grant(CLIENT, "alice@bench.test", "github", &["github/tool/*"])
        .await?;
    let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint()).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.fetch_jwt_svid([AUD], None).await.is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no JWT-SVID for the bench process"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    async fn timed<F: std::future::Future<Output = ()>>(
        n: usize,
        mut f: impl FnMut() -> F,
    ) -> Samples {
        for _ in 0..WARMUP {
            f().await;
        }
        let mut s = Samples(Vec::with_capacity(n));
        for _ in 0..n {
            let t = Instant::now();
            f().await;
            s.0.push(t.elapsed());
        }
        s
    }

    rows.push(Row {
        name: "(f) FetchJWTSVID, client token (spiffe crate)",
        samples: timed(N_RPC, || async {
            std::hint::black_box(client.fetch_jwt_svid([AUD], None).await.unwrap());
        })
        .await,
    });

    let task = TasksClient::new(TestAgent::channel(&agent.workload).await?)
        .begin_task(BeginTaskRequest {
            purpose: "bench".into(),
            subject: "alice@bench.test".into(),
            server: "github".into(),
            scopes: vec!["github/tool/get_pull_request".into()],
            lifetime_secs: 3600,
            client: String::new(),
            bind_to_parent: false,
        })
        .await?
        .into_inner()
        .task
        .expect("a task");
    let raw = SpiffeWorkloadApiClient::new(TestAgent::channel(&agent.workload).await?);
    let fetch_task = || {
        let mut raw = raw.clone();
        let spiffe_id = task.spiffe_id.clone();
        async move {
            raw.fetch_jwtsvid(with_header(JwtsvidRequest {
                audience: vec![AUD.into()],
                spiffe_id,
            }))
            .await
            .unwrap()
            .into_inner()
        }
    };
    let token = fetch_task().await.svids[0].svid.clone();
    rows.push(Row {
        name: "(g) FetchJWTSVID, task token (raw tonic)",
        samples: timed(N_RPC, || async {
            std::hint::black_box(fetch_task().await);
        })
        .await,
    });
    rows.push(Row {
        name: "(h) ValidateJWTSVID, task token (raw tonic)",
        samples: timed(N_RPC, || {
            let mut raw = raw.clone();
            let svid = token.clone();
            async move {
                raw.validate_jwtsvid(with_header(ValidateJwtsvidRequest {
                    audience: AUD.into(),
                    svid,
                }))
                .await
                .unwrap();
            }
        })
        .await,
    });
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `cargo test --benches` runs bench targets without `--bench`: nothing to smoke-test
    // beyond compiling, and starting an agent there would need the release binary.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    tessera_e2e::ensure_built(&[("tessera-agent", "tessera-agent")]);
    let mut rows = Vec::new();
    local_rows(&mut rows);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(rpc_rows(&mut rows))?;

    println!();
    println!(
        "JWT-SVIDs ({} CPUs; (f)-(h) against a real tessera-agent over its unix socket)",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "{:<50} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "operation", "n", "p50 µs", "p99 µs", "mean µs", "max µs"
    );
    for r in &rows {
        println!(
            "{:<50} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            r.name,
            r.samples.0.len(),
            us(r.samples.pct(0.50)),
            us(r.samples.pct(0.99)),
            us(r.samples.mean()),
            us(r.samples.pct(1.0)),
        );
    }
    for r in &rows[..2] {
        let p99 = r.samples.pct(0.99);
        println!(
            "target: {} p99 < {} µs -> {} ({:.1} µs)",
            &r.name[..3],
            us(TARGET_P99),
            if p99 < TARGET_P99 { "MET" } else { "NOT MET" },
            us(p99)
        );
    }
    Ok(())
}

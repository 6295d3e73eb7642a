//! The Workload API's JWT RPCs over the unix socket of a real `tessera-agent`:
//! - (f) FetchJWTSVID, client token, `spiffe` crate client, sequential;
//! - (g) FetchJWTSVID of a task token (raw tonic: the task's SPIFFE ID);
//! - (h) ValidateJWTSVID of a task token (raw tonic).
//!
//! Validation and signing in-process, against raw ES256, are
//! `cargo bench -p tessera-authority --bench jwt` (rows (a)-(e) of the README's table).
//!
//! ```text
//! cargo bench -p tessera-e2e --bench jwt
//! ```
//!
//! Builds the agent first, in the bench's profile (`TESSERA_BENCH_NO_BUILD=1` skips that).

use std::time::{Duration, Instant};

use tessera_e2e::{Samples, TestAgent};
use tessera_proto::WORKLOAD_HEADER;
use tessera_proto::tessera::v1::BeginTaskRequest;
use tessera_proto::tessera::v1::tasks_client::TasksClient;
use tessera_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tessera_proto::workload::{JwtsvidRequest, ValidateJwtsvidRequest};

const CLIENT: &str = "bench-jwt";
const AUD: &str = "https://mcp.bench.test/github";
const N_RPC: usize = 2_000;
const WARMUP: usize = 200;

struct Row {
    name: &'static str,
    samples: Samples,
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
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
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(rpc_rows(&mut rows))?;

    println!();
    println!(
        "JWT-SVID RPCs against a real tessera-agent over its unix socket ({} CPUs)",
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
    Ok(())
}

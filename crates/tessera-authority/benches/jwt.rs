//! JWT-SVID validation and signing against raw ES256, in one run.
//!
//! - `validate/client`, `validate/task`: `tessera_identity::validate_jwt_svid` of a client
//!   token and of a task token carrying its claims (decoded, checked against `sub`);
//! - `raw/verify`: ES256 verification alone of the same signing input, with a key of the
//!   same type: the floor validation stands on;
//! - `raw/verify-ring`: the same verification with ring (the TLS stack's provider), for
//!   comparison: what another JOSE backend could reach;
//! - `raw/sign`, `sign/task`: ES256 signing alone, and `JwtAuthority::sign` of a task token.
//!
//! After criterion's report (means), the bench times N individual calls of each, interleaved
//! so all see the same machine load, and prints p50/p99. Target: validation p99 under 30 µs.
//!
//! ```text
//! cargo bench -p tessera-authority --bench jwt -- --warm-up-time 1 --measurement-time 3
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use rcgen::KeyPair;
use tessera_authority::{JwtAuthority, JwtKeyPolicy, JwtSvidSpec};
use tessera_identity::{ClientId, JwtBundle, JwtKey, TaskClaims, TaskId, validate_jwt_svid};
use time::OffsetDateTime;

const TD: &str = "bench.test";
const CLIENT_ID: &str = "spiffe://bench.test/client/code-reviewer";
const AUD: &str = "https://mcp.bench.test/github";
/// Individually timed calls per operation for the percentile table.
const N: usize = 20_000;
const TARGET_P99: Duration = Duration::from_micros(30);

struct Fixture {
    _dir: tempfile::TempDir,
    authority: JwtAuthority,
    bundle: JwtBundle,
    now: OffsetDateTime,
    audience: Vec<String>,
    task_id: String,
    claims: TaskClaims,
    client_token: String,
    task_token: String,
    raw_encoding: EncodingKey,
    raw_decoding: DecodingKey,
    raw_input: Vec<u8>,
    raw_sig: String,
    ring_key: Vec<u8>,
    ring_sig: Vec<u8>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let authority = JwtAuthority::open(
            TD.parse().unwrap(),
            dir.path().join("ca"),
            JwtKeyPolicy::default(),
        )
        .unwrap();
        let now = OffsetDateTime::now_utc();
        let audience = vec![AUD.to_owned()];
        let client: ClientId = CLIENT_ID.parse().unwrap();
        let task = TaskId::new();
        let claims = TaskClaims {
            version: tessera_identity::TASK_CLAIMS_VERSION,
            task_id: task,
            client_id: client.clone(),
            subject: "alice@bench.test".into(),
            purpose: "review pull request 42 and summarise the open comments".into(),
            server: "spiffe://bench.test/mcp/github".parse().unwrap(),
            scopes: [
                "github/tool/get_pull_request",
                "github/tool/list_*",
                "github/prompt/review",
            ]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect(),
            consent_id: "consent-01J9ZBENCH".into(),
            deadline_unix: now.unix_timestamp() + 24 * 3600,
        };
        let task_id = client.task(task).to_string();
        let mut fx = Fixture {
            bundle: (*authority.bundle()).clone(),
            _dir: dir,
            authority,
            now,
            audience,
            task_id,
            claims,
            client_token: String::new(),
            task_token: String::new(),
            raw_encoding: EncodingKey::from_secret(b"placeholder"),
            raw_decoding: DecodingKey::from_secret(b"placeholder"),
            raw_input: Vec::new(),
            raw_sig: String::new(),
            ring_key: Vec::new(),
            ring_sig: Vec::new(),
        };
        fx.client_token = fx
            .authority
            .sign(
                &JwtSvidSpec {
                    spiffe_id: CLIENT_ID,
                    audience: &fx.audience,
                    ttl: Duration::from_secs(300),
                    not_after_cap: None,
                    task: None,
                },
                now,
            )
            .unwrap()
            .token;
        fx.task_token = fx.sign_task().token;
        // The same key type and signing input, with nothing around them.
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        fx.raw_encoding = EncodingKey::from_ec_der(&key.serialize_der());
        let jwk = JwtKey::from_sec1("k", key.public_key_raw())
            .unwrap()
            .to_jwk();
        fx.raw_decoding =
            DecodingKey::from_ec_components(jwk["x"].as_str().unwrap(), jwk["y"].as_str().unwrap())
                .unwrap();
        let (input, _) = fx.task_token.rsplit_once('.').unwrap();
        fx.raw_input = input.as_bytes().to_vec();
        fx.raw_sig = fx.raw_sign();
        assert!(fx.raw_verify());
        fx.ring_key = key.public_key_raw().to_vec();
        {
            use base64::Engine as _;
            fx.ring_sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&fx.raw_sig)
                .unwrap();
        }
        assert!(fx.ring_verify());
        fx.validate(&fx.client_token.clone());
        fx.validate(&fx.task_token.clone());
        fx
    }

    fn sign_task(&self) -> tessera_authority::IssuedJwtSvid {
        self.authority
            .sign(
                &JwtSvidSpec {
                    spiffe_id: &self.task_id,
                    audience: &self.audience,
                    ttl: Duration::from_secs(300),
                    not_after_cap: None,
                    task: Some(&self.claims),
                },
                self.now,
            )
            .unwrap()
    }

    fn validate(&self, token: &str) -> tessera_identity::ValidJwtSvid {
        validate_jwt_svid(token, [&self.bundle], AUD, self.now.unix_timestamp()).unwrap()
    }

    fn raw_sign(&self) -> String {
        jsonwebtoken::crypto::sign(&self.raw_input, &self.raw_encoding, Algorithm::ES256).unwrap()
    }

    fn ring_verify(&self) -> bool {
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            &self.ring_key,
        )
        .verify(&self.raw_input, &self.ring_sig)
        .is_ok()
    }

    fn raw_verify(&self) -> bool {
        jsonwebtoken::crypto::verify(
            &self.raw_sig,
            &self.raw_input,
            &self.raw_decoding,
            Algorithm::ES256,
        )
        .unwrap()
    }
}

fn pct(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn percentile_table(fx: &Fixture) {
    type Op<'a> = (&'static str, Box<dyn Fn() + 'a>);
    let ops: Vec<Op<'_>> = vec![
        (
            "validate_jwt_svid, client token",
            Box::new(|| {
                black_box(fx.validate(&fx.client_token));
            }),
        ),
        (
            "validate_jwt_svid, task token",
            Box::new(|| {
                black_box(fx.validate(&fx.task_token));
            }),
        ),
        (
            "raw ES256 verify (baseline)",
            Box::new(|| {
                black_box(fx.raw_verify());
            }),
        ),
        (
            "raw ES256 verify, ring (comparison)",
            Box::new(|| {
                black_box(fx.ring_verify());
            }),
        ),
        (
            "raw ES256 sign (baseline)",
            Box::new(|| {
                black_box(fx.raw_sign());
            }),
        ),
        (
            "JwtAuthority::sign, task token",
            Box::new(|| {
                black_box(fx.sign_task());
            }),
        ),
    ];
    let mut samples: Vec<Vec<Duration>> = ops.iter().map(|_| Vec::with_capacity(N)).collect();
    for _ in 0..N {
        for (i, (_, op)) in ops.iter().enumerate() {
            let t = Instant::now();
            op();
            samples[i].push(t.elapsed());
        }
    }
    println!();
    println!(
        "{:<36} {:>9} {:>9} {:>9}",
        "operation (N interleaved)", "p50 µs", "p99 µs", "mean µs"
    );
    let mut p99s = Vec::new();
    for ((name, _), s) in ops.iter().zip(&mut samples) {
        let mean = s.iter().sum::<Duration>() / s.len() as u32;
        let p99 = pct(s, 0.99);
        p99s.push(p99);
        println!(
            "{:<36} {:>9.1} {:>9.1} {:>9.1}",
            name,
            us(pct(s, 0.50)),
            us(p99),
            us(mean)
        );
    }
    let worst = p99s[0].max(p99s[1]);
    println!(
        "target: validation p99 < {} µs -> {} ({:.1} µs)",
        us(TARGET_P99),
        if worst < TARGET_P99 { "MET" } else { "NOT MET" },
        us(worst)
    );
}

fn main() {
    let fx = Fixture::new();
    let mut c = Criterion::default().configure_from_args();
    c.bench_function("validate/client", |b| {
        b.iter(|| fx.validate(&fx.client_token))
    });
    c.bench_function("validate/task", |b| b.iter(|| fx.validate(&fx.task_token)));
    c.bench_function("raw/verify", |b| b.iter(|| fx.raw_verify()));
    c.bench_function("raw/verify-ring", |b| b.iter(|| fx.ring_verify()));
    c.bench_function("raw/sign", |b| b.iter(|| fx.raw_sign()));
    c.bench_function("sign/task", |b| b.iter(|| fx.sign_task()));
    c.final_summary();
    // `cargo test --benches` runs this binary without `--bench` to smoke-test it;
    // the percentile table is for real bench runs only.
    if std::env::args().any(|a| a == "--bench") {
        percentile_table(&fx);
    }
}

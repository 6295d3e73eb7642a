//! X.509-SVID issuance cost against the physical limit.
//!
//! Benchmarks, in one run:
//! - `raw`: what any issuer must pay: rcgen P-256 key generation plus
//!   `CertificateParams::signed_by` of a leaf with the same profile the authority
//!   writes (URI SAN, BasicConstraints cA=false, KeyUsage digitalSignature, EKU
//!   serverAuth+clientAuth, empty DN, AKI, random 128-bit serial) by a P-256 CA;
//! - `client`: `Authority::issue` of a client SVID;
//! - `task`: `Authority::issue` of a task SVID carrying `TaskClaims` with 3 scopes;
//! - `node_task`: the same task SVID issued by a node's authority (cluster mode: a node
//!   CA the cluster root signed, `Authority::from_node_ca`), against the root's in the
//!   same run;
//! - the parts of the difference: key generation and signing alone, the
//!   `check_leaf_svid` self-check, claims validation and encoding, the key's PKCS#8 copy.
//!
//! After criterion's report (means), the bench times N individual calls of each
//! operation with `Instant`, interleaved so all see the same machine load, and
//! prints p50/p99 and the ratios to `raw`. Target: issuance within 2× of `raw`.
//!
//! ```text
//! cargo bench -p tessera-authority --bench issue -- --warm-up-time 1 --measurement-time 5
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use tessera_authority::{
    Authority, AuthorityConfig, CaMode, ClusterPolicy, NodeCaKey, RotationPolicy, SvidSpec,
};
use tessera_identity::{ClientId, Scope, ServerId, TaskClaims, TaskId, TrustDomain};
use time::OffsetDateTime;

const TD: &str = "bench.test";
const CLIENT_ID: &str = "spiffe://bench.test/client/code-reviewer";
/// Individually timed calls per operation for the percentile table.
const N: usize = 5000;

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f).max(1);
    SerialNumber::from_slice(&bytes)
}

/// A P-256 root CA like the authority's self-signed one.
fn raw_issuer() -> Issuer<'static, KeyPair> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Tessera");
    dn.push(DnType::CommonName, "Tessera CA bench.test");
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI("spiffe://bench.test".try_into().unwrap())];
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial());
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::seconds(10);
    params.not_after = now + time::Duration::days(30);
    let cert = params.self_signed(&key).unwrap();
    Issuer::from_ca_cert_der(cert.der(), key).unwrap()
}

/// The leaf profile the authority writes, without claims.
fn leaf_params(spiffe_id: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().unwrap())];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::seconds(10);
    params.not_after = now + time::Duration::hours(1);
    params
}

/// (a) The physical limit: key generation plus signing, nothing else.
fn raw_issue(issuer: &Issuer<'static, KeyPair>) -> Vec<u8> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = leaf_params(CLIENT_ID).signed_by(&key, issuer).unwrap();
    cert.der().to_vec()
}

struct Fixture {
    _dir: tempfile::TempDir,
    _cluster_dir: tempfile::TempDir,
    authority: Authority,
    /// A node's authority, from a node CA a cluster root signed.
    node: Authority,
    raw_issuer: Issuer<'static, KeyPair>,
    task_spiffe_id: String,
    claims: TaskClaims,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let td: TrustDomain = TD.parse().unwrap();
        let authority = Authority::open(AuthorityConfig {
            trust_domain: td,
            dir: dir.path().join("ca"),
            mode: CaMode::SelfSigned,
            rotation: RotationPolicy::default(),
        })
        .unwrap();
        let cluster_dir = tempfile::tempdir().unwrap();
        let root = Authority::open_cluster(
            AuthorityConfig {
                trust_domain: TD.parse().unwrap(),
                dir: cluster_dir.path().join("ca"),
                mode: CaMode::SelfSigned,
                rotation: RotationPolicy::default(),
            },
            ClusterPolicy::default(),
        )
        .unwrap();
        let node_key = NodeCaKey::generate().unwrap();
        let node_ca = root
            .sign_node_ca(
                &"spiffe://bench.test/node/bench-1".parse().unwrap(),
                &node_key.public_key_der(),
            )
            .unwrap();
        let node = Authority::from_node_ca(
            TD.parse().unwrap(),
            node_ca.chain_der,
            node_key,
            root.bundle().certs.clone(),
        )
        .unwrap();
        let client: ClientId = CLIENT_ID.parse().unwrap();
        let task = TaskId::new();
        let task_spiffe_id = client.task(task).to_string();
        let claims = TaskClaims {
            version: tessera_identity::TASK_CLAIMS_VERSION,
            task_id: task,
            client_id: client,
            subject: "alice@bench.test".into(),
            purpose: "review pull request 42 and summarise the open comments".into(),
            server: "spiffe://bench.test/mcp/github"
                .parse::<ServerId>()
                .unwrap(),
            scopes: [
                "github/tool/get_pull_request",
                "github/tool/list_*",
                "github/prompt/review",
            ]
            .iter()
            .map(|s| s.parse::<Scope>().unwrap())
            .collect(),
            consent_id: "consent-01J9ZBENCH".into(),
            // Far enough that the deadline never caps the TTL during the run.
            deadline_unix: OffsetDateTime::now_utc().unix_timestamp() + 24 * 3600,
        };
        claims.validate().unwrap();
        Fixture {
            _dir: dir,
            _cluster_dir: cluster_dir,
            authority,
            node,
            raw_issuer: raw_issuer(),
            task_spiffe_id,
            claims,
        }
    }

    fn raw(&self) -> Vec<u8> {
        raw_issue(&self.raw_issuer)
    }

    fn client(&self) -> tessera_authority::IssuedSvid {
        self.authority
            .issue(&SvidSpec {
                spiffe_id: CLIENT_ID,
                ttl: Duration::from_secs(3600),
                not_after_cap: None,
                claims: None,
            })
            .unwrap()
    }

    fn task(&self) -> tessera_authority::IssuedSvid {
        Self::task_by(&self.authority, &self.task_spiffe_id, &self.claims)
    }

    fn node_task(&self) -> tessera_authority::IssuedSvid {
        Self::task_by(&self.node, &self.task_spiffe_id, &self.claims)
    }

    fn task_by(
        authority: &Authority,
        task_spiffe_id: &str,
        claims: &TaskClaims,
    ) -> tessera_authority::IssuedSvid {
        authority
            .issue(&SvidSpec {
                spiffe_id: task_spiffe_id,
                ttl: Duration::from_secs(300),
                not_after_cap: Some(claims.deadline_unix),
                claims: Some(claims),
            })
            .unwrap()
    }
}

fn criterion_benches(c: &mut Criterion, fx: &Fixture) {
    let mut g = c.benchmark_group("issue");
    g.bench_function("raw_rcgen_keygen_sign", |b| b.iter(|| black_box(fx.raw())));
    g.bench_function("authority_client_svid", |b| {
        b.iter(|| black_box(fx.client()))
    });
    g.bench_function("authority_task_svid_3_scopes", |b| {
        b.iter(|| black_box(fx.task()))
    });
    g.bench_function("node_ca_task_svid_3_scopes", |b| {
        b.iter(|| black_box(fx.node_task()))
    });
    g.finish();

    // Where the difference could go.
    let client_leaf = fx.client().chain_der.swap_remove(0);
    let task_leaf = fx.task().chain_der.swap_remove(0);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut g = c.benchmark_group("parts");
    g.bench_function("keygen_p256", |b| {
        b.iter(|| black_box(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()))
    });
    g.bench_function("sign_leaf_prebuilt_key", |b| {
        b.iter(|| {
            black_box(
                leaf_params(CLIENT_ID)
                    .signed_by(&key, &fx.raw_issuer)
                    .unwrap(),
            )
        })
    });
    g.bench_function("sign_task_leaf_with_claims_ext", |b| {
        b.iter(|| {
            let mut params = leaf_params(&fx.task_spiffe_id);
            let mut ext = CustomExtension::from_oid_content(
                tessera_identity::TASK_CLAIMS_OID_ARCS,
                fx.claims.to_der(),
            );
            ext.set_criticality(false);
            params.custom_extensions.push(ext);
            black_box(params.signed_by(&key, &fx.raw_issuer).unwrap())
        })
    });
    g.bench_function("check_leaf_svid_client", |b| {
        b.iter(|| black_box(tessera_identity::check_leaf_svid(&client_leaf).unwrap()))
    });
    g.bench_function("check_leaf_svid_task", |b| {
        b.iter(|| black_box(tessera_identity::check_leaf_svid(&task_leaf).unwrap()))
    });
    g.bench_function("claims_validate_and_to_der", |b| {
        b.iter(|| {
            fx.claims.validate().unwrap();
            black_box(fx.claims.to_der())
        })
    });
    g.bench_function("validate_spiffe_id", |b| {
        b.iter(|| black_box(tessera_identity::validate_spiffe_id(black_box(CLIENT_ID)).unwrap()))
    });
    g.bench_function("key_serialize_der", |b| {
        b.iter(|| black_box(key.serialize_der()))
    });
    g.finish();
}

#[derive(Default)]
struct Samples(Vec<Duration>);

impl Samples {
    fn time<T>(&mut self, f: impl FnOnce() -> T) {
        let start = Instant::now();
        let out = f();
        self.0.push(start.elapsed());
        black_box(out);
    }

    fn pct(&self, p: f64) -> Duration {
        let mut v = self.0.clone();
        v.sort_unstable();
        let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    }

    fn mean(&self) -> Duration {
        self.0.iter().sum::<Duration>() / u32::try_from(self.0.len()).unwrap()
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn percentile_table(fx: &Fixture) {
    // Warm up (page in code, fill allocator caches).
    for _ in 0..200 {
        black_box((fx.raw(), fx.client(), fx.task(), fx.node_task()));
    }
    let mut node_task = Samples::default();
    let mut raw = Samples::default();
    let mut client = Samples::default();
    let mut task = Samples::default();
    let mut check = Samples::default();
    let leaf = fx.task().chain_der.swap_remove(0);
    // Interleaved: a burst of load on this shared 2-core machine hits every row alike.
    for _ in 0..N {
        raw.time(|| fx.raw());
        client.time(|| fx.client());
        task.time(|| fx.task());
        node_task.time(|| fx.node_task());
        check.time(|| tessera_identity::check_leaf_svid(&leaf).unwrap());
    }
    let (r50, r99) = (raw.pct(0.50), raw.pct(0.99));
    println!();
    println!("X.509-SVID issuance, N = {N} individually timed calls each (interleaved)");
    println!(
        "{:<44} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "operation", "p50 µs", "p99 µs", "mean µs", "p50/(a)", "p99/(a)"
    );
    for (name, s) in [
        ("(a) raw: rcgen keygen + signed_by", &raw),
        ("(b) Authority::issue client SVID", &client),
        ("(c) Authority::issue task SVID (3 scopes)", &task),
        ("(d) (c) by a node's authority (node CA)", &node_task),
        ("    part: check_leaf_svid(task leaf)", &check),
    ] {
        println!(
            "{:<44} {:>10.1} {:>10.1} {:>10.1} {:>8.2}x {:>8.2}x",
            name,
            us(s.pct(0.50)),
            us(s.pct(0.99)),
            us(s.mean()),
            us(s.pct(0.50)) / us(r50),
            us(s.pct(0.99)) / us(r99),
        );
    }
    println!(
        "node CA vs root, task SVID: p50 {:.2}x, p99 {:.2}x",
        us(node_task.pct(0.50)) / us(task.pct(0.50)),
        us(node_task.pct(0.99)) / us(task.pct(0.99)),
    );
    let worst = (us(task.pct(0.50)) / us(r50)).max(us(client.pct(0.50)) / us(r50));
    println!(
        "target: issuance within 2x of raw at p50 -> {}",
        if worst <= 2.0 { "MET" } else { "NOT MET" }
    );
}

fn main() {
    let fx = Fixture::new();
    let mut c = Criterion::default().configure_from_args();
    criterion_benches(&mut c, &fx);
    c.final_summary();
    // `cargo test --benches` runs this binary without `--bench` to smoke-test it;
    // the percentile table is for real bench runs only.
    if std::env::args().any(|a| a == "--bench") {
        percentile_table(&fx);
    } else {
        black_box((fx.raw(), fx.client(), fx.task(), fx.node_task()));
    }
}

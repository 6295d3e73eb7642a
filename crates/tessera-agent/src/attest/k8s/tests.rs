//! The Kubernetes attestor against a kubelet-compatible HTTPS endpoint started
//! here: real TLS (an rcgen CA), the bearer token checked, pod lists in the
//! kubelet's JSON, and a fake `/proc` giving callers' cgroups.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};

use super::*;
use crate::attest::{Attestor, Needs, PeerInfo, UnixAttestor};

const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.test-service-account-token.sig";
const POD_A: &str = "2c48913c-b29f-11e7-9350-020968147796";
const POD_B: &str = "7f1d0c2e-5a3b-4c8d-9e0f-112233445566";
const CTR_A: &str = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961";
const CTR_B: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const CTR_LATE: &str = "2222222222222222222222222222222222222222222222222222222222222222";

/// A pod as the kubelet's `/pods` reports it.
fn pod(uid: &str, ns: &str, name: &str, sa: &str, containers: &[(&str, &str)]) -> Value {
    json!({
        "metadata": {
            "name": name, "namespace": ns, "uid": uid,
            "labels": {"app.kubernetes.io/name": name, "tier": "agents"},
            "creationTimestamp": "2026-01-02T03:04:05Z",
        },
        "spec": {
            "serviceAccountName": sa,
            "nodeName": "node-a",
            "containers": containers.iter().map(|(n, _)| json!({"name": n, "image": "ghcr.io/acme/runtime:1.2"})).collect::<Vec<_>>(),
        },
        "status": {
            "phase": "Running",
            "containerStatuses": containers.iter().map(|(n, id)| json!({
                "name": n,
                "containerID": format!("containerd://{id}"),
                "image": "ghcr.io/acme/runtime:1.2",
                "imageID": "ghcr.io/acme/runtime@sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945",
                "ready": true, "restartCount": 0,
                "state": {"running": {"startedAt": "2026-01-02T03:04:06Z"}},
            })).collect::<Vec<_>>(),
        },
    })
}

fn pod_list(items: Vec<Value>) -> Value {
    json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
}

/// The pods listed on the n-th request (0-based).
type Pods = Arc<dyn Fn(usize) -> Value + Send + Sync>;

struct FakeKubelet {
    url: String,
    ca_pem: String,
    requests: Arc<AtomicUsize>,
    rejected: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A CA, and a serving certificate from it for `127.0.0.1` and `kubelet.test`.
fn pki() -> (String, CertificateDer<'static>, PrivateKeyDer<'static>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "kubelet.test".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (
        ca_cert.pem(),
        leaf.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

async fn start_kubelet(pods: Pods) -> FakeKubelet {
    let (ca_pem, cert, key) = pki();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let rejected = Arc::new(AtomicUsize::new(0));
    let (req_count, rej_count) = (Arc::clone(&requests), Arc::clone(&rejected));
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let (pods, req_count, rej_count) = (
                Arc::clone(&pods),
                Arc::clone(&req_count),
                Arc::clone(&rej_count),
            );
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let authorized = req
                            .headers()
                            .get(http::header::AUTHORIZATION)
                            .is_some_and(|v| v.as_bytes() == format!("Bearer {TOKEN}").as_bytes());
                        let resp = if !authorized {
                            rej_count.fetch_add(1, Ordering::SeqCst);
                            http::Response::builder()
                                .status(401)
                                .body(Full::new(Bytes::from("Unauthorized")))
                        } else if req.method() != http::Method::GET || req.uri().path() != "/pods" {
                            http::Response::builder()
                                .status(404)
                                .body(Full::new(Bytes::new()))
                        } else {
                            let n = req_count.fetch_add(1, Ordering::SeqCst);
                            http::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(pods(n).to_string())))
                        };
                        async move { resp }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    FakeKubelet {
        url,
        ca_pem,
        requests,
        rejected,
        task,
    }
}

/// Writes `dir/<pid>/cgroup`, and makes the cgroup directories its v2 line names
/// (absolute paths only) in the fake cgroup filesystem beside `dir` (see [`cgroup_root`]).
fn fake_proc(dir: &Path, pid: i32, cgroup: &str) {
    let d = dir.join(pid.to_string());
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("cgroup"), cgroup).unwrap();
    let root = cgroup_root(dir);
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
    for line in cgroup.lines() {
        if let Some(path) = line.strip_prefix("0::/")
            && !path.starts_with("..")
        {
            std::fs::create_dir_all(root.join(path)).unwrap();
        }
    }
}

/// The fake cgroup filesystem of the fake `/proc` at `proc`.
fn cgroup_root(proc: &Path) -> std::path::PathBuf {
    proc.parent().unwrap().join("cgroup")
}

/// Where the tests' cgroup trees are, and that they, not root, own them.
fn with_fake_cgroups(attestor: K8sAttestor, proc: &Path) -> K8sAttestor {
    attestor
        .with_cgroup_root(cgroup_root(proc))
        .with_cgroup_owner(nix::unistd::geteuid().as_raw())
}

fn containerd_v2(pod: &str, ctr: &str) -> String {
    format!(
        "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{ctr}.scope\n",
        pod.replace('-', "_")
    )
}

struct Setup {
    kubelet: FakeKubelet,
    dir: tempfile::TempDir,
    attestor: K8sAttestor,
}

fn timing() -> CacheTiming {
    CacheTiming {
        ttl: Duration::from_secs(30),
        min_refresh_interval: Duration::from_millis(20),
        retry_attempts: 5,
        retry_interval: Duration::from_millis(40),
    }
}

async fn setup(pods: Pods, token: &str, trust: Option<KubeletTrust>) -> Setup {
    let kubelet = start_kubelet(pods).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &kubelet.ca_pem).unwrap();
    std::fs::write(dir.path().join("token"), format!("{token}\n")).unwrap();
    let client = KubeletClient::new(KubeletSettings {
        url: kubelet.url.parse().unwrap(),
        server_name: None,
        trust: trust.unwrap_or_else(|| KubeletTrust::CaBundle(dir.path().join("ca.pem"))),
        token_file: dir.path().join("token"),
        timeout: Duration::from_secs(5),
    })
    .unwrap();
    let proc = dir.path().join("proc");
    let attestor = with_fake_cgroups(K8sAttestor::new(&proc, client, timing()), &proc);
    Setup {
        kubelet,
        dir,
        attestor,
    }
}

fn two_pods() -> Pods {
    Arc::new(|_| {
        pod_list(vec![
            pod(
                POD_A,
                "agents",
                "code-reviewer-0",
                "code-reviewer",
                &[("runtime", CTR_A)],
            ),
            pod(
                POD_B,
                "tools",
                "github-mcp-0",
                "github-mcp",
                &[("server", CTR_B)],
            ),
        ])
    })
}

fn strs(s: &BTreeSet<Selector>) -> Vec<&str> {
    s.iter().map(Selector::as_str).collect()
}

#[tokio::test]
async fn caller_in_a_listed_pod_gets_its_pod_selectors_over_verified_tls() {
    let s = setup(two_pods(), TOKEN, None).await;
    let proc = s.dir.path().join("proc");
    fake_proc(&proc, 4242, &containerd_v2(POD_A, CTR_A));
    let sels = s.attestor.selectors(4242).await.unwrap();
    assert_eq!(
        strs(&sels),
        vec![
            "k8s:container-image:ghcr.io/acme/runtime:1.2",
            "k8s:container-image:ghcr.io/acme/runtime@sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945",
            "k8s:container-name:runtime",
            "k8s:node-name:node-a",
            "k8s:ns:agents",
            "k8s:pod-label:app.kubernetes.io/name:code-reviewer-0",
            "k8s:pod-label:tier:agents",
            "k8s:pod-name:code-reviewer-0",
            &format!("k8s:pod-uid:{POD_A}"),
            "k8s:sa:code-reviewer",
        ]
    );
    assert_eq!(s.kubelet.rejected.load(Ordering::SeqCst), 0);

    // The other pod's caller gets the other pod's identity, from the cached list.
    fake_proc(&proc, 4343, &containerd_v2(POD_B, CTR_B));
    let sels = s.attestor.selectors(4343).await.unwrap();
    assert!(sels.iter().any(|s| s.as_str() == "k8s:sa:github-mcp"));
    assert!(!sels.iter().any(|s| s.as_str() == "k8s:sa:code-reviewer"));
    assert_eq!(
        s.kubelet.requests.load(Ordering::SeqCst),
        1,
        "one fetch serves both"
    );
}

#[tokio::test]
async fn container_not_yet_listed_is_found_after_a_retry() {
    let pods: Pods = Arc::new(|n| {
        let mut items = vec![pod(
            POD_A,
            "agents",
            "code-reviewer-0",
            "code-reviewer",
            &[("runtime", CTR_A)],
        )];
        if n >= 2 {
            items.push(pod(
                POD_B,
                "agents",
                "late-0",
                "late",
                &[("runtime", CTR_LATE)],
            ));
        }
        pod_list(items)
    });
    let s = setup(pods, TOKEN, None).await;
    let proc = s.dir.path().join("proc");
    fake_proc(&proc, 10, &containerd_v2(POD_A, CTR_A));
    s.attestor.selectors(10).await.unwrap();
    fake_proc(&proc, 11, &containerd_v2(POD_B, CTR_LATE));
    let sels = s.attestor.selectors(11).await.unwrap();
    assert!(sels.iter().any(|s| s.as_str() == "k8s:sa:late"), "{sels:?}");
    assert_eq!(s.kubelet.requests.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn caller_in_an_unknown_pod_is_denied_after_bounded_retries() {
    let s = setup(two_pods(), TOKEN, None).await;
    let proc = s.dir.path().join("proc");
    fake_proc(
        &proc,
        20,
        &containerd_v2("00000000-0000-4000-8000-000000000000", CTR_A),
    );
    let started = std::time::Instant::now();
    let err = s.attestor.selectors(20).await.unwrap_err();
    assert!(matches!(err, K8sAttestError::NotListed { .. }), "{err}");
    // One fetch, then retry_attempts more, and no more than that.
    assert_eq!(
        s.kubelet.requests.load(Ordering::SeqCst),
        1 + timing().retry_attempts as usize
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn container_id_of_one_pod_under_another_pods_uid_is_denied() {
    // Pod B's uid with pod A's container: matched on both, so neither identity.
    let s = setup(two_pods(), TOKEN, None).await;
    let proc = s.dir.path().join("proc");
    fake_proc(&proc, 30, &containerd_v2(POD_B, CTR_A));
    let err = s.attestor.selectors(30).await.unwrap_err();
    assert!(matches!(err, K8sAttestError::NotListed { .. }), "{err}");
}

#[tokio::test]
async fn host_process_gets_no_k8s_selectors_and_costs_no_request() {
    let s = setup(two_pods(), TOKEN, None).await;
    let proc = s.dir.path().join("proc");
    fake_proc(
        &proc,
        40,
        "0::/user.slice/user-1000.slice/session-3.scope\n",
    );
    assert!(s.attestor.selectors(40).await.unwrap().is_empty());
    assert_eq!(s.kubelet.requests.load(Ordering::SeqCst), 0);
    // A runtime helper inside a pod slice is not a container: denied, not ignored.
    fake_proc(
        &proc,
        41,
        &format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/crio-conmon-{CTR_A}.scope\n",
            POD_A.replace('-', "_")
        ),
    );
    let err = s.attestor.selectors(41).await.unwrap_err();
    assert!(matches!(err, K8sAttestError::Cgroup { .. }), "{err}");
}

/// A host user can create cgroups named like the kubelet's in its own delegated
/// subtree (`user@<uid>.service`), with a listed pod's UID and container id, and
/// move itself there. It must not get that pod's identity, nor cost a kubelet request.
#[tokio::test]
async fn a_caller_in_a_cgroup_imitating_a_listed_pod_gets_no_pod_identity() {
    let s = setup(two_pods(), TOKEN, None).await;
    let proc = s.dir.path().join("proc");
    let delegated = "/user.slice/user-1000.slice/user@1000.service";
    let u = POD_A.replace('-', "_");
    let shapes = [
        format!("0::{delegated}/x/kubepods/besteffort/pod{POD_A}/{CTR_A}\n"),
        format!(
            "0::{delegated}/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/cri-containerd-{CTR_A}.scope\n"
        ),
        format!(
            "1:name=systemd:{delegated}/kubepods/pod{POD_A}/{CTR_A}\n0::/user.slice/user-1000.slice/session-2.scope\n"
        ),
    ];
    for (pid, cgroup) in (90..).zip(&shapes) {
        fake_proc(&proc, pid, cgroup);
        let err = s.attestor.selectors(pid).await.unwrap_err();
        assert!(
            matches!(
                err,
                K8sAttestError::Cgroup {
                    source: CgroupError::Unanchored { .. },
                    ..
                }
            ),
            "{cgroup}: {err}"
        );
    }
    assert_eq!(s.kubelet.requests.load(Ordering::SeqCst), 0);
}

/// The kubelet's layout, at the top of the hierarchy, but on disk a directory on the
/// way is not root's alone (here: writable by others, as a delegated one would be):
/// refused, whatever the names say.
#[tokio::test]
async fn a_pod_cgroup_not_made_by_root_on_disk_gives_no_pod_identity() {
    use std::os::unix::fs::PermissionsExt;
    let s = setup(two_pods(), TOKEN, None).await;
    let proc = s.dir.path().join("proc");
    fake_proc(&proc, 95, &containerd_v2(POD_A, CTR_A));
    assert!(!s.attestor.selectors(95).await.unwrap().is_empty());
    let qos = cgroup_root(&proc).join("kubepods.slice/kubepods-besteffort.slice");
    std::fs::set_permissions(&qos, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = s.attestor.selectors(95).await.unwrap_err();
    assert!(
        matches!(
            &err,
            K8sAttestError::Cgroup {
                source: CgroupError::NotKubelets { dir, .. },
                ..
            } if *dir == qos
        ),
        "{err}"
    );
    // A pod cgroup that is not there (the agent looks at another filesystem) is refused too.
    std::fs::remove_dir_all(cgroup_root(&proc).join("kubepods.slice")).unwrap();
    let err = s.attestor.selectors(95).await.unwrap_err();
    assert!(matches!(err, K8sAttestError::Cgroup { .. }), "{err}");
}

#[tokio::test]
async fn wrong_token_is_refused_by_the_kubelet_and_the_caller_denied() {
    let s = setup(two_pods(), "not-the-token", None).await;
    let proc = s.dir.path().join("proc");
    fake_proc(&proc, 50, &containerd_v2(POD_A, CTR_A));
    let err = s.attestor.selectors(50).await.unwrap_err();
    assert!(
        matches!(
            err,
            K8sAttestError::Kubelet(KubeletError::Unauthorized { status: 401, .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("nodes/pods"), "{err}");
    assert!(s.kubelet.rejected.load(Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn kubelet_certificate_from_another_ca_is_refused_unless_dangerously_skipped() {
    let (other_ca, _, _) = pki();
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("ca.pem"), other_ca).unwrap();
    let s = setup(
        two_pods(),
        TOKEN,
        Some(KubeletTrust::CaBundle(other.path().join("ca.pem"))),
    )
    .await;
    let proc = s.dir.path().join("proc");
    fake_proc(&proc, 60, &containerd_v2(POD_A, CTR_A));
    let err = s.attestor.selectors(60).await.unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
    assert_eq!(
        s.kubelet.requests.load(Ordering::SeqCst),
        0,
        "no request on an unverified connection"
    );

    let s = setup(
        two_pods(),
        TOKEN,
        Some(KubeletTrust::DangerousAcceptAnyCertificate),
    )
    .await;
    fake_proc(&s.dir.path().join("proc"), 60, &containerd_v2(POD_A, CTR_A));
    assert!(!s.attestor.selectors(60).await.unwrap().is_empty());
}

#[tokio::test]
async fn server_name_must_match_the_kubelet_certificate() {
    let kubelet = start_kubelet(two_pods()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &kubelet.ca_pem).unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    for (name, ok) in [("kubelet.test", true), ("node-b.example", false)] {
        let client = KubeletClient::new(KubeletSettings {
            url: kubelet.url.parse().unwrap(),
            server_name: Some(name.into()),
            trust: KubeletTrust::CaBundle(dir.path().join("ca.pem")),
            token_file: dir.path().join("token"),
            timeout: Duration::from_secs(5),
        })
        .unwrap();
        assert_eq!(client.pods().await.is_ok(), ok, "{name}");
    }
}

#[tokio::test]
async fn concurrent_misses_share_rate_limited_fetches() {
    let s = Arc::new(setup(two_pods(), TOKEN, None).await);
    let proc = s.dir.path().join("proc");
    fake_proc(&proc, 70, &containerd_v2(POD_A, CTR_A));
    let calls: Vec<_> = (0..32)
        .map(|_| {
            let s = Arc::clone(&s);
            tokio::spawn(async move { s.attestor.selectors(70).await.map(|x| x.len()) })
        })
        .collect();
    for c in calls {
        assert!(c.await.unwrap().unwrap() > 0);
    }
    assert_eq!(s.kubelet.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn composed_attestation_is_unix_selectors_plus_k8s_selectors() {
    let s = setup(two_pods(), TOKEN, None).await;
    let proc = s.dir.path().join("proc");
    let kubelet = KubeletClient::new(KubeletSettings {
        url: s.kubelet.url.parse().unwrap(),
        server_name: None,
        trust: KubeletTrust::CaBundle(s.dir.path().join("ca.pem")),
        token_file: s.dir.path().join("token"),
        timeout: Duration::from_secs(5),
    })
    .unwrap();
    let attestor = Attestor::new(
        UnixAttestor::new(&proc),
        Some(with_fake_cgroups(
            K8sAttestor::new(&proc, kubelet, timing()),
            &proc,
        )),
    );
    let peer = |pid| PeerInfo {
        conn_id: 1,
        pid: Some(pid),
        uid: 1000,
        gid: 1000,
        pidfd: None,
        pidfd_from_kernel: false,
        span: tracing::Span::none(),
    };
    // `unix:path` names a file the agent itself sees: a real one, in the test's directory.
    let runtime = s.dir.path().join("runtime");
    std::fs::write(&runtime, "#!/bin/sh\n").unwrap();
    for (pid, cgroup) in [
        (80, containerd_v2(POD_A, CTR_A)),
        (
            81,
            containerd_v2("00000000-0000-4000-8000-000000000000", CTR_A),
        ),
    ] {
        let d = proc.join(pid.to_string());
        fake_proc(&proc, pid, &cgroup);
        std::fs::write(d.join("status"), "Name:\truntime\nGroups:\t\n").unwrap();
        std::os::unix::fs::symlink(&runtime, d.join("exe")).unwrap();
    }
    let att = attestor.attest(&peer(80), Needs::default()).await.unwrap();
    assert!(att.satisfies([
        "unix:uid:1000",
        &format!("unix:path:{}", runtime.display()),
        "k8s:ns:agents",
        "k8s:sa:code-reviewer"
    ]));
    assert!(!att.satisfies(["k8s:sa:github-mcp"]));

    let err = attestor
        .attest(&peer(81), Needs::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, crate::attest::AttestError::Kubernetes { .. }),
        "{err}"
    );
    // A pid with no /proc entry has exited: refused as such.
    let err = attestor
        .attest(&peer(82), Needs::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, crate::attest::AttestError::Exited { .. }),
        "{err}"
    );
}

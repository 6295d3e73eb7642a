//! The deployment manifests, parsed into typed Kubernetes objects and checked
//! against the agent's own configuration: socket paths, ports, probes, config
//! keys, RBAC, security context. The Helm chart, rendered with its default
//! values (by a small renderer for the template subset it uses, no `helm`
//! binary here), must produce the same objects as the kustomize base.

#[path = "deploy/helm_render.rs"]
mod helm_render;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, Namespace, Pod, PodSpec, Service, ServiceAccount, Volume,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_norway::Value;
use tessera_agent::config::Config;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One manifest object, typed.
#[derive(Debug, Clone, PartialEq)]
enum Object {
    Namespace(Namespace),
    ServiceAccount(ServiceAccount),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    ConfigMap(ConfigMap),
    DaemonSet(DaemonSet),
    Pod(Pod),
    Deployment(Deployment),
    Service(Service),
    PodDisruptionBudget(PodDisruptionBudget),
}

impl Object {
    fn parse(doc: Value, origin: &str) -> Object {
        let kind = doc
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{origin}: an object without kind"))
            .to_owned();
        fn typed<T: serde::de::DeserializeOwned>(doc: Value, origin: &str, kind: &str) -> T {
            serde_norway::from_value(doc)
                .unwrap_or_else(|e| panic!("{origin}: not a valid {kind}: {e}"))
        }
        match kind.as_str() {
            "Namespace" => Object::Namespace(typed(doc, origin, &kind)),
            "ServiceAccount" => Object::ServiceAccount(typed(doc, origin, &kind)),
            "ClusterRole" => Object::ClusterRole(typed(doc, origin, &kind)),
            "ClusterRoleBinding" => Object::ClusterRoleBinding(typed(doc, origin, &kind)),
            "ConfigMap" => Object::ConfigMap(typed(doc, origin, &kind)),
            "DaemonSet" => Object::DaemonSet(typed(doc, origin, &kind)),
            "Pod" => Object::Pod(typed(doc, origin, &kind)),
            "Deployment" => Object::Deployment(typed(doc, origin, &kind)),
            "Service" => Object::Service(typed(doc, origin, &kind)),
            "PodDisruptionBudget" => Object::PodDisruptionBudget(typed(doc, origin, &kind)),
            other => panic!("{origin}: unexpected kind {other}"),
        }
    }

    fn key(&self) -> (&'static str, String) {
        let (kind, meta) = match self {
            Object::Namespace(o) => ("Namespace", &o.metadata),
            Object::ServiceAccount(o) => ("ServiceAccount", &o.metadata),
            Object::ClusterRole(o) => ("ClusterRole", &o.metadata),
            Object::ClusterRoleBinding(o) => ("ClusterRoleBinding", &o.metadata),
            Object::ConfigMap(o) => ("ConfigMap", &o.metadata),
            Object::DaemonSet(o) => ("DaemonSet", &o.metadata),
            Object::Pod(o) => ("Pod", &o.metadata),
            Object::Deployment(o) => ("Deployment", &o.metadata),
            Object::Service(o) => ("Service", &o.metadata),
            Object::PodDisruptionBudget(o) => ("PodDisruptionBudget", &o.metadata),
        };
        (kind, meta.name.clone().unwrap_or_default())
    }

    fn namespace(&self) -> Option<&str> {
        match self {
            Object::Namespace(_) | Object::ClusterRole(_) | Object::ClusterRoleBinding(_) => None,
            Object::ServiceAccount(o) => o.metadata.namespace.as_deref(),
            Object::ConfigMap(o) => o.metadata.namespace.as_deref(),
            Object::DaemonSet(o) => o.metadata.namespace.as_deref(),
            Object::Pod(o) => o.metadata.namespace.as_deref(),
            Object::Deployment(o) => o.metadata.namespace.as_deref(),
            Object::Service(o) => o.metadata.namespace.as_deref(),
            Object::PodDisruptionBudget(o) => o.metadata.namespace.as_deref(),
        }
    }
}

/// Every YAML document in `text`, typed.
fn parse_docs(text: &str, origin: &str) -> Vec<Object> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| {
            <Value as serde::Deserialize>::deserialize(d)
                .unwrap_or_else(|e| panic!("{origin}: {e}"))
        })
        .filter(|v| !v.is_null())
        .map(|v| Object::parse(v, origin))
        .collect()
}

/// A kustomization's output: its resources, in order. Refuses transformers
/// this test does not model, and checks the namespace transformer is a no-op.
fn kustomize(dir: &Path) -> Vec<Object> {
    let k: Value =
        serde_norway::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
            .unwrap();
    for key in k.as_mapping().unwrap().keys() {
        let key = key.as_str().unwrap();
        assert!(
            ["apiVersion", "kind", "namespace", "resources", "patches"].contains(&key),
            "{}: `{key}` is a transformer this test does not model",
            dir.display()
        );
    }
    let ns = k.get("namespace").and_then(Value::as_str);
    let mut out = Vec::new();
    for r in k["resources"].as_sequence().unwrap() {
        let file = dir.join(r.as_str().unwrap());
        let objs = if file.is_dir() {
            kustomize(&file)
        } else {
            parse_docs(
                &std::fs::read_to_string(&file).unwrap(),
                &file.display().to_string(),
            )
        };
        for o in &objs {
            if let (Some(want), Some(have)) = (ns, o.namespace()) {
                assert_eq!(
                    have,
                    want,
                    "{}: {:?} is not in the kustomization's namespace",
                    file.display(),
                    o.key()
                );
            }
        }
        out.extend(objs);
    }
    for patch in k
        .get("patches")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        apply_patch(&mut out, patch, &dir.display().to_string());
    }
    out
}

/// Applies one kustomize patch: a JSON 6902 list of `add`/`replace` operations on the
/// one object its target names (the only patches the overlays use).
fn apply_patch(objs: &mut [Object], patch: &Value, origin: &str) {
    let kind = patch["target"]["kind"].as_str().unwrap();
    let name = patch["target"]["name"].as_str().unwrap();
    let ops: Vec<serde_json::Value> =
        serde_norway::from_str(patch["patch"].as_str().unwrap()).unwrap();
    let targets: Vec<&mut Object> = objs
        .iter_mut()
        .filter(|o| o.key() == (kind, name.to_owned()))
        .collect();
    assert_eq!(targets.len(), 1, "{origin}: patch target {kind}/{name}");
    let target = targets.into_iter().next().unwrap();
    let mut doc = match &*target {
        Object::ConfigMap(o) => serde_json::to_value(o),
        Object::DaemonSet(o) => serde_json::to_value(o),
        other => panic!("{origin}: patching {:?} is not modelled", other.key()),
    }
    .unwrap();
    for op in ops {
        let path: Vec<String> = op["path"]
            .as_str()
            .unwrap()
            .split('/')
            .skip(1)
            .map(|p| p.replace("~1", "/").replace("~0", "~"))
            .collect();
        let (last, parents) = path.split_last().unwrap();
        let mut slot = &mut doc;
        for p in parents {
            slot = match slot {
                serde_json::Value::Array(a) => &mut a[p.parse::<usize>().unwrap()],
                v => v
                    .get_mut(p.as_str())
                    .unwrap_or_else(|| panic!("{origin}: no {p} in {}", op["path"])),
            };
        }
        let value = op["value"].clone();
        match (op["op"].as_str().unwrap(), slot) {
            ("add", serde_json::Value::Array(a)) if last == "-" => a.push(value),
            ("add" | "replace", serde_json::Value::Object(m)) => {
                if op["op"] == "replace" {
                    assert!(
                        m.contains_key(last),
                        "{origin}: replace of a missing {last}"
                    );
                }
                m.insert(last.clone(), value);
            }
            (other, _) => panic!(
                "{origin}: patch op {other} at {} is not modelled",
                op["path"]
            ),
        }
    }
    *target = Object::parse(serde_norway::to_value(doc).unwrap(), origin);
}

fn helm(values_override: Option<&str>) -> Vec<Object> {
    let chart_dir = repo().join("deploy/helm/tessera");
    let mut values: Value =
        serde_norway::from_str(&std::fs::read_to_string(chart_dir.join("values.yaml")).unwrap())
            .unwrap();
    if let Some(o) = values_override {
        merge(&mut values, serde_norway::from_str(o).unwrap());
    }
    let chart: Value =
        serde_norway::from_str(&std::fs::read_to_string(chart_dir.join("Chart.yaml")).unwrap())
            .unwrap();
    let chart = serde_norway::to_value(BTreeMap::from([
        ("Name", chart["name"].clone()),
        ("Version", chart["version"].clone()),
        ("AppVersion", chart["appVersion"].clone()),
    ]))
    .unwrap();
    let ctx = helm_render::Context {
        values,
        release_name: "tessera".into(),
        release_namespace: "tessera-system".into(),
        chart,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart_dir.join("templates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let rendered = helm_render::render(&std::fs::read_to_string(&f).unwrap(), &ctx)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        out.extend(parse_docs(&rendered, &f.display().to_string()));
    }
    out
}

fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

fn find<'a, T>(objs: &'a [Object], pick: impl Fn(&'a Object) -> Option<&'a T>) -> &'a T {
    let found: Vec<&T> = objs.iter().filter_map(pick).collect();
    assert_eq!(found.len(), 1, "expected exactly one");
    found[0]
}

fn env<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .iter()
        .flatten()
        .find(|e: &&EnvVar| e.name == name)
        .and_then(|e| e.value.as_deref())
}

fn volume<'a>(spec: &'a PodSpec, name: &str) -> &'a Volume {
    spec.volumes
        .iter()
        .flatten()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

/// The volume mounted at `dir` in `c`, and whether read-only.
fn mount_at<'a>(spec: &'a PodSpec, c: &Container, dir: &Path) -> (&'a Volume, bool) {
    let m = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| Path::new(&m.mount_path) == dir)
        .unwrap_or_else(|| panic!("{}: nothing mounted at {}", c.name, dir.display()));
    (volume(spec, &m.name), m.read_only.unwrap_or(false))
}

/// The agent's effective config inside the DaemonSet: the ConfigMap's TOML,
/// then the container's TESSERA_* environment, as the agent loads it.
fn agent_config(objs: &[Object]) -> (Config, DaemonSet, ConfigMap) {
    let ds = find(objs, |o| match o {
        Object::DaemonSet(d) => Some(d),
        _ => None,
    })
    .clone();
    let spec = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let c = &spec.containers[0];
    let config_path = PathBuf::from(env(c, "TESSERA_CONFIG").expect("TESSERA_CONFIG is set"));
    let (vol, ro) = mount_at(spec, c, config_path.parent().unwrap());
    assert!(ro, "the config mount is read-only");
    let cm_name = vol
        .config_map
        .as_ref()
        .expect("config comes from a ConfigMap")
        .name
        .clone();
    let cm = find(objs, |o| match o {
        Object::ConfigMap(m) if m.metadata.name.as_deref() == Some(cm_name.as_str()) => Some(m),
        _ => None,
    })
    .clone();
    let key = config_path.file_name().unwrap().to_str().unwrap();
    let toml = &cm.data.as_ref().unwrap()[key];
    // The container's literal env values (valueFrom ones are not config), as the
    // kubelet expands them.
    let vars: HashMap<String, String> = c
        .env
        .iter()
        .flatten()
        .filter_map(|e| {
            let value = e.value.as_deref()?.replace("$(NODE_IP)", "10.0.0.7");
            Some((e.name.clone(), value))
        })
        .collect();
    // The whole file, `[server]` included, through the agent's own parser.
    let config = Config::from_toml_and_env(toml, &vars)
        .unwrap_or_else(|e| panic!("ConfigMap {key} with the container's env: {e}"));
    (config, ds, cm)
}

/// The agent's parsed `[server]` section (cluster mode), as its config holds it.
fn joined(objs: &[Object], origin: &str) -> tessera_agent::config::ServerConfig {
    let (config, _, _) = agent_config(objs);
    config
        .server
        .unwrap_or_else(|| panic!("{origin}: the agent has a [server] section"))
}

fn port_number(p: &IntOrString, c: &Container) -> i32 {
    match p {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name))
            .map(|cp| cp.container_port)
            .unwrap_or_else(|| panic!("no port named {name}")),
    }
}

fn check_agent(objs: &[Object], origin: &str) -> Config {
    let (config, ds, _) = agent_config(objs);
    let spec = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let c = &spec.containers[0];

    assert_eq!(
        spec.host_pid,
        Some(true),
        "{origin}: SO_PEERCRED pids must name /proc entries"
    );
    let k8s = config
        .kubernetes
        .as_ref()
        .unwrap_or_else(|| panic!("{origin}: the Kubernetes attestor is on"));
    assert_eq!(
        k8s.kubelet_url.to_string(),
        "https://10.0.0.7:10250/",
        "{origin}"
    );

    // The workload socket's directory is the same hostPath on the node as in the container.
    let sock_dir = config.workload_socket.parent().unwrap();
    assert_eq!(sock_dir, Path::new("/run/tessera"), "{origin}");
    let (vol, ro) = mount_at(spec, c, sock_dir);
    assert!(!ro, "{origin}: the agent creates the socket");
    assert_eq!(
        vol.host_path.as_ref().map(|h| h.path.as_str()),
        Some(sock_dir.to_str().unwrap()),
        "{origin}: socket directory is a hostPath at the same path"
    );
    // The admin socket is not shared with the node's pods.
    let admin_dir = config.admin_socket.parent().unwrap();
    assert_ne!(admin_dir, sock_dir, "{origin}");
    let (vol, _) = mount_at(spec, c, admin_dir);
    assert!(
        vol.empty_dir.is_some() && vol.host_path.is_none(),
        "{origin}: admin socket stays in the pod"
    );
    assert_eq!(
        env(c, "TESSERA_ADMIN_SOCKET").map(PathBuf::from),
        Some(config.admin_socket.clone()),
        "{origin}: the in-pod CLI finds the admin socket"
    );
    // Data survives restarts and is writable under a read-only root.
    let (vol, ro) = mount_at(spec, c, &config.data_dir);
    assert!(!ro && vol.host_path.is_some(), "{origin}");
    // Pod cgroups are checked in the host's cgroup filesystem, seen read-only.
    let (vol, ro) = mount_at(spec, c, &k8s.cgroup_root);
    assert!(
        ro,
        "{origin}: the host's cgroups are read-only to the agent"
    );
    assert_eq!(
        vol.host_path.as_ref().map(|h| h.path.as_str()),
        Some("/sys/fs/cgroup"),
        "{origin}: kubernetes.cgroup_root is the host's /sys/fs/cgroup"
    );
    assert_eq!(
        config.exe_hash_max_bytes,
        tessera_agent::config::DEFAULT_EXE_HASH_MAX_BYTES,
        "{origin}"
    );

    // Probes and metrics on the agent's http_listen port.
    let port = i32::from(config.http_listen.port());
    assert!(
        config.http_listen.ip().is_unspecified(),
        "{origin}: probes come from the kubelet, on the pod IP"
    );
    let live = c
        .liveness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("liveness probe");
    let ready = c
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("readiness probe");
    assert_eq!(live.path.as_deref(), Some("/healthz"), "{origin}");
    assert_eq!(ready.path.as_deref(), Some("/readyz"), "{origin}");
    assert_eq!(port_number(&live.port, c), port, "{origin}");
    assert_eq!(port_number(&ready.port, c), port, "{origin}");
    assert!(
        c.ports.iter().flatten().any(|p| p.container_port == port),
        "{origin}"
    );
    let ann = ds
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap();
    assert_eq!(ann["prometheus.io/scrape"], "true", "{origin}");
    assert_eq!(ann["prometheus.io/port"], port.to_string(), "{origin}");
    assert_eq!(ann["prometheus.io/path"], "/metrics", "{origin}");

    // Least privilege: read-only root, no escalation, only CAP_SYS_PTRACE.
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_eq!(sc.read_only_root_filesystem, Some(true), "{origin}");
    assert_eq!(sc.allow_privilege_escalation, Some(false), "{origin}");
    assert_ne!(sc.privileged, Some(true), "{origin}");
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(
        caps.drop.as_deref(),
        Some(&["ALL".to_string()][..]),
        "{origin}"
    );
    assert_eq!(
        caps.add.as_deref(),
        Some(&["SYS_PTRACE".to_string()][..]),
        "{origin}"
    );
    let res = c.resources.as_ref().expect("resources");
    for (what, m) in [("requests", &res.requests), ("limits", &res.limits)] {
        let m = m.as_ref().unwrap_or_else(|| panic!("{origin}: no {what}"));
        assert!(
            m.contains_key("cpu") && m.contains_key("memory"),
            "{origin}: {what}"
        );
    }

    // RBAC: the DaemonSet's service account, bound to get nodes/pods and nothing else.
    let sa = spec.service_account_name.as_deref().unwrap();
    let ns = ds.metadata.namespace.as_deref().unwrap();
    find(objs, |o| match o {
        Object::ServiceAccount(s) if s.metadata.name.as_deref() == Some(sa) => Some(s),
        _ => None,
    });
    let crb = find(objs, |o| match o {
        Object::ClusterRoleBinding(b) if b.subjects.iter().flatten().any(|s| s.name == sa) => {
            Some(b)
        }
        _ => None,
    });
    let subj = &crb.subjects.as_ref().unwrap()[0];
    assert_eq!(
        (
            subj.kind.as_str(),
            subj.name.as_str(),
            subj.namespace.as_deref()
        ),
        ("ServiceAccount", sa, Some(ns))
    );
    let cr = find(objs, |o| match o {
        Object::ClusterRole(r)
            if r.metadata.name.as_deref() == Some(crb.role_ref.name.as_str()) =>
        {
            Some(r)
        }
        _ => None,
    });
    let rules = cr.rules.as_ref().unwrap();
    assert_eq!(rules.len(), 1, "{origin}: {rules:?}");
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["nodes/pods".to_string()][..])
    );
    assert_eq!(rules[0].verbs, vec!["get".to_string()]);
    config
}

/// Every container of `spec` that has SPIFFE_ENDPOINT_SOCKET mounts the agent's
/// socket directory read-only from the same hostPath.
fn check_workload(spec: &PodSpec, config: &Config, origin: &str) -> usize {
    let mut n = 0;
    for c in &spec.containers {
        let Some(ep) = env(c, "SPIFFE_ENDPOINT_SOCKET") else {
            continue;
        };
        n += 1;
        assert_eq!(
            ep,
            format!("unix://{}", config.workload_socket.display()),
            "{origin}/{}",
            c.name
        );
        let dir = config.workload_socket.parent().unwrap();
        let (vol, ro) = mount_at(spec, c, dir);
        assert!(
            ro,
            "{origin}: workloads mount the socket directory read-only"
        );
        assert_eq!(
            vol.host_path.as_ref().map(|h| h.path.as_str()),
            Some(dir.to_str().unwrap()),
            "{origin}"
        );
    }
    n
}

#[test]
fn kustomize_base_agrees_with_the_agent_config() {
    let objs = kustomize(&repo().join("deploy/kubernetes/base"));
    let ns = find(&objs, |o| match o {
        Object::Namespace(n) => Some(n),
        _ => None,
    });
    assert_eq!(ns.metadata.name.as_deref(), Some("tessera-system"));
    let labels = ns.metadata.labels.as_ref().unwrap();
    assert_eq!(
        labels["pod-security.kubernetes.io/enforce"], "privileged",
        "hostPID needs it"
    );
    check_agent(&objs, "kustomize base");
}

#[test]
fn example_workloads_mount_the_agent_socket() {
    let base = kustomize(&repo().join("deploy/kubernetes/base"));
    let (config, _, _) = agent_config(&base);
    let objs = kustomize(&repo().join("deploy/kubernetes/examples"));
    let mut checked = 0;
    for o in &objs {
        match o {
            Object::Pod(p) => {
                checked += check_workload(p.spec.as_ref().unwrap(), &config, "example pod")
            }
            Object::Deployment(d) => {
                checked += check_workload(
                    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap(),
                    &config,
                    "example deployment",
                )
            }
            _ => {}
        }
    }
    assert_eq!(checked, 2, "the agent runtime and the MCP server");
    // The selectors the examples' comments register are ones the agent accepts.
    for text in ["agent-runtime-pod.yaml", "mcp-server-deployment.yaml"] {
        let src =
            std::fs::read_to_string(repo().join("deploy/kubernetes/examples").join(text)).unwrap();
        for sel in src.split_whitespace().filter(|w| w.starts_with("k8s:")) {
            sel.parse::<tessera_agent::attest::Selector>()
                .unwrap_or_else(|e| panic!("{text}: {e}"));
        }
    }
}

#[test]
fn legacy_nodes_proxy_component_patches_the_agent_role() {
    let k: Value = serde_norway::from_str(
        &std::fs::read_to_string(
            repo().join("deploy/kubernetes/components/legacy-nodes-proxy/kustomization.yaml"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(k["kind"].as_str(), Some("Component"));
    let base = kustomize(&repo().join("deploy/kubernetes/base"));
    let role = find(&base, |o| match o {
        Object::ClusterRole(r) => Some(r),
        _ => None,
    });
    let patch = &k["patches"][0];
    assert_eq!(
        patch["target"]["name"].as_str(),
        role.metadata.name.as_deref()
    );
    assert!(patch["patch"].as_str().unwrap().contains("nodes/proxy"));
}

#[test]
fn helm_chart_with_default_values_renders_the_kustomize_base() {
    let base = kustomize(&repo().join("deploy/kubernetes/base"));
    let chart = helm(None);
    let config = check_agent(&chart, "helm defaults");
    let (base_config, _, _) = agent_config(&base);
    assert_eq!(config, base_config, "same effective agent configuration");

    // Same objects, field for field, except: the Namespace (Helm installs into
    // a namespace made beforehand) and the ConfigMap's TOML text (comments
    // differ; its parsed meaning was compared above).
    let strip = |objs: &[Object]| -> BTreeMap<(&'static str, String), Object> {
        objs.iter()
            .filter(|o| !matches!(o, Object::Namespace(_)))
            .map(|o| {
                let mut o = o.clone();
                if let Object::ConfigMap(m) = &mut o {
                    m.data = None;
                }
                (o.key(), o)
            })
            .collect()
    };
    let (want, got) = (strip(&base), strip(&chart));
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>()
    );
    for (k, w) in &want {
        assert_eq!(&got[k], w, "{k:?} differs between kustomize and helm");
    }
}

#[test]
fn helm_chart_values_reach_the_objects() {
    let objs = helm(Some(
        "trustDomain: prod.acme.corp\n\
         ttl: {clientSvid: 30m, taskSvid: 2m, jwtSvid: 3m, jwtKey: 12h}\n\
         revocations: {maxWatchersPerIdentity: 4}\n\
         upstreamCA: {secretName: tessera-upstream-ca}\n\
         image: {repository: registry.acme.corp/tessera, tag: 0.2.0}\n\
         metrics: {port: 9100}\n\
         kubelet: {insecureSkipVerify: true, legacyNodesProxy: true}\n\
         attestation: {exeHashMaxBytes: 1073741824}\n\
         nodeSelector: {kubernetes.io/os: linux}\n\
         tolerations: []\n",
    ));
    let (config, ds, _) = agent_config(&objs);
    assert_eq!(config.trust_domain.as_str(), "prod.acme.corp");
    assert_eq!(config.client_svid_ttl.as_secs(), 1800);
    assert_eq!(config.task_svid_ttl.as_secs(), 120);
    assert_eq!(config.jwt_svid_ttl.as_secs(), 180);
    assert_eq!(config.ca.jwt_key_ttl.as_secs(), 12 * 3600);
    assert_eq!(config.revocation_max_watchers_per_identity, 4);
    assert_eq!(config.http_listen.port(), 9100);
    assert!(
        config
            .kubernetes
            .as_ref()
            .unwrap()
            .insecure_skip_kubelet_verify
    );
    assert_eq!(config.exe_hash_max_bytes, 1 << 30);
    let tessera_agent::config::CaMode::Upstream {
        cert_chain,
        key,
        bundle,
    } = &config.ca.mode
    else {
        panic!("upstream CA mode, got {:?}", config.ca.mode)
    };
    let spec = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let c = &spec.containers[0];
    assert_eq!(c.image.as_deref(), Some("registry.acme.corp/tessera:0.2.0"));
    for f in [cert_chain, key, bundle] {
        let dir = f.parent().unwrap();
        let (vol, ro) = mount_at(spec, c, dir);
        assert!(ro);
        assert_eq!(
            vol.secret.as_ref().unwrap().secret_name.as_deref(),
            Some("tessera-upstream-ca")
        );
    }
    assert_eq!(
        spec.node_selector.as_ref().unwrap()["kubernetes.io/os"],
        "linux"
    );
    assert!(spec.tolerations.is_none());
    let probe = c
        .liveness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(port_number(&probe.port, c), 9100);
    let role = find(&objs, |o| match o {
        Object::ClusterRole(r) => Some(r),
        _ => None,
    });
    assert!(
        role.rules
            .as_ref()
            .unwrap()
            .iter()
            .any(|r| r.resources.as_deref() == Some(&["nodes/proxy".to_string()][..]))
    );
}

/// The server's effective config inside its Deployment: the ConfigMap's TOML, the
/// container's literal env, and what the pod's environment adds (the `kubernetes`
/// Service's variables). The password file is a stand-in with the content a Secret
/// would have; every other path is checked against the volumes that provide it.
fn server_config(
    objs: &[Object],
) -> (
    tessera_server::config::Config,
    toml::Table,
    Deployment,
    tempfile::TempDir,
) {
    use std::os::unix::fs::PermissionsExt as _;
    let dep = find(objs, |o| match o {
        Object::Deployment(d) => Some(d),
        _ => None,
    })
    .clone();
    let spec = dep.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let c = &spec.containers[0];
    let config_path =
        PathBuf::from(env(c, "TESSERA_SERVER_CONFIG").expect("TESSERA_SERVER_CONFIG is set"));
    let (vol, ro) = mount_at(spec, c, config_path.parent().unwrap());
    assert!(ro);
    let cm_name = vol.config_map.as_ref().unwrap().name.clone();
    let cm = find(objs, |o| match o {
        Object::ConfigMap(m) if m.metadata.name.as_deref() == Some(cm_name.as_str()) => Some(m),
        _ => None,
    });
    let text = &cm.data.as_ref().unwrap()[config_path.file_name().unwrap().to_str().unwrap()];
    let table: toml::Table = text.parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("server.toml");
    std::fs::write(&file, text).unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "from-the-secret\n").unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o400)).unwrap();
    let mut vars: HashMap<String, String> = c
        .env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect();
    vars.insert("KUBERNETES_SERVICE_HOST".into(), "10.96.0.1".into());
    vars.insert("KUBERNETES_SERVICE_PORT".into(), "443".into());
    vars.insert(
        "TESSERA_SERVER_DATABASE_PASSWORD_FILE".into(),
        password.display().to_string(),
    );
    let config = tessera_server::config::Config::load(
        Some(&file),
        &vars,
        &tessera_server::config::Flags::default(),
    )
    .unwrap_or_else(|e| panic!("server ConfigMap with the container's env: {e}"));
    (config, table, dep, dir)
}

/// The Secret mounted (read-only, mode 0400) at `file`'s directory, holding `file`.
fn secret_at<'a>(spec: &'a PodSpec, c: &Container, file: &Path) -> &'a str {
    let (vol, ro) = mount_at(spec, c, file.parent().unwrap());
    assert!(ro, "{}: read-only", file.display());
    let secret = vol
        .secret
        .as_ref()
        .unwrap_or_else(|| panic!("{}: from a Secret", file.display()));
    let name = file.file_name().unwrap().to_str().unwrap();
    assert!(
        secret.items.iter().flatten().any(|i| i.path == name),
        "{}: the Secret provides it",
        file.display()
    );
    secret.secret_name.as_deref().unwrap()
}

/// Everything cluster mode adds, checked against itself and the programs' configs:
/// the server (replicas, anti-affinity, PDB, Service, probes, Secrets, RBAC) and the
/// agent joined to it (address, pinned bundle, projected token).
fn check_cluster(objs: &[Object], origin: &str) {
    let agent = check_agent(objs, origin);
    let (server, _table, dep, _dir) = server_config(objs);
    let ns = dep.metadata.namespace.as_deref().unwrap();
    let dspec = dep.spec.as_ref().unwrap();
    let spec = dspec.template.spec.as_ref().unwrap();
    let c = &spec.containers[0];
    let pod_labels = dspec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    let selects_pods = |sel: &BTreeMap<String, String>| {
        !sel.is_empty() && sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
    };

    assert_eq!(server.trust_domain, agent.trust_domain, "{origin}");
    assert_eq!(dspec.replicas, Some(2), "{origin}: two replicas");
    let anti = spec
        .affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .expect("pod anti-affinity");
    let term = &anti
        .preferred_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap()[0]
        .pod_affinity_term;
    assert_eq!(term.topology_key, "kubernetes.io/hostname", "{origin}");
    assert!(selects_pods(
        term.label_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()
    ));
    let pdb = find(objs, |o| match o {
        Object::PodDisruptionBudget(p) => Some(p),
        _ => None,
    });
    let pdb_spec = pdb.spec.as_ref().unwrap();
    assert_eq!(
        pdb_spec.min_available,
        Some(IntOrString::Int(1)),
        "{origin}"
    );
    assert!(selects_pods(
        pdb_spec
            .selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()
    ));

    // Probes and metrics on http_listen; the Node API on listen.node, behind the Service.
    let http = i32::from(server.http_listen.port());
    assert!(server.http_listen.ip().is_unspecified(), "{origin}");
    for probe in [&c.liveness_probe, &c.readiness_probe] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(port_number(&get.port, c), http, "{origin}");
    }
    assert_eq!(
        c.liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        c.readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/readyz")
    );
    let svc = find(objs, |o| match o {
        Object::Service(s) => Some(s),
        _ => None,
    });
    let svc_spec = svc.spec.as_ref().unwrap();
    assert!(
        selects_pods(svc_spec.selector.as_ref().unwrap()),
        "{origin}"
    );
    let svc_port = &svc_spec.ports.as_ref().unwrap()[0];
    assert_eq!(
        port_number(svc_port.target_port.as_ref().unwrap(), c),
        i32::from(server.node_listen.port()),
        "{origin}: the Service reaches the Node API"
    );

    // The CA and the database password from Secrets; the admin socket stays in the pod.
    let ca_secret = secret_at(spec, c, server.ca.cert_file.as_ref().unwrap());
    assert_eq!(
        secret_at(spec, c, server.ca.key_file.as_ref().unwrap()),
        ca_secret
    );
    let (ca_vol, _) = mount_at(
        spec,
        c,
        server.ca.key_file.as_ref().unwrap().parent().unwrap(),
    );
    // Not root: the pod's own uid and group; the Secret's files are root's, 0440 to the
    // pod's fsGroup, the one group-readable shape the server's key check accepts.
    let pod_sc = spec.security_context.as_ref().unwrap();
    let uid = pod_sc.run_as_user.expect("a uid");
    assert_ne!(uid, 0, "{origin}: the server does not run as root");
    assert_eq!(pod_sc.run_as_non_root, Some(true), "{origin}");
    assert_eq!(
        pod_sc.fs_group, pod_sc.run_as_group,
        "{origin}: fsGroup is the server's own group"
    );
    assert!(pod_sc.fs_group.is_some_and(|g| g != 0), "{origin}");
    let csc = c.security_context.as_ref().unwrap();
    assert_ne!(csc.run_as_user, Some(0), "{origin}");
    assert_eq!(csc.allow_privilege_escalation, Some(false), "{origin}");
    assert_eq!(
        ca_vol.secret.as_ref().unwrap().default_mode,
        Some(0o440),
        "{origin}: the root key is root's and the server's group's alone"
    );
    let password_file = PathBuf::from(_table["database"]["password_file"].as_str().unwrap());
    secret_at(spec, c, &password_file);
    let url = &server.database.url;
    assert!(url.contains("sslmode=verify-full"), "{origin}: {url}");
    let root = url
        .split("sslrootcert=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    secret_at(spec, c, Path::new(root));
    let (vol, _) = mount_at(spec, c, server.admin_socket.parent().unwrap());
    assert!(
        vol.empty_dir.is_some(),
        "{origin}: the admin socket stays in the pod"
    );
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    assert!(sc.capabilities.as_ref().unwrap().add.is_none(), "{origin}");

    // PSAT attestation: the agents' service account, and RBAC for TokenReviews only.
    let ds = find(objs, |o| match o {
        Object::DaemonSet(d) => Some(d),
        _ => None,
    });
    let ds_spec = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let agent_sa = ds_spec.service_account_name.as_deref().unwrap();
    let psat = server.k8s_psat.as_ref().expect("k8s_psat enabled");
    assert_eq!(
        psat.allowed_service_accounts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [format!("{ns}:{agent_sa}")],
        "{origin}"
    );
    assert_eq!(psat.api_server.to_string(), "https://10.96.0.1:443/");
    let server_sa = spec.service_account_name.as_deref().unwrap();
    let crb = find(objs, |o| match o {
        Object::ClusterRoleBinding(b)
            if b.subjects.iter().flatten().any(|s| s.name == server_sa) =>
        {
            Some(b)
        }
        _ => None,
    });
    let role = find(objs, |o| match o {
        Object::ClusterRole(r)
            if r.metadata.name.as_deref() == Some(crb.role_ref.name.as_str()) =>
        {
            Some(r)
        }
        _ => None,
    });
    let rules = role.rules.as_ref().unwrap();
    assert_eq!(rules.len(), 1, "{origin}");
    assert_eq!(
        rules[0].api_groups.as_deref(),
        Some(&["authentication.k8s.io".to_string()][..])
    );
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["tokenreviews".to_string()][..])
    );
    assert_eq!(rules[0].verbs, ["create"]);

    // The agent joins the server: its Service, the root pinned from a ConfigMap (the
    // agents never reference the CA's Secret), a projected token for tessera-server.
    let joined = joined(objs, origin);
    let svc_name = svc.metadata.name.as_deref().unwrap();
    assert_eq!(
        joined
            .addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [format!("{svc_name}.{ns}.svc:{}", svc_port.port)],
        "{origin}: the agent points at the Service"
    );
    assert_eq!(
        joined.server_id,
        format!("spiffe://{}/tessera/server", server.trust_domain),
        "{origin}: the agent expects the server's own SPIFFE ID"
    );
    let ac = &ds_spec.containers[0];
    // The node name comes from the pod's node (the PSAT attests it anyway), under the
    // agent's own prefix, not the server's TESSERA_SERVER_*.
    assert!(
        ac.env
            .iter()
            .flatten()
            .any(|e| e.name == "TESSERA_CLUSTER_NODE_NAME"
                && e.value_from
                    .as_ref()
                    .and_then(|v| v.field_ref.as_ref())
                    .is_some_and(|f| f.field_path == "spec.nodeName")),
        "{origin}: TESSERA_CLUSTER_NODE_NAME from spec.nodeName"
    );
    let bundle = joined.bundle_file.as_path();
    let (vol, ro) = mount_at(ds_spec, ac, bundle.parent().unwrap());
    assert!(
        ro && vol.config_map.is_some(),
        "{origin}: the bundle from a ConfigMap"
    );
    let token = match &joined.proof {
        Some(tessera_agent::config::AttestProof::K8sPsatFile(p)) => p.as_path(),
        other => panic!("{origin}: the agent attests with a projected token, not {other:?}"),
    };
    let (vol, ro) = mount_at(ds_spec, ac, token.parent().unwrap());
    assert!(ro);
    let projected = &vol
        .projected
        .as_ref()
        .expect("a projected volume")
        .sources
        .as_ref()
        .unwrap()[0];
    let sat = projected.service_account_token.as_ref().unwrap();
    assert_eq!(
        sat.audience.as_deref(),
        Some(psat.audience.as_str()),
        "{origin}"
    );
    assert_eq!(sat.path, token.file_name().unwrap().to_str().unwrap());
    assert!(
        sat.expiration_seconds.unwrap() <= 3600,
        "{origin}: short-lived"
    );
    assert!(
        ds_spec.volumes.iter().flatten().all(|v| v
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref())
            != Some(ca_secret)),
        "{origin}: no agent pod references the root key's Secret"
    );
}

#[test]
fn kustomize_cluster_overlay_runs_the_server_and_joins_the_agents() {
    let objs = kustomize(&repo().join("deploy/kubernetes/overlays/cluster"));
    check_cluster(&objs, "kustomize cluster");
    // The agent's settings are the base's; the overlay only adds [server].
    let (base, _, _) = agent_config(&kustomize(&repo().join("deploy/kubernetes/base")));
    let (mut cluster, _, _) = agent_config(&objs);
    assert!(base.server.is_none() && cluster.server.is_some());
    cluster.server = None;
    assert_eq!(cluster, base);
}

#[test]
fn helm_chart_cluster_mode_renders_the_cluster_overlay() {
    let overlay = kustomize(&repo().join("deploy/kubernetes/overlays/cluster"));
    let chart = helm(Some("cluster: {enabled: true}"));
    check_cluster(&chart, "helm cluster");
    // ConfigMaps compared as parsed TOML, everything else field for field.
    let strip = |objs: &[Object]| -> BTreeMap<(&'static str, String), (Object, Vec<toml::Table>)> {
        objs.iter()
            .filter(|o| !matches!(o, Object::Namespace(_)))
            .map(|o| {
                let mut o = o.clone();
                let mut tables = Vec::new();
                if let Object::ConfigMap(m) = &mut o {
                    for text in m.data.take().unwrap_or_default().values() {
                        tables.push(text.parse::<toml::Table>().unwrap());
                    }
                }
                (o.key(), (o, tables))
            })
            .collect()
    };
    let (want, got) = (strip(&overlay), strip(&chart));
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>()
    );
    for (k, w) in &want {
        assert_eq!(&got[k], w, "{k:?} differs between kustomize and helm");
    }
    // Off by default: the standalone agent, no server objects.
    assert!(
        !helm(None)
            .iter()
            .any(|o| matches!(o, Object::Deployment(_) | Object::Service(_)))
    );
}

/// Registration happens once, at the server: the README no longer loops over agent pods.
#[test]
fn readme_registers_once_at_the_server() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let deploy = readme
        .split("## Deploying on Kubernetes")
        .nth(1)
        .expect("the deploy section")
        .split("\n## ")
        .next()
        .unwrap();
    assert!(
        !deploy.contains("for p in $(kubectl"),
        "no per-pod registration loop"
    );
    assert!(
        deploy.contains("exec deploy/tessera-server -- tessera"),
        "registered at the server"
    );
    assert!(
        deploy.contains("CloudNativePG"),
        "PostgreSQL is the operator's"
    );
}

#[test]
fn helm_cluster_values_reach_the_server_and_the_agents() {
    let objs = helm(Some(
        "trustDomain: prod.acme.corp\n\
         cluster:\n  enabled: true\n  server:\n    replicas: 3\n    nodePort: 9443\n    httpPort: 9090\n\
         \x20   caSecretName: acme-root\n    bundleConfigMap: acme-bundle\n\
         \x20   database: {url: \"postgres://tessera@pg.acme.internal:5432/tessera?sslmode=verify-full&sslrootcert=/etc/tessera-server/db-ca/ca.crt\", passwordSecretName: pg-tessera, passwordSecretKey: pw, caSecretName: pg-ca}\n",
    ));
    let (server, table, dep, _dir) = server_config(&objs);
    assert_eq!(server.trust_domain.as_str(), "prod.acme.corp");
    assert_eq!(server.node_listen.port(), 9443);
    assert_eq!(server.http_listen.port(), 9090);
    assert_eq!(server.database.connect.get_host(), "pg.acme.internal");
    let spec = dep.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    let pod = spec.template.spec.as_ref().unwrap();
    let c = &pod.containers[0];
    assert_eq!(
        secret_at(pod, c, server.ca.key_file.as_ref().unwrap()),
        "acme-root"
    );
    let password = PathBuf::from(table["database"]["password_file"].as_str().unwrap());
    assert_eq!(secret_at(pod, c, &password), "pg-tessera");
    let (vol, _) = mount_at(pod, c, password.parent().unwrap());
    assert_eq!(
        vol.secret.as_ref().unwrap().items.as_ref().unwrap()[0].key,
        "pw"
    );
    let svc = find(&objs, |o| match o {
        Object::Service(s) => Some(s),
        _ => None,
    });
    assert_eq!(
        svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port,
        9443
    );
    let (_, ds, _) = agent_config(&objs);
    let joined = joined(&objs, "helm values");
    assert_eq!(
        joined
            .addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["tessera-server.tessera-system.svc:9443"]
    );
    assert_eq!(joined.server_id, "spiffe://prod.acme.corp/tessera/server");
    let ds_spec = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(
        volume(ds_spec, "server-bundle")
            .config_map
            .as_ref()
            .unwrap()
            .name,
        "acme-bundle"
    );
}

// === tessera-gateway (issue 18): the standalone and sidecar manifests and the chart ===

/// The gateway's effective config inside a Deployment: the ConfigMap's TOML named by
/// `TESSERA_GATEWAY_CONFIG`, with the container's literal environment as overrides, as
/// the gateway loads it; and its Cedar policies, validated against its schema, from
/// the same ConfigMap.
fn gateway_config(
    objs: &[Object],
) -> (
    tessera_gateway::config::GatewayConfig,
    Vec<String>,
    Deployment,
) {
    let dep = find(objs, |o| match o {
        Object::Deployment(d)
            if d.spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap()
                .containers[0]
                .name
                == "gateway" =>
        {
            Some(d)
        }
        _ => None,
    })
    .clone();
    let spec = dep.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let c = &spec.containers[0];
    let config_path =
        PathBuf::from(env(c, "TESSERA_GATEWAY_CONFIG").expect("TESSERA_GATEWAY_CONFIG is set"));
    let dir = config_path.parent().unwrap();
    let (vol, ro) = mount_at(spec, c, dir);
    assert!(ro, "the gateway's config mount is read-only");
    let cm_name = vol.config_map.as_ref().expect("a ConfigMap").name.clone();
    let cm = find(objs, |o| match o {
        Object::ConfigMap(m) if m.metadata.name.as_deref() == Some(cm_name.as_str()) => Some(m),
        _ => None,
    });
    let data = cm.data.as_ref().unwrap();
    let file = |path: &Path| -> &str {
        assert_eq!(
            path.parent(),
            Some(dir),
            "{} is not in the config mount",
            path.display()
        );
        &data[path.file_name().unwrap().to_str().unwrap()]
    };
    let overrides: HashMap<&str, &str> = c
        .env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.as_str(), e.value.as_deref()?)))
        .collect();
    let config = tessera_gateway::config::GatewayConfig::from_toml(
        file(&config_path),
        &config_path,
        &overrides,
    )
    .unwrap_or_else(|e| panic!("the gateway refuses its config: {e}"));
    let store = tessera_verify::authz::policy::PolicyStore::from_strs(
        file(&config.policies),
        file(&config.schema),
    )
    .unwrap_or_else(|e| panic!("the policies do not validate against the schema: {e}"));
    let mut ids = store.policy_ids();
    ids.sort();
    (config, ids, dep)
}

/// What every gateway Deployment must hold, whatever its upstream: the agent's socket
/// where the config says, ports and probes where the listeners are, the Service on the
/// gateway's port alone, a locked-down container. Returns the config.
fn check_gateway(objs: &[Object], origin: &str) -> tessera_gateway::config::GatewayConfig {
    let (config, _, dep) = gateway_config(objs);
    let spec = dep.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let c = &spec.containers[0];
    let socket = config
        .workload_socket
        .strip_prefix("unix://")
        .unwrap_or(&config.workload_socket);
    let (vol, ro) = mount_at(spec, c, Path::new(socket).parent().unwrap());
    assert!(ro, "{origin}: the agent socket is mounted read-only");
    assert_eq!(
        vol.host_path.as_ref().map(|h| h.path.as_str()),
        Some("/run/tessera"),
        "{origin}: the node agent's socket directory"
    );
    let port = |name: &str| {
        c.ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{origin}: no port {name}"))
            .container_port
    };
    assert_eq!(port("mcp"), i32::from(config.listen.port()), "{origin}");
    let ops = config.ops_listen.expect("an ops listener for the probes");
    assert_eq!(port("http-metrics"), i32::from(ops.port()), "{origin}");
    for (probe, path) in [
        (c.liveness_probe.as_ref(), "/healthz"),
        (c.readiness_probe.as_ref(), "/readyz"),
    ] {
        let get = probe.unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path), "{origin}");
        assert_eq!(port_number(&get.port, c), i32::from(ops.port()), "{origin}");
    }
    let pod_labels = dep
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    let svc = find(objs, |o| match o {
        Object::Service(s) if s.metadata.name == dep.metadata.name => Some(s),
        _ => None,
    });
    let svc_spec = svc.spec.as_ref().unwrap();
    for (k, v) in svc_spec.selector.as_ref().unwrap() {
        assert_eq!(
            pod_labels.get(k),
            Some(v),
            "{origin}: the Service selects the pods"
        );
    }
    let svc_ports = svc_spec.ports.as_ref().unwrap();
    assert_eq!(
        svc_ports.len(),
        1,
        "{origin}: the Service exposes the gateway alone"
    );
    assert_eq!(
        svc_ports[0].target_port,
        Some(IntOrString::String("mcp".into()))
    );
    let sa = find(objs, |o| match o {
        Object::ServiceAccount(s) if s.metadata.name == spec.service_account_name => Some(s),
        _ => None,
    });
    assert_eq!(sa.automount_service_account_token, Some(false), "{origin}");
    assert_eq!(
        spec.security_context.as_ref().unwrap().run_as_non_root,
        Some(true),
        "{origin}"
    );
    for c in &spec.containers {
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(
            sc.read_only_root_filesystem,
            Some(true),
            "{origin}: {}",
            c.name
        );
        assert_eq!(
            sc.allow_privilege_escalation,
            Some(false),
            "{origin}: {}",
            c.name
        );
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..]),
            "{origin}: {}",
            c.name
        );
    }
    config
}

#[test]
fn kustomize_gateway_base_runs_the_stdio_server_inside_the_gateway_with_nothing_to_bypass_it() {
    let objs = kustomize(&repo().join("deploy/kubernetes/gateway/base"));
    let config = check_gateway(&objs, "gateway base");
    let tessera_gateway::config::Upstream::Stdio(stdio) = config.upstream().unwrap() else {
        panic!("a stdio upstream")
    };
    assert_eq!(stdio.command, "node");
    stdio.validate().unwrap();
    let (_, ids, dep) = gateway_config(&objs);
    assert_eq!(ids, ["docs-tools", "writes-only-to-drafts"]);
    let spec = dep.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(
        spec.containers.len(),
        1,
        "the server is the gateway's child, not a container"
    );
    let c = &spec.containers[0];
    // What the server serves is mounted where its argument says, and the child's HOME
    // and TMPDIR are writable under a read-only root.
    let served = stdio.args.last().unwrap();
    mount_at(spec, c, Path::new(served));
    assert_eq!(env(c, "HOME"), Some("/tmp"));
    mount_at(spec, c, Path::new("/tmp"));
    // The image that runs it installs the server where the args point, at the version
    // the interop tests pin.
    let dockerfile =
        std::fs::read_to_string(repo().join("deploy/docker/Dockerfile.gateway-node")).unwrap();
    let package = stdio.args[0]
        .strip_prefix("/opt/mcp/node_modules/")
        .and_then(|p| p.strip_suffix("/dist/index.js"))
        .expect("the package under /opt/mcp");
    let pinned: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/interop/node/package.json")).unwrap(),
    )
    .unwrap();
    let version = pinned["dependencies"][package].as_str().unwrap();
    assert!(
        dockerfile.contains(&format!("{package}@{version}")),
        "Dockerfile.gateway-node installs {package}@{version}"
    );
}

#[test]
fn kustomize_gateway_sidecar_keeps_the_upstream_on_the_pods_loopback() {
    let objs = kustomize(&repo().join("deploy/kubernetes/gateway/sidecar"));
    let config = check_gateway(&objs, "gateway sidecar");
    let tessera_gateway::config::Upstream::Http(uri) = config.upstream().unwrap() else {
        panic!("an HTTP upstream")
    };
    assert_eq!(uri.host(), Some("127.0.0.1"));
    let (_, _, dep) = gateway_config(&objs);
    let spec = dep.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(spec.containers.len(), 2);
    let upstream = &spec.containers[1];
    assert!(upstream.ports.is_none(), "the upstream declares no port");
    let args = upstream.args.as_ref().unwrap().join(" ");
    assert!(args.contains("--host 127.0.0.1"), "{args}");
    assert!(
        args.contains(&format!("--port {}", uri.port_u16().unwrap())),
        "{args}"
    );
}

/// The gateway's objects of a chart rendering (those in its namespace).
fn gateway_objects(objs: &[Object]) -> BTreeMap<(&'static str, String), Object> {
    objs.iter()
        .filter(|o| o.namespace() == Some("mcp"))
        .map(|o| {
            let mut o = o.clone();
            if let Object::ConfigMap(m) = &mut o {
                m.data = None;
            }
            (o.key(), o)
        })
        .collect()
}

#[test]
fn helm_chart_with_the_gateway_enabled_renders_the_kustomize_gateway_base() {
    assert!(
        gateway_objects(&helm(None)).is_empty(),
        "no gateway unless gateway.enabled"
    );
    let chart = helm(Some("gateway: {enabled: true}"));
    let base = kustomize(&repo().join("deploy/kubernetes/gateway/base"));
    let (want, got) = (gateway_objects(&base), gateway_objects(&chart));
    let want: BTreeMap<_, _> = want
        .into_iter()
        .filter(|(k, _)| k.0 != "Namespace")
        .collect();
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>()
    );
    for (k, w) in &want {
        assert_eq!(&got[k], w, "{k:?} differs between kustomize and helm");
    }
    let (helm_config, helm_ids, _) = gateway_config(&chart);
    let (base_config, base_ids, _) = gateway_config(&base);
    assert_eq!(format!("{helm_config:?}"), format!("{base_config:?}"));
    assert_eq!(helm_ids, base_ids);
}

#[test]
fn helm_gateway_values_choose_the_upstream_and_reach_the_config() {
    let objs = helm(Some(
        "trustDomain: prod.acme.corp\n\
         gateway:\n  enabled: true\n  serverName: wiki\n  port: 9443\n  opsPort: 9191\n\
         \x20 image: {repository: tessera, tag: 0.2.0}\n\
         \x20 upstream:\n    http: http://127.0.0.1:8080/mcp\n\
         \x20   sidecar: {image: ghcr.io/acme/wiki-mcp:1.0.0, args: [--host, 127.0.0.1, --port, '8080']}\n",
    ));
    let config = check_gateway(&objs, "helm sidecar");
    assert_eq!(config.trust_domain, "prod.acme.corp");
    assert_eq!(config.server_name, "wiki");
    assert!(matches!(
        config.upstream().unwrap(),
        tessera_gateway::config::Upstream::Http(u) if u.host() == Some("127.0.0.1")
    ));
    let (_, _, dep) = gateway_config(&objs);
    let spec = dep.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(
        spec.containers[1].image.as_deref(),
        Some("ghcr.io/acme/wiki-mcp:1.0.0")
    );
    assert!(spec.containers[1].ports.is_none());

    // A stdio server with its own args and TOML, and a claim for what it serves.
    let objs = helm(Some(
        "gateway:\n  enabled: true\n  dataClaimName: docs\n\
         \x20 upstream:\n    stdio:\n      command: npx\n      args: ['-y', '@modelcontextprotocol/server-everything@2026.8.31', 'stdio']\n\
         \x20     extraToml: |\n        request_timeout = \"2m\"\n",
    ));
    let config = check_gateway(&objs, "helm stdio");
    let tessera_gateway::config::Upstream::Stdio(stdio) = config.upstream().unwrap() else {
        panic!("a stdio upstream")
    };
    assert_eq!(stdio.command, "npx");
    assert_eq!(stdio.args[2], "stdio");
    assert_eq!(stdio.request_timeout.as_secs(), 120);
    let (_, _, dep) = gateway_config(&objs);
    let spec = dep.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(
        volume(spec, "data")
            .persistent_volume_claim
            .as_ref()
            .map(|c| c.claim_name.as_str()),
        Some("docs")
    );
}

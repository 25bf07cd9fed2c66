//! deploy/: the manifests pass a schema-aware validator (and a broken copy does not), and the
//! DaemonSet's installer script, run as written, installs working drivers. The provisioner's
//! manifest agrees with what `flex provisioner` does (its command line, the API calls it makes:
//! exactly those RBAC grants), with the DaemonSet that lays the drivers out and with the image.
//!
//! Needs `kubernetes-validate` (`pip install kubernetes-validate`, which also brings PyYAML and
//! jsonschema) and Python 3.11 (tomllib). The Kubernetes 1.20 check reads the OpenAPI spec of
//! the e2e tier's source build (`e2e/build-k8s.sh`) and is skipped, saying so, without it.

use flex_tests::*;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The Kubernetes version the manifests must be valid for.
const KUBERNETES_VERSION: &str = "1.35.0";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .expect("deploy/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in deploy/");
    files
}

/// Runs the validator, strict (unknown fields are errors); exit status and combined output.
fn validate(file: &Path) -> (bool, String) {
    let output = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .arg(file)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run kubernetes-validate ({e}): pip install kubernetes-validate")
        });
    verdict(&output)
}

/// A validator's exit status and everything it printed.
fn verdict(output: &std::process::Output) -> (bool, String) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn manifests_are_valid() {
    for file in manifests() {
        let (ok, text) = validate(&file);
        assert!(ok, "{}: {text}", file.display());
        assert!(text.contains("passed"), "{}: {text}", file.display());
    }
}

#[test]
fn validator_rejects_broken_manifests() {
    let original = std::fs::read_to_string(deploy_dir().join("daemonset.yaml")).unwrap();
    let temp = tempfile::tempdir().unwrap();
    for (what, from, to) in [
        (
            "misspelt field",
            "serviceAccountName:",
            "serviceAcountName:",
        ),
        (
            "wrong type",
            "terminationGracePeriodSeconds: 5",
            "terminationGracePeriodSeconds: five",
        ),
    ] {
        assert!(
            original.contains(from),
            "{what}: {from} not in the manifest"
        );
        let broken = temp.path().join("broken.yaml");
        std::fs::write(&broken, original.replacen(from, to, 1)).unwrap();
        let (ok, text) = validate(&broken);
        assert!(!ok, "{what} accepted: {text}");
        assert!(text.contains("did not validate"), "{what}: {text}");
    }
}

/// A field of the DaemonSet's pod spec, read with PyYAML (a dependency of the validator).
fn daemonset_field(expression: &str) -> String {
    let script = format!(
        "import sys, yaml\n\
         docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d['kind'] == 'DaemonSet']\n\
         spec = docs[0]['spec']['template']['spec']\n\
         container = spec['containers'][0]\n\
         env = {{e['name']: e['value'] for e in container.get('env', [])}}\n\
         mounts = {{m['name']: m['mountPath'] for m in container['volumeMounts']}}\n\
         host = {{v['name']: v['hostPath']['path'] for v in spec['volumes'] if 'hostPath' in v}}\n\
         sys.stdout.write(str({expression}))\n"
    );
    let output = Command::new("python3")
        .args(["-c", &script])
        .arg(deploy_dir().join("daemonset.yaml"))
        .output()
        .expect("python3 (pip install kubernetes-validate brings PyYAML)");
    assert!(
        output.status.success(),
        "{expression}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn daemonset_paths_agree() {
    let default_plugin_dir = "/usr/libexec/kubernetes/kubelet-plugins/volume/exec";
    assert_eq!(daemonset_field("env['PLUGIN_DIR']"), default_plugin_dir);
    assert_eq!(daemonset_field("mounts['plugin-dir']"), default_plugin_dir);
    assert_eq!(daemonset_field("host['plugin-dir']"), default_plugin_dir);
    assert_eq!(
        daemonset_field("env['FLEX_POLICY_DIR']"),
        "/etc/flex/policy"
    );
    assert_eq!(daemonset_field("mounts['policy-dir']"), "/etc/flex/policy");
    assert_eq!(daemonset_field("host['policy-dir']"), "/etc/flex/policy");
    // install precompiles into the root-only cache, which must be the host's.
    assert_eq!(
        daemonset_field("env['FLEX_CACHE_DIR']"),
        "/var/cache/flex/artifacts"
    );
    assert_eq!(daemonset_field("mounts['cache-dir']"), "/var/cache/flex");
    assert_eq!(daemonset_field("host['cache-dir']"), "/var/cache/flex");
    // The image lays the drivers out where the script looks for them.
    let share = daemonset_field("env['FLEX_SHARE']");
    let containerfile = std::fs::read_to_string(deploy_dir().join("Containerfile")).unwrap();
    for dir in ["drivers/", "policy/"] {
        assert!(
            containerfile.contains(&format!("{share}/{dir}")),
            "Containerfile does not fill {share}/{dir}"
        );
    }
    assert_eq!(
        daemonset_field("container['securityContext']['privileged']"),
        "False"
    );
}

/// The installer script exactly as the manifest has it, run against a temporary node with the
/// image's layout, installs drivers that kubelet can then call.
#[test]
fn daemonset_script_installs_drivers() {
    require_root();
    let node = Node::new();
    let script = daemonset_field("container['args'][0]");
    assert!(script.contains("flex install --plugin-dir"), "{script}");
    let share = node.path("share");
    let bin = node.path("bin");
    for dir in [&share.join("drivers"), &share.join("policy"), &bin] {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::copy(guest("flex_tmpfs"), share.join("drivers/flex_tmpfs.wasm")).unwrap();
    std::fs::write(share.join("policy/tmpfs.toml"), shipped_policy("tmpfs")).unwrap();
    let flex = flex_binary();
    std::os::unix::fs::symlink(&flex, bin.join("flex")).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = Command::new("/bin/sh")
        .args(["-c", &script])
        .env("PATH", path)
        .env("PLUGIN_DIR", node.path("plugins"))
        .env("FLEX_POLICY_DIR", node.path("policy"))
        .env("FLEX_LOG_DIR", node.path("log"))
        .env("FLEX_CACHE_DIR", node.cache_dir())
        .env("FLEX_SHARE", &share)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("sh");
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let installed = loop {
        match lines.next() {
            Some(Ok(line)) if line == "flex: drivers installed" => break true,
            Some(Ok(line)) => seen.push(line),
            _ => break false,
        }
    };
    // It stays up (the DaemonSet's pod stays Ready) until it is stopped.
    let still_running = child.try_wait().unwrap().is_none();
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(installed, "script ended ({status}): {seen:?} {stderr}");
    assert!(
        still_running,
        "the script must keep running after installing"
    );
    assert!(
        seen.iter().any(|l| l.starts_with("flex~tmpfs\tsha256:")),
        "flex list output: {seen:?}"
    );
    assert_eq!(node.artifacts().len(), 1, "precompiled into the cache");
    let driver = node.path("plugins/flex~tmpfs/tmpfs");
    assert_eq!(
        node.run(&driver, &["init"]).success()["capabilities"]["attach"],
        json!(false)
    );
    assert_eq!(
        std::fs::read_to_string(node.path("policy/flex~tmpfs.toml")).unwrap(),
        shipped_policy("tmpfs")
    );
}

// ---------------------------------------------------------------------------------------------
// deploy/provisioner.yaml: the `flex provisioner` Deployment and its RBAC, checked against what
// the provisioner does (its command line, the API calls it makes), the DaemonSet that lays the
// drivers out on the nodes and the image that ships them.

/// `flex provisioner`'s defaults (see its `--help`).
const PROVISIONER_DEFAULT_PLUGIN_DIR: &str = "/usr/libexec/kubernetes/kubelet-plugins/volume/exec";
const PROVISIONER_DEFAULT_LISTEN: &str = "0.0.0.0:9809";
const PROVISIONER_DEFAULT_LEASE_NAME: &str = "flex-provisioner";
/// The state root's default (`FLEX_STATE_DIR`).
const DEFAULT_STATE_ROOT: &str = "/var/lib/flex";

/// Every document of a manifest, as JSON (PyYAML, a dependency of the validator).
fn yaml_documents(file: &Path) -> Vec<Value> {
    let script = "import json, sys, yaml\n\
                  docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n\
                  json.dump(docs, sys.stdout)\n";
    let output = Command::new("python3")
        .args(["-c", script])
        .arg(file)
        .output()
        .expect("python3 (pip install kubernetes-validate brings PyYAML)");
    assert!(
        output.status.success(),
        "{} does not parse: {}",
        file.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let docs: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert!(!docs.is_empty(), "{}: no documents", file.display());
    docs
}

/// A shipped policy (`plugins/<plugin>/policy.toml`) as JSON (Python's tomllib).
fn policy_json(plugin: &str) -> Value {
    let output = Command::new("python3")
        .args([
            "-c",
            "import json, sys, tomllib\njson.dump(tomllib.loads(sys.stdin.read()), sys.stdout)\n",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            std::io::Write::write_all(
                &mut child.stdin.take().unwrap(),
                shipped_policy(plugin).as_bytes(),
            )?;
            child.wait_with_output()
        })
        .expect("python3 (3.11 or later, for tomllib)");
    assert!(
        output.status.success(),
        "plugins/{plugin}/policy.toml: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn text(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"))
}

fn list(value: &Value) -> &[Value] {
    value.as_array().map_or(&[], Vec::as_slice)
}

fn strings(value: &Value) -> Vec<&str> {
    list(value).iter().map(text).collect()
}

/// `1Gi`, `512Mi`, `64M`, `1000`: bytes.
fn quantity_bytes(quantity: &str) -> u64 {
    let units: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let (number, factor) = units
        .iter()
        .find_map(|(suffix, factor)| quantity.strip_suffix(suffix).map(|n| (n, *factor)))
        .unwrap_or((quantity, 1));
    number
        .parse::<u64>()
        .unwrap_or_else(|_| panic!("quantity {quantity:?}"))
        * factor
}

/// The provisioner's manifest, with the DaemonSet's for comparison.
struct Provisioner {
    docs: Vec<Value>,
    daemonset_docs: Vec<Value>,
}

/// `flex provisioner`'s command line, parsed as the provisioner parses it.
#[derive(Debug, Default)]
struct ProvisionerArgs {
    drivers: Vec<String>,
    plugin_dir: Option<String>,
    listen: Option<String>,
    identity: Option<String>,
    lease_namespace: Option<String>,
    lease_name: Option<String>,
    kubeconfig: Option<String>,
}

impl Provisioner {
    fn load() -> Provisioner {
        Provisioner {
            docs: yaml_documents(&deploy_dir().join("provisioner.yaml")),
            daemonset_docs: yaml_documents(&deploy_dir().join("daemonset.yaml")),
        }
    }

    fn all(docs: &[Value], kind: &str) -> Vec<Value> {
        docs.iter().filter(|d| d["kind"] == kind).cloned().collect()
    }

    /// The one object of that kind.
    fn one(&self, kind: &str) -> Value {
        let found = Self::all(&self.docs, kind);
        assert_eq!(
            found.len(),
            1,
            "provisioner.yaml: one {kind}, not {found:?}"
        );
        found.into_iter().next().unwrap()
    }

    fn deployment(&self) -> Value {
        self.one("Deployment")
    }

    fn namespace(&self) -> String {
        text(&self.deployment()["metadata"]["namespace"]).to_string()
    }

    fn pod(&self) -> Value {
        self.deployment()["spec"]["template"]["spec"].clone()
    }

    fn container(&self) -> Value {
        let pod = self.pod();
        let containers = list(&pod["containers"]);
        assert_eq!(containers.len(), 1, "one container: {containers:?}");
        containers[0].clone()
    }

    fn daemonset_pod(&self) -> Value {
        let found = Self::all(&self.daemonset_docs, "DaemonSet");
        assert_eq!(found.len(), 1);
        found[0]["spec"]["template"]["spec"].clone()
    }

    fn args(&self) -> ProvisionerArgs {
        let container = self.container();
        assert!(
            container.get("args").is_none(),
            "the whole command line is in `command`"
        );
        let command = strings(&container["command"]);
        assert_eq!(
            command.get(..2),
            Some(&["flex", "provisioner"][..]),
            "{command:?}"
        );
        let mut parsed = ProvisionerArgs::default();
        let mut rest = command[2..].iter().map(|s| s.to_string());
        while let Some(arg) = rest.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) => (flag.to_string(), Some(value.to_string())),
                None => (arg.clone(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| rest.next())
                    .unwrap_or_else(|| panic!("{flag} needs a value: {command:?}"))
            };
            let once = |slot: &mut Option<String>, v: String| {
                assert!(slot.is_none(), "{flag} given twice: {command:?}");
                *slot = Some(v);
            };
            match flag.as_str() {
                "--driver" => parsed.drivers.push(value()),
                "--plugin-dir" => once(&mut parsed.plugin_dir, value()),
                "--listen" => once(&mut parsed.listen, value()),
                "--identity" => once(&mut parsed.identity, value()),
                "--lease-namespace" => once(&mut parsed.lease_namespace, value()),
                "--lease-name" => once(&mut parsed.lease_name, value()),
                "--kubeconfig" => once(&mut parsed.kubeconfig, value()),
                "--lease-seconds" | "--workers" => {
                    let v = value();
                    assert!(v.parse::<u16>().is_ok_and(|n| n > 0), "{flag} {v}");
                }
                _ => panic!("`flex provisioner` has no argument {arg:?}: {command:?}"),
            }
        }
        assert!(!parsed.drivers.is_empty(), "no --driver: {command:?}");
        parsed
    }

    fn listen_port(&self) -> u16 {
        let args = self.args();
        let listen = args.listen.as_deref().unwrap_or(PROVISIONER_DEFAULT_LISTEN);
        let (host, port) = listen
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("--listen {listen}: ADDR:PORT"));
        // kubelet probes (and Prometheus scrapes) the pod's IP, not its loopback.
        assert!(
            !["127.0.0.1", "localhost", "[::1]"].contains(&host),
            "--listen {listen} is unreachable from kubelet's probes"
        );
        port.parse()
            .unwrap_or_else(|_| panic!("--listen {listen}: bad port"))
    }

    fn env(&self, container: &Value, name: &str) -> Option<Value> {
        list(&container["env"])
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
    }

    /// The host path mounted at `path` or above it, and whether read-only. Every mount must be
    /// a hostPath at the same path as on the node (the policy's paths are the node's).
    fn host_mount(pod: &Value, container: &Value, path: &str) -> Option<(String, String, bool)> {
        list(&container["volumeMounts"]).iter().find_map(|m| {
            let mount_path = text(&m["mountPath"]);
            let within = Path::new(path).starts_with(mount_path);
            within.then(|| {
                let volume = list(&pod["volumes"])
                    .iter()
                    .find(|v| v["name"] == m["name"])
                    .unwrap_or_else(|| panic!("no volume {}", m["name"]));
                let host = text(&volume["hostPath"]["path"]).to_string();
                (
                    mount_path.to_string(),
                    host,
                    m["readOnly"].as_bool().unwrap_or(false),
                )
            })
        })
    }
}

#[test]
fn provisioner_objects_parse_and_fit_kubernetes_1_20() {
    let p = Provisioner::load();
    // Only APIs Kubernetes 1.20 serves (no policy/v1, no batch/v1 CronJob...).
    let served = [
        ("v1", "ServiceAccount"),
        ("rbac.authorization.k8s.io/v1", "ClusterRole"),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
        ("rbac.authorization.k8s.io/v1", "Role"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"),
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("policy/v1beta1", "PodDisruptionBudget"),
    ];
    let namespace = p.namespace();
    for doc in &p.docs {
        let (api, kind) = (text(&doc["apiVersion"]), text(&doc["kind"]));
        assert!(
            served.contains(&(api, kind)),
            "{api} {kind} is not for Kubernetes 1.20 (or not expected here)"
        );
        assert!(!text(&doc["metadata"]["name"]).is_empty());
        match kind {
            "ClusterRole" | "ClusterRoleBinding" => assert!(
                doc["metadata"].get("namespace").is_none(),
                "{kind} is cluster-scoped"
            ),
            _ => assert_eq!(
                doc["metadata"]["namespace"], namespace,
                "{kind} {} in the Deployment's namespace",
                doc["metadata"]["name"]
            ),
        }
    }
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
    ] {
        p.one(kind);
    }
    // The namespace is the DaemonSet's, defined there once (applied first).
    assert!(
        Provisioner::all(&p.docs, "Namespace").is_empty(),
        "provisioner.yaml must not define the namespace again"
    );
    let defined = Provisioner::all(&p.daemonset_docs, "Namespace");
    assert!(
        defined.iter().any(|n| n["metadata"]["name"] == namespace),
        "daemonset.yaml does not define namespace {namespace}"
    );
}

/// Rules expanded to (apiGroup, resource, verb, resourceName), `*` for no name restriction.
fn expand_rules(role: &Value) -> std::collections::BTreeSet<(String, String, String, String)> {
    assert!(
        role.get("aggregationRule").is_none(),
        "an aggregated role grants what others add"
    );
    let mut expanded = std::collections::BTreeSet::new();
    for rule in list(&role["rules"]) {
        assert!(
            rule.get("nonResourceURLs").is_none(),
            "no non-resource URLs: {rule}"
        );
        let names = strings(&rule["resourceNames"]);
        let names = if names.is_empty() { vec!["*"] } else { names };
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    for name in &names {
                        for field in [group, resource, verb] {
                            assert!(!field.contains('*'), "wildcard in {rule}");
                        }
                        assert!(
                            !["secrets", "nodes", "pods"].contains(&resource),
                            "{resource} granted: {rule}"
                        );
                        expanded.insert((
                            group.to_string(),
                            resource.to_string(),
                            verb.to_string(),
                            name.to_string(),
                        ));
                    }
                }
            }
        }
    }
    expanded
}

fn grants(
    table: &[(&str, &str, &[&str], &str)],
) -> std::collections::BTreeSet<(String, String, String, String)> {
    table
        .iter()
        .flat_map(|(group, resource, verbs, name)| {
            verbs.iter().map(move |verb| {
                (
                    group.to_string(),
                    resource.to_string(),
                    verb.to_string(),
                    name.to_string(),
                )
            })
        })
        .collect()
}

#[test]
fn provisioner_rbac_grants_exactly_what_it_uses() {
    let p = Provisioner::load();
    let read = ["get", "list", "watch"];
    let cluster = expand_rules(&p.one("ClusterRole"));
    let expected = grants(&[
        ("", "persistentvolumeclaims", &read, "*"),
        (
            "",
            "persistentvolumes",
            &["get", "list", "watch", "create", "delete"],
            "*",
        ),
        ("storage.k8s.io", "storageclasses", &read, "*"),
        ("", "events", &["create", "patch"], "*"),
        ("events.k8s.io", "events", &["create", "patch"], "*"),
    ]);
    assert_eq!(
        cluster.difference(&expected).collect::<Vec<_>>(),
        Vec::<&(String, String, String, String)>::new(),
        "ClusterRole grants more than the provisioner uses"
    );
    assert_eq!(
        expected.difference(&cluster).collect::<Vec<_>>(),
        Vec::<&(String, String, String, String)>::new(),
        "ClusterRole lacks what the provisioner uses"
    );
    // Leases: its own one, in its own namespace; `create` cannot name the object.
    let args = p.args();
    let lease = args
        .lease_name
        .as_deref()
        .unwrap_or(PROVISIONER_DEFAULT_LEASE_NAME);
    let role = p.one("Role");
    assert_eq!(
        expand_rules(&role),
        grants(&[
            ("coordination.k8s.io", "leases", &["create"], "*"),
            (
                "coordination.k8s.io",
                "leases",
                &["get", "update", "patch"],
                lease
            ),
        ]),
        "the lease Role"
    );
    let lease_namespace = match &args.lease_namespace {
        Some(ns) => ns.clone(),
        None => {
            // Defaults to POD_NAMESPACE: the Deployment's own.
            let env = p
                .env(&p.container(), "POD_NAMESPACE")
                .expect("POD_NAMESPACE");
            assert_eq!(
                env["valueFrom"]["fieldRef"]["fieldPath"],
                "metadata.namespace"
            );
            p.namespace()
        }
    };
    assert_eq!(
        lease_namespace,
        p.namespace(),
        "the lease is in its own namespace"
    );
    assert_eq!(role["metadata"]["namespace"], lease_namespace);
}

#[test]
fn provisioner_service_account_is_the_bound_one() {
    let p = Provisioner::load();
    let pod = p.pod();
    let account = p.one("ServiceAccount");
    assert_eq!(pod["serviceAccountName"], account["metadata"]["name"]);
    assert_eq!(account["metadata"]["namespace"], p.namespace());
    // It talks to the API server: the token must be mounted.
    assert_ne!(account["automountServiceAccountToken"], false);
    assert_ne!(pod["automountServiceAccountToken"], false);
    let subject = json!([{
        "kind": "ServiceAccount",
        "name": account["metadata"]["name"],
        "namespace": p.namespace(),
    }]);
    for (binding, role) in [
        ("ClusterRoleBinding", "ClusterRole"),
        ("RoleBinding", "Role"),
    ] {
        let binding_doc = p.one(binding);
        let role_doc = p.one(role);
        assert_eq!(binding_doc["subjects"], subject, "{binding} subjects");
        assert_eq!(
            binding_doc["roleRef"],
            json!({
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": role,
                "name": role_doc["metadata"]["name"],
            }),
            "{binding} roleRef"
        );
        if binding == "RoleBinding" {
            assert_eq!(
                binding_doc["metadata"]["namespace"],
                role_doc["metadata"]["namespace"]
            );
        }
    }
}

#[test]
fn provisioner_runs_drivers_the_image_ships() {
    let p = Provisioner::load();
    let containerfile = std::fs::read_to_string(deploy_dir().join("Containerfile")).unwrap();
    // `for driver in tmpfs loop; do`: the components and policies the image carries.
    let shipped: Vec<&str> = containerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix("&& for driver in "))
        .and_then(|l| l.split(';').next())
        .expect("the Containerfile's driver loop")
        .split_whitespace()
        .collect();
    for driver in &shipped {
        assert!(
            containerfile.contains(&format!("-p flex-{driver}")),
            "the Containerfile does not build flex-{driver}"
        );
    }
    for driver in p.args().drivers {
        let (vendor, name) = driver
            .split_once('~')
            .unwrap_or_else(|| panic!("--driver {driver}: vendor~name"));
        assert!(
            vendor == "flex" && shipped.contains(&name),
            "--driver {driver}: the image ships only flex~{shipped:?}"
        );
    }
    // And the controller itself, static like the others, on PATH beside `flex`.
    assert!(
        containerfile.contains(
            "cargo build --release --target x86_64-unknown-linux-gnu -p flex-provisioner"
        ),
        "the Containerfile does not build flex-provisioner for the static target"
    );
    let bins: Vec<&str> = containerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix("&& for bin in "))
        .and_then(|l| l.split(';').next())
        .expect("the Containerfile's executables loop")
        .split_whitespace()
        .collect();
    assert!(
        bins.contains(&"flex") && bins.contains(&"flex-provisioner"),
        "{bins:?}"
    );
    assert!(containerfile.contains("COPY --from=build /out/bin/ /usr/local/bin/"));
    assert_eq!(
        p.container()["image"],
        p.daemonset_pod()["containers"][0]["image"]
    );
}

#[test]
fn provisioner_probes_and_metrics_use_its_listen_port() {
    let p = Provisioner::load();
    let port = p.listen_port();
    let container = p.container();
    let ports = list(&container["ports"]);
    let resolve = |value: &Value| -> u16 {
        match value {
            Value::Number(n) => n.as_u64().unwrap() as u16,
            Value::String(name) => ports
                .iter()
                .find(|p| p["name"] == *name)
                .unwrap_or_else(|| panic!("no container port named {name}"))["containerPort"]
                .as_u64()
                .unwrap() as u16,
            other => panic!("port {other}"),
        }
    };
    assert!(
        ports.iter().any(|p| p["containerPort"] == port),
        "port {port} not declared: {ports:?}"
    );
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let get = &container[probe]["httpGet"];
        if probe == "startupProbe" && container.get(probe).is_none() {
            continue;
        }
        assert_eq!(get["path"], "/healthz", "{probe}");
        assert_eq!(resolve(&get["port"]), port, "{probe}");
        assert!(
            get.get("scheme").is_none_or(|s| s == "HTTP"),
            "{probe}: plain HTTP"
        );
    }
    let annotations = &p.deployment()["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], port.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
}

#[test]
fn provisioner_deployment_is_spread_and_bounded() {
    let p = Provisioner::load();
    let deployment = p.deployment();
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 2, "two replicas, one leader");
    let labels = &spec["template"]["metadata"]["labels"];
    let selects = |selector: &Value| {
        let wanted = selector.as_object().expect("matchLabels");
        !wanted.is_empty() && wanted.iter().all(|(k, v)| labels[k] == *v)
    };
    assert!(
        selects(&spec["selector"]["matchLabels"]),
        "selector vs labels"
    );
    let pod = p.pod();
    let anti = &pod["affinity"]["podAntiAffinity"];
    let preferred = list(&anti["preferredDuringSchedulingIgnoredDuringExecution"]);
    let required = list(&anti["requiredDuringSchedulingIgnoredDuringExecution"]);
    let terms: Vec<&Value> = preferred
        .iter()
        .map(|t| &t["podAffinityTerm"])
        .chain(required)
        .collect();
    assert!(!terms.is_empty(), "no podAntiAffinity");
    for term in terms {
        assert_eq!(term["topologyKey"], "kubernetes.io/hostname");
        assert!(
            selects(&term["labelSelector"]["matchLabels"]),
            "the anti-affinity must select the replicas themselves: {term}"
        );
    }
    // A pinned Deployment (node-local drivers) runs its replicas on one node: a required
    // anti-affinity would leave the second one Pending.
    if pod.get("nodeSelector").is_some() {
        assert!(
            required.is_empty(),
            "required anti-affinity with a nodeSelector"
        );
    }
    let container = p.container();
    for (name, path) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
        // A node-local driver's PVs are pinned to this node (--node-name).
        ("NODE_NAME", "spec.nodeName"),
    ] {
        let env = p
            .env(&container, name)
            .unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(env["valueFrom"]["fieldRef"]["fieldPath"], path, "{name}");
    }
    // Enough memory to compile a component, as the installer has.
    let limit = quantity_bytes(text(&container["resources"]["limits"]["memory"]));
    let installer = p.daemonset_pod()["containers"][0]["resources"]["limits"]["memory"].clone();
    assert!(
        limit >= quantity_bytes(text(&installer)),
        "memory limit {limit} below the installer's {installer}"
    );
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert!(container["resources"]["requests"]["cpu"].is_string());
    // Unprivileged: root only for the root-owned host directories.
    let security = &container["securityContext"];
    assert_eq!(security["privileged"], false);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert!(security["capabilities"].get("add").is_none());
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        assert_ne!(pod[host], true, "{host}");
    }
}

#[test]
fn provisioner_mounts_what_the_daemonset_writes() {
    let p = Provisioner::load();
    let (pod, container) = (p.pod(), p.container());
    let (ds_pod, ds_container) = (
        p.daemonset_pod(),
        p.daemonset_pod()["containers"][0].clone(),
    );
    // Every mount is a hostPath at its own path, and every volume is mounted.
    for mount in list(&container["volumeMounts"]) {
        let path = text(&mount["mountPath"]);
        let (_, host, _) = Provisioner::host_mount(&pod, &container, path).unwrap();
        assert_eq!(
            host, path,
            "{} is mounted elsewhere than on the node",
            mount["name"]
        );
    }
    assert_eq!(
        list(&pod["volumes"]).len(),
        list(&container["volumeMounts"]).len(),
        "unused volumes"
    );
    // The DaemonSet's directories, at the same host paths, read-only but the log.
    for mount in list(&ds_container["volumeMounts"]) {
        let path = text(&mount["mountPath"]);
        let (_, ds_host, _) = Provisioner::host_mount(&ds_pod, &ds_container, path).unwrap();
        let (mount_path, host, read_only) = Provisioner::host_mount(&pod, &container, path)
            .unwrap_or_else(|| panic!("the DaemonSet's {path} is not mounted"));
        assert_eq!(
            (mount_path.as_str(), host.as_str()),
            (path, ds_host.as_str())
        );
        assert_eq!(read_only, path != "/var/log/flex", "{path} readOnly");
    }
    for name in ["FLEX_POLICY_DIR", "FLEX_CACHE_DIR", "FLEX_LOG_DIR"] {
        let ds = p
            .env(&ds_container, name)
            .unwrap_or_else(|| panic!("DaemonSet {name}"));
        assert_eq!(p.env(&container, name), Some(ds), "{name}");
    }
    // The drivers are found where the DaemonSet installs them.
    let plugin_dir = p
        .args()
        .plugin_dir
        .unwrap_or_else(|| PROVISIONER_DEFAULT_PLUGIN_DIR.into());
    let installed = p.env(&ds_container, "PLUGIN_DIR").unwrap();
    assert_eq!(installed["value"], plugin_dir, "--plugin-dir");
    let (_, host, read_only) = Provisioner::host_mount(&pod, &container, &plugin_dir).unwrap();
    assert_eq!((host.as_str(), read_only), (plugin_dir.as_str(), true));
}

/// A driver whose volumes are files on the node (a policy `block.image_dir`, a `[state]` dir)
/// gets those directories read-write, and the Deployment is pinned to a node.
#[test]
fn provisioner_gets_the_node_local_dirs_its_drivers_need() {
    let p = Provisioner::load();
    let (pod, container) = (p.pod(), p.container());
    let state_root = p
        .env(&container, "FLEX_STATE_DIR")
        .map_or(DEFAULT_STATE_ROOT.to_string(), |e| {
            text(&e["value"]).to_string()
        });
    let mut node_local = false;
    let mut wanted = Vec::new();
    for driver in p.args().drivers {
        let name = driver.split_once('~').unwrap().1;
        let policy = policy_json(name);
        let mut needed = Vec::new();
        if let Some(dir) = policy["block"].get("image_dir") {
            needed.push(text(dir).to_string());
        }
        if let Some(state) = policy.get("state") {
            needed.push(match state.get("dir") {
                Some(dir) => text(dir).to_string(),
                None => format!("{state_root}/{driver}"),
            });
        }
        for dir in &needed {
            let (_, host, read_only) = Provisioner::host_mount(&pod, &container, dir)
                .unwrap_or_else(|| panic!("{driver} needs {dir}: not mounted"));
            assert!(!read_only, "{driver}: {dir} mounted read-only");
            assert!(Path::new(dir).starts_with(&host));
            // Not the whole state root (or above): other drivers' state is theirs.
            assert!(
                !Path::new(&state_root).starts_with(&host),
                "{driver}: {host} holds the whole state root"
            );
        }
        node_local |= !needed.is_empty();
        wanted.extend(needed);
    }
    // Nothing else: the DaemonSet's directories and those.
    let ds_container = p.daemonset_pod()["containers"][0].clone();
    wanted.extend(
        list(&ds_container["volumeMounts"])
            .iter()
            .map(|m| text(&m["mountPath"]).to_string()),
    );
    for mount in list(&container["volumeMounts"]) {
        let path = text(&mount["mountPath"]);
        assert!(
            wanted.iter().any(|w| w == path),
            "{path} is mounted, but neither the DaemonSet nor a driver's policy needs it"
        );
    }
    if node_local {
        let selector = pod["nodeSelector"].as_object();
        assert!(
            selector.is_some_and(|s| !s.is_empty()),
            "node-local volumes need the provisioner pinned to their node"
        );
    }
}

/// Kubernetes 1.20's OpenAPI spec, from the e2e tier's source build (`e2e/build-k8s.sh`), or
/// `FLEX_K8S_OPENAPI`.
fn kubernetes_1_20_openapi() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FLEX_K8S_OPENAPI") {
        return Some(PathBuf::from(path));
    }
    let cache =
        std::env::var_os("FLEX_E2E_CACHE").map_or("/var/cache/flex-e2e".into(), PathBuf::from);
    let mut found: Vec<PathBuf> = std::fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("k8s-") && name.contains("1.20.")
        })
        .map(|e| {
            e.path()
                .join("src/kubernetes/api/openapi-spec/swagger.json")
        })
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

/// Validates every document against Kubernetes 1.20's OpenAPI definitions, strictly (unknown
/// fields are errors), with `jsonschema` (a dependency of kubernetes-validate).
fn validate_1_20(openapi: &Path, file: &Path) -> (bool, String) {
    let script = r##"
import json, sys, yaml, jsonschema
spec = json.load(open(sys.argv[1]))
defs = spec["definitions"]
for d in defs.values():
    if "properties" in d and "additionalProperties" not in d:
        d["additionalProperties"] = False
defs["io.k8s.apimachinery.pkg.util.intstr.IntOrString"] = {"type": ["string", "integer"]}
defs["io.k8s.apimachinery.pkg.api.resource.Quantity"] = {"type": ["string", "number"]}
kinds = {}
for name, d in defs.items():
    for gvk in d.get("x-kubernetes-group-version-kind", []):
        api = gvk["group"] + "/" + gvk["version"] if gvk["group"] else gvk["version"]
        kinds[(api, gvk["kind"])] = name
failed = 0
for doc in yaml.safe_load_all(open(sys.argv[2])):
    if doc is None:
        continue
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in kinds:
        print("%s %s: not served by Kubernetes 1.20" % key)
        failed += 1
        continue
    schema = {"$ref": "#/definitions/" + kinds[key], "definitions": defs}
    for error in jsonschema.Draft4Validator(schema).iter_errors(doc):
        print("%s %s: %s: %s" % (key[1], doc["metadata"].get("name"), "/".join(map(str, error.absolute_path)), error.message))
        failed += 1
print("failed" if failed else "passed")
sys.exit(1 if failed else 0)
"##;
    let output = Command::new("python3")
        .args(["-c", script])
        .arg(openapi)
        .arg(file)
        .output()
        .expect("python3 with jsonschema (pip install kubernetes-validate)");
    verdict(&output)
}

/// The target cluster is Kubernetes 1.20: kubernetes-validate has no schemas that old, so its
/// OpenAPI spec is read from the e2e tier's Kubernetes source. Every manifest passes; a field
/// or API newer than 1.20, which the 1.35 check lets through, is refused.
#[test]
fn manifests_are_valid_for_kubernetes_1_20() {
    // `make test-node` runs e2e/build-k8s.sh first (cached), so the spec is always there.
    let openapi = kubernetes_1_20_openapi().expect(
        "no Kubernetes 1.20 OpenAPI spec: run e2e/build-k8s.sh (make test-node does), or set FLEX_K8S_OPENAPI",
    );
    for file in manifests() {
        let (ok, text) = validate_1_20(&openapi, &file);
        assert!(
            ok && text.trim_end().ends_with("passed"),
            "{}: {text}",
            file.display()
        );
    }
    let file = deploy_dir().join("provisioner.yaml");
    let original = std::fs::read_to_string(&file).unwrap();
    let temp = tempfile::tempdir().unwrap();
    let anchor = "      serviceAccountName: flex-provisioner\n";
    assert!(original.contains(anchor));
    for (what, broken, newer) in [
        (
            "misspelt field",
            original.replacen("serviceAccountName:", "serviceAcountName:", 1),
            false,
        ),
        (
            "wrong type",
            original.replacen("replicas: 2", "replicas: two", 1),
            false,
        ),
        // PodSpec.os is Kubernetes 1.25's.
        (
            "a field 1.20 lacks",
            original.replacen(
                anchor,
                &format!("      os:\n        name: linux\n{anchor}"),
                1,
            ),
            true,
        ),
        (
            "an API 1.20 lacks",
            format!(
                "{original}---\napiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata:\n  name: flex-provisioner\n  namespace: flex-system\nspec:\n  maxUnavailable: 1\n  selector:\n    matchLabels:\n      app.kubernetes.io/name: flex-provisioner\n"
            ),
            true,
        ),
    ] {
        let path = temp.path().join("broken.yaml");
        std::fs::write(&path, &broken).unwrap();
        let (ok, text) = validate_1_20(&openapi, &path);
        assert!(!ok && text.contains("failed"), "{what} accepted: {text}");
        if newer {
            // What the 1.35 schema check alone would let through.
            let (ok, text) = validate(&path);
            assert!(
                ok,
                "{what}: kubernetes-validate {KUBERNETES_VERSION}: {text}"
            );
        }
    }
}

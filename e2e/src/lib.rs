//! The running cluster the scenarios drive (`e2e/cluster.sh up` starts it and writes
//! `<run>/env`): kubectl, the two plugin dirs (kubelet's and kube-controller-manager's, as on a
//! real control-plane node), the flex log of each process tree, and host-side checks.
//!
//! Which process ran a verb is read from flex's own log lines: kubelet and KCM run with their
//! own `FLEX_LOG_DIR`, and every line records the `ppid` that exec'd flex, checked against the
//! component's PID the cluster script recorded.

pub mod provisioner;

use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// The cluster is one node: scenarios take turns.
pub fn cluster() -> (MutexGuard<'static, ()>, &'static Cluster) {
    static TURN: Mutex<()> = Mutex::new(());
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    (turn, CLUSTER.get_or_init(Cluster::from_env))
}

/// Which side of the cluster ran a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Kubelet,
    Kcm,
}

pub struct Cluster {
    env: HashMap<String, String>,
}

impl Cluster {
    fn from_env() -> Cluster {
        let run = std::env::var("FLEX_E2E_RUN").unwrap_or_else(|_| "/var/lib/flex-e2e/run".into());
        let file = Path::new(&run).join("env");
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| {
            panic!(
                "no running e2e cluster ({}: {e}): run `make e2e`, or `e2e/cluster.sh up` first",
                file.display()
            )
        });
        let env = text
            .lines()
            .filter_map(|line| line.strip_prefix("export "))
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
            .collect();
        Cluster { env }
    }

    /// A value of the cluster's env file (the names are listed in e2e/README.md).
    pub fn var(&self, name: &str) -> String {
        self.env
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} is not in the cluster's env file"))
    }

    fn path(&self, name: &str) -> PathBuf {
        PathBuf::from(self.var(name))
    }

    pub fn node_name(&self) -> String {
        self.var("FLEX_E2E_NODE_NAME")
    }

    pub fn kubelet_root(&self) -> PathBuf {
        self.path("FLEX_E2E_KUBELET_ROOT")
    }

    pub fn plugin_dir(&self, side: Side) -> PathBuf {
        match side {
            Side::Kubelet => self.path("FLEX_E2E_KUBELET_PLUGIN_DIR"),
            Side::Kcm => self.path("FLEX_E2E_KCM_PLUGIN_DIR"),
        }
    }

    /// `FLEX_<what>_DIR` of one side's flex calls (`LOG`, `STATE`, `CACHE`, `RUN`).
    pub fn flex_dir(&self, side: Side, what: &str) -> PathBuf {
        match side {
            Side::Kubelet => self.path(&format!("FLEX_E2E_NODE_FLEX_{what}_DIR")),
            Side::Kcm => self.path(&format!("FLEX_E2E_KCM_FLEX_{what}_DIR")),
        }
    }

    /// The PID of a component (`KUBELET`, `KCM`, `APISERVER`...), re-read: a restart changes it.
    pub fn pid(&self, component: &str) -> u32 {
        let run = self.path("FLEX_E2E_RUN");
        let fresh = std::fs::read_to_string(run.join("env")).unwrap_or_default();
        let key = format!("export FLEX_E2E_{component}_PID=");
        fresh
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .map(|v| v.trim_matches('\'').parse().expect("a PID"))
            .unwrap_or_else(|| panic!("no PID for {component} in the env file"))
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(self.var("KUBECTL"))
            .env("KUBECONFIG", self.var("KUBECONFIG"))
            .args(args)
            .output()
            .expect("run kubectl")
    }

    /// kubectl that must succeed; its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn apply(&self, yaml: &str) {
        use std::io::Write;
        let mut child = Command::new(self.var("KUBECTL"))
            .env("KUBECONFIG", self.var("KUBECONFIG"))
            .args(["apply", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run kubectl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl apply: {}\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn get_json(&self, kind: &str, name: &str) -> Option<Value> {
        let out = self.kubectl(&["get", kind, name, "-o", "json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("kubectl JSON"))
    }

    /// Waits until `kind/name` satisfies `ready` (its JSON); returns the time it took.
    pub fn wait(
        &self,
        kind: &str,
        name: &str,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&Value) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            if let Some(object) = self.get_json(kind, name)
                && ready(&object)
            {
                return start.elapsed();
            }
            if start.elapsed() > timeout {
                panic!(
                    "{kind}/{name}: not {what} after {timeout:?}\n{}\nevents:\n{}",
                    self.get_json(kind, name)
                        .map(|o| o["status"].to_string())
                        .unwrap_or_default(),
                    self.events(name)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn wait_running(&self, pod: &str) -> Duration {
        self.wait("pod", pod, "Running", Duration::from_secs(180), |p| {
            p["status"]["phase"] == "Running"
        })
    }

    /// The events of one object, one line each (`reason: message`).
    pub fn events(&self, name: &str) -> String {
        let selector = format!("involvedObject.name={name}");
        let out = self.kubectl(&[
            "get",
            "events",
            "--field-selector",
            &selector,
            "-o",
            "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Deletes a pod at once (the API object; kubelet then tears it down) and waits until
    /// kubelet has unmounted every volume of it.
    pub fn delete_pod(&self, pod: &str) {
        let uid = self
            .get_json("pod", pod)
            .map(|p| p["metadata"]["uid"].as_str().unwrap_or_default().to_owned());
        self.kubectl(&[
            "delete",
            "pod",
            pod,
            "--grace-period=0",
            "--force",
            "--ignore-not-found",
        ]);
        if let Some(uid) = uid {
            let dir = self.kubelet_root().join("pods").join(uid);
            self.wait_until(
                Duration::from_secs(120),
                "the pod's volumes unmounted",
                || flex_tests::mounts_under(&dir).is_empty(),
            );
        }
    }

    pub fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut() -> bool,
    ) -> Duration {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < timeout, "not {what} after {timeout:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        start.elapsed()
    }

    /// A new pod from [`pod_yaml`], replacing one a failed earlier run left behind.
    pub fn start_pod(&self, name: &str, script: &str, volumes: &str, extra_spec: &str) {
        if self.get_json("pod", name).is_some() {
            self.delete_pod(name);
        }
        self.apply(&pod_yaml(self, name, script, volumes, extra_spec));
    }

    /// The pod's container log (through the API server and kubelet).
    pub fn logs(&self, pod: &str) -> String {
        self.kubectl_ok(&["logs", pod])
    }

    /// Waits until the container log has a line starting with `prefix`; returns that line.
    pub fn wait_log_line(&self, pod: &str, prefix: &str) -> String {
        let start = Instant::now();
        loop {
            let out = self.kubectl(&["logs", pod]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if let Some(line) = text.lines().find(|l| l.starts_with(prefix)) {
                return line.to_owned();
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no {prefix:?} line in {pod}'s log: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `flex install` of a component on both sides, as the DaemonSet does on each node (the
    /// policy dir is shared, like the same file on every machine).
    pub fn install(&self, name: &str, component: &Path, policy: &Path) {
        for side in [Side::Kubelet, Side::Kcm] {
            let out = self.flex(
                side,
                &[
                    "install",
                    "--plugin-dir",
                    self.plugin_dir(side).to_str().unwrap(),
                    name,
                    component.to_str().unwrap(),
                    "--policy",
                    policy.to_str().unwrap(),
                ],
            );
            assert!(
                out.status.success(),
                "flex install {name} ({side:?}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// The built `flex` with one side's environment.
    pub fn flex(&self, side: Side, args: &[&str]) -> Output {
        self.flex_command(side, &flex_tests::flex_binary())
            .args(args)
            .output()
            .expect("run flex")
    }

    /// An executable run with one side's `FLEX_*` environment (an installed driver, `flex`).
    pub fn flex_command(&self, side: Side, executable: &Path) -> Command {
        let mut command = Command::new(executable);
        command.env("FLEX_POLICY_DIR", self.var("FLEX_POLICY_DIR"));
        for what in ["LOG", "STATE", "CACHE", "RUN"] {
            command.env(format!("FLEX_{what}_DIR"), self.flex_dir(side, what));
        }
        if let Some(compiler) = flex_tests::flex_binary().parent() {
            command.env("FLEX_COMPILER", compiler.join("flex-compile"));
        }
        command
    }

    /// One side's flex log lines, parsed.
    pub fn flex_log(&self, side: Side) -> Vec<Value> {
        read_json_lines(&self.flex_dir(side, "LOG").join("flex.log"))
    }

    /// One side's audit records.
    pub fn audit(&self, side: Side) -> Vec<Value> {
        read_json_lines(&self.flex_dir(side, "LOG").join("audit.jsonl"))
    }

    /// flex's `reply` log lines for `driver` on one side since `since_ms`, in order.
    pub fn replies(&self, side: Side, driver: &str, since_ms: u64) -> Vec<Value> {
        self.flex_log(side)
            .into_iter()
            .filter(|l| l["driver"] == driver && l["time_ms"].as_u64() >= Some(since_ms))
            .filter(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("reply "))
            })
            .collect()
    }

    /// The verbs flex answered for `driver` on one side since `since_ms`, in order, with the
    /// PID that exec'd each.
    pub fn verbs(&self, side: Side, driver: &str, since_ms: u64) -> Vec<(String, u32)> {
        self.replies(side, driver, since_ms)
            .iter()
            .map(|l| {
                (
                    l["verb"].as_str().unwrap_or_default().to_owned(),
                    l["ppid"].as_u64().unwrap_or_default() as u32,
                )
            })
            .collect()
    }
}

/// `flex serve` for kubelet's plugin dir, run as kubelet would run it: kubelet's own
/// environment, so kubelet's calls are the ones its children may answer.
pub fn serve_beside_kubelet(cluster: &Cluster) -> flex_tests::WarmServer {
    let environ = format!("/proc/{}/environ", cluster.pid("KUBELET"));
    let environ = std::fs::read(&environ).unwrap_or_else(|e| panic!("{environ}: {e}"));
    let plugin_dir = cluster.plugin_dir(Side::Kubelet);
    let mut command = Command::new(flex_tests::flex_binary());
    command
        .args(["serve", "--plugin-dir", plugin_dir.to_str().unwrap()])
        .env_clear()
        .envs(environ.split(|&b| b == 0).filter_map(|pair| {
            let (name, value) = std::str::from_utf8(pair).ok()?.split_once('=')?;
            Some((name.to_owned(), value.to_owned()))
        }))
        .stdin(std::process::Stdio::null());
    flex_tests::WarmServer::spawn(command)
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn read_json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A pod on the cluster's one node: host network, tolerating the not-ready taints, the local
/// busybox image, running `script`, with `volumes` (YAML list items, indented by the caller).
pub fn pod_yaml(
    cluster: &Cluster,
    name: &str,
    script: &str,
    volumes: &str,
    extra_spec: &str,
) -> String {
    let image = cluster.var("FLEX_E2E_BUSYBOX_IMAGE");
    let node = cluster.node_name();
    let mounts = match volumes.trim().is_empty() {
        true => String::new(),
        false => "    volumeMounts:\n    - {name: data, mountPath: /data}\n".to_owned(),
    };
    let volumes = match volumes.trim().is_empty() {
        true => String::new(),
        false => format!("  volumes:\n{volumes}"),
    };
    let script = script.replace('\'', "'\"'\"'");
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default}}
spec:
  nodeName: {node}
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  automountServiceAccountToken: false
{extra_spec}  tolerations:
  - {{key: node.kubernetes.io/not-ready, operator: Exists}}
  - {{key: node.kubernetes.io/unreachable, operator: Exists}}
  containers:
  - name: main
    image: {image}
    imagePullPolicy: Never
    command: [\"sh\", \"-c\", '{script}; trap \"exit 0\" TERM; while :; do sleep 1; done']
{mounts}{volumes}"
    )
}

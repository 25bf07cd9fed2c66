//! deploy/: the manifests pass a schema-aware validator (and a broken copy does not), and the
//! DaemonSet's installer script, run as written, installs working drivers.
//!
//! Needs `kubernetes-validate` (`pip install kubernetes-validate`, which also brings PyYAML).

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

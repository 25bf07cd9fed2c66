//! The scenarios of the end-to-end tier, on the cluster `e2e/cluster.sh up` started: a real
//! kube-apiserver, kube-controller-manager and kubelet v1.20.2 exec flex as they exec any
//! FlexVolume driver. Each scenario checks host side effects (mounts, loop devices, files, flex's
//! log and audit lines) and prints the verbs each process sent (`make e2e` shows them).
//! Run one at a time (`--test-threads=1`; they also take turns on the one node).

use flex_e2e::{Cluster, Side, cluster, now_ms};
use flex_tests::{Value, guest, mounts_under};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn policy(plugin: &str) -> PathBuf {
    repo().join("plugins").join(plugin).join("policy.toml")
}

fn install_tmpfs(c: &Cluster) {
    c.install("flex~tmpfs", &guest("flex_tmpfs"), &policy("tmpfs"));
}

fn install_loop(c: &Cluster) {
    c.install("flex~loop", &guest("flex_loop"), &policy("loop"));
}

/// Prints the verbs each process sent for `driver` since `since` and checks each was exec'd by
/// that process itself (its `ppid` is kubelet's or KCM's PID).
fn verbs_by_process(
    c: &Cluster,
    scenario: &str,
    driver: &str,
    since: u64,
) -> (Vec<String>, Vec<String>) {
    let mut out = Vec::new();
    for (side, component) in [(Side::Kubelet, "KUBELET"), (Side::Kcm, "KCM")] {
        let pid = c.pid(component);
        // `provision` and `delete` are the tests' own calls, as a provisioner would make them.
        let mut verbs = c.verbs(side, driver, since);
        verbs.retain(|(verb, _)| verb != "provision" && verb != "delete");
        for (verb, ppid) in &verbs {
            assert_eq!(
                *ppid, pid,
                "{scenario}: {verb} in {side:?}'s log was exec'd by {ppid}, not {component} ({pid})"
            );
        }
        let names: Vec<String> = verbs.into_iter().map(|(v, _)| v).collect();
        println!(
            "[{scenario}] {component} (pid {pid}) ran {driver}: {}",
            names.join(" ")
        );
        out.push(names);
    }
    let kcm = out.pop().unwrap();
    (out.pop().unwrap(), kcm)
}

fn pod_dir_mounts(c: &Cluster, pod: &str) -> Vec<flex_tests::MountEntry> {
    let uid = c.get_json("pod", pod).unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    mounts_under(&c.kubelet_root().join("pods").join(uid))
}

fn tmpfs_volume(options: &str, read_only: bool) -> String {
    format!(
        "  - name: data\n    flexVolume: {{driver: flex/tmpfs, readOnly: {read_only}, options: {{{options}}}}}\n"
    )
}

/// Scenario 1: An inline tmpfs volume with `size` and a pod `fsGroup`: a size-limited, group-owned,
/// `nosuid,nodev` mount inside the container; teardown leaves nothing. Also the pod start
/// latency with flex against a plain shell driver, interleaved in the same run.
#[test]
fn s1_inline_tmpfs_with_size_and_fs_group() {
    let (_turn, c) = cluster();
    install_tmpfs(c);
    let since = now_ms();
    let script = "stat -c \"GID %g\" /data; grep \" /data \" /proc/mounts | sed \"s/^/MOUNT /\"; \
                  df -k /data | tail -1 | sed \"s/^/DF /\"";
    c.start_pod(
        "s1-tmpfs",
        script,
        &tmpfs_volume("size: 16Mi", false),
        "  securityContext: {fsGroup: 2345}\n",
    );
    c.wait_running("s1-tmpfs");
    assert_eq!(c.wait_log_line("s1-tmpfs", "GID"), "GID 2345");
    let mount = c.wait_log_line("s1-tmpfs", "MOUNT");
    for flag in ["tmpfs", "nosuid", "nodev", "size=16384k"] {
        assert!(
            mount.contains(flag),
            "{flag} missing in the container: {mount}"
        );
    }
    let df = c.wait_log_line("s1-tmpfs", "DF");
    assert!(df.split_whitespace().nth(2) == Some("16384"), "{df}");
    let host = pod_dir_mounts(c, "s1-tmpfs");
    assert_eq!(host.len(), 1, "{host:?}");
    assert_eq!(host[0].fs_type, "tmpfs");
    for flag in ["nosuid", "nodev", "size=16384k"] {
        assert!(host[0].options.iter().any(|o| o == flag), "{host:?}");
    }
    c.delete_pod("s1-tmpfs");
    let (kubelet, kcm) = verbs_by_process(c, "s1", "flex~tmpfs", since);
    assert!(
        kubelet.contains(&"mount".into()) && kubelet.contains(&"unmount".into()),
        "{kubelet:?}"
    );
    assert!(
        !kcm.iter().any(|v| v == "mount"),
        "KCM never mounts: {kcm:?}"
    );

    // Pod start latency: flex tmpfs against the shell tmpfs driver, alternating.
    let shell_dir = c.plugin_dir(Side::Kubelet).join("shell~tmpfs");
    std::fs::create_dir_all(&shell_dir).unwrap();
    std::fs::copy(
        repo().join("e2e/drivers/shell~tmpfs/tmpfs"),
        shell_dir.join(".tmpfs.new"),
    )
    .unwrap();
    std::fs::rename(shell_dir.join(".tmpfs.new"), shell_dir.join("tmpfs")).unwrap();
    std::thread::sleep(Duration::from_secs(1)); // kubelet probes the new driver
    let mut flex = Vec::new();
    let mut shell = Vec::new();
    for round in 0..5 {
        for (driver, times) in [("flex/tmpfs", &mut flex), ("shell/tmpfs", &mut shell)] {
            let name = format!("s1-latency-{}-{round}", driver.replace('/', "-"));
            let volume = format!(
                "  - name: data\n    flexVolume: {{driver: {driver}, options: {{size: 8Mi}}}}\n"
            );
            c.start_pod(&name, "true", &volume, "");
            times.push(c.wait_running(&name));
            c.delete_pod(&name);
        }
    }
    flex.sort();
    shell.sort();
    println!(
        "[s1] pod start latency, median of 5 (create to Running): flex/tmpfs {:?}, shell/tmpfs {:?} (ratio {:.2})",
        flex[2],
        shell[2],
        flex[2].as_secs_f64() / shell[2].as_secs_f64()
    );
}

/// A loop image provisioned (`size` given) or deleted as the provisioner would: the
/// driver's `provision` / `delete`, node side.
fn loop_image(c: &Cluster, verb: &str, pv: &str, size: Option<&str>) {
    let driver = c.plugin_dir(Side::Kubelet).join("flex~loop/loop");
    let size = size.map_or(String::new(), |s| format!(r#","size":"{s}""#));
    let json = format!(r#"{{"kubernetes.io/pvOrVolumeName":"{pv}"{size}}}"#);
    let out = c
        .flex_command(Side::Kubelet, &driver)
        .args([verb, &json])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{verb} {pv}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn provision_loop(c: &Cluster, pv: &str, size: &str) {
    loop_image(c, "provision", pv, Some(size));
}

fn delete_loop(c: &Cluster, pv: &str) {
    loop_image(c, "delete", pv, None);
}

fn loop_pv_and_claim(name: &str, size: &str, fs: &str, class: &str) -> String {
    format!(
        "apiVersion: v1
kind: PersistentVolume
metadata: {{name: {name}}}
spec:
  capacity: {{storage: {size}}}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: \"{class}\"
  flexVolume: {{driver: flex/loop, fsType: {fs}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {name}, namespace: default}}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: \"{class}\"
  volumeName: {name}
  resources: {{requests: {{storage: {size}}}}}
"
    )
}

fn claim_volume(claim: &str) -> String {
    format!("  - name: data\n    persistentVolumeClaim: {{claimName: {claim}}}\n")
}

/// Loop devices backed by a file whose path contains `image`.
fn loop_devices_for(image: &str) -> Vec<String> {
    let out = std::process::Command::new("losetup")
        .args(["-l", "-n", "-O", "NAME,BACK-FILE"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(image))
        .map(str::to_owned)
        .collect()
}

fn delete_claim(c: &Cluster, name: &str) {
    c.kubectl(&["delete", "pvc", name, "--ignore-not-found", "--wait=true"]);
    c.kubectl(&["delete", "pv", name, "--ignore-not-found", "--wait=true"]);
}

/// Scenario 2: A PV on the loop driver, bound to a PVC: KCM attaches and detaches, kubelet does the
/// node-side work; data written by one pod is there for the next; nothing is left.
#[test]
fn s2_loop_pv_attached_by_kcm_mounted_by_kubelet() {
    let (_turn, c) = cluster();
    install_loop(c);
    let pv = "s2-loop";
    provision_loop(c, pv, "64Mi");
    let since = now_ms();
    c.apply(&loop_pv_and_claim(pv, "64Mi", "ext4", ""));
    c.wait("pvc", pv, "Bound", Duration::from_secs(60), |p| {
        p["status"]["phase"] == "Bound"
    });
    c.start_pod(
        "s2-writer",
        "echo from-the-first-pod > /data/hello && echo WROTE",
        &claim_volume(pv),
        "",
    );
    let started = c.wait_running("s2-writer");
    println!("[s2] pod with an attachable loop PV running {started:?} after creation");
    c.wait_log_line("s2-writer", "WROTE");
    assert_eq!(
        loop_devices_for(pv).len(),
        1,
        "one loop device while in use"
    );
    c.delete_pod("s2-writer");
    c.wait_until(Duration::from_secs(120), "the loop device detached", || {
        loop_devices_for(pv).is_empty()
    });
    c.start_pod(
        "s2-reader",
        "echo READ $(cat /data/hello)",
        &claim_volume(pv),
        "",
    );
    c.wait_running("s2-reader");
    assert_eq!(
        c.wait_log_line("s2-reader", "READ"),
        "READ from-the-first-pod"
    );
    c.delete_pod("s2-reader");
    c.wait_until(Duration::from_secs(120), "the loop device detached", || {
        loop_devices_for(pv).is_empty()
    });
    // KCM's detach follows kubelet's unmountdevice once the node no longer reports the volume.
    // (The reader may reuse the writer's attachment: at least the last one is detached.)
    c.wait_until(Duration::from_secs(240), "KCM's detach", || {
        c.verbs(Side::Kcm, "flex~loop", since)
            .iter()
            .any(|(v, _)| v == "detach")
    });
    let (kubelet, kcm) = verbs_by_process(c, "s2", "flex~loop", since);
    for verb in ["attach", "detach"] {
        assert!(kcm.iter().any(|v| v == verb), "KCM ran no {verb}: {kcm:?}");
        assert!(
            !kubelet.iter().any(|v| v == verb),
            "kubelet ran {verb}: {kubelet:?}"
        );
    }
    for verb in [
        "waitforattach",
        "mountdevice",
        "mount",
        "unmount",
        "unmountdevice",
    ] {
        assert!(
            kubelet.iter().any(|v| v == verb),
            "kubelet ran no {verb}: {kubelet:?}"
        );
        assert!(!kcm.iter().any(|v| v == verb), "KCM ran {verb}: {kcm:?}");
    }
    // Node-side capabilities never ran in KCM's process tree.
    let kcm_ops: Vec<String> = c
        .audit(Side::Kcm)
        .iter()
        .filter(|r| r["driver"] == "flex~loop" && r["time_ms"].as_u64() >= Some(since))
        .map(|r| r["operation"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        kcm_ops.is_empty(),
        "host calls from KCM's process tree: {kcm_ops:?}"
    );
    delete_claim(c, pv);
    delete_loop(c, pv);
    assert!(mounts_under(&c.kubelet_root().join("plugins")).is_empty());
}

/// Scenario 3: `secretRef`: the Secret's values reach the driver in `mount` only, decoded, and appear in
/// no log or audit line of either process.
#[test]
fn s3_secret_ref_reaches_mount_decoded_and_is_never_logged() {
    let (_turn, c) = cluster();
    let policy_file = c
        .flex_dir(Side::Kubelet, "LOG")
        .join("../secrets-policy.toml");
    std::fs::write(
        &policy_file,
        "[mount]\nfs_types = [\"tmpfs\"]\nsources = [\"tmpfs\"]\noptions = [\"nosuid\", \"nodev\"]\n\n[state]\n",
    )
    .unwrap();
    c.install("flex~secrets", &guest("flex_hostile"), &policy_file);
    let value = format!("e2e-secret-{}", now_ms());
    let encoded =
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, value.as_bytes());
    c.apply(&format!(
        "apiVersion: v1
kind: Secret
metadata: {{name: s3-secret, namespace: default}}
type: flex/secrets
data: {{password: {encoded}}}
"
    ));
    let since = now_ms();
    let volume = "  - name: data\n    flexVolume:\n      driver: flex/secrets\n      secretRef: {name: s3-secret}\n      options: {attack: record-secrets}\n";
    c.start_pod("s3-secret", "echo STARTED", volume, "");
    c.wait_running("s3-secret");
    let seen = std::fs::read_to_string(
        c.flex_dir(Side::Kubelet, "STATE")
            .join("flex~secrets/secrets-seen"),
    )
    .unwrap();
    assert_eq!(seen, format!("password={value}\n"), "decoded, as given");
    c.delete_pod("s3-secret");
    let (kubelet, _) = verbs_by_process(c, "s3", "flex~secrets", since);
    assert!(kubelet.contains(&"mount".into()));
    for side in [Side::Kubelet, Side::Kcm] {
        let dir = c.flex_dir(side, "LOG");
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let text = std::fs::read(entry.path()).unwrap();
            let text = String::from_utf8_lossy(&text);
            assert!(
                !text.contains(&value) && !text.contains(&encoded),
                "the secret is in {}",
                entry.path().display()
            );
        }
    }
    c.kubectl(&["delete", "secret", "s3-secret"]);
}

/// Scenario 4: `readOnly: true`: writes fail inside the container, the host mount is `ro`.
#[test]
fn s4_read_only_volume() {
    let (_turn, c) = cluster();
    install_tmpfs(c);
    let script =
        "if touch /data/x 2>/dev/null; then echo WRITE succeeded; else echo WRITE failed; fi";
    c.start_pod("s4-ro", script, &tmpfs_volume("size: 8Mi", true), "");
    c.wait_running("s4-ro");
    assert_eq!(c.wait_log_line("s4-ro", "WRITE"), "WRITE failed");
    let host = pod_dir_mounts(c, "s4-ro");
    assert!(
        host.iter().all(|m| m.options.iter().any(|o| o == "ro")) && !host.is_empty(),
        "{host:?}"
    );
    c.delete_pod("s4-ro");
}

/// Scenario 5: PVC expansion: KCM grows the PV (without execing the driver), kubelet calls `expandfs`,
/// the xfs file system inside the running pod grows.
#[test]
fn s5_pvc_expansion_grows_the_file_system_online() {
    let (_turn, c) = cluster();
    install_loop(c);
    let pv = "s5-expand";
    c.apply(
        "apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: s5-expandable}
provisioner: flex/loop
allowVolumeExpansion: true
",
    );
    provision_loop(c, pv, "320Mi");
    let since = now_ms();
    c.apply(&loop_pv_and_claim(pv, "320Mi", "xfs", "s5-expandable"));
    c.wait("pvc", pv, "Bound", Duration::from_secs(60), |p| {
        p["status"]["phase"] == "Bound"
    });
    let script = "while :; do df -k /data | tail -1 | sed \"s/^/DF /\" > /tmp/df; cat /tmp/df; sleep 1; done";
    c.start_pod("s5-pod", script, &claim_volume(pv), "");
    c.wait_running("s5-pod");
    let size_kib =
        |line: String| -> u64 { line.split_whitespace().nth(2).unwrap().parse().unwrap() };
    let before = size_kib(c.wait_log_line("s5-pod", "DF"));
    c.kubectl_ok(&[
        "patch",
        "pvc",
        pv,
        "-p",
        r#"{"spec":{"resources":{"requests":{"storage":"640Mi"}}}}"#,
    ]);
    c.wait("pv", pv, "grown by KCM", Duration::from_secs(120), |p| {
        p["spec"]["capacity"]["storage"] == "640Mi"
    });
    c.wait(
        "pvc",
        pv,
        "grown by kubelet",
        Duration::from_secs(180),
        |p| p["status"]["capacity"]["storage"] == "640Mi",
    );
    let mut after = before;
    c.wait_until(
        Duration::from_secs(60),
        "the file system grown inside the pod",
        || {
            let logs = c.logs("s5-pod");
            after = logs
                .lines()
                .rev()
                .find(|l| l.starts_with("DF"))
                .map(|l| size_kib(l.into()))
                .unwrap_or(0);
            after > before + 250 * 1024
        },
    );
    println!("[s5] file system in the pod: {before} KiB -> {after} KiB");
    c.delete_pod("s5-pod");
    let (kubelet, kcm) = verbs_by_process(c, "s5", "flex~loop", since);
    assert!(kubelet.iter().any(|v| v == "expandfs"), "{kubelet:?}");
    assert!(
        !kcm.iter().any(|v| v == "expandvolume"),
        "KCM never execs expandvolume: {kcm:?}"
    );
    delete_claim(c, pv);
    c.wait_until(Duration::from_secs(120), "the loop device detached", || {
        loop_devices_for(pv).is_empty()
    });
    delete_loop(c, pv);
    c.kubectl(&["delete", "storageclass", "s5-expandable"]);
}

fn restart(component: &str) {
    let status = std::process::Command::new(repo().join("e2e/cluster.sh"))
        .args(["restart", component])
        .status()
        .unwrap();
    assert!(status.success(), "cluster.sh restart {component}");
}

/// Scenario 6: kubelet restarted while pods run: the volumes stay mounted, no second attach, mount or
/// device mount.
#[test]
fn s6_kubelet_restart_keeps_volumes() {
    let (_turn, c) = cluster();
    install_loop(c);
    install_tmpfs(c);
    let pv = "s6-loop";
    provision_loop(c, pv, "64Mi");
    c.apply(&loop_pv_and_claim(pv, "64Mi", "ext4", ""));
    let since = now_ms();
    c.start_pod("s6-loop", "echo UP", &claim_volume(pv), "");
    c.start_pod("s6-tmpfs", "echo UP", &tmpfs_volume("size: 8Mi", false), "");
    c.wait_running("s6-loop");
    c.wait_running("s6-tmpfs");
    let before = (
        pod_dir_mounts(c, "s6-loop").len(),
        pod_dir_mounts(c, "s6-tmpfs").len(),
    );
    let old_pid = c.pid("KUBELET");
    restart("kubelet");
    assert_ne!(c.pid("KUBELET"), old_pid);
    c.wait(
        "node",
        &c.node_name(),
        "Ready",
        Duration::from_secs(120),
        |n| {
            n["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|x| x["type"] == "Ready" && x["status"] == "True")
            })
        },
    );
    std::thread::sleep(Duration::from_secs(10)); // kubelet's volume manager reconciles
    for pod in ["s6-loop", "s6-tmpfs"] {
        assert_eq!(
            c.get_json("pod", pod).unwrap()["status"]["phase"],
            "Running",
            "{pod}"
        );
    }
    let after = (
        pod_dir_mounts(c, "s6-loop").len(),
        pod_dir_mounts(c, "s6-tmpfs").len(),
    );
    assert_eq!(before, after, "volumes stay mounted");
    let count = |verbs: &[String], verb: &str| verbs.iter().filter(|v| *v == verb).count();
    let kcm_loop: Vec<String> = c
        .verbs(Side::Kcm, "flex~loop", since)
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    let kubelet_loop: Vec<String> = c
        .verbs(Side::Kubelet, "flex~loop", since)
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    let kubelet_tmpfs: Vec<String> = c
        .verbs(Side::Kubelet, "flex~tmpfs", since)
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    println!(
        "[s6] across the restart: KCM loop: {kcm_loop:?}; kubelet loop: {kubelet_loop:?}; kubelet tmpfs: {kubelet_tmpfs:?}"
    );
    assert_eq!(count(&kcm_loop, "attach"), 1, "no duplicate attach");
    assert_eq!(
        count(&kubelet_loop, "mountdevice"),
        1,
        "no second mountdevice"
    );
    assert_eq!(count(&kubelet_loop, "mount"), 1, "no second mount");
    assert_eq!(count(&kubelet_tmpfs, "mount"), 1, "no second mount");
    c.delete_pod("s6-loop");
    c.delete_pod("s6-tmpfs");
    delete_claim(c, pv);
    c.wait_until(Duration::from_secs(120), "the loop device detached", || {
        loop_devices_for(pv).is_empty()
    });
    delete_loop(c, pv);
}

/// A new build of a component: the same code with a custom section naming the build appended
/// (a valid component with other bytes, so a new digest and a new artifact).
fn new_build(component: &Path, build: u32, dir: &Path) -> PathBuf {
    let mut bytes = std::fs::read(component).unwrap();
    let name = b"flex-e2e-build";
    let payload = build.to_le_bytes();
    let body_len = 1 + name.len() + payload.len();
    bytes.push(0); // custom section
    bytes.push(body_len as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(&payload);
    let path = dir.join(format!("build-{build}.wasm"));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The DaemonSet's installer script as the manifest has it, up to its final sleep.
fn daemonset_install_script() -> String {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, yaml\n\
             d = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d['kind'] == 'DaemonSet'][0]\n\
             sys.stdout.write(d['spec']['template']['spec']['containers'][0]['args'][0])",
        ])
        .arg(repo().join("deploy/daemonset.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = String::from_utf8(out.stdout).unwrap();
    script.split("trap ").next().unwrap().to_owned()
}

/// Scenario 7: Upgrade under load: new builds installed again and again (by `flex install` and by the
/// DaemonSet's own script) while pods use the driver and others come and go. kubelet and KCM
/// keep the driver registered throughout, and teardown after the upgrade is clean.
#[test]
fn s7_upgrade_under_load_keeps_the_driver_registered() {
    let (_turn, c) = cluster();
    install_tmpfs(c);
    let scratch = c.flex_dir(Side::Kubelet, "LOG").join("../s7");
    std::fs::create_dir_all(scratch.join("share/drivers")).unwrap();
    std::fs::create_dir_all(scratch.join("share/policy")).unwrap();
    std::fs::copy(policy("tmpfs"), scratch.join("share/policy/tmpfs.toml")).unwrap();
    let kubelet_log = c.var("FLEX_E2E_KUBELET_LOG");
    let kcm_log = c.var("FLEX_E2E_KCM_LOG");
    let lines_before = |path: &str| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let (kubelet_from, kcm_from) = (lines_before(&kubelet_log), lines_before(&kcm_log));
    let since = now_ms();
    for pod in ["s7-a", "s7-b"] {
        c.start_pod(pod, "echo UP", &tmpfs_volume("size: 8Mi", false), "");
    }
    c.wait_running("s7-a");
    c.wait_running("s7-b");
    let flex_dir = flex_tests::flex_binary().parent().unwrap().to_path_buf();
    for build in 1..=6 {
        let component = new_build(&guest("flex_tmpfs"), build, &scratch);
        if build % 2 == 0 {
            // The DaemonSet's own loop, on both plugin dirs.
            std::fs::copy(&component, scratch.join("share/drivers/flex_tmpfs.wasm")).unwrap();
            for side in [Side::Kubelet, Side::Kcm] {
                let path = format!(
                    "{}:{}",
                    flex_dir.display(),
                    std::env::var("PATH").unwrap_or_default()
                );
                let out = c
                    .flex_command(side, Path::new("/bin/sh"))
                    .args(["-c", &daemonset_install_script()])
                    .env("PATH", path)
                    .env("PLUGIN_DIR", c.plugin_dir(side))
                    .env("FLEX_SHARE", scratch.join("share"))
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        } else {
            c.install("flex~tmpfs", &component, &policy("tmpfs"));
        }
        // Pods come and go while the driver is replaced.
        let pod = format!("s7-during-{build}");
        c.start_pod(&pod, "echo UP", &tmpfs_volume("size: 8Mi", false), "");
        c.wait_running(&pod);
        c.delete_pod(&pod);
    }
    let installed =
        std::fs::read(c.plugin_dir(Side::Kubelet).join("flex~tmpfs/tmpfs.wasm")).unwrap();
    assert!(
        installed.ends_with(&6u32.to_le_bytes()),
        "the last build is installed"
    );
    c.delete_pod("s7-a");
    c.delete_pod("s7-b");
    let read_from = |path: &str, from: usize| -> String {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .skip(from)
            .collect::<Vec<_>>()
            .join("\n")
    };
    for (who, text) in [
        ("kubelet", read_from(&kubelet_log, kubelet_from)),
        ("KCM", read_from(&kcm_log, kcm_from)),
    ] {
        let dropped: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("no volume plugin matched"))
            .collect();
        assert!(
            dropped.is_empty(),
            "{who} dropped the driver: {:?}",
            &dropped[..dropped.len().min(3)]
        );
    }
    let (kubelet, kcm) = verbs_by_process(c, "s7", "flex~tmpfs", since);
    // Every upgrade re-ran init on both sides (the prober saw an update, not a removal).
    assert!(
        kubelet.iter().filter(|v| *v == "init").count() >= 3,
        "{kubelet:?}"
    );
    assert!(kcm.iter().filter(|v| *v == "init").count() >= 3, "{kcm:?}");
    assert!(
        mounts_under(&c.kubelet_root().join("pods")).is_empty(),
        "teardown left mounts"
    );
}

/// Scenario 8: A failing driver: the pod stays `ContainerCreating` with the driver's message in its
/// events.
#[test]
fn s8_failing_driver_message_reaches_the_pod_events() {
    let (_turn, c) = cluster();
    install_tmpfs(c);
    c.start_pod("s8-bad", "echo UP", &tmpfs_volume("size: lots", false), "");
    c.wait_until(Duration::from_secs(60), "a FailedMount event", || {
        c.events("s8-bad").contains("FailedMount")
    });
    let events = c.events("s8-bad");
    let failed: Vec<&str> = events
        .lines()
        .filter(|l| l.starts_with("FailedMount"))
        .collect();
    println!("[s8] {}", failed.join(" | "));
    assert!(
        failed.iter().any(|l| l.contains("lots")),
        "the driver's message: {events}"
    );
    let pod = c.get_json("pod", "s8-bad").unwrap();
    assert_eq!(pod["status"]["phase"], "Pending");
    let waiting = &pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"];
    assert!(
        waiting.is_null() || waiting == "ContainerCreating",
        "{waiting}"
    );
    c.delete_pod("s8-bad");
}

/// Scenario 9: `flex serve` beside kubelet. kubelet's calls to the Python driver (an 18 MB
/// component) are answered by warm children: the bind mount is made in kubelet's own mount
/// namespace (the container writes through it to the driver's volume directory), and every
/// call is logged and audited as kubelet's (`ppid`), a warm one with the `warm_caller_pid` of
/// the `flex` kubelet exec'd. Stopping the server leaves kubelet's calls working in process.
#[test]
fn s9_warm_children_answer_kubelets_calls() {
    let (_turn, c) = cluster();
    const DRIVER: &str = "flex~hostpath-py";
    let state = c.flex_dir(Side::Kubelet, "STATE");
    let text = std::fs::read_to_string(policy("hostpath-py"))
        .unwrap()
        .replace("/var/lib/flex/", &format!("{}/", state.display()));
    let scratch = tempfile::tempdir().unwrap();
    let policy_file = scratch.path().join("hostpath-py.toml");
    std::fs::write(&policy_file, text).unwrap();
    c.install(
        DRIVER,
        &flex_tests::script_guest("flex_hostpath_py"),
        &policy_file,
    );
    let server = flex_e2e::serve_beside_kubelet(c);
    let executable = c.plugin_dir(Side::Kubelet).join(DRIVER).join("hostpath-py");
    flex_tests::wait_idle(&executable);

    let since = now_ms();
    let volume = "  - name: data\n    flexVolume: {driver: flex/hostpath-py}\n";
    c.start_pod(
        "s9-warm",
        "echo hello > /data/from-pod && echo WROTE",
        volume,
        "",
    );
    c.wait_running("s9-warm");
    assert_eq!(c.wait_log_line("s9-warm", "WROTE"), "WROTE");
    // The inline volume is named `data`: the driver keeps it at `volumes/data`.
    let written = state.join(DRIVER).join("volumes/data/from-pod");
    assert_eq!(std::fs::read(&written).unwrap(), b"hello\n");
    c.delete_pod("s9-warm");
    let (kubelet, _) = verbs_by_process(c, "s9", DRIVER, since);
    assert!(
        kubelet.contains(&"mount".into()) && kubelet.contains(&"unmount".into()),
        "{kubelet:?}"
    );
    let replies = c.replies(Side::Kubelet, DRIVER, since);
    let warm: Vec<&Value> = replies
        .iter()
        .filter(|l| l["warm_caller_pid"].is_u64())
        .collect();
    println!(
        "[s9] kubelet's calls to {DRIVER}: {}, answered by warm children: {}",
        replies.len(),
        warm.len()
    );
    assert!(
        warm.iter().any(|l| l["verb"] == "mount"),
        "kubelet's mount was not answered warm: {replies:?}"
    );
    let audited: Vec<Value> = c
        .audit(Side::Kubelet)
        .into_iter()
        .filter(|l| l["driver"] == DRIVER && l["time_ms"].as_u64() >= Some(since))
        .collect();
    let kubelet_pid = u64::from(c.pid("KUBELET"));
    assert!(
        audited
            .iter()
            .any(|l| l["operation"] == "mount" && l["warm_caller_pid"].is_u64()),
        "{audited:?}"
    );
    assert!(
        audited.iter().all(|l| l["ppid"] == kubelet_pid),
        "{audited:?}"
    );

    // Without the server, the same calls run in the process kubelet exec'd.
    drop(server);
    let since = now_ms();
    c.start_pod(
        "s9-cold",
        "echo again > /data/again && echo WROTE",
        volume,
        "",
    );
    assert_eq!(c.wait_log_line("s9-cold", "WROTE"), "WROTE");
    assert_eq!(
        std::fs::read(written.with_file_name("again")).unwrap(),
        b"again\n"
    );
    c.delete_pod("s9-cold");
    let (kubelet, _) = verbs_by_process(c, "s9", DRIVER, since);
    assert!(kubelet.contains(&"mount".into()), "{kubelet:?}");
    assert!(
        c.flex_log(Side::Kubelet)
            .iter()
            .filter(|l| l["time_ms"].as_u64() >= Some(since))
            .all(|l| l["warm_caller_pid"].is_null())
    );
}

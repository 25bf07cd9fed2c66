//! Dynamic provisioning on the e2e cluster: `flex provisioner` (the built `flex-provisioner`)
//! against the real kube-apiserver and etcd, with kube-controller-manager's PV controller
//! binding the claims and kubelet mounting them, the loop driver's images on this node.
//! Run one at a time (`--test-threads=1`), like the scenarios.

use flex_e2e::provisioner::{Provisioner, lease_holder};
use flex_e2e::{Cluster, Side, cluster};
use flex_tests::guest;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const LOOP: &str = "flex~loop";
/// The loop driver's `block.image_dir` in plugins/loop/policy.toml.
const IMAGE_DIR: &str = "/var/lib/flex/images/flex~loop";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn install_loop(c: &Cluster) {
    let policy = repo().join("plugins/loop/policy.toml");
    c.install(LOOP, &guest("flex_loop"), &policy);
}

fn class(name: &str, reclaim: &str, extra: &str) -> String {
    format!(
        "apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {{name: {name}}}
provisioner: flex/loop
reclaimPolicy: {reclaim}
{extra}"
    )
}

fn claim(name: &str, class: &str, size: &str, mode: &str) -> String {
    format!(
        "apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {name}, namespace: default}}
spec:
  accessModes: [{mode}]
  storageClassName: {class}
  resources: {{requests: {{storage: {size}}}}}
"
    )
}

fn claim_json(c: &Cluster, name: &str) -> Value {
    c.get_json("pvc", name)
        .unwrap_or_else(|| panic!("no claim {name}"))
}

fn claim_uid(c: &Cluster, claim: &str) -> String {
    claim_json(c, claim)["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string()
}

fn wait_bound(c: &Cluster, claim: &str, timeout: Duration) -> Duration {
    c.wait("pvc", claim, "Bound", timeout, |pvc| {
        pvc["status"]["phase"] == "Bound"
    })
}

/// The images of the loop driver named after PVs of claims (`pvc-...`).
fn images() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(IMAGE_DIR)
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("pvc-"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn image_size(name: &str) -> Option<u64> {
    std::fs::metadata(Path::new(IMAGE_DIR).join(name))
        .ok()
        .map(|m| m.len())
}

/// Every PV named after a claim's UID (the provisioner's), with its claim's name.
fn provisioned_volumes(c: &Cluster) -> Vec<(String, String)> {
    let out = c.kubectl_ok(&["get", "pv", "-o", "json"]);
    let list: Value = serde_json::from_str(&out).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pv| {
            pv["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("pvc-"))
        })
        .map(|pv| {
            (
                pv["metadata"]["name"].as_str().unwrap().to_string(),
                pv["spec"]["claimRef"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

fn delete_claim(c: &Cluster, name: &str) {
    c.kubectl(&["delete", "pvc", name, "--ignore-not-found", "--wait=true"]);
}

/// Waits until neither the PV nor its image exists.
fn wait_deleted(c: &Cluster, pv: &str) {
    c.wait_until(Duration::from_secs(60), &format!("{pv} deleted"), || {
        c.get_json("pv", pv).is_none() && image_size(pv).is_none()
    });
}

/// Leftovers of an earlier failed run: claims and classes of these tests, their PVs, images.
fn clean(c: &Cluster, claims: &[&str], classes: &[&str]) {
    for name in claims {
        delete_claim(c, name);
    }
    for name in classes {
        c.kubectl(&["delete", "storageclass", name, "--ignore-not-found"]);
    }
}

/// Provision, bind, mount in a pod, delete; and `Retain`.
#[test]
fn p1_claim_provisioned_bound_mounted_and_deleted() {
    let (_turn, c) = cluster();
    install_loop(c);
    clean(c, &["p1-data", "p1-kept"], &["p1-loop", "p1-retain"]);
    c.apply(&class("p1-loop", "Delete", "parameters: {fsType: ext4}\n"));
    c.apply(&class("p1-retain", "Retain", ""));
    let mut provisioner = Provisioner::start(c, "p1", "p1-lease", &[LOOP], None);
    provisioner.wait_log("leading", Duration::from_secs(30));

    // 100Mi is whole MiB: allocated as asked.
    c.apply(&claim("p1-data", "p1-loop", "100Mi", "ReadWriteOnce"));
    let bound = wait_bound(c, "p1-data", Duration::from_secs(60));
    let uid = claim_uid(c, "p1-data");
    let pv_name = format!("pvc-{uid}");
    println!("[p1] claim bound {bound:?} after creation, to {pv_name}");
    let pv = c.get_json("pv", &pv_name).expect("the PV");
    assert_eq!(
        claim_json(c, "p1-data")["spec"]["volumeName"],
        pv_name.as_str()
    );
    let spec = &pv["spec"];
    assert_eq!(spec["capacity"]["storage"], "100Mi", "{pv}");
    assert_eq!(spec["accessModes"], serde_json::json!(["ReadWriteOnce"]));
    assert_eq!(spec["persistentVolumeReclaimPolicy"], "Delete");
    assert_eq!(spec["storageClassName"], "p1-loop");
    assert_eq!(spec["flexVolume"]["driver"], "flex/loop");
    assert_eq!(spec["flexVolume"]["fsType"], "ext4");
    assert_eq!(spec["claimRef"]["uid"], uid.as_str());
    assert_eq!(spec["claimRef"]["name"], "p1-data");
    assert_eq!(
        pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"],
        "flex/loop"
    );
    let options = spec["flexVolume"]["options"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    println!("[p1] the PV's flexVolume options: {options:?}");
    assert!(
        !options.is_empty(),
        "the driver's options are recorded: {pv}"
    );
    assert_eq!(
        image_size(&pv_name),
        Some(100 << 20),
        "one image of the size"
    );
    let events = c.events("p1-data");
    println!("[p1] claim events:\n{events}");
    assert!(events.contains("Provisioning: "), "{events}");
    assert!(events.contains("ProvisioningSucceeded: "), "{events}");

    // A pod writes to it; a second pod reads it back.
    let volume = "  - name: data\n    persistentVolumeClaim: {claimName: p1-data}\n";
    c.start_pod(
        "p1-writer",
        "echo provisioned > /data/file && sync && echo written && sleep 3600",
        volume,
        "",
    );
    c.wait_running("p1-writer");
    c.wait_log_line("p1-writer", "written");
    c.delete_pod("p1-writer");
    c.start_pod(
        "p1-reader",
        "echo read $(cat /data/file) && sleep 3600",
        volume,
        "",
    );
    c.wait_running("p1-reader");
    let line = c.wait_log_line("p1-reader", "read");
    assert_eq!(line, "read provisioned");
    c.delete_pod("p1-reader");

    // Deleting the claim deletes the PV and the image, once kubelet and KCM let go of it.
    delete_claim(c, "p1-data");
    let start = Instant::now();
    wait_deleted(c, &pv_name);
    println!(
        "[p1] PV and image deleted {:?} after the claim",
        start.elapsed()
    );
    assert!(images().iter().all(|i| i != &pv_name));

    // Retain: the PV is Released and kept, with its image.
    c.apply(&claim("p1-kept", "p1-retain", "20Mi", "ReadWriteOnce"));
    wait_bound(c, "p1-kept", Duration::from_secs(60));
    let kept = format!("pvc-{}", claim_uid(c, "p1-kept"));
    delete_claim(c, "p1-kept");
    c.wait("pv", &kept, "Released", Duration::from_secs(60), |pv| {
        pv["status"]["phase"] == "Released"
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(c.get_json("pv", &kept).is_some(), "Retain keeps the PV");
    assert_eq!(image_size(&kept), Some(20 << 20), "Retain keeps the image");

    let (status, metrics) = provisioner.get("/metrics");
    assert!(status.contains("200"), "{status}");
    println!(
        "[p1] metrics: {}",
        metrics
            .lines()
            .filter(|l| l.starts_with("flex_provisioner_provisions_total")
                || l.starts_with("flex_provisioner_deletes_total"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    assert!(
        metrics.contains(
            r#"flex_provisioner_provisions_total{driver="flex~loop",result="success"} 2"#
        ),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"flex_provisioner_deletes_total{driver="flex~loop",result="success"} 1"#),
        "{metrics}"
    );
    let (status, body) = provisioner.get("/healthz");
    assert!(
        status.contains("200") && body.trim() == "ok",
        "{status} {body}"
    );

    // A Retain PV is the admin's to remove: here the test does it, and deletes the image.
    c.kubectl(&["delete", "pv", &kept, "--wait=true"]);
    let out = c
        .flex_command(
            Side::Kubelet,
            &c.plugin_dir(Side::Kubelet).join("flex~loop/loop"),
        )
        .args([
            "delete",
            &format!(r#"{{"kubernetes.io/pvOrVolumeName":"{kept}"}}"#),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    clean(c, &[], &["p1-loop", "p1-retain"]);
}

/// Refused before the driver creates anything: each ends in ProvisioningFailed, no PV, no
/// image.
#[test]
fn p2_bad_claims_and_classes_fail_with_an_event_and_no_volume() {
    let (_turn, c) = cluster();
    install_loop(c);
    let claims = ["p2-mode", "p2-param", "p2-fs", "p2-options", "p2-selector"];
    clean(
        c,
        &claims,
        &["p2-loop", "p2-unknown", "p2-badfs", "p2-options"],
    );
    c.apply(&class("p2-loop", "Delete", ""));
    c.apply(&class(
        "p2-unknown",
        "Delete",
        "parameters: {colour: blue}\n",
    ));
    c.apply(&class("p2-badfs", "Delete", "parameters: {fsType: vfat}\n"));
    c.apply(&class("p2-options", "Delete", "mountOptions: [noatime]\n"));
    let before = images();
    let mut provisioner = Provisioner::start(c, "p2", "p2-lease", &[LOOP], None);
    provisioner.wait_log("leading", Duration::from_secs(30));

    c.apply(&claim("p2-mode", "p2-loop", "10Mi", "ReadWriteMany"));
    c.apply(&claim("p2-param", "p2-unknown", "10Mi", "ReadWriteOnce"));
    c.apply(&claim("p2-fs", "p2-badfs", "10Mi", "ReadWriteOnce"));
    c.apply(&claim("p2-options", "p2-options", "10Mi", "ReadWriteOnce"));
    c.apply(
        "apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: p2-selector, namespace: default}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: p2-loop
  selector: {matchLabels: {tier: gold}}
  resources: {requests: {storage: 10Mi}}
",
    );
    for (name, expected) in [
        ("p2-mode", "access mode ReadWriteMany is not supported"),
        ("p2-param", "colour"),
        ("p2-fs", "vfat"),
        ("p2-options", "mountOptions"),
        ("p2-selector", "Selector is not supported"),
    ] {
        let mut events = String::new();
        c.wait_until(
            Duration::from_secs(30),
            &format!("{name}: ProvisioningFailed"),
            || {
                events = c.events(name);
                events.contains("ProvisioningFailed")
            },
        );
        println!(
            "[p2] {name}: {}",
            events
                .lines()
                .find(|l| l.contains("ProvisioningFailed"))
                .unwrap_or("")
        );
        assert!(events.contains(expected), "{name}: {events}");
        assert_eq!(claim_json(c, name)["status"]["phase"], "Pending");
    }
    assert!(
        provisioned_volumes(c)
            .iter()
            .all(|(_, claim)| !claims.contains(&claim.as_str())),
        "no PV for a refused claim"
    );
    assert_eq!(images(), before, "no image for a refused claim");
    let (_, metrics) = provisioner.get("/metrics");
    assert!(
        !metrics.contains(r#"provisions_total{driver="flex~loop",result="success"}"#),
        "{metrics}"
    );
    clean(
        c,
        &claims,
        &["p2-loop", "p2-unknown", "p2-badfs", "p2-options"],
    );
}

/// kill -9 at each step of provisioning and deletion, then a fresh provisioner: one backend
/// volume and one PV per claim, or none after a deletion.
#[test]
fn p3_killed_at_every_step_converges_to_one_volume() {
    let (_turn, c) = cluster();
    install_loop(c);
    clean(c, &["p3-claim"], &["p3-loop"]);
    c.apply(&class("p3-loop", "Delete", ""));
    for step in [
        "before-provision",
        "after-provision",
        "after-volume-created",
    ] {
        let mut first =
            Provisioner::start(c, &format!("p3-{step}"), "p3-lease", &[LOOP], Some(step));
        first.wait_log("leading", Duration::from_secs(30));
        c.apply(&claim("p3-claim", "p3-loop", "16Mi", "ReadWriteOnce"));
        first.wait_log(&format!("paused at {step}"), Duration::from_secs(30));
        let pv = format!("pvc-{}", claim_uid(c, "p3-claim"));
        let had_image = image_size(&pv).is_some();
        let had_pv = c.get_json("pv", &pv).is_some();
        first.kill9();
        let mut second = Provisioner::start(c, "p3-after", "p3-lease", &[LOOP], None);
        wait_bound(c, "p3-claim", Duration::from_secs(60));
        let volumes: Vec<_> = provisioned_volumes(c)
            .into_iter()
            .filter(|(_, claim)| claim == "p3-claim")
            .collect();
        println!(
            "[p3] killed at {step} (image existed: {had_image}, PV existed: {had_pv}); after a restart: PVs {volumes:?}, images {:?}",
            images()
                .iter()
                .filter(|i| i.contains(&pv["pvc-".len()..]))
                .collect::<Vec<_>>()
        );
        assert_eq!(volumes, vec![(pv.clone(), "p3-claim".to_string())]);
        assert_eq!(image_size(&pv), Some(16 << 20));
        assert_eq!(images().iter().filter(|i| **i == pv).count(), 1);
        second.wait_log("leading", Duration::from_secs(30));
        drop(second);

        // Deletion, killed before and after the backend volume goes.
        let delete_step = match step {
            "before-provision" => "before-delete",
            "after-provision" => "after-delete",
            _ => "",
        };
        if delete_step.is_empty() {
            let mut third = Provisioner::start(c, "p3-delete", "p3-lease", &[LOOP], None);
            third.wait_log("leading", Duration::from_secs(30));
            delete_claim(c, "p3-claim");
            wait_deleted(c, &pv);
            continue;
        }
        let mut third = Provisioner::start(
            c,
            &format!("p3-{delete_step}"),
            "p3-lease",
            &[LOOP],
            Some(delete_step),
        );
        third.wait_log("leading", Duration::from_secs(30));
        delete_claim(c, "p3-claim");
        third.wait_log(&format!("paused at {delete_step}"), Duration::from_secs(60));
        let image_then = image_size(&pv).is_some();
        third.kill9();
        let _fourth = Provisioner::start(c, "p3-after-delete", "p3-lease", &[LOOP], None);
        wait_deleted(c, &pv);
        println!(
            "[p3] killed at {delete_step} (image existed: {image_then}); after a restart the PV and image are gone"
        );
    }
    clean(c, &["p3-claim"], &["p3-loop"]);
}

/// Two replicas: one leads and acts; killed, the other takes the Lease and finishes the work.
#[test]
fn p4_two_replicas_one_acts_the_other_takes_over() {
    let (_turn, c) = cluster();
    install_loop(c);
    clean(c, &["p4-first", "p4-second"], &["p4-loop"]);
    c.apply(&class("p4-loop", "Delete", ""));
    let mut a = Provisioner::start(c, "p4-a", "p4-lease", &[LOOP], None);
    let mut b = Provisioner::start(c, "p4-b", "p4-lease", &[LOOP], None);
    a.wait_serving();
    b.wait_serving();
    c.wait_until(Duration::from_secs(30), "a Lease holder", || {
        lease_holder(c, "p4-lease").is_some()
    });
    let holder = lease_holder(c, "p4-lease").unwrap();
    let (mut leader, mut follower) = match holder.as_str() {
        "p4-a" => (a, b),
        "p4-b" => (b, a),
        other => panic!("Lease held by {other}"),
    };
    leader.wait_log("leading", Duration::from_secs(30));
    c.apply(&claim("p4-first", "p4-loop", "8Mi", "ReadWriteOnce"));
    wait_bound(c, "p4-first", Duration::from_secs(60));
    let (_, metrics) = follower.get("/metrics");
    assert!(leader.log().contains("provisioned"), "{}", leader.log());
    assert!(
        !follower.log().contains("provisioned"),
        "the follower acted:\n{}",
        follower.log()
    );
    assert!(metrics.contains("flex_provisioner_leader 0"), "{metrics}");

    leader.kill9();
    let killed = Instant::now();
    c.apply(&claim("p4-second", "p4-loop", "8Mi", "ReadWriteOnce"));
    wait_bound(c, "p4-second", Duration::from_secs(60));
    println!(
        "[p4] leader {} killed; {} took over and bound the next claim {:?} later",
        leader.identity,
        follower.identity,
        killed.elapsed()
    );
    assert_eq!(
        lease_holder(c, "p4-lease").as_deref(),
        Some(follower.identity.as_str())
    );
    follower.wait_log("leading", Duration::from_secs(1));
    for name in ["p4-first", "p4-second"] {
        let pv = format!("pvc-{}", claim_uid(c, name));
        delete_claim(c, name);
        wait_deleted(c, &pv);
    }
    clean(c, &[], &["p4-loop"]);
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn many_claims(prefix: &str, class: &str, count: usize) -> String {
    (0..count)
        .map(|i| claim(&format!("{prefix}-{i}"), class, "8Mi", "ReadWriteOnce"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The figures of the closing note: provision-to-Bound latency (median of 20 claims, each
/// created and waited for alone) against a statically bound claim (a PV made beforehand, the
/// PV controller's own binding: the same machinery without the provisioner), interleaved in
/// the same run; the provisioner's memory at rest and with 200 claims.
#[test]
fn p5_figures_latency_and_memory() {
    let (_turn, c) = cluster();
    install_loop(c);
    let static_class = "apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: p5-static}
provisioner: kubernetes.io/no-provisioner
";
    c.apply(&class("p5-loop", "Delete", ""));
    c.apply(static_class);
    let mut provisioner = Provisioner::start(c, "p5", "p5-lease", &[LOOP], None);
    provisioner.wait_log("leading", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    let at_rest = provisioner.rss_kib();

    let (mut provisioned, mut bound_static) = (Vec::new(), Vec::new());
    for i in 0..20 {
        let name = format!("p5-lat-{i}");
        c.apply(&claim(&name, "p5-loop", "8Mi", "ReadWriteOnce"));
        provisioned.push(wait_bound(c, &name, Duration::from_secs(60)));

        let fixed = format!("p5-static-{i}");
        c.apply(&format!(
            "apiVersion: v1
kind: PersistentVolume
metadata: {{name: {fixed}}}
spec:
  capacity: {{storage: 8Mi}}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: p5-static
  flexVolume: {{driver: flex/loop}}
"
        ));
        c.apply(&claim(&fixed, "p5-static", "8Mi", "ReadWriteOnce"));
        bound_static.push(wait_bound(c, &fixed, Duration::from_secs(60)));
    }
    let (flex, fixed) = (median(provisioned), median(bound_static));
    println!(
        "[p5] provision-to-Bound, median of 20: {flex:?}; a static PV's claim bound: {fixed:?} (ratio {:.2})",
        flex.as_secs_f64() / fixed.as_secs_f64()
    );
    let after_20 = provisioner.rss_kib();

    let start = Instant::now();
    c.apply(&many_claims("p5-many", "p5-loop", 200));
    for i in 0..200 {
        wait_bound(c, &format!("p5-many-{i}"), Duration::from_secs(300));
    }
    let all_bound = start.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let with_200 = provisioner.rss_kib();
    println!(
        "[p5] 200 claims bound in {all_bound:?}; provisioner RSS: at rest {} MiB, after 20 claims {} MiB, with 200 more {} MiB (ratio to rest {:.2})",
        at_rest / 1024,
        after_20 / 1024,
        with_200 / 1024,
        with_200 as f64 / at_rest as f64
    );

    // Everything goes: the claims, then their PVs and images (the provisioner's delete).
    let start = Instant::now();
    let names: Vec<String> = (0..20)
        .map(|i| format!("p5-lat-{i}"))
        .chain((0..20).map(|i| format!("p5-static-{i}")))
        .chain((0..200).map(|i| format!("p5-many-{i}")))
        .collect();
    let mut args = vec!["delete", "pvc", "-n", "default", "--wait=true"];
    args.extend(names.iter().map(String::as_str));
    c.kubectl_ok(&args);
    c.wait_until(
        Duration::from_secs(300),
        "every provisioned PV deleted",
        || provisioned_volumes(c).is_empty(),
    );
    println!(
        "[p5] 220 claims deleted, PVs and images gone in {:?}",
        start.elapsed()
    );
    assert!(images().is_empty(), "images left: {:?}", images());
    for i in 0..20 {
        c.kubectl(&[
            "delete",
            "pv",
            &format!("p5-static-{i}"),
            "--ignore-not-found",
        ]);
    }
    clean(c, &[], &["p5-loop", "p5-static"]);
}

/// The EBS driver on moto (a local EC2 API), through the controller: the PV's size is whole
/// GiB and records the volume ID; a bad class creates nothing; deleting the claim deletes the
/// EBS volume. (No pod: moto has no disks; tests/tests/ebs.rs plays the hypervisor for that.)
#[test]
fn p6_ebs_volumes_on_moto() {
    let (_turn, c) = cluster();
    let claims = ["p6-data", "p6-bad"];
    clean(c, &claims, &["p6-gp3", "p6-bad"]);
    let moto = flex_tests::Moto::start();
    let region = "eu-west-1";
    let volumes = || -> Vec<Value> {
        moto.ec2(region, "describe_volumes", serde_json::json!({}))["Volumes"]
            .as_array()
            .unwrap()
            .clone()
    };
    let policy = flex_tests::shipped_policy("ebs")
        .replace("https://ec2.eu-west-1.amazonaws.com", &moto.endpoint())
        .replace("\"REPLACE-ME\"", "\"flexTestKey\"");
    let policy_file = PathBuf::from(c.var("FLEX_E2E_RUN")).join("p6-ebs.toml");
    std::fs::write(&policy_file, policy).unwrap();
    c.install("flex~ebs", &guest("flex_ebs"), &policy_file);
    c.apply(
        "apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: p6-gp3}
provisioner: flex/ebs
reclaimPolicy: Delete
parameters: {type: gp3, iops: \"3000\", zone: eu-west-1c, fsType: xfs}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: p6-bad}
provisioner: flex/ebs
parameters: {type: gp9}
",
    );
    let mut provisioner = Provisioner::start(c, "p6", "p6-lease", &["flex~ebs"], None);
    provisioner.wait_log("leading", Duration::from_secs(30));

    c.apply(&claim("p6-bad", "p6-bad", "1Gi", "ReadWriteOnce"));
    let mut events = String::new();
    c.wait_until(
        Duration::from_secs(30),
        "p6-bad: ProvisioningFailed",
        || {
            events = c.events("p6-bad");
            events.contains("ProvisioningFailed")
        },
    );
    println!(
        "[p6] bad class: {}",
        events
            .lines()
            .find(|l| l.contains("ProvisioningFailed"))
            .unwrap_or("")
    );
    assert!(events.contains("gp9"), "{events}");
    assert!(
        volumes().is_empty(),
        "a refused claim created {:?}",
        volumes()
    );

    // 1500Mi is allocated as 2 GiB.
    c.apply(&claim("p6-data", "p6-gp3", "1500Mi", "ReadWriteOnce"));
    let bound = wait_bound(c, "p6-data", Duration::from_secs(90));
    let pv_name = format!("pvc-{}", claim_uid(c, "p6-data"));
    let pv = c.get_json("pv", &pv_name).expect("the PV");
    let spec = &pv["spec"];
    let volume_id = spec["flexVolume"]["options"]["volumeID"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    println!(
        "[p6] claim bound {bound:?} after creation, to {pv_name}: capacity {}, volumeID {volume_id}",
        spec["capacity"]["storage"]
    );
    assert_eq!(spec["capacity"]["storage"], "2Gi");
    assert_eq!(spec["flexVolume"]["driver"], "flex/ebs");
    assert_eq!(spec["flexVolume"]["fsType"], "xfs");
    assert!(
        spec["nodeAffinity"].is_null(),
        "an EBS volume is not node-local: {spec}"
    );
    let all = volumes();
    assert_eq!(all.len(), 1, "{all:?}");
    let volume = &all[0];
    assert_eq!(volume["VolumeId"], volume_id.as_str());
    assert_eq!(volume["Size"], 2);
    assert_eq!(volume["VolumeType"], "gp3");
    assert_eq!(volume["Iops"], 3000);
    assert_eq!(volume["AvailabilityZone"], "eu-west-1c");

    delete_claim(c, "p6-data");
    c.wait_until(
        Duration::from_secs(60),
        "the EBS volume and its PV deleted",
        || c.get_json("pv", &pv_name).is_none() && volumes().is_empty(),
    );
    println!("[p6] claim deleted: the PV and the EBS volume are gone");
    clean(c, &claims, &["p6-gp3", "p6-bad"]);
    drop(provisioner);
    let _ = c.flex(
        Side::Kubelet,
        &[
            "uninstall",
            "--plugin-dir",
            c.plugin_dir(Side::Kubelet).to_str().unwrap(),
            "flex~ebs",
        ],
    );
    let _ = c.flex(
        Side::Kcm,
        &[
            "uninstall",
            "--plugin-dir",
            c.plugin_dir(Side::Kcm).to_str().unwrap(),
            "flex~ebs",
        ],
    );
}

//! The attachable driver's life, in the order kube-controller-manager and kubelet call it
//! (protocol notes §4): `getvolumename`, `attach`, `waitforattach`, `mountdevice`, the pods'
//! `mount`s, `isattached` while in use, `expandfs`, then `unmount`, `unmountdevice`, `detach`.
//! Each verb runs twice; a verb answering Not supported gets kubelet's default. After a failed
//! step the later mount-side steps are skipped, the teardown verbs always run.

use super::exec::View;
use super::lifecycle::{Suite, path};
use super::pods::{kubelet_mount, kubelet_umount, leftovers};
use super::scratch::{self, Scratch};
use std::path::Path;

const MIB: u64 = 1 << 20;

impl Suite<'_> {
    pub fn attachable(&mut self) {
        let pv = format!("pv-{}", self.scratch.id);
        let json = self.json(&pv, false, &[]);
        let dmp = self.scratch.device_mount_path(&self.plan.name, &pv);
        let node = self.plan.node_name.clone();
        let mut blocked: Option<String> = None;

        if self.step("getvolumename", &blocked) {
            let first = self.call(&["getvolumename", &json]);
            let result = match first.view() {
                View::Failure(e) => Err(format!(
                    "{e}: kubelet and kube-controller-manager fail every operation on the volume"
                )),
                View::NotSupported => Ok("Not supported (kubelet uses the PV name)".into()),
                View::Success => Ok("kubelet ignores the answer and uses the PV name".into()),
            };
            self.report.result(
                "getvolumename: succeeds or Not supported",
                result,
                Vec::new(),
            );
            let again = self.call(&["getvolumename", &json]);
            self.repeated("getvolumename", &first.view(), &again.view(), None);
        }

        let mut device = String::new();
        if self.step("attach", &blocked) {
            let first = self.call(&["attach", &json, &node]);
            device = first
                .reply
                .as_ref()
                .ok()
                .and_then(|r| r.device.clone())
                .unwrap_or_default();
            self.verb_result("attach: succeeds", &first.view(), &mut blocked, || {
                format!("device {device:?}")
            });
            let again = self.call(&["attach", &json, &node]);
            let again_device = again.reply.as_ref().ok().and_then(|r| r.device.clone());
            let same = match again_device.unwrap_or_default() {
                d if first.view() == View::Success && d != device => Some(format!(
                    "the second attach returned device {d:?}, the first {device:?}: the \
                     controller repeats attach and must get the same device"
                )),
                _ => None,
            };
            self.repeated("attach", &first.view(), &again.view(), same);
        }

        let mut device_path = device.clone();
        if self.step("waitforattach", &blocked) {
            let first = self.call(&["waitforattach", &device, &json]);
            let returned = first.reply.as_ref().ok().and_then(|r| r.device.clone());
            if first.view() == View::Success {
                device_path = returned.clone().unwrap_or_default();
            }
            self.verb_result(
                "waitforattach: succeeds",
                &first.view(),
                &mut blocked,
                || format!("device {:?}", returned.clone().unwrap_or_default()),
            );
            let again = self.call(&["waitforattach", &device, &json]);
            let again_device = again.reply.as_ref().ok().and_then(|r| r.device.clone());
            let same = match again_device {
                d if first.view() == View::Success && d != returned => Some(format!(
                    "the second waitforattach returned device {:?}, the first {returned:?}",
                    d.unwrap_or_default()
                )),
                _ => None,
            };
            self.repeated("waitforattach", &first.view(), &again.view(), same);
        }

        if self.step("mountdevice", &blocked) {
            self.mount_device(&dmp, &device_path, &json, &mut blocked);
        }

        match &blocked {
            Some(why) => self.report.skip("mount: succeeds", why.clone()),
            None => self.pods(&pv, Some(&dmp)),
        }
        if self.step("isattached", &blocked) {
            self.is_attached(&json, &node, true);
        }
        match (&blocked, self.caps.requires_fs_resize) {
            (_, false) => self.report.skip(
                "expandfs: succeeds",
                "not claimed (requiresFSResize: false)",
            ),
            (Some(why), true) => self.report.skip("expandfs: succeeds", why.clone()),
            (None, true) => self.expandfs(&pv, &device_path, &dmp),
        }

        // Teardown, whatever happened before.
        self.unmount_pods(&pv);
        if self.step("unmountdevice", &None) {
            self.unmount_device(&dmp);
        }
        if self.step("detach", &None) {
            let first = self.call(&["detach", &pv, &node]);
            self.verb_result("detach: succeeds", &first.view(), &mut None, String::new);
            let again = self.call(&["detach", &pv, &node]);
            self.repeated("detach", &first.view(), &again.view(), None);
            if self.plan.wants("isattached") {
                self.is_attached(&json, &node, false);
            }
        }
    }

    /// Whether to run `verb`: skipped by the user, or after a failed step.
    fn step(&mut self, verb: &str, blocked: &Option<String>) -> bool {
        let case = format!("{verb}: succeeds");
        if !self.plan.wants(verb) {
            self.report.skip(&case, "--skip/--only");
            return false;
        }
        if let Some(why) = blocked {
            self.report.skip(&case, why.clone());
            return false;
        }
        true
    }

    fn verb_result(
        &mut self,
        case: &str,
        view: &View,
        blocked: &mut Option<String>,
        success: impl FnOnce() -> String,
    ) {
        let verb = case.split(':').next().unwrap_or(case).to_string();
        match view {
            View::Success => self.report.pass(case, success()),
            View::NotSupported => self.report.pass(case, "Not supported: kubelet's default"),
            View::Failure(e) => {
                self.report.fail(case, e.clone());
                *blocked = Some(format!("{verb} failed"));
            }
        }
    }

    /// The second call of a verb: Success again (or Not supported again), and `extra` problem.
    fn repeated(&mut self, verb: &str, first: &View, again: &View, extra: Option<String>) {
        let case = format!("{verb}: repeated call succeeds");
        if let View::Failure(_) = first {
            return self.report.skip(&case, "the first call failed");
        }
        let result = match (again, extra) {
            (View::Failure(e), _) => Err(format!("the second {verb}: {e}")),
            (View::NotSupported, _) if *first != View::NotSupported => {
                Err(format!("the second {verb} answered Not supported"))
            }
            (_, Some(problem)) => Err(problem),
            _ => Ok(String::new()),
        };
        self.report.result(&case, result, Vec::new());
    }

    fn mount_device(&mut self, dmp: &Path, device: &str, json: &str, blocked: &mut Option<String>) {
        if let Err(e) = Scratch::make_dir(dmp) {
            return self.report.fail("mountdevice: succeeds", e);
        }
        let args = ["mountdevice", &path(dmp), device, json];
        let first = self.call(&args);
        match first.view() {
            View::NotSupported if !device.is_empty() => {
                // kubelet mounts the device itself, with the spec's fsType.
                let mut mount_args: Vec<String> = Vec::new();
                if !self.plan.fs_type.is_empty() {
                    mount_args.extend(["-t".into(), self.plan.fs_type.clone()]);
                }
                mount_args.extend(["-o".into(), "rw".into(), device.into(), path(dmp)]);
                let refs: Vec<&str> = mount_args.iter().map(String::as_str).collect();
                let result = kubelet_mount(&refs)
                    .map(|()| "Not supported: kubelet mounts the device (emulated)".to_string())
                    .map_err(|e| {
                        format!("Not supported, and kubelet's mount of {device} fails: {e}")
                    });
                if result.is_err() {
                    *blocked = Some("mountdevice failed".into());
                }
                self.report
                    .result("mountdevice: succeeds", result, Vec::new());
            }
            view => self.verb_result("mountdevice: succeeds", &view, blocked, String::new),
        }
        let mounted = scratch::mounts_at(dmp).len();
        let again = self.call(&args);
        let stacked = (scratch::mounts_at(dmp).len() > mounted).then(|| {
            format!(
                "the second mountdevice stacked another mount on {}",
                dmp.display()
            )
        });
        self.repeated("mountdevice", &first.view(), &again.view(), stacked);
    }

    fn unmount_device(&mut self, dmp: &Path) {
        if !dmp.exists() {
            return self.report.skip(
                "unmountdevice: succeeds",
                "no device mount path: mountdevice did not run",
            );
        }
        let first = self.call(&["unmountdevice", &path(dmp)]);
        if first.view() == View::NotSupported && !scratch::mounts_at(dmp).is_empty() {
            let _ = kubelet_umount(dmp);
        }
        self.verb_result(
            "unmountdevice: succeeds",
            &first.view(),
            &mut None,
            String::new,
        );
        let again = self.call(&["unmountdevice", &path(dmp)]);
        self.repeated("unmountdevice", &first.view(), &again.view(), None);
        let left = leftovers(dmp);
        let result = match left.is_empty() {
            true => Ok(String::new()),
            false => Err(left.join("; ")),
        };
        self.report
            .result("unmountdevice: device mount path clean", result, Vec::new());
    }

    /// `isattached` while the volume is in use (`expect`), or after detach.
    fn is_attached(&mut self, json: &str, node: &str, expect: bool) {
        let case = match expect {
            true => "isattached: attached while in use",
            false => "isattached: not attached after detach",
        };
        let outcome = self.call(&["isattached", json, node]);
        let attached = outcome.reply.as_ref().ok().and_then(|r| r.attached);
        match (outcome.view(), attached.unwrap_or(false)) {
            (View::Failure(e), _) => self.report.fail(case, e),
            (View::NotSupported, _) => self.report.pass(
                case,
                "Not supported: kube-controller-manager keeps the volume as attached",
            ),
            (View::Success, a) if a == expect => self.report.pass(case, ""),
            (View::Success, _) if expect => self.report.fail(
                case,
                "attached: false (or absent) while mounted: kube-controller-manager marks the \
                 volume detached and attaches it again",
            ),
            (View::Success, _) => self.report.result(
                case,
                Ok(String::new()),
                vec![
                    "attached: true after detach (kube-controller-manager does not ask then)"
                        .into(),
                ],
            ),
        }
    }

    /// `expandfs <json> <devicePath> <deviceMountPath> <new> <old>` (§4.12): the new size is
    /// the device's plus a quarter (at least 16 MiB); the file system must grow.
    pub fn expandfs(&mut self, volume: &str, device: &str, dmp: &Path) {
        if !self.plan.wants("expandfs") {
            return self.report.skip("expandfs: succeeds", "--skip/--only");
        }
        let pod = self.pod_dir("a", volume);
        let measured = [pod.as_path(), dmp]
            .into_iter()
            .find(|p| !scratch::mounts_at(p).is_empty())
            .map(Path::to_path_buf);
        let fs_bytes = |p: &Path| {
            nix::sys::statvfs::statvfs(p)
                .map(|s| s.blocks() * s.fragment_size())
                .ok()
        };
        let before = measured.as_deref().and_then(fs_bytes);
        let old = scratch::block_device_bytes(device)
            .or(before)
            .unwrap_or(64 * MIB);
        let new = (old + (old / 4).max(16 * MIB)).div_ceil(MIB) * MIB;
        let json = self.json(volume, false, &[]);
        let (new_text, old_text) = (new.to_string(), old.to_string());
        let args = ["expandfs", &json, device, &path(dmp), &new_text, &old_text];
        let first = self.call(&args);
        match first.view() {
            View::NotSupported => self.report.pass(
                "expandfs: succeeds",
                "Not supported: kubelet runs resize2fs or xfs_growfs itself",
            ),
            View::Failure(e) => self.report.fail("expandfs: succeeds", e),
            View::Success => {
                self.report
                    .pass("expandfs: succeeds", format!("{old} -> {new} bytes"));
                let after = measured.as_deref().and_then(fs_bytes);
                let result = match (before, after) {
                    (Some(b), Some(a)) if a > b => Ok(format!("{b} -> {a} bytes")),
                    (Some(b), Some(a)) => Err(format!(
                        "expandfs answered Success, but the file system is {a} bytes (was {b})"
                    )),
                    _ => Ok("not measured: nothing mounted".to_string()),
                };
                self.report
                    .result("expandfs: file system grew", result, Vec::new());
            }
        }
        let again = self.call(&args);
        self.repeated("expandfs", &first.view(), &again.view(), None);
    }
}

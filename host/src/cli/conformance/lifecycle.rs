//! The run in kubelet's order: `init` and its cases, then the volume's life (`pods.rs` for the
//! pod volume directories, `attach.rs` for the attach side), the sandbox (`sandbox.rs`), and
//! the checks over all calls (reply format, exit codes, secrets, end state: `checks.rs`).
//! Every exec goes through [`Suite::exec`], which records it for those checks.

use super::Plan;
use super::exec::{INTERRUPTED, Outcome, Runner, View};
use super::report::Report;
use super::scratch::Scratch;
use base64::Engine as _;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

/// The pod's fsGroup in `mount` (`kubernetes.io/mounterArgs.FsGroup`).
pub const FS_GROUP: u32 = 2000;
const SECRET_KEY: &str = "kubernetes.io/secret/password";

pub struct Suite<'a> {
    pub runner: &'a Runner,
    pub scratch: &'a Scratch,
    pub plan: &'a Plan,
    pub report: &'a mut Report,
    /// Every call made: verb, outcome.
    pub calls: Vec<(String, Outcome)>,
    pub caps: Caps,
    /// The secret's value: unique, so it can be searched for in every output and log.
    pub secret: String,
}

/// The capabilities as kubelet reads them: absent fields take kubelet's defaults (§3).
#[derive(Clone, Copy)]
pub struct Caps {
    pub attach: bool,
    pub fs_group: bool,
    pub requires_fs_resize: bool,
}

impl<'a> Suite<'a> {
    pub fn new(
        runner: &'a Runner,
        scratch: &'a Scratch,
        plan: &'a Plan,
        report: &'a mut Report,
    ) -> Suite<'a> {
        Suite {
            runner,
            scratch,
            plan,
            report,
            calls: Vec::new(),
            caps: Caps {
                attach: true,
                fs_group: true,
                requires_fs_resize: true,
            },
            secret: format!("flexsecret{}", scratch.id),
        }
    }

    pub fn run(&mut self) {
        if self.init() {
            match self.caps.attach {
                true => self.attachable(),
                false => self.mount_only(),
            }
            self.unmount_never_mounted();
            self.sandbox();
            self.teardown();
            self.delete_node_images();
        }
        self.protocol();
        self.secrets();
    }

    pub fn interrupted(&self) -> bool {
        INTERRUPTED.load(Ordering::Relaxed)
    }

    /// One exec, recorded for the checks over all calls.
    pub fn exec(&mut self, args: &[String], extra: &[(&str, OsString)]) -> Outcome {
        if self.interrupted() {
            return Outcome::empty(args, Err("interrupted".into()));
        }
        let outcome = self.runner.call(args, extra);
        self.report.charge(outcome.elapsed);
        let verb = args
            .iter()
            .find(|a| !a.starts_with("--"))
            .cloned()
            .unwrap_or_default();
        self.calls.push((verb, outcome.clone()));
        outcome
    }

    pub fn call(&mut self, args: &[&str]) -> Outcome {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        self.exec(&args, &[])
    }

    /// `init`: the one verb without which nothing else runs (kubelet drops the plugin).
    fn init(&mut self) -> bool {
        let first = self.call(&["init"]);
        let second = self.call(&["init"]);
        if let View::Failure(e) = first.view() {
            self.report.fail(
                "init: succeeds",
                format!(
                    "{e}: kubelet and kube-controller-manager skip the driver; nothing else was run"
                ),
            );
            return false;
        }
        if first.view() == View::NotSupported {
            self.report.fail(
                "init: succeeds",
                "Not supported: kubelet skips the driver (init has no default); nothing else was run",
            );
            return false;
        }
        self.report.pass("init: succeeds", "");
        let reply = first.reply.clone().unwrap_or_default();
        let caps = match &reply.capabilities {
            None => {
                self.report.fail(
                    "init: capabilities explicit",
                    "no \"capabilities\": kubelet assumes attach: true, so pods wait for an attach \
                     kube-controller-manager may never make; answer attach explicitly",
                );
                Map::new()
            }
            Some(None) => {
                self.report.fail(
                    "init: capabilities explicit",
                    "\"capabilities\": null: kubelet dereferences it and crashes",
                );
                Map::new()
            }
            Some(Some(caps)) => {
                let defaults = [
                    ("attach", "true"),
                    ("selinuxRelabel", "true"),
                    ("supportsMetrics", "false"),
                    ("fsGroup", "true"),
                    ("requiresFSResize", "true"),
                ];
                let missing: Vec<String> = defaults
                    .iter()
                    .filter(|(k, _)| capability(caps, k).is_none())
                    .map(|(k, d)| format!("{k} absent: kubelet assumes {d}"))
                    .collect();
                let result = match capability(caps, "attach") {
                    None => Err(
                        "attach absent: kubelet assumes true, so pods wait for an attach \
                                 kube-controller-manager may never make"
                            .to_string(),
                    ),
                    Some(_) => Ok(Value::Object(caps.clone()).to_string()),
                };
                let warnings = missing
                    .into_iter()
                    .filter(|w| !w.starts_with("attach "))
                    .collect();
                self.report
                    .result("init: capabilities explicit", result, warnings);
                caps.clone()
            }
        };
        self.caps = Caps {
            attach: capability(&caps, "attach").unwrap_or(true),
            fs_group: capability(&caps, "fsGroup").unwrap_or(true),
            requires_fs_resize: capability(&caps, "requiresFSResize").unwrap_or(true),
        };
        let again = second.reply.clone().unwrap_or_default();
        let result = match (second.view(), again.capabilities == reply.capabilities) {
            (View::Success, true) => Ok(String::new()),
            (View::Success, false) => Err(format!(
                "the second init answered other capabilities: {:?}, then {:?} (kubelet re-runs \
                 init on every change in the driver dir)",
                reply.capabilities.flatten(),
                again.capabilities.flatten()
            )),
            (view, _) => Err(format!("the second init: {view:?}")),
        };
        self.report
            .result("init: same answer twice", result, Vec::new());
        true
    }

    fn mount_only(&mut self) {
        let volume = format!("vol-{}", self.scratch.id);
        self.pods(&volume, None);
        if self.caps.requires_fs_resize {
            let dmp = self.scratch.device_mount_path(&self.plan.name, &volume);
            self.expandfs(&volume, "", &dmp);
        } else {
            self.report.skip(
                "expandfs: succeeds",
                "not claimed (requiresFSResize: false)",
            );
        }
        self.unmount_pods(&volume);
    }

    /// The options JSON kubelet builds (§5): its keys, extras, then the volume's options.
    pub fn json(&self, volume: &str, read_only: bool, extra: &[(&str, String)]) -> String {
        let mut map = BTreeMap::new();
        map.insert(
            "kubernetes.io/fsType".to_string(),
            self.plan.fs_type.clone(),
        );
        map.insert("kubernetes.io/pvOrVolumeName".into(), volume.to_string());
        let rw = if read_only { "ro" } else { "rw" };
        map.insert("kubernetes.io/readwrite".into(), rw.into());
        for (k, v) in extra {
            map.insert(k.to_string(), v.clone());
        }
        for (k, v) in &self.plan.options {
            map.insert(k.clone(), v.clone());
        }
        // Go's json.Marshal escapes these three; only strings can hold them.
        serde_json::to_string(&map)
            .unwrap_or_default()
            .replace('<', "\\u003c")
            .replace('>', "\\u003e")
            .replace('&', "\\u0026")
    }

    /// `mount`'s JSON: the pod's keys, and `with_secret` a secret and the pod's fsGroup.
    pub fn mount_json(
        &self,
        volume: &str,
        pod: &str,
        read_only: bool,
        with_secret: bool,
    ) -> String {
        let mut extra = vec![
            ("kubernetes.io/pod.name", format!("flex-test-{pod}")),
            ("kubernetes.io/pod.namespace", "flex-test".to_string()),
            ("kubernetes.io/pod.uid", self.pod_uid(pod)),
            ("kubernetes.io/serviceAccount.name", "default".to_string()),
        ];
        if with_secret {
            let encoded = base64::engine::general_purpose::STANDARD.encode(&self.secret);
            extra.push((SECRET_KEY, encoded));
            extra.push(("kubernetes.io/mounterArgs.FsGroup", FS_GROUP.to_string()));
        }
        self.json(volume, read_only, &extra)
    }

    pub fn pod_uid(&self, pod: &str) -> String {
        format!("{pod}-{}", self.scratch.id)
    }

    pub fn pod_dir(&self, pod: &str, volume: &str) -> PathBuf {
        self.scratch
            .pod_dir(&self.pod_uid(pod), &self.plan.name, volume)
    }
}

/// A capability, its key matched as Go does (case-insensitively).
fn capability(caps: &Map<String, Value>, name: &str) -> Option<bool> {
    caps.get(name)
        .or_else(|| {
            caps.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })
        .and_then(Value::as_bool)
}

pub fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

//! Flex drivers only: the sandbox as a conformance check. With an empty policy, kubelet's
//! mount path fails, mounts nothing, and every privileged import is denied and audited; a
//! dry run (`--dry-run` before the verb) performs nothing: no mount, no loop device, no image.

use super::checks::listed;
use super::exec::{Outcome, View};
use super::lifecycle::{Suite, path};
use super::scratch::{self, Scratch};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::PathBuf;

impl Suite<'_> {
    /// Flex drivers: deny by default and dry run, each on a volume of its own.
    pub fn sandbox(&mut self) {
        if self.plan.flex_log_dir.is_none() {
            return;
        }
        match self.plan.wants("deny-by-default") {
            true => self.deny_by_default(),
            false => self
                .report
                .skip("sandbox: deny by default", "--skip/--only"),
        }
        match self.plan.wants("dry-run") {
            true => self.dry_run(),
            false => self
                .report
                .skip("sandbox: dry run performs nothing", "--skip/--only"),
        }
    }

    fn deny_by_default(&mut self) {
        let case = "sandbox: deny by default";
        let Some((var, dir)) = self.plan.empty_policy.clone() else {
            return;
        };
        let before = Effects::now(self.scratch, None);
        let calls = self.mount_path("deny", &[], &[(var.as_str(), dir)], true);
        let mut problems = before.new_effects(self.scratch, None);
        let last = calls.last().map(|o| (o.args.first().cloned(), o.view()));
        if calls.iter().all(Outcome::is_success) {
            problems.push("with an empty policy the whole mount path answered Success".into());
        }
        let audit = self.audit_of(&calls);
        for line in audit.iter().filter(|l| l["decision"] != "deny") {
            problems.push(format!(
                "{} {} was {} with an empty policy",
                line["operation"].as_str().unwrap_or("?"),
                line["args"],
                line["decision"].as_str().unwrap_or("?")
            ));
        }
        let denied = audit.iter().filter(|l| l["decision"] == "deny").count();
        let (message, warnings) = match (last, denied) {
            (Some((Some(verb), View::Failure(e))), 0) => (
                format!("{verb} failed: {e}"),
                vec!["no privileged import was attempted, so none was denied".to_string()],
            ),
            (Some((Some(verb), View::Failure(e))), n) => (
                format!("{verb} failed ({n} denied and audited): {e}"),
                Vec::new(),
            ),
            _ => (String::new(), Vec::new()),
        };
        let result = match problems.is_empty() {
            true => Ok(message),
            false => Err(listed(&problems)),
        };
        self.report.result(case, result, warnings);
    }

    fn dry_run(&mut self) {
        let case = "sandbox: dry run performs nothing";
        let images = self.plan.image_dir.clone();
        let before = Effects::now(self.scratch, images.as_ref());
        let calls = self.mount_path("dry", &["--dry-run"], &[], false);
        let mut problems = before.new_effects(self.scratch, images.as_ref());
        let audit = self.audit_of(&calls);
        for line in audit.iter().filter(|l| l["decision"] == "allow") {
            problems.push(format!(
                "{} {} was performed in a dry run",
                line["operation"].as_str().unwrap_or("?"),
                line["args"]
            ));
        }
        let would = audit.iter().filter(|l| l["decision"] == "would-do").count();
        let replies: Vec<String> = calls
            .iter()
            .map(|o| {
                let verb = o.args.get(1).cloned().unwrap_or_default();
                match o.view() {
                    View::Success => format!("{verb} Success"),
                    View::NotSupported => format!("{verb} Not supported"),
                    View::Failure(_) => format!("{verb} Failure"),
                }
            })
            .collect();
        let result = match problems.is_empty() {
            true => Ok(format!(
                "{}; {would} audited as would-do",
                replies.join(", ")
            )),
            false => Err(listed(&problems)),
        };
        self.report.result(case, result, Vec::new());
    }

    /// kubelet's mount path for a fresh volume, with `flags` before each verb and `env`;
    /// stops at the first call that does not succeed when `stop`. Cleans its directories.
    fn mount_path(
        &mut self,
        tag: &str,
        flags: &[&str],
        env: &[(&str, OsString)],
        stop: bool,
    ) -> Vec<Outcome> {
        let volume = format!("{tag}-{}", self.scratch.id);
        let json = self.json(&volume, false, &[]);
        let node = self.plan.node_name.clone();
        let dmp = self.scratch.device_mount_path(&self.plan.name, &volume);
        let pod = self.pod_dir(tag, &volume);
        let mut steps: Vec<Vec<String>> = Vec::new();
        if self.caps.attach {
            steps.push(vec!["attach".into(), json.clone(), node]);
            steps.push(vec!["waitforattach".into(), String::new(), json.clone()]);
            steps.push(vec![
                "mountdevice".into(),
                path(&dmp),
                String::new(),
                json.clone(),
            ]);
        }
        let mount_json = self.mount_json(&volume, tag, false, false);
        steps.push(vec!["mount".into(), path(&pod), mount_json]);
        let _ = Scratch::make_dir(&pod);
        let _ = Scratch::make_dir(&dmp);
        let mut outcomes: Vec<Outcome> = Vec::new();
        let mut device = String::new();
        for mut step in steps {
            // The device the previous step answered, where kubelet passes it on.
            match step[0].as_str() {
                "waitforattach" => step[1] = device.clone(),
                "mountdevice" => step[2] = device.clone(),
                _ => {}
            }
            let args: Vec<String> = flags.iter().map(|f| f.to_string()).chain(step).collect();
            let outcome = self.exec(&args, env);
            if let Some(d) = outcome.reply.as_ref().ok().and_then(|r| r.device.clone()) {
                device = d;
            }
            let success = outcome.is_success();
            outcomes.push(outcome);
            if stop && !success {
                break;
            }
        }
        for dir in [&pod, &dmp] {
            if scratch::mounts_at(dir).is_empty() {
                let _ = std::fs::remove_dir(dir);
            }
        }
        outcomes
    }
}

impl Suite<'_> {
    /// `--env node`: the volumes' images are in the node's image dir, so ask the driver to
    /// delete them (`delete`, the provisioner's verb; not a check). Scratch images go with
    /// the scratch node.
    pub fn delete_node_images(&mut self) {
        if !self.plan.node_env || !self.caps.attach || self.plan.flex_log_dir.is_none() {
            return;
        }
        for tag in ["pv", "deny", "dry"] {
            let volume = format!("{tag}-{}", self.scratch.id);
            let json = serde_json::json!({ "kubernetes.io/pvOrVolumeName": volume });
            let outcome = self.runner.call(&["delete".into(), json.to_string()], &[]);
            if !matches!(outcome.view(), View::Success) {
                eprintln!(
                    "flex test: delete {volume} (the node's image dir): {:?}",
                    outcome.view()
                );
            }
        }
    }
}

/// What a call can leave behind: mounts, loop devices, image files.
struct Effects {
    mounts: BTreeSet<PathBuf>,
    loops: BTreeSet<PathBuf>,
    images: BTreeSet<PathBuf>,
}

impl Effects {
    fn now(scratch: &Scratch, images: Option<&PathBuf>) -> Effects {
        let images = images
            .and_then(|d| std::fs::read_dir(d).ok())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        Effects {
            mounts: scratch.mounts().into_iter().map(|m| m.path).collect(),
            loops: scratch.loop_devices().into_iter().map(|(d, _)| d).collect(),
            images,
        }
    }

    fn new_effects(&self, scratch: &Scratch, images: Option<&PathBuf>) -> Vec<String> {
        let now = Effects::now(scratch, images);
        let mut found = Vec::new();
        for (what, before, after) in [
            ("mounted", &self.mounts, &now.mounts),
            ("loop device attached", &self.loops, &now.loops),
            ("image created", &self.images, &now.images),
        ] {
            for p in after.difference(before) {
                found.push(format!("{what}: {}", p.display()));
            }
        }
        found
    }
}

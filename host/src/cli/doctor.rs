//! `flex doctor [--plugin-dir DIR]`: checks a node, one line per finding with what to do;
//! exit 1 when there is a problem (warnings alone exit 0).
//!
//! The plugin dir is `--plugin-dir`, else the `--volume-plugin-dir` flag of a running kubelet
//! (from `/proc/*/cmdline`, or `volumePluginDir:` in the file its `--config` names), else the
//! first existing of the usual defaults.

use crate::artifact::{self, Note};
use crate::logfile::log_dir;
use crate::{policy, runtime};
use clap::Args;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct DoctorArgs {
    /// kubelet's FlexVolume plugin dir (default: a running kubelet's, else the usual defaults)
    #[arg(long, value_name = "DIR")]
    plugin_dir: Option<PathBuf>,
}

const DEFAULT_PLUGIN_DIRS: [&str; 2] = [
    "/usr/libexec/kubernetes/kubelet-plugins/volume/exec",
    "/var/lib/kubelet/volumeplugins",
];
const TOOL_DIRS: [&str; 4] = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

#[derive(Default)]
struct Report {
    problems: usize,
}

impl Report {
    fn ok(&mut self, what: impl AsRef<str>) {
        println!("ok       {}", what.as_ref());
    }
    fn warn(&mut self, what: impl AsRef<str>) {
        println!("warning  {}", what.as_ref());
    }
    fn problem(&mut self, what: impl AsRef<str>, fix: impl AsRef<str>) {
        self.problems += 1;
        println!("problem  {}: {}", what.as_ref(), fix.as_ref());
    }
}

pub fn command(a: &DoctorArgs) -> Result<i32, String> {
    let mut r = Report::default();
    let (plugin_dir, source) = match &a.plugin_dir {
        Some(dir) => (dir.clone(), "--plugin-dir".to_string()),
        None => match kubelet_plugin_dir() {
            Some(dir) => (dir, "the running kubelet's --volume-plugin-dir".into()),
            None => {
                let found = DEFAULT_PLUGIN_DIRS
                    .iter()
                    .map(PathBuf::from)
                    .find(|d| d.is_dir());
                let dir = found.unwrap_or_else(|| DEFAULT_PLUGIN_DIRS[0].into());
                (dir, "default: no running kubelet seen".into())
            }
        },
    };
    if !plugin_dir.is_dir() {
        r.problem(
            format!("plugin dir {} ({source}) does not exist", plugin_dir.display()),
            "pass kubelet's --volume-plugin-dir as --plugin-dir, or create it with `flex install --create`",
        );
        return Ok(1);
    }
    r.ok(format!("plugin dir {} ({source})", plugin_dir.display()));
    let policy_dir = policy::policy_path("x~x")
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    for (what, dir) in [("policy dir", policy_dir), ("log dir", log_dir())] {
        check_owner(&mut r, what, &dir);
    }
    let drivers = drivers(&plugin_dir);
    if drivers.is_empty() {
        r.warn(format!("no flex drivers in {}", plugin_dir.display()));
    }
    // The same check an installed driver makes before it runs this compiler as root.
    let compiler = plugin_dir.join(artifact::PLUGIN_DIR_COMPILER);
    match (artifact::trusted_compiler(&compiler), drivers.is_empty()) {
        (Ok(Some(_)), _) => {
            r.ok(format!("compiler {} (rebuilds rejected artifacts)", compiler.display()))
        }
        (Ok(None), false) => r.problem(
            format!("no compiler at {}", compiler.display()),
            "an artifact rejected after a CPU or flex change cannot be rebuilt; reinstall a driver with `flex install`",
        ),
        (Ok(None), true) => {}
        (Err(why), _) => r.problem(
            format!("compiler {} refused: {why}", compiler.display()),
            "drivers cannot rebuild a rejected artifact with it; make it and the directories above it root-owned and not writable by others, or reinstall a driver with `flex install`",
        ),
    }
    let engine = runtime::engine()?;
    for (name, component) in drivers {
        check_driver(&mut r, &engine, &plugin_dir, &name, &component);
    }
    Ok(i32::from(r.problems > 0))
}

fn check_owner(r: &mut Report, what: &str, dir: &Path) {
    match std::fs::metadata(dir) {
        Err(_) => r.warn(format!("{what} {} does not exist yet", dir.display())),
        Ok(m) if m.uid() != 0 => r.problem(
            format!("{what} {} is owned by uid {}", dir.display(), m.uid()),
            format!("chown root {}", dir.display()),
        ),
        Ok(m) if m.mode() & 0o022 != 0 => r.problem(
            format!(
                "{what} {} is writable by others (mode {:o})",
                dir.display(),
                m.mode() & 0o7777
            ),
            format!("chmod go-w {}", dir.display()),
        ),
        Ok(_) => r.ok(format!(
            "{what} {} owned by root, not writable by others",
            dir.display()
        )),
    }
}

fn check_driver(
    r: &mut Report,
    engine: &wasmtime::Engine,
    plugin_dir: &Path,
    name: &str,
    component: &Path,
) {
    let driver = name.rsplit('~').next().unwrap_or(name);
    let executable = plugin_dir.join(name).join(driver);
    if !executable.is_file() {
        r.problem(
            format!("{name}: {} is missing", executable.display()),
            "kubelet cannot run the driver; reinstall it with `flex install`",
        );
    }
    let policy = match policy::load(name) {
        Ok(policy) => {
            match policy::policy_path(name).exists() {
                true => r.ok(format!(
                    "{name}: policy {} is valid",
                    policy::policy_path(name).display()
                )),
                false => r.warn(format!(
                    "{name}: no policy ({}): it is granted nothing",
                    policy::policy_path(name).display()
                )),
            }
            policy
        }
        Err(e) => {
            r.problem(
                format!("{name}: {e}"),
                "every call fails; fix it (`flex policy check`)",
            );
            return;
        }
    };
    let accept = |recorded: &artifact::Digest| match &policy.digest {
        Some(pin) if *pin != artifact::digest_string(recorded) => Err(format!(
            "the component's digest {} is not the policy's pin {pin}",
            artifact::digest_string(recorded)
        )),
        _ => Ok(()),
    };
    let mut notes = Vec::new();
    match artifact::load(engine, component, &accept, &mut notes) {
        Ok(_) => {
            let rebuilt = notes
                .iter()
                .any(|n| matches!(n, Note::Info(m) if m.contains("compiled")));
            match rebuilt {
                true => r.warn(format!(
                    "{name}: its artifact was missing or stale; rebuilt now"
                )),
                false => r.ok(format!("{name}: artifact valid for this CPU and build")),
            }
        }
        Err(e) => r.problem(
            format!("{name}: {e}"),
            "every call fails; reinstall it with `flex install`",
        ),
    }
    let mut tools: Vec<String> = policy
        .block
        .fs_types
        .iter()
        .map(|fs| format!("mkfs.{fs}"))
        .collect();
    if !policy.block.devices.is_empty() || policy.block.image_dir.is_some() {
        tools.push("blkid".into());
    }
    for fs in &policy.block.fs_types {
        match fs.as_str() {
            "ext4" => tools.push("resize2fs".into()),
            "xfs" => tools.push("xfs_growfs".into()),
            _ => {}
        }
    }
    for tool in tools {
        match TOOL_DIRS
            .iter()
            .map(|d| Path::new(d).join(&tool))
            .find(|p| p.is_file())
        {
            Some(path) => r.ok(format!("{name}: {tool} ({})", path.display())),
            None => r.problem(
                format!(
                    "{name}: its [block] grant needs {tool}, not found in {}",
                    TOOL_DIRS.join(":")
                ),
                "install it (e2fsprogs, xfsprogs, util-linux)",
            ),
        }
    }
    for program in &policy.exec.programs {
        if !Path::new(&program.path).is_file() {
            r.problem(
                format!("{name}: [exec] program {} does not exist", program.path),
                "install it or remove the grant",
            );
        }
    }
}

/// `vendor~driver` directories holding `<driver>.wasm`.
fn drivers(plugin_dir: &Path) -> Vec<(String, PathBuf)> {
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir(plugin_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let (_, driver) = name.split_once('~')?;
            let component = e.path().join(format!("{driver}.wasm"));
            (!name.starts_with('.') && component.is_file()).then_some((name, component))
        })
        .collect();
    found.sort();
    found
}

/// A running kubelet's `--volume-plugin-dir`, from its command line or its config file.
fn kubelet_plugin_dir() -> Option<PathBuf> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() != "kubelet" {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let flag = |name: &str| {
            args.iter().enumerate().find_map(|(i, a)| {
                a.strip_prefix(&format!("{name}="))
                    .map(String::from)
                    .or_else(|| (a == name).then(|| args.get(i + 1).cloned()).flatten())
            })
        };
        if let Some(dir) = flag("--volume-plugin-dir") {
            return Some(dir.into());
        }
        if let Some(config) = flag("--config") {
            let text = std::fs::read_to_string(config).unwrap_or_default();
            let dir = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("volumePluginDir:"));
            if let Some(dir) = dir {
                return Some(dir.trim().trim_matches('"').into());
            }
        }
        return Some(DEFAULT_PLUGIN_DIRS[0].into());
    }
    None
}

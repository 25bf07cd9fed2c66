//! What to exec and in which environment: an installed driver as it is, or a flex component
//! through this flex (`FLEX_COMPONENT`, as `flex run --component`), and for flex drivers the
//! scratch policy, log, state, cache, run and image directories.

use super::exec::Runner;
use super::scratch::Scratch;
use super::{EnvMode, Plan, TestArgs};
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Variables never inherited by a call: they would change what the call runs.
const REMOVED: [&str; 2] = ["FLEX_COMPONENT", "FLEX_DRY_RUN"];

pub fn prepare(a: &TestArgs, scratch: &Scratch) -> Result<(Runner, Plan, String), String> {
    let mut runner = Runner {
        program: PathBuf::new(),
        env: Vec::new(),
        remove_env: REMOVED.to_vec(),
        timeout: super::timeout(a),
        verbose: a.verbose,
    };
    let (name, flex, header) = match (&a.driver, &a.component) {
        (Some(driver), _) => {
            let driver =
                std::path::absolute(driver).map_err(|e| format!("{}: {e}", driver.display()))?;
            let meta =
                std::fs::metadata(&driver).map_err(|e| format!("{}: {e}", driver.display()))?;
            if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
                return Err(format!(
                    "{} is not an executable file: kubelet could not run it",
                    driver.display()
                ));
            }
            let mut component = driver.clone().into_os_string();
            component.push(".wasm");
            let flex = Path::new(&component).is_file();
            let name = a.name.clone().unwrap_or_else(|| name_of_driver(&driver));
            runner.program = driver.clone();
            let kind = if flex { "flex driver" } else { "driver" };
            (name, flex, format!("{kind} {}", driver.display()))
        }
        (None, Some(_)) if a.env == EnvMode::Node => {
            return Err(
                "--component always runs on the scratch node; to test a driver with \
                        the node's policy, logs and state, install it and use --driver"
                    .into(),
            );
        }
        (None, Some(component)) => {
            let name = a
                .name
                .clone()
                .unwrap_or_else(|| name_of_component(component));
            // A copy named as an installed one (`<vendor~driver>/<driver>.wasm`), so this flex
            // gives it the driver's name; the original may change while the run goes on.
            let driver = name.rsplit('~').next().unwrap_or(&name);
            let dir = scratch.path("components").join(&name);
            Scratch::make_dir(&dir)?;
            let copy = dir.join(format!("{driver}.wasm"));
            std::fs::copy(component, &copy)
                .map_err(|e| format!("copy {}: {e}", component.display()))?;
            runner.program = std::env::current_exe().map_err(|e| format!("find this flex: {e}"))?;
            runner.env.push(("FLEX_COMPONENT".into(), copy.into()));
            runner.remove_env.retain(|v| *v != "FLEX_COMPONENT");
            (name, true, format!("component {}", component.display()))
        }
        (None, None) => return Err("--driver or --component is required".into()),
    };
    check_name(&name)?;
    let mut plan = Plan {
        name: name.clone(),
        flex_log_dir: None,
        empty_policy: None,
        options: a.options.clone(),
        fs_type: a.fs_type.clone(),
        node_name: a.node_name.clone(),
        skip: a.skip.clone(),
        only: a.only.clone(),
        image_dir: None,
        log_marks: Vec::new(),
        node_env: false,
    };
    let mut header = format!("{header} as {name}");
    if !flex {
        if a.policy.is_some() {
            return Err("--policy is for flex drivers; this one has no component beside it".into());
        }
        return Ok((runner, plan, header));
    }
    let empty = scratch.path("policy-empty");
    Scratch::make_dir(&empty)?;
    plan.empty_policy = Some(("FLEX_POLICY_DIR".into(), empty.into()));
    match a.env {
        EnvMode::Node => {
            if a.policy.is_some() {
                return Err("--policy needs --env scratch: with --env node the driver runs under its installed policy".into());
            }
            let log_dir = crate::logfile::log_dir();
            plan.log_marks = ["flex.log", "audit.jsonl"]
                .iter()
                .map(|f| {
                    let path = log_dir.join(f);
                    let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    (path, len)
                })
                .collect();
            plan.flex_log_dir = Some(log_dir);
            plan.node_env = true;
            plan.image_dir = policy_image_dir(&crate::policy::policy_path(&name));
            header.push_str(", node env (its policy, logs, state, cache)");
        }
        EnvMode::Scratch => {
            let source = match &a.policy {
                Some(file) => file.clone(),
                None => crate::policy::policy_path(&name),
            };
            let policy_dir = scratch.path("policy");
            Scratch::make_dir(&policy_dir)?;
            let images = scratch.path("images").join(&name);
            match std::fs::read_to_string(&source) {
                Ok(text) => {
                    let text = scratch_policy(&text, &images, &scratch.path("state").join(&name))
                        .map_err(|e| format!("policy {}: {e}", source.display()))?;
                    let target = policy_dir.join(format!("{name}.toml"));
                    std::fs::write(&target, text)
                        .and_then(|()| {
                            std::fs::set_permissions(&target, PermissionsExt::from_mode(0o600))
                        })
                        .map_err(|e| format!("write {}: {e}", target.display()))?;
                    header.push_str(&format!(", policy {}", source.display()));
                }
                Err(e) if a.policy.is_none() && e.kind() == std::io::ErrorKind::NotFound => {
                    header.push_str(&format!(
                        ", no policy ({} is absent: nothing granted)",
                        source.display()
                    ));
                }
                Err(e) => return Err(format!("read the policy {}: {e}", source.display())),
            }
            for (var, dir) in [
                ("FLEX_POLICY_DIR", "policy"),
                ("FLEX_LOG_DIR", "log"),
                ("FLEX_STATE_DIR", "state"),
                ("FLEX_CACHE_DIR", "cache"),
                ("FLEX_RUN_DIR", "run"),
            ] {
                runner
                    .env
                    .push((var.into(), OsString::from(scratch.path(dir))));
            }
            plan.flex_log_dir = Some(scratch.path("log"));
            plan.image_dir = Some(images);
        }
    }
    Ok((runner, plan, header))
}

/// kubelet's layout: `<plugindir>/<vendor~driver>/<driver>`; anything else is `test~<file>`.
fn name_of_driver(driver: &Path) -> String {
    let file = driver
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = driver
        .parent()
        .and_then(Path::file_name)
        .map(|d| d.to_string_lossy().into_owned())
        .unwrap_or_default();
    match dir.rsplit('~').next() == Some(file.as_str()) && dir.contains('~') {
        true => dir,
        false => format!("test~{}", sanitize(&file)),
    }
}

/// `acme~x/x.wasm` → `acme~x`; this repo's `flex_tmpfs.wasm` → `flex~tmpfs`; else `test~<stem>`.
fn name_of_component(component: &Path) -> String {
    let named = crate::locate::locate("flex", Some(&component.to_string_lossy())).name;
    if named.contains('~') {
        return named;
    }
    match named.strip_prefix("flex_") {
        Some(rest) => format!("flex~{}", sanitize(&rest.replace('_', "-"))),
        None => format!("test~{}", sanitize(&named)),
    }
}

fn sanitize(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| match c.is_ascii_alphanumeric() || "._-".contains(c) {
            true => c,
            false => '-',
        })
        .collect();
    clean
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// `vendor~driver` or `driver`, as kubelet accepts it: at most one `~`, no `/`.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.matches('~').count() <= 1
        && name.split('~').all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        });
    match ok {
        true => Ok(()),
        false => Err(format!(
            "{name:?} is not a driver name kubelet accepts: vendor~driver, letters, digits, . _ -"
        )),
    }
}

/// The policy with its `[block] image_dir` and `[state] dir` moved into the scratch node, so
/// the driver's images and state live and die with the run. Checked by parsing it back.
fn scratch_policy(text: &str, images: &Path, state: &Path) -> Result<String, String> {
    let quoted = |p: &Path| serde_json::to_string(&p.to_string_lossy()).unwrap_or_default();
    let mut section = String::new();
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            section = trimmed.trim_matches(['[', ']', ' ']).to_string();
        }
        let key = trimmed.split('=').next().unwrap_or("").trim();
        match (section.as_str(), key, trimmed.contains('=')) {
            ("block", "image_dir", true) => {
                out.push_str(&format!("image_dir = {}", quoted(images)))
            }
            ("state", "dir", true) => out.push_str(&format!("dir = {}", quoted(state))),
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    let parsed: toml::Table = toml::from_str(&out).map_err(|e| e.to_string())?;
    let get = |table: &str, key: &str| {
        parsed
            .get(table)
            .and_then(|t| t.get(key))
            .and_then(|v| v.as_str())
            .map(PathBuf::from)
    };
    let original: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    for (table, key, want) in [("block", "image_dir", images), ("state", "dir", state)] {
        let had = original.get(table).and_then(|t| t.get(key)).is_some();
        if had && get(table, key).as_deref() != Some(want) {
            return Err(format!(
                "cannot move [{table}] {key} into the scratch node (write it as `{key} = \"...\"` \
                 on its own line under [{table}], or use --env node)"
            ));
        }
    }
    Ok(out)
}

/// `[block] image_dir` of an installed policy, if any.
fn policy_image_dir(path: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(path).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    table
        .get("block")?
        .get("image_dir")?
        .as_str()
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            name_of_driver(Path::new("/p/acme~nfs/nfs")),
            "acme~nfs".to_string()
        );
        assert_eq!(
            name_of_driver(Path::new("/tmp/broken driver.sh")),
            "test~broken-driver.sh"
        );
        assert_eq!(
            name_of_component(Path::new("target/flex_tmpfs.wasm")),
            "flex~tmpfs"
        );
        assert_eq!(
            name_of_component(Path::new("x/acme~disk/disk.wasm")),
            "acme~disk"
        );
        assert_eq!(name_of_component(Path::new("my.wasm")), "test~my");
        assert!(check_name("a~b~c").is_err());
    }

    #[test]
    fn policy_dirs_move_into_the_scratch_node() {
        let text = "[block]\nfs_types = [\"ext4\"]\nimage_dir = \"/var/lib/flex/images/x\"\n[mount]\nfs_types = []\n";
        let moved =
            scratch_policy(text, Path::new("/s/images/x"), Path::new("/s/state/x")).unwrap();
        assert!(moved.contains("image_dir = \"/s/images/x\""), "{moved}");
        let inline = "block = { image_dir = \"/var/lib/flex/images/x\" }\n";
        assert!(scratch_policy(inline, Path::new("/s/i"), Path::new("/s/s")).is_err());
    }
}

//! `flex install` / `flex uninstall`: put a driver where kubelet finds it, atomically.
//!
//! kubelet's prober re-runs `init` on any change inside a driver's directory and ignores
//! dot-names, so the whole directory (this executable, the component, its compiled artifact)
//! is built under a dot-name and then swapped in with one `renameat2(RENAME_EXCHANGE)`: kubelet
//! sees the old driver or the new one, never a half-installed one, and re-probes once.

use crate::{artifact, policy, runtime};
use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
use std::fs;
use std::path::{Path, PathBuf};

pub const USAGE: &str = "usage: flex install --plugin-dir DIR <vendor~driver> COMPONENT [--policy FILE]\n       flex uninstall --plugin-dir DIR <vendor~driver>\n       flex list --plugin-dir DIR";

/// `install` arguments after the subcommand; returns what was done.
pub fn install(args: &[String]) -> Result<String, String> {
    let (plugin_dir, positional, policy_file) = parse_args(args)?;
    let [name, component] = positional.as_slice() else {
        return Err(USAGE.into());
    };
    let driver = driver_of(name)?;
    let staging = plugin_dir.join(format!(".{name}.staging-{}", std::process::id()));
    let result = stage(&staging, driver, Path::new(component))
        .and_then(|()| install_compiler(&plugin_dir))
        .and_then(|()| install_policy(name, policy_file.as_deref()))
        .and_then(|()| swap_in(&staging, &plugin_dir.join(name)));
    let _ = fs::remove_dir_all(&staging); // the half-built or the replaced driver
    result.map(|()| format!("installed {name} in {}\n", plugin_dir.display()))
}

pub fn uninstall(args: &[String]) -> Result<String, String> {
    let (plugin_dir, positional, _) = parse_args(args)?;
    let [name] = positional.as_slice() else {
        return Err(USAGE.into());
    };
    driver_of(name)?;
    let removing = plugin_dir.join(format!(".{name}.removing-{}", std::process::id()));
    match fs::rename(plugin_dir.join(name), &removing) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(format!("{name} is not installed\n"));
        }
        other => other.map_err(|e| format!("uninstall {name}: {e}"))?,
    }
    fs::remove_dir_all(&removing).map_err(|e| format!("remove {}: {e}", removing.display()))?;
    if installed_drivers(&plugin_dir)?.is_empty() {
        let _ = fs::remove_file(plugin_dir.join(artifact::PLUGIN_DIR_COMPILER));
    }
    Ok(format!(
        "uninstalled {name}; its policy stays in {}\n",
        policy::policy_path(name).display()
    ))
}

/// One line per installed flex driver: name, sha256 of its component, its policy file.
pub fn list(args: &[String]) -> Result<String, String> {
    use sha2::{Digest, Sha256};
    let (plugin_dir, _, _) = parse_args(args)?;
    let mut out = String::new();
    for (name, component) in installed_drivers(&plugin_dir)? {
        let Ok(component) = fs::read(component) else {
            continue;
        };
        let digest: String = Sha256::digest(&component)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let policy = policy::policy_path(&name);
        let policy = match policy.exists() {
            true => policy.display().to_string(),
            false => format!("{} (absent: nothing granted)", policy.display()),
        };
        out.push_str(&format!("{name}\tsha256:{digest}\t{policy}\n"));
    }
    Ok(out)
}

/// The flex drivers in a plugin dir, sorted: `vendor~driver` directories holding
/// `<driver>.wasm`, with that component's path.
fn installed_drivers(plugin_dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let entries = fs::read_dir(plugin_dir).map_err(|e| format!("{}: {e}", plugin_dir.display()))?;
    let mut drivers: Vec<(String, PathBuf)> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .filter_map(|name| {
            let component = plugin_dir
                .join(&name)
                .join(format!("{}.wasm", driver_of(&name).ok()?));
            component.is_file().then_some((name, component))
        })
        .collect();
    drivers.sort();
    Ok(drivers)
}

fn parse_args(args: &[String]) -> Result<(PathBuf, Vec<String>, Option<String>), String> {
    let (mut plugin_dir, mut policy_file, mut positional) = (None, None, Vec::new());
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--plugin-dir" => plugin_dir = args.next().cloned(),
            "--policy" => policy_file = Some(args.next().cloned().ok_or(USAGE)?),
            _ => positional.push(arg.clone()),
        }
    }
    Ok((
        PathBuf::from(plugin_dir.ok_or(USAGE)?),
        positional,
        policy_file,
    ))
}

/// `vendor~driver` → `driver`, checked as kubelet will check the name (one `~`, a qualified name).
fn driver_of(name: &str) -> Result<&str, String> {
    let valid = |part: &str| {
        !part.is_empty()
            && part.len() <= 63
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            && part.starts_with(|c: char| c.is_ascii_alphanumeric())
            && part.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    match name.split_once('~') {
        Some((vendor, driver)) if valid(vendor) && valid(driver) => Ok(driver),
        _ => Err(format!(
            "invalid driver name {name:?}: expected vendor~driver, e.g. acme~tmpfs"
        )),
    }
}

/// The executable, the component and its compiled artifact, so the first call is fast and a
/// component that does not compile is refused before kubelet sees it.
fn stage(staging: &Path, driver: &str, component: &Path) -> Result<(), String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    fs::create_dir_all(staging).map_err(|e| io("create staging dir", e))?;
    let me = std::env::current_exe().map_err(|e| io("find the flex executable", e))?;
    fs::copy(&me, staging.join(driver)).map_err(|e| io("copy flex", e))?;
    let installed = staging.join(format!("{driver}.wasm"));
    fs::copy(component, &installed).map_err(|e| io(&component.display().to_string(), e))?;
    let engine = runtime::engine()?;
    artifact::load(&engine, &installed).map(|_| ())
}

/// Keeps a copy of the compiler in the plugin dir, so an installed driver whose artifact is
/// rejected later (a new CPU, a damaged file) rebuilds it instead of failing every call.
/// (A `flex` built with the `compiler` feature compiles in process and needs no copy.)
#[cfg(feature = "compiler")]
fn install_compiler(_plugin_dir: &Path) -> Result<(), String> {
    Ok(())
}

#[cfg(not(feature = "compiler"))]
fn install_compiler(plugin_dir: &Path) -> Result<(), String> {
    let compiler = artifact::compiler_path()?;
    let target = plugin_dir.join(artifact::PLUGIN_DIR_COMPILER);
    if compiler == target {
        return Ok(());
    }
    let temp = plugin_dir.join(format!(
        "{}.tmp{}",
        artifact::PLUGIN_DIR_COMPILER,
        std::process::id()
    ));
    fs::copy(&compiler, &temp)
        .and_then(|_| fs::rename(&temp, &target))
        .map_err(|e| {
            let _ = fs::remove_file(&temp);
            format!("install the compiler as {}: {e}", target.display())
        })
}

fn install_policy(name: &str, file: Option<&str>) -> Result<(), String> {
    let Some(file) = file else { return Ok(()) };
    let text = fs::read_to_string(file).map_err(|e| format!("policy {file}: {e}"))?;
    policy::parse(&text, Path::new(file))?;
    let target = policy::policy_path(name);
    if let Some(dir) = target.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    let temp = target.with_extension(format!("toml.tmp{}", std::process::id()));
    fs::write(&temp, text)
        .and_then(|()| fs::rename(&temp, &target))
        .map_err(|e| format!("install policy {}: {e}", target.display()))
}

/// Exchanges the staged directory with the installed one (or renames it in place); the old
/// driver ends up under the staging name, to be removed.
fn swap_in(staging: &Path, installed: &Path) -> Result<(), String> {
    let exchanged = renameat2(
        AT_FDCWD,
        staging,
        AT_FDCWD,
        installed,
        RenameFlags::RENAME_EXCHANGE,
    );
    let result = match exchanged {
        Ok(()) => Ok(()),
        // Nothing installed yet: a plain rename.
        Err(nix::errno::Errno::ENOENT) => fs::rename(staging, installed).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    result.map_err(|e| format!("install {}: {e}", installed.display()))
}

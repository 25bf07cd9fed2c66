//! `flex install` / `flex uninstall`: put a driver where kubelet finds it, atomically.
//!
//! A first install builds the driver directory under a dot-name (kubelet's prober ignores
//! those) and renames it into place. An upgrade adds a version beside the running one and
//! switches to it with renames kubelet's prober reads as an update, never as a removal, while
//! kubelet runs the old executable and component or the new ones, never a mix (`layout.rs`).
//! The component is precompiled into the root-only artifact cache (`artifact.rs`), never into
//! the plugin dir; the artifacts of the components an install replaces, or an uninstall
//! removes, are removed once those components are gone.

pub(crate) mod layout;

pub use layout::VERSION_PREFIX;

use crate::cli::{InstallArgs, ListArgs, UninstallArgs};
use crate::{artifact, policy, runtime};
use std::fs;
use std::path::{Path, PathBuf};

/// `flex install`; returns what was done.
pub fn install(a: &InstallArgs) -> Result<String, String> {
    let (plugin_dir, name, component) = (&a.plugin_dir, a.name.as_str(), a.component.as_path());
    let driver = driver_of(name)?;
    existing_plugin_dir(plugin_dir, a.create)?;
    check_pin(name, component, a.policy.as_deref())?;
    // One install at a time per plugin dir (the DaemonSet's loop, a hand-run upgrade).
    let _lock = lock_dir(plugin_dir)?;
    let installed = plugin_dir.join(name);
    let done = match fs::symlink_metadata(&installed) {
        Ok(meta) if meta.is_dir() => upgrade(a, &installed, driver)?,
        Ok(_) => return Err(format!("{} is not a directory", installed.display())),
        Err(_) => first_install(a, &installed, driver)?,
    };
    Ok(format!("{done} {name} in {}\n", plugin_dir.display()))
}

/// A driver directory built aside under a dot-name (kubelet's prober ignores those) and
/// renamed into place: kubelet sees it appear whole.
fn first_install(a: &InstallArgs, installed: &Path, driver: &str) -> Result<&'static str, String> {
    let plugin_dir = &a.plugin_dir;
    let staging = plugin_dir.join(format!(".{}.staging-{}", a.name, std::process::id()));
    let _ = fs::remove_dir_all(&staging); // left by a crashed install that had this pid
    let mut version = None;
    let result = fs::create_dir(&staging)
        .map_err(|e| format!("cannot write in {}: {e}", plugin_dir.display()))
        .and_then(|()| layout::write_version(&staging, driver, &a.component))
        .and_then(|v| {
            let v = version.insert(v);
            precompile(&layout::component(&staging, v, driver), &a.component)
        })
        .and_then(|()| install_compiler(plugin_dir))
        .and_then(|()| install_policy(&a.name, a.policy.as_deref()))
        .and_then(|()| layout::activate(&staging, version.as_deref().unwrap_or(""), driver))
        .and_then(|_| {
            fs::rename(&staging, installed)
                .map_err(|e| format!("install {}: {e}", installed.display()))?;
            let _ = layout::sync_dir(plugin_dir); // best effort: the rename is done
            Ok(())
        });
    if result.is_err() {
        let gone =
            version.and_then(|v| artifact::Inode::of(&layout::component(&staging, &v, driver)));
        let _ = fs::remove_dir_all(&staging);
        if let Some(gone) = gone {
            let _ = artifact::forget(gone);
        }
    }
    result.map(|()| "installed")
}

/// A new version beside the running one, activated by renames that kubelet's prober reads as
/// an update (see `layout.rs`); the version before it stays until the next install.
fn upgrade(a: &InstallArgs, installed: &Path, driver: &str) -> Result<&'static str, String> {
    let version = layout::write_version(installed, driver, &a.component)?;
    let new_component = layout::component(installed, &version, driver);
    let discard = |version: &str| {
        if let Some(gone) = layout::remove_version(installed, version, driver) {
            let _ = artifact::forget(gone);
        }
    };
    if layout::same_as_current(installed, &version, driver) {
        discard(&version);
        install_compiler(&a.plugin_dir)?;
        install_policy(&a.name, a.policy.as_deref())?;
        return Ok("unchanged (same flex and component; policy updated)");
    }
    let activated = precompile(&new_component, &a.component)
        .and_then(|()| install_compiler(&a.plugin_dir))
        .and_then(|()| install_policy(&a.name, a.policy.as_deref()))
        .and_then(|()| layout::activate(installed, &version, driver));
    let previous = match activated {
        Ok(previous) => previous,
        Err(e) => {
            // Not activated: `.current` may already point at it only if the links failed
            // after it, in which case it is kept (it is the running version).
            if layout::current(installed).as_deref() != Some(version.as_str()) {
                discard(&version);
            }
            return Err(e);
        }
    };
    let mut keep = vec![version.as_str()];
    keep.extend(previous.as_deref());
    for gone in layout::prune(installed, &keep, driver) {
        let _ = artifact::forget(gone);
    }
    Ok("upgraded")
}

/// Compiles the staged component into the artifact cache, so the first call is fast and a
/// component that does not compile is refused before kubelet sees it; errors name the user's
/// file, not the staged copy. The layout's renames keep the component's identity (inode), so
/// the artifact is the installed one's.
fn precompile(staged: &Path, component: &Path) -> Result<(), String> {
    let engine = runtime::engine()?;
    let _progress = Progress::start(component);
    artifact::load(&engine, staged, &|_| Ok(()), &mut Vec::new())
        .map(|_| ())
        .map_err(|e| {
            e.replace(
                &staged.display().to_string(),
                &component.display().to_string(),
            )
        })
}

/// A line on a terminal while a compile takes more than a second (a 19 MB Python component
/// takes about 10 s): what is compiled and for how long so far. Nothing when stderr is not a
/// terminal (the DaemonSet's log, scripts).
struct Progress {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn start(component: &Path) -> Option<Progress> {
        use std::io::{IsTerminal, Write};
        use std::sync::atomic::Ordering;
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let size = fs::metadata(component).map_or(0, |m| m.len());
        let what = format!(
            "compiling {} ({:.1} MB)",
            component.display(),
            size as f64 / 1e6
        );
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let start = std::time::Instant::now();
            let mut shown = false;
            while !stopping.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(100));
                let elapsed = start.elapsed().as_secs();
                if elapsed >= 1 {
                    eprint!("\r{what}... {elapsed} s");
                    let _ = std::io::stderr().flush();
                    shown = true;
                }
            }
            if shown {
                eprintln!("\r{what}: done in {:.1} s", start.elapsed().as_secs_f64());
            }
        });
        Some(Progress {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An exclusive `flock` on the plugin dir itself (no lock file for kubelet to see).
fn lock_dir(dir: &Path) -> Result<nix::fcntl::Flock<fs::File>, String> {
    let file = fs::File::open(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("lock {}: {e}", dir.display()))
}

/// A typo in `--plugin-dir` must not silently create a tree kubelet never reads.
fn existing_plugin_dir(dir: &Path, create: bool) -> Result<(), String> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(format!("plugin dir {} is not a directory", dir.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create plugin dir {}: {e}", dir.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "plugin dir {} does not exist: give kubelet's --volume-plugin-dir (default \
             /usr/libexec/kubernetes/kubelet-plugins/volume/exec), or add --create",
            dir.display()
        )),
        Err(e) => Err(format!("plugin dir {}: {e}", dir.display())),
    }
}

/// A policy that pins a digest (the one given, else the installed one) must pin this
/// component: otherwise every call of the installed driver would fail.
fn check_pin(name: &str, component: &Path, policy_file: Option<&Path>) -> Result<(), String> {
    use sha2::{Digest, Sha256};
    let file = policy_file.map_or_else(|| policy::policy_path(name), Path::to_path_buf);
    let text = match fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && policy_file.is_none() => {
            return Ok(());
        }
        Err(e) => return Err(format!("cannot read policy {}: {e}", file.display())),
    };
    let Some(pinned) = policy::parse(&text, &file)?.digest else {
        return Ok(());
    };
    let bytes = fs::read(component)
        .map_err(|e| format!("cannot read component {}: {e}", component.display()))?;
    let actual = artifact::digest_string(&Sha256::digest(&bytes).into());
    match pinned == actual {
        true => Ok(()),
        false => Err(format!(
            "refusing to install {}: its digest is {actual}, but policy {} pins digest = \"{pinned}\"",
            component.display(),
            file.display()
        )),
    }
}

pub fn uninstall(a: &UninstallArgs) -> Result<String, String> {
    let (plugin_dir, name) = (&a.plugin_dir, a.name.as_str());
    let driver = driver_of(name)?;
    existing_plugin_dir(plugin_dir, false)?;
    if fs::symlink_metadata(plugin_dir.join(name)).is_err() {
        return Err(format!(
            "{name} is not installed in {}",
            plugin_dir.display()
        ));
    }
    let mounted = mounted_volumes(name);
    if !mounted.is_empty() && !a.force {
        return Err(format!(
            "{name} still has {} mounted volume(s); drain the node (or unmount them), or add --force:\n  {}",
            mounted.len(),
            mounted.join("\n  ")
        ));
    }
    let purge = match a.purge {
        true => Some(purge_list(name)),
        false => None,
    };
    if let Some(paths) = &purge {
        confirm_purge(name, paths, a.yes)?;
    }
    let removing = plugin_dir.join(format!(".{name}.removing-{}", std::process::id()));
    fs::rename(plugin_dir.join(name), &removing)
        .map_err(|e| format!("uninstall {name} from {}: {e}", plugin_dir.display()))?;
    let removed = layout::all_components(&removing, driver);
    fs::remove_dir_all(&removing)
        .map_err(|e| format!("remove {}: {e}", plugin_dir.join(name).display()))?;
    for removed in removed {
        let _ = artifact::forget(removed);
    }
    if installed_drivers(plugin_dir)?.is_empty() {
        let _ = fs::remove_file(plugin_dir.join(artifact::PLUGIN_DIR_COMPILER));
    }
    let mut out = format!("uninstalled {name} from {}\n", plugin_dir.display());
    if !mounted.is_empty() {
        out.push_str(&format!(
            "warning: {} volume(s) were still mounted (--force)\n",
            mounted.len()
        ));
    }
    match purge {
        None => out.push_str(&format!(
            "its policy stays in {} (--purge removes it, its state and images)\n",
            policy::policy_path(name).display()
        )),
        Some(paths) => {
            for path in paths {
                let removed = match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => fs::remove_dir_all(&path),
                    Ok(_) => fs::remove_file(&path),
                    Err(_) => continue,
                };
                match removed {
                    Ok(()) => out.push_str(&format!("removed {}\n", path.display())),
                    Err(e) => return Err(format!("{out}cannot remove {}: {e}", path.display())),
                }
            }
        }
    }
    Ok(out)
}

/// What `--purge` removes: the policy, the state directory, and the block images when they
/// live in flex's own per-driver image directory (a shared `image_dir` is left alone).
fn purge_list(name: &str) -> Vec<PathBuf> {
    let policy_file = policy::policy_path(name);
    let policy = fs::read_to_string(&policy_file)
        .ok()
        .and_then(|text| policy::parse(&text, &policy_file).ok());
    let root = crate::caps::state::state_root();
    let mut paths = vec![policy_file];
    match policy.as_ref().and_then(|p| p.state.as_ref()) {
        Some(state) => paths.push(state.location(name)),
        None => paths.push(root.join(name)),
    }
    let own_images = root.join("images").join(name);
    if let Some(dir) = policy.as_ref().and_then(|p| p.block.image_dir.clone())
        && dir.starts_with(&own_images)
    {
        paths.push(dir);
    }
    paths.push(own_images);
    paths.dedup();
    paths.retain(|p| fs::symlink_metadata(p).is_ok());
    paths
}

fn confirm_purge(name: &str, paths: &[PathBuf], yes: bool) -> Result<(), String> {
    use std::io::{BufRead, IsTerminal, Write};
    let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    if yes || list.is_empty() {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(format!(
            "--purge removes {}; add --yes to confirm (stdin is not a terminal)",
            list.join(", ")
        ));
    }
    eprint!("uninstall {name} and remove {}? [y/N] ", list.join(", "));
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    match answer.trim() {
        "y" | "Y" | "yes" => Ok(()),
        _ => Err("not confirmed: nothing removed".into()),
    }
}

/// Mount points of this driver's volumes: kubelet's pod volume dirs
/// (`.../pods/<pod>/volumes/<vendor~driver>/<volume>`) and device mount paths
/// (`.../plugins/kubernetes.io/flexvolume/<vendor>/<driver>/mounts/<pv>`).
pub fn mounted_volumes(name: &str) -> Vec<String> {
    let pod = format!("/volumes/{name}/");
    let device = format!(
        "/plugins/kubernetes.io/flexvolume/{}/mounts/",
        name.replace('~', "/")
    );
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounted: Vec<String> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(crate::caps::mounts::unescape_mountinfo)
        .filter(|point| {
            let in_pod = point
                .find(&pod)
                .is_some_and(|at| point[..at].rsplit('/').nth(1) == Some("pods"));
            in_pod || point.contains(&device)
        })
        .collect();
    mounted.sort();
    mounted.dedup();
    mounted
}

/// One line per installed flex driver: name, sha256 of its component, its policy file.
pub fn list(a: &ListArgs) -> Result<String, String> {
    use sha2::{Digest, Sha256};
    existing_plugin_dir(&a.plugin_dir, false)?;
    let mut out = String::new();
    for (name, component) in installed_drivers(&a.plugin_dir)? {
        let Ok(component) = fs::read(component) else {
            continue;
        };
        let digest = artifact::digest_string(&Sha256::digest(&component).into());
        let policy = policy::policy_path(&name);
        let present = policy.exists();
        if a.json {
            let line = serde_json::json!({"name": name, "digest": digest,
                "policy": policy.display().to_string(), "policy_present": present});
            out.push_str(&format!("{line}\n"));
            continue;
        }
        let policy = match present {
            true => policy.display().to_string(),
            false => format!("{} (absent: nothing granted)", policy.display()),
        };
        out.push_str(&format!("{name}\t{digest}\t{policy}\n"));
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

/// `vendor~driver` → `driver`, checked as kubelet will check the name (one `~`, a qualified name).
pub(crate) fn driver_of(name: &str) -> Result<&str, String> {
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

/// Keeps a copy of the compiler in the plugin dir, so an installed driver whose artifact is
/// rejected later (a new CPU, a damaged file) rebuilds it instead of failing every call.
/// (A `flex` built with the `compiler` feature compiles in process and needs no copy.)
#[cfg(feature = "compiler")]
fn install_compiler(_plugin_dir: &Path) -> Result<(), String> {
    Ok(())
}

#[cfg(not(feature = "compiler"))]
fn install_compiler(plugin_dir: &Path) -> Result<(), String> {
    let compiler = artifact::compiler()?;
    let target = plugin_dir.join(artifact::PLUGIN_DIR_COMPILER);
    if compiler.path == target {
        return Ok(());
    }
    let temp = plugin_dir.join(format!(
        "{}.tmp{}",
        artifact::PLUGIN_DIR_COMPILER,
        std::process::id()
    ));
    let _ = fs::remove_file(&temp); // left by a crashed install that had this pid
    // Mode 0755 whatever the source's: root runs this copy.
    layout::copy_file(&compiler.program(), &temp, 0o755)
        .and_then(|()| fs::rename(&temp, &target))
        .map_err(|e| {
            let _ = fs::remove_file(&temp);
            format!("install the compiler as {}: {e}", target.display())
        })?;
    let _ = layout::sync_dir(plugin_dir); // best effort: the rename is done
    Ok(())
}

/// Installs the policy with its source's mode, never wider than `0640`: a `[config]`
/// credential in a `0600` source stays root's, a `0644` source becomes `0640`.
fn install_policy(name: &str, file: Option<&Path>) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let Some(file) = file else { return Ok(()) };
    let (text, mode) =
        policy::read_with_mode(file).map_err(|e| format!("policy {}: {e}", file.display()))?;
    policy::parse(&text, file)?;
    let target = policy::policy_path(name);
    if let Some(dir) = target.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    let temp = target.with_extension(format!("toml.tmp{}", std::process::id()));
    let _ = fs::remove_file(&temp); // left by a crashed install that had this pid
    let installed = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .and_then(|mut temp| {
            // Set on the descriptor, so the umask neither widens nor narrows it.
            temp.set_permissions(fs::Permissions::from_mode(mode & 0o640))?;
            temp.write_all(text.as_bytes())?;
            temp.sync_all()
        })
        .and_then(|()| fs::rename(&temp, &target));
    if installed.is_err() {
        let _ = fs::remove_file(&temp);
    }
    installed.map_err(|e| format!("install policy {}: {e}", target.display()))
}

//! Which driver this call is for, and where its component lives.
//!
//! Installed as kubelet expects, `<plugindir>/<vendor~driver>/<driver>` is this executable (a
//! copy or a symlink) and the component is `<driver>.wasm` beside it. `flex install` makes
//! `<driver>` a link into a version directory (`install/layout.rs`): then the component is
//! the one beside the executable the kernel ran, read from `/proc/self/exe`, so a call that
//! raced an upgrade runs one version's pair. For development, `--component PATH` or
//! `FLEX_COMPONENT` names a component directly.
//!
//! Only the component is found here, never its compiled artifact: every call, installed or
//! not, takes that from the root-only cache (`artifact.rs`), keyed by the opened component
//! file, so a component in a directory others can write (`/tmp`) still runs, compiled from its
//! own bytes, and nothing planted beside it is ever loaded.

use std::path::{Path, PathBuf};

pub struct Plugin {
    /// `vendor~driver`, the plugin directory's name: it names the policy file and the logs.
    pub name: String,
    pub component: PathBuf,
}

pub fn locate(argv0: &str, component_flag: Option<&str>) -> Plugin {
    let explicit = component_flag
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("FLEX_COMPONENT").map(PathBuf::from));
    if let Some(component) = explicit {
        return Plugin {
            name: name_for_component(&component),
            component,
        };
    }
    // kubelet execs the full path; a bare name (found on PATH) is resolved by the kernel.
    let executable = if argv0.contains('/') {
        PathBuf::from(argv0)
    } else {
        std::env::current_exe().unwrap_or_else(|_| PathBuf::from(argv0))
    };
    let running = std::fs::read_link("/proc/self/exe").ok();
    let beside = running
        .filter(|exe| is_installed_version(exe, &executable))
        .unwrap_or_else(|| executable.clone());
    let mut component = beside.into_os_string();
    component.push(".wasm");
    Plugin {
        name: dir_name(&executable).unwrap_or_else(|| file_stem(&executable)),
        component: component.into(),
    }
}

/// True when the running executable is `<vendor~driver>/.version-<id>/<driver>` of the driver
/// kubelet named: its component is beside it.
fn is_installed_version(running: &Path, named: &Path) -> bool {
    let version_dir = running.parent();
    running.file_name() == named.file_name()
        && version_dir.and_then(Path::file_name).is_some_and(|dir| {
            dir.to_string_lossy()
                .starts_with(crate::install::VERSION_PREFIX)
        })
        && version_dir.and_then(Path::parent).and_then(Path::file_name)
            == named.parent().and_then(Path::file_name)
}

/// `plugins/acme~tmpfs/tmpfs.wasm` belongs to `acme~tmpfs`; a loose `x/tmpfs.wasm` to `tmpfs`.
fn name_for_component(component: &Path) -> String {
    let stem = file_stem(component);
    match dir_name(component) {
        Some(dir) if dir.rsplit('~').next() == Some(stem.as_str()) => dir,
        _ => stem,
    }
}

fn dir_name(path: &Path) -> Option<String> {
    let name = path.parent()?.file_name()?.to_string_lossy().into_owned();
    Some(name)
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installed_layout() {
        let d = locate("/plugins/acme~tmpfs/tmpfs", None);
        assert_eq!(d.name, "acme~tmpfs");
        assert_eq!(d.component, Path::new("/plugins/acme~tmpfs/tmpfs.wasm"));
    }

    #[test]
    fn installed_version_is_the_running_executables() {
        let named = Path::new("/plugins/acme~tmpfs/tmpfs");
        let running = Path::new("/plugins/acme~tmpfs/.version-1f-7/tmpfs");
        assert!(is_installed_version(running, named));
        for other in [
            "/usr/bin/flex",
            "/plugins/acme~tmpfs/.version-1f-7/flex",
            "/plugins/other~tmpfs/.version-1f-7/tmpfs",
            "/plugins/acme~tmpfs/tmpfs",
            "/plugins/acme~tmpfs/.version-1f-7/tmpfs (deleted)",
        ] {
            assert!(!is_installed_version(Path::new(other), named), "{other}");
        }
    }

    #[test]
    fn explicit_component() {
        let d = locate("/usr/bin/flex", Some("/p/acme~tmpfs/tmpfs.wasm"));
        assert_eq!(
            (d.name.as_str(), d.component.as_path()),
            ("acme~tmpfs", Path::new("/p/acme~tmpfs/tmpfs.wasm"))
        );
        assert_eq!(
            locate("flex", Some("target/x/flex_tmpfs.wasm")).name,
            "flex_tmpfs"
        );
    }
}

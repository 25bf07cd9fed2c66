//! `flex new <vendor~driver> --lang rust|python|js [--dir DIR]`: a driver project of its own,
//! ready to build, unit-test, run under `flex test` and install.
//!
//! Every language gets the same driver, a tmpfs mount driver (`init` reports not attachable;
//! `mount` mounts a size-limited tmpfs with `nosuid,nodev`, read-only when the volume is, owned
//! by the pod's fsGroup when it has one; `unmount` undoes it; both idempotent), the least
//! `policy.toml` it needs, a README with the build, test and install commands, and unit tests
//! that run without the component runtime.
//!
//! The SDK comes with the project, from the sources this `flex` embeds (`templates`), so a new
//! project builds offline against the SDK `flex` was built with:
//! - Rust: `vendor/flex-guest-sdk` (its manifest made standalone, the WIT beside it), a path
//!   dependency (`flex-guest-sdk = { version = "0.1", path = ... }`, to become
//!   `flex-guest-sdk = "0.1"` once published), and a `Cargo.lock` of the versions this
//!   repository's lock file pins (the SDK's dependency closure), so cargo needs nothing its
//!   cache does not hold after building `flex`;
//! - Python: `vendor/flex_driver`, bundled by componentize-py with `src/`;
//! - JavaScript: `vendor/flex-driver/`, imported relatively, and componentize-js pinned by the
//!   SDK's own `package-lock.json` (so `npm ci --offline` works from npm's cache).

mod templates;
mod vendor;

use crate::install;
use clap::{Args, ValueEnum};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use templates::{File, Kind};
use vendor::{cargo_lock, js_dependencies, npm_lock, standalone_sdk_manifest};

#[derive(Args)]
pub struct NewArgs {
    /// vendor~driver, e.g. acme~scratch (a pod names it as flexVolume.driver: acme/scratch)
    pub name: String,
    /// The driver's language
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    pub lang: Lang,
    /// The project directory, created (default ./<vendor>-<driver>); an existing one must be
    /// empty
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum Lang {
    /// Rust, with flex-guest-sdk (cargo, wasm32-wasip2)
    Rust,
    /// Python, with the flex_driver SDK (componentize-py 0.25.1)
    Python,
    /// JavaScript, with the flex driver SDK (componentize-js 0.23.0, Node 20.6 or later)
    Js,
}

pub fn command(a: &NewArgs) -> Result<i32, String> {
    let names = Names::of(&a.name)?;
    let files = render(a.lang, &names)?;
    let dir = a
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}-{}", names.vendor, names.driver)));
    write_project(&dir, &files)?;
    let mut out = std::io::stdout();
    let _ = out.write_all(next_steps(a.lang, &names, &dir, files.len()).as_bytes());
    Ok(0)
}

/// The names a project derives from `vendor~driver`.
#[derive(Debug)]
struct Names {
    vendor: String,
    driver: String,
    /// `vendor~driver`
    name: String,
    /// The Cargo and npm package name: `vendor-driver`, lowercase.
    crate_name: String,
    /// The component's file stem: the crate name with underscores, as cargo names the `.wasm`.
    wasm: String,
    /// The driver's type: the driver name in CamelCase.
    class: String,
}

/// Type names a driver's own type may not take: the SDK's and the languages' names the
/// templates use (`struct Options` would shadow the SDK's, `class None` is no Python).
const TAKEN: &[&str] = &[
    "Driver",
    "DriverError",
    "NotSupported",
    "Capabilities",
    "Options",
    "Mount",
    "Host",
    "Call",
    "Error",
    "Result",
    "Option",
    "Some",
    "None",
    "Ok",
    "Err",
    "String",
    "Vec",
    "Box",
    "Self",
    "Default",
    "Clone",
    "Copy",
    "Send",
    "Sync",
    "Sized",
    "Drop",
    "Fn",
    "Iterator",
    "Into",
    "From",
    "True",
    "False",
];

impl Names {
    fn of(name: &str) -> Result<Names, String> {
        let driver = install::driver_of(name)?;
        let vendor = &name[..name.len() - driver.len() - 1];
        let mut crate_name = format!("{vendor}-{driver}")
            .to_ascii_lowercase()
            .replace(['.', '_'], "-");
        if crate_name.starts_with(|c: char| c.is_ascii_digit()) {
            // Neither a crate nor a Rust library may start with a digit.
            crate_name = format!("flex-{crate_name}");
        }
        let mut class: String = driver
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|part| !part.is_empty())
            .map(|part| {
                let lower = part.to_ascii_lowercase();
                let mut chars = lower.chars();
                let first = chars.next().map(|c| c.to_ascii_uppercase());
                first.into_iter().chain(chars).collect::<String>()
            })
            .collect();
        if class.starts_with(|c: char| c.is_ascii_digit()) {
            class = format!("Driver{class}");
        }
        if TAKEN.contains(&class.as_str()) {
            class.push_str("Volume");
        }
        Ok(Names {
            vendor: vendor.to_string(),
            driver: driver.to_string(),
            name: name.to_string(),
            wasm: crate_name.replace('-', "_"),
            crate_name,
            class,
        })
    }
}

/// One file to write.
#[derive(Debug)]
struct Output {
    path: String,
    text: String,
    executable: bool,
}

/// The project's files, in the order written.
fn render(lang: Lang, names: &Names) -> Result<Vec<Output>, String> {
    let placeholders = placeholders(names)?;
    let list = match lang {
        Lang::Rust => templates::RUST,
        Lang::Python => templates::PYTHON,
        Lang::Js => templates::JS,
    };
    let mut files = Vec::new();
    for file in list.iter().chain([&templates::POLICY]) {
        files.push(output(file, &placeholders)?);
    }
    match lang {
        Lang::Rust => {
            files.push(Output {
                path: "vendor/flex-guest-sdk/Cargo.toml".into(),
                text: standalone_sdk_manifest()?,
                executable: false,
            });
            files.push(Output {
                path: "Cargo.lock".into(),
                text: cargo_lock(&names.crate_name)?,
                executable: false,
            });
        }
        Lang::Js => files.push(Output {
            path: "package-lock.json".into(),
            text: npm_lock(&names.crate_name)?,
            executable: false,
        }),
        Lang::Python => {}
    }
    Ok(files)
}

fn output(file: &File, placeholders: &BTreeMap<&str, String>) -> Result<Output, String> {
    let text = match file.kind {
        Kind::Template => substitute(file.text, placeholders)
            .map_err(|e| format!("template {}: {e}", file.path))?,
        Kind::Verbatim => file.text.to_string(),
    };
    Ok(Output {
        path: file.path.to_string(),
        text,
        executable: file.executable,
    })
}

fn placeholders(names: &Names) -> Result<BTreeMap<&'static str, String>, String> {
    Ok(BTreeMap::from([
        ("vendor", names.vendor.clone()),
        ("driver", names.driver.clone()),
        ("name", names.name.clone()),
        ("crate_name", names.crate_name.clone()),
        ("wasm", names.wasm.clone()),
        ("class", names.class.clone()),
        ("flex_version", env!("CARGO_PKG_VERSION").to_string()),
        ("js_dependencies", js_dependencies()?),
    ]))
}

/// `text` with every `{{key}}` replaced; an unknown key is an error (a template bug).
fn substitute(text: &str, placeholders: &BTreeMap<&str, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| "an unterminated {{".to_string())?;
        let key = &after[..end];
        let value = placeholders
            .get(key)
            .ok_or_else(|| format!("unknown placeholder {{{{{key}}}}}"))?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Creates `dir` (or fills an empty one) with `files`; never overwrites anything. On an error
/// what was written is removed again.
fn write_project(dir: &Path, files: &[Output]) -> Result<(), String> {
    let created = match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(format!(
                    "{} exists and is not empty: choose another --dir",
                    dir.display()
                ));
            }
            false
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
            true
        }
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    let result = files.iter().try_for_each(|file| write_file(dir, file));
    if result.is_err() {
        if created {
            let _ = std::fs::remove_dir_all(dir);
        } else {
            let mut tops: Vec<&str> = files
                .iter()
                .map(|f| f.path.split('/').next().unwrap_or(&f.path))
                .collect();
            tops.dedup();
            for top in tops {
                let path = dir.join(top);
                let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
            }
        }
    }
    result
}

fn write_file(dir: &Path, file: &Output) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(&file.path);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if file.executable { 0o755 } else { 0o644 })
        .open(&path)
        .and_then(|mut f| f.write_all(file.text.as_bytes()))
        .map_err(|e| format!("write {}: {e}", path.display()))
}

/// What the person does next, printed after the project is written.
fn next_steps(lang: Lang, names: &Names, dir: &Path, count: usize) -> String {
    let (language, wasm, steps): (&str, String, &[&str]) = match lang {
        Lang::Rust => (
            "Rust",
            format!("target/wasm32-wasip2/release/{}.wasm", names.wasm),
            &[
                "cargo test                                     # unit tests, against the SDK's fake host",
                "rustup target add wasm32-wasip2                # once",
                "cargo build --release --target wasm32-wasip2",
            ],
        ),
        Lang::Python => (
            "Python",
            format!("target/{}.wasm", names.wasm),
            &[
                "python3 -m unittest                            # unit tests, against a fake host",
                "python3 -m venv .venv && .venv/bin/pip install -r requirements-build.txt   # once",
                "./build.sh",
            ],
        ),
        Lang::Js => (
            "JavaScript",
            format!("target/{}.wasm", names.wasm),
            &[
                "npm ci                                         # once: componentize-js",
                "npm test                                       # unit tests, against a fake host",
                "npm run build",
            ],
        ),
    };
    let mut text = format!(
        "Created {name}, a {language} FlexVolume driver ({count} files), in {dir}.\n\nNext steps:\n  cd {cd}\n",
        name = names.name,
        dir = dir.display(),
        cd = shell_word(&dir.to_string_lossy()),
    );
    for step in steps {
        text.push_str(&format!("  {step}\n"));
    }
    text.push_str(&format!(
        "  flex test --component {wasm} --policy policy.toml   # as root: real mounts\n  \
         flex install --plugin-dir /usr/libexec/kubernetes/kubelet-plugins/volume/exec \\\n      \
         {name} {wasm} --policy policy.toml\n\nREADME.md has the details.\n",
        name = names.name
    ));
    text
}

/// `word` quoted for a POSIX shell when it needs to be.
fn shell_word(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-~+=:,@".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::vendor::Lock;
    use super::*;

    fn names(name: &str) -> Names {
        Names::of(name).unwrap()
    }

    #[test]
    fn names_derive_from_vendor_and_driver() {
        let n = names("acme~scratch");
        assert_eq!(
            (
                n.vendor.as_str(),
                n.driver.as_str(),
                n.crate_name.as_str(),
                n.wasm.as_str(),
                n.class.as_str()
            ),
            ("acme", "scratch", "acme-scratch", "acme_scratch", "Scratch")
        );
        let n = names("Example.com~fast_NFS-v4");
        assert_eq!(n.crate_name, "example-com-fast-nfs-v4");
        assert_eq!(n.wasm, "example_com_fast_nfs_v4");
        assert_eq!(n.class, "FastNfsV4");
        assert_eq!(names("3par~9x").crate_name, "flex-3par-9x");
        assert_eq!(names("3par~9x").class, "Driver9x");
        assert_eq!(names("acme~options").class, "OptionsVolume");
        assert_eq!(names("acme~none").class, "NoneVolume");
        for bad in [
            "acme", "acme~", "~x", "a~b~c", "acme~-x", "acme~x/y", "acme~x y",
        ] {
            assert!(Names::of(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn substitution_replaces_known_placeholders_only() {
        let map = BTreeMap::from([("a", "1".to_string())]);
        assert_eq!(substitute("x{{a}}y{{a}}", &map).unwrap(), "x1y1");
        assert!(substitute("{{b}}", &map).is_err());
        assert!(substitute("{{a", &map).is_err());
    }

    #[test]
    fn every_template_renders_for_every_language() {
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            let files = render(lang, &names("acme~scratch")).unwrap();
            let mut paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
            paths.sort();
            let count = paths.len();
            paths.dedup();
            assert_eq!(paths.len(), count, "{lang:?}: a path twice");
            for required in ["README.md", "policy.toml", ".gitignore"] {
                assert!(paths.contains(&required), "{lang:?}: {required}");
            }
            for file in &files {
                let template = [templates::RUST, templates::PYTHON, templates::JS]
                    .iter()
                    .flat_map(|l| l.iter())
                    .chain([&templates::POLICY])
                    .any(|t| t.path == file.path && t.kind == Kind::Template);
                if template {
                    assert!(!file.text.contains("{{"), "{lang:?} {}", file.path);
                }
            }
        }
    }

    #[test]
    fn the_policy_is_valid() {
        let files = render(Lang::Rust, &names("acme~scratch")).unwrap();
        let policy = files.iter().find(|f| f.path == "policy.toml").unwrap();
        let parsed: toml::Table = toml::from_str(&policy.text).unwrap();
        assert_eq!(
            parsed["mount"]["fs_types"].as_array().unwrap()[0].as_str(),
            Some("tmpfs")
        );
        crate::policy::parse(&policy.text, Path::new("policy.toml")).unwrap();
    }

    /// Every file of the SDKs on disk is embedded: a file added to an SDK must be added to
    /// `templates.rs` too.
    #[test]
    fn the_embedded_sdks_are_complete() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let cases: [(&str, &[File], &str, &str); 3] = [
            (
                "guest-sdk/src",
                templates::RUST,
                "vendor/flex-guest-sdk/src/",
                "rs",
            ),
            (
                "sdk/python/flex_driver",
                templates::PYTHON,
                "vendor/flex_driver/",
                "py",
            ),
            ("sdk/js", templates::JS, "vendor/flex-driver/", "js"),
        ];
        for (dir, list, prefix, extension) in cases {
            let mut on_disk: Vec<String> = std::fs::read_dir(root.join(dir))
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(&format!(".{extension}")))
                .collect();
            on_disk.sort();
            let mut embedded: Vec<String> = list
                .iter()
                .filter_map(|f| f.path.strip_prefix(prefix))
                .filter(|p| !p.contains('/'))
                .map(String::from)
                .collect();
            embedded.sort();
            assert_eq!(embedded, on_disk, "{dir}");
        }
    }

    #[test]
    fn the_vendored_sdk_manifest_inherits_nothing() {
        let text = standalone_sdk_manifest().unwrap();
        assert!(!text.contains("workspace"), "{text}");
        let manifest: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(manifest["package"]["name"].as_str(), Some("flex-guest-sdk"));
        assert_eq!(
            manifest["package"]["version"].as_str(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert!(manifest["dependencies"]["wit-bindgen"].is_str());
    }

    #[test]
    fn the_lock_file_pins_the_sdks_closure() {
        let text = cargo_lock("acme-scratch").unwrap();
        let lock: Lock = toml::from_str(&text).unwrap();
        let names: Vec<&str> = lock.package.iter().map(|p| p.name.as_str()).collect();
        for name in [
            "acme-scratch",
            "flex-guest-sdk",
            "wit-bindgen",
            "wit-bindgen-rust-macro",
        ] {
            assert!(names.contains(&name), "{name}: {text}");
        }
        assert!(!names.contains(&"wasmtime"), "{text}");
        // Every dependency is in the file.
        for package in &lock.package {
            for dependency in &package.dependencies {
                let mut parts = dependency.split_whitespace();
                let (name, version) = (parts.next().unwrap(), parts.next());
                assert!(
                    lock.package
                        .iter()
                        .any(|p| p.name == name && version.is_none_or(|v| p.version == v)),
                    "{dependency}"
                );
            }
        }
    }

    #[test]
    fn the_npm_lock_file_names_the_new_package() {
        let text = npm_lock("acme-scratch").unwrap();
        let lock: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(lock["packages"][""]["name"], "acme-scratch");
        let package: serde_json::Value = serde_json::from_str(
            &substitute(
                templates::JS[0].text,
                &placeholders(&names("acme~scratch")).unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            package["dependencies"],
            lock["packages"][""]["dependencies"]
        );
    }

    #[test]
    fn a_project_is_never_written_over_anything() {
        let base = tempfile::tempdir().unwrap();
        let files = render(Lang::Python, &names("acme~scratch")).unwrap();
        let dir = base.path().join("p");
        write_project(&dir, &files).unwrap();
        assert!(dir.join("src/driver.py").is_file());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("build.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111);
        let err = write_project(&dir, &files).unwrap_err();
        assert!(err.contains("not empty"), "{err}");
        // An existing empty directory is filled.
        let empty = base.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        write_project(&empty, &files).unwrap();
        assert!(empty.join("policy.toml").is_file());
    }

    #[test]
    fn next_steps_name_the_component() {
        let text = next_steps(Lang::Rust, &names("acme~scratch"), Path::new("my dir"), 3);
        assert!(text.contains("cd 'my dir'"), "{text}");
        assert!(
            text.contains("target/wasm32-wasip2/release/acme_scratch.wasm --policy policy.toml")
        );
    }
}

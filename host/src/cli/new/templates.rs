//! The files `flex new` writes, embedded when `flex` is built: the templates in
//! `host/templates/<lang>/` and, verbatim, this repository's SDKs and WIT contract, so a new
//! project builds offline against exactly the SDK this `flex` was built with.
//!
//! A template may hold placeholders, `{{vendor}}`, `{{driver}}`, `{{name}}` (vendor~driver),
//! `{{crate_name}}`, `{{wasm}}` (the component's file stem), `{{class}}` (the driver's type),
//! `{{flex_version}}` and, in `package.json`, `{{js_dependencies}}`; an SDK file is copied as
//! it is. A unit test checks that every SDK file on disk is in these lists.

/// How a file's text becomes the project's.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// Placeholders substituted.
    Template,
    /// Copied as it is (SDK sources, the WIT).
    Verbatim,
}

/// One file of a new project.
pub struct File {
    /// Relative to the project directory.
    pub path: &'static str,
    pub text: &'static str,
    pub kind: Kind,
    pub executable: bool,
}

macro_rules! template {
    ($path:literal, $source:literal) => {
        File {
            path: $path,
            text: include_str!(concat!("../../../templates/", $source)),
            kind: Kind::Template,
            executable: false,
        }
    };
    ($path:literal, $source:literal, executable) => {
        File {
            path: $path,
            text: include_str!(concat!("../../../templates/", $source)),
            kind: Kind::Template,
            executable: true,
        }
    };
}

/// A file of this repository (relative to its root), copied verbatim.
macro_rules! repo {
    ($path:literal, $source:literal) => {
        File {
            path: $path,
            text: include_str!(concat!("../../../../", $source)),
            kind: Kind::Verbatim,
            executable: false,
        }
    };
}

/// The Rust SDK's manifest (inherits from the workspace: rewritten standalone) and the
/// workspace's manifest and lock file it inherits and takes its dependency versions from.
pub const GUEST_SDK_MANIFEST: &str = include_str!("../../../../guest-sdk/Cargo.toml");
pub const WORKSPACE_MANIFEST: &str = include_str!("../../../../Cargo.toml");
pub const WORKSPACE_LOCK: &str = include_str!("../../../../Cargo.lock");
/// The JavaScript SDK's package (its dependencies, componentize-js, pinned) and lock file.
pub const JS_PACKAGE: &str = include_str!("../../../../sdk/js/package.json");
pub const JS_LOCK: &str = include_str!("../../../../sdk/js/package-lock.json");

pub const POLICY: File = template!("policy.toml", "policy.toml");

pub const RUST: &[File] = &[
    template!("Cargo.toml", "rust/Cargo.toml"),
    template!("src/lib.rs", "rust/src/lib.rs"),
    template!("README.md", "rust/README.md"),
    template!(".gitignore", "rust/gitignore"),
    repo!("vendor/flex-guest-sdk/README.md", "guest-sdk/README.md"),
    repo!(
        "vendor/flex-guest-sdk/src/block.rs",
        "guest-sdk/src/block.rs"
    ),
    repo!(
        "vendor/flex-guest-sdk/src/config.rs",
        "guest-sdk/src/config.rs"
    ),
    repo!(
        "vendor/flex-guest-sdk/src/driver.rs",
        "guest-sdk/src/driver.rs"
    ),
    repo!("vendor/flex-guest-sdk/src/exec.rs", "guest-sdk/src/exec.rs"),
    repo!(
        "vendor/flex-guest-sdk/src/filesystem.rs",
        "guest-sdk/src/filesystem.rs"
    ),
    repo!(
        "vendor/flex-guest-sdk/src/kubelet.rs",
        "guest-sdk/src/kubelet.rs"
    ),
    repo!("vendor/flex-guest-sdk/src/lib.rs", "guest-sdk/src/lib.rs"),
    repo!("vendor/flex-guest-sdk/src/log.rs", "guest-sdk/src/log.rs"),
    repo!(
        "vendor/flex-guest-sdk/src/mounts.rs",
        "guest-sdk/src/mounts.rs"
    ),
    repo!("vendor/flex-guest-sdk/src/pod.rs", "guest-sdk/src/pod.rs"),
    repo!(
        "vendor/flex-guest-sdk/src/testing.rs",
        "guest-sdk/src/testing.rs"
    ),
    repo!(
        "vendor/flex-guest-sdk/src/types.rs",
        "guest-sdk/src/types.rs"
    ),
    repo!("vendor/flex-guest-sdk/wit/flex.wit", "wit/flex.wit"),
];

pub const PYTHON: &[File] = &[
    template!("src/driver.py", "python/src/driver.py"),
    template!("tests/__init__.py", "python/tests/__init__.py"),
    template!("tests/test_driver.py", "python/tests/test_driver.py"),
    template!("testing/fake_host.py", "python/testing/fake_host.py"),
    template!("build.sh", "python/build.sh", executable),
    template!("requirements-build.txt", "python/requirements-build.txt"),
    template!("README.md", "python/README.md"),
    template!(".gitignore", "python/gitignore"),
    repo!(
        "vendor/flex_driver/__init__.py",
        "sdk/python/flex_driver/__init__.py"
    ),
    repo!(
        "vendor/flex_driver/block.py",
        "sdk/python/flex_driver/block.py"
    ),
    repo!(
        "vendor/flex_driver/config.py",
        "sdk/python/flex_driver/config.py"
    ),
    repo!(
        "vendor/flex_driver/exec.py",
        "sdk/python/flex_driver/exec.py"
    ),
    repo!("vendor/flex_driver/log.py", "sdk/python/flex_driver/log.py"),
    repo!(
        "vendor/flex_driver/mounts.py",
        "sdk/python/flex_driver/mounts.py"
    ),
    repo!(
        "vendor/flex_driver/provisioning.py",
        "sdk/python/flex_driver/provisioning.py"
    ),
    repo!("wit/flex.wit", "wit/flex.wit"),
];

pub const JS: &[File] = &[
    template!("package.json", "js/package.json"),
    template!("build.mjs", "js/build.mjs"),
    template!("src/driver.js", "js/src/driver.js"),
    template!("tests/driver.test.js", "js/tests/driver.test.js"),
    template!("testing/register.mjs", "js/testing/register.mjs"),
    template!("testing/hooks.mjs", "js/testing/hooks.mjs"),
    template!("testing/fake-host.js", "js/testing/fake-host.js"),
    template!("README.md", "js/README.md"),
    template!(".gitignore", "js/gitignore"),
    repo!("vendor/flex-driver/block.js", "sdk/js/block.js"),
    repo!("vendor/flex-driver/config.js", "sdk/js/config.js"),
    repo!("vendor/flex-driver/exec.js", "sdk/js/exec.js"),
    repo!("vendor/flex-driver/flex-driver.js", "sdk/js/flex-driver.js"),
    repo!("vendor/flex-driver/host-error.js", "sdk/js/host-error.js"),
    repo!("vendor/flex-driver/log.js", "sdk/js/log.js"),
    repo!("vendor/flex-driver/mounts.js", "sdk/js/mounts.js"),
    repo!(
        "vendor/flex-driver/provisioning.js",
        "sdk/js/provisioning.js"
    ),
    repo!("wit/flex.wit", "wit/flex.wit"),
];

//! Test harness: drives the built `flex` binary exactly as kubelet does, with drivers laid out
//! in a temporary plugin directory (`<plugindir>/<vendor~driver>/<driver>` plus the component
//! beside it), its own policy, log and mount directories.
//!
//! Build first (`make test` does): `target/release/flex` and the guests in
//! `target/wasm32-wasip2/release/`. `FLEX_BIN` and `FLEX_GUESTS` override those paths.

pub mod prober;
mod servers;

pub use servers::*;

use std::path::{Path, PathBuf};
use std::process::Command;

pub use serde_json::{Value, json};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn flex_binary() -> PathBuf {
    let path = std::env::var_os("FLEX_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/release/flex"));
    assert!(
        path.is_file(),
        "{} is missing: build with `make build` first",
        path.display()
    );
    path.canonicalize().expect("flex binary path")
}

/// A built guest component, e.g. `guest("flex_tmpfs")`.
pub fn guest(crate_name: &str) -> PathBuf {
    let dir = std::env::var_os("FLEX_GUESTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/wasm32-wasip2/release"));
    let path = dir.join(format!("{crate_name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: build with `make build` first",
        path.display()
    );
    path
}

/// The policy a plugin ships with, e.g. `shipped_policy("tmpfs")`.
pub fn shipped_policy(plugin: &str) -> String {
    std::fs::read_to_string(
        workspace_root()
            .join("plugins")
            .join(plugin)
            .join("policy.toml"),
    )
    .expect("shipped policy")
}

/// Mounting needs root; tests fail loudly without it rather than skip.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests mount file systems: run them as root"
    );
}

/// One node's worth of directories, removed (and anything mounted under it unmounted) on drop.
pub struct Node {
    root: tempfile::TempDir,
    /// Set by `install_sharing_artifacts`: the node uses the cache every such node shares.
    shares_artifacts: std::sync::atomic::AtomicBool,
}

/// What one exec of the driver produced.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for Output {
    fn from(output: std::process::Output) -> Output {
        Output {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Output {
    /// The reply as kubelet reads it: stdout and stderr together must be one JSON object.
    pub fn reply(&self) -> Value {
        assert_eq!(self.stderr, "", "stderr must stay empty");
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("reply is not one JSON document ({e}): {:?}", self.stdout))
    }

    pub fn status(&self) -> String {
        self.reply()["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn message(&self) -> String {
        self.reply()["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Asserts Success with exit code 0.
    pub fn success(&self) -> Value {
        let reply = self.reply();
        assert_eq!(
            (reply["status"].as_str(), self.code),
            (Some("Success"), 0),
            "{reply}"
        );
        reply
    }

    /// Asserts Failure with exit code 1 and returns the message.
    pub fn failure(&self) -> String {
        let reply = self.reply();
        assert_eq!(
            (reply["status"].as_str(), self.code),
            (Some("Failure"), 1),
            "{reply}"
        );
        self.message()
    }
}

/// A running `flex serve`, stopped (SIGTERM, then waited for) on drop.
pub struct WarmServer {
    pub child: std::process::Child,
}

impl WarmServer {
    /// Starts `command`, a `flex serve` with the environment its callers will have.
    pub fn spawn(mut command: Command) -> WarmServer {
        WarmServer {
            child: command.spawn().expect("start flex serve"),
        }
    }
}

impl Drop for WarmServer {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// `flex serve`'s default pool: children per driver.
pub const WARM_POOL: usize = 2;

/// Waits until the driver's pool is full: a call made now finds an idle child at once,
/// however loaded the machine (a replacement child starts at nice 19, and a caller waits
/// only 50 ms for one before it runs the call itself).
pub fn wait_idle(driver: &Path) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    // Blocked in accept4(2) (x86_64 number 288): started, waiting for a call.
    let idle = |pid: &i32| {
        std::fs::read_to_string(format!("/proc/{pid}/syscall"))
            .is_ok_and(|s| s.split_whitespace().next() == Some("288"))
    };
    while warm_children(driver).iter().filter(|p| idle(p)).count() < WARM_POOL {
        assert!(
            std::time::Instant::now() < until,
            "the pool did not fill within 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The pids of the warm children running `driver`.
pub fn warm_children(driver: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.first() == Some(&driver.as_os_str().as_encoded_bytes())
            && args.get(1) == Some(&&b"__warm-child"[..])
        {
            pids.push(pid);
        }
    }
    pids
}

impl Node {
    pub fn new() -> Node {
        let root = tempfile::Builder::new()
            .prefix("flex-node-")
            .tempdir_in(root_only_base())
            .expect("temp dir");
        for dir in ["plugins", "policy", "log", "pods"] {
            std::fs::create_dir_all(root.path().join(dir)).unwrap();
        }
        Node {
            root,
            shares_artifacts: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.path().join(relative)
    }

    /// Installs `component` as `<plugindir>/<vendor~driver>/<driver>`, as kubelet expects it.
    pub fn install(&self, vendor_driver: &str, component: &Path) -> PathBuf {
        let (executable, wasm) = self.install_executable(vendor_driver);
        std::fs::copy(component, wasm).unwrap();
        executable
    }

    /// `<plugins>/<vendor~driver>/<driver>` linked to flex; returns it and the path of its
    /// `<driver>.wasm`.
    fn install_executable(&self, vendor_driver: &str) -> (PathBuf, PathBuf) {
        let driver = vendor_driver.rsplit('~').next().unwrap();
        let dir = self.path("plugins").join(vendor_driver);
        std::fs::create_dir_all(&dir).unwrap();
        let executable = dir.join(driver);
        // A symlink, one of the two supported layouts. A copy written while another test
        // thread forks would fail exec with ETXTBSY (the child inherits the open file).
        std::os::unix::fs::symlink(flex_binary(), &executable).unwrap();
        (executable, dir.join(format!("{driver}.wasm")))
    }

    /// `install`, except that `<driver>.wasm` is a symlink to `component` itself and the node's
    /// artifact cache is one that every such node shares (`shared-artifacts` in
    /// `root_only_base()`): the same file keeps its identity, so a large component (the Python
    /// and JavaScript drivers take 10-20 s of Cranelift each) is compiled once per build
    /// instead of once per test. Tests of compiling and of the cache use `install`.
    pub fn install_sharing_artifacts(&self, vendor_driver: &str, component: &Path) -> PathBuf {
        let (executable, wasm) = self.install_executable(vendor_driver);
        std::os::unix::fs::symlink(component.canonicalize().unwrap(), wasm).unwrap();
        self.shares_artifacts
            .store(true, std::sync::atomic::Ordering::Relaxed);
        executable
    }

    /// `flex install --plugin-dir plugin_dir vendor_driver component --policy <policy>`,
    /// with `flex` exactly as an operator runs it; returns the executable kubelet would exec.
    pub fn flex_install(
        &self,
        flex: &Path,
        plugin_dir: &Path,
        vendor_driver: &str,
        component: &Path,
        policy: &str,
    ) -> PathBuf {
        std::fs::create_dir_all(plugin_dir).unwrap();
        let policy_file = self.path(&format!("{vendor_driver}-policy.toml"));
        std::fs::write(&policy_file, policy).unwrap();
        let out = self.run(
            flex,
            &[
                "install",
                "--plugin-dir",
                plugin_dir.to_str().unwrap(),
                vendor_driver,
                component.to_str().unwrap(),
                "--policy",
                policy_file.to_str().unwrap(),
            ],
        );
        assert_eq!(out.code, 0, "flex install: {out:?}");
        let driver = vendor_driver.rsplit('~').next().unwrap();
        plugin_dir.join(vendor_driver).join(driver)
    }

    /// Root-only (`0600`), as `flex install` leaves a policy that holds a credential: `flex`
    /// refuses a world-readable policy whose `[config]` looks like it holds one.
    pub fn set_policy(&self, vendor_driver: &str, policy: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.path("policy").join(format!("{vendor_driver}.toml"));
        std::fs::write(&path, policy).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// kubelet's device mount path of a PV for `vendor~driver`, created as kubelet does before
    /// `mountdevice` (the driver name is not escaped there: protocol notes §4).
    pub fn device_mount_path(&self, vendor_driver: &str, pv: &str) -> PathBuf {
        let path = self
            .path("kubelet/plugins/kubernetes.io/flexvolume")
            .join(vendor_driver.replace('~', "/"))
            .join("mounts")
            .join(pv);
        std::fs::create_dir_all(&path).unwrap();
        path
    }

    /// A pod's volume directory for `vendor~driver`, created as kubelet does before `mount`.
    pub fn volume_dir(&self, vendor_driver: &str, pod: &str, volume: &str) -> PathBuf {
        let path = self
            .path("kubelet/pods")
            .join(pod)
            .join("volumes")
            .join(vendor_driver)
            .join(volume);
        std::fs::create_dir_all(&path).unwrap();
        path
    }

    /// A pod volume directory as kubelet creates it before `mount`.
    pub fn pod_dir(&self, name: &str) -> PathBuf {
        let dir = self.path("pods").join(name).join("volumes/flex~tmpfs/vol");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Runs `executable args...` the way kubelet does: no shell, stdin /dev/null (see
    /// [`Node::command`]).
    pub fn run(&self, executable: &Path, args: &[&str]) -> Output {
        Output::from(self.command(executable, args).output().expect("exec flex"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("log/flex.log")).unwrap_or_default()
    }
}

impl Default for Node {
    fn default() -> Self {
        Node::new()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // A failed test must not leave mounts behind.
        unmount_all_under(self.root.path());
    }
}

/// Has process `pid` exited (gone, or a zombie nobody has reaped yet)?
pub fn exited(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => true,
    }
}

/// Detaches every mount under `root`, deepest first (test cleanup; errors ignored).
pub fn unmount_all_under(root: &Path) {
    let mut leftovers: Vec<_> = mounts_under(root).into_iter().map(|m| m.path).collect();
    leftovers.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for path in leftovers {
        let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone)]
pub struct MountEntry {
    pub path: PathBuf,
    pub fs_type: String,
    pub options: Vec<String>,
}

pub fn mounts() -> Vec<MountEntry> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    table
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let separator = fields.iter().position(|f| *f == "-")?;
            let mut options: Vec<String> = fields[5].split(',').map(String::from).collect();
            options.extend(fields.get(separator + 3)?.split(',').map(String::from));
            Some(MountEntry {
                path: PathBuf::from(fields[4].replace("\\040", " ")),
                fs_type: fields[separator + 1].to_string(),
                options,
            })
        })
        .collect()
}

pub fn mounts_at(path: &Path) -> Vec<MountEntry> {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    mounts().into_iter().filter(|m| m.path == path).collect()
}

pub fn mounts_under(root: &Path) -> Vec<MountEntry> {
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    mounts()
        .into_iter()
        .filter(|m| m.path.starts_with(&root))
        .collect()
}

/// The options JSON kubelet sends to `mount` (protocol notes §5): kubelet's keys, the pod's,
/// then the volume's own options, compact, keys sorted.
pub fn mount_json(
    pv: &str,
    read_only: bool,
    fs_group: Option<u32>,
    extra: &[(&str, &str)],
) -> String {
    let mut map = serde_json::Map::new();
    map.insert("kubernetes.io/fsType".into(), json!(""));
    map.insert("kubernetes.io/pod.name".into(), json!("web-0"));
    map.insert("kubernetes.io/pod.namespace".into(), json!("default"));
    map.insert(
        "kubernetes.io/pod.uid".into(),
        json!("8d3c1f2e-0000-4000-8000-000000000001"),
    );
    map.insert("kubernetes.io/pvOrVolumeName".into(), json!(pv));
    map.insert(
        "kubernetes.io/readwrite".into(),
        json!(if read_only { "ro" } else { "rw" }),
    );
    map.insert("kubernetes.io/serviceAccount.name".into(), json!("default"));
    if let Some(gid) = fs_group {
        map.insert(
            "kubernetes.io/mounterArgs.FsGroup".into(),
            json!(gid.to_string()),
        );
    }
    for (k, v) in extra {
        map.insert((*k).into(), json!(v));
    }
    serde_json::to_string(&map).unwrap()
}

/// Loop devices whose backing file lies under `dir`, as (device, backing file), from
/// /sys/block/loop*/loop/backing_file (a deleted backing file keeps its path, minus the
/// ` (deleted)` suffix, so it still counts).
pub fn loop_devices_under(dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut found: Vec<(PathBuf, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("loop"))
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            let text = text.trim_end_matches('\n');
            let backing = PathBuf::from(text.strip_suffix(" (deleted)").unwrap_or(text));
            backing
                .starts_with(&dir)
                .then(|| (Path::new("/dev").join(e.file_name()), backing))
        })
        .collect();
    found.sort();
    found
}

/// Detaches every loop device backed by a file under `dir` (test cleanup; errors ignored).
pub fn detach_loop_devices_under(dir: &Path) {
    for (device, _) in loop_devices_under(dir) {
        let _ = Command::new("losetup")
            .arg("-d")
            .arg(&device)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Node {
    /// `mount <dir>` of the hostile guest (`tests/guests/hostile`): it performs `attack`, with
    /// `extra` as that attack's options.
    pub fn attack(
        &self,
        driver: &Path,
        dir: &Path,
        attack: &str,
        extra: &[(&str, &str)],
    ) -> Output {
        let mut options = vec![("attack", attack)];
        options.extend_from_slice(extra);
        let json = mount_json("vol", false, None, &options);
        self.run(driver, &["mount", dir.to_str().unwrap(), &json])
    }

    /// The command `run` executes, to spawn it instead (e.g. to kill it mid-call).
    pub fn command(&self, executable: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(executable);
        command
            .args(args)
            .env("FLEX_POLICY_DIR", self.path("policy"))
            .env("FLEX_LOG_DIR", self.path("log"))
            .env("FLEX_CACHE_DIR", self.cache_dir())
            .env("FLEX_STATE_DIR", self.path("state"))
            .env("FLEX_RUN_DIR", self.path("run"))
            .env_remove("FLEX_COMPONENT")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command
    }

    /// The audit trail (`FLEX_LOG_DIR/audit.jsonl`), one value per line.
    pub fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.path("log/audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

/// The base options JSON kubelet sends to attach, mountdevice... (protocol notes §5): fsType,
/// the PV name, `rw`, then the volume's own options; compact, keys sorted.
pub fn base_json(pv: &str, fs_type: &str, extra: &[(&str, &str)]) -> String {
    let mut map = serde_json::Map::new();
    map.insert("kubernetes.io/fsType".into(), json!(fs_type));
    map.insert("kubernetes.io/pvOrVolumeName".into(), json!(pv));
    map.insert("kubernetes.io/readwrite".into(), json!("rw"));
    for (k, v) in extra {
        map.insert((*k).into(), json!(v));
    }
    serde_json::to_string(&map).unwrap()
}

/// kubelet's part when `mount` answers Not supported: bind-mount the device mount path onto
/// the pod directory (protocol notes §4.9); on `unmount` Not supported, unmount it.
pub fn kubelet_bind(from: &Path, to: &Path) {
    nix::mount::mount(
        Some(from),
        to,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
}

pub fn kubelet_unbind(dir: &Path) {
    unmount(dir);
}

/// Unmounts what a test mounted itself. A plain umount fails with EBUSY when another test's
/// thread forks while this one holds a file in the mount (the child keeps it until its exec):
/// flex's own unmount waits that out, and so does this.
pub fn unmount(dir: &Path) {
    flex_host::caps::mounts::unmount(dir).unwrap();
}

impl Node {
    /// The node's artifact cache (`FLEX_CACHE_DIR` of every call), created by flex on first use.
    pub fn cache_dir(&self) -> PathBuf {
        match self
            .shares_artifacts
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            true => root_only_base().join("shared-artifacts"),
            false => self.path("cache"),
        }
    }

    /// The compiled artifacts (`*.cwasm`) in the node's cache, sorted.
    pub fn artifacts(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(self.cache_dir()) else {
            return Vec::new();
        };
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
            .collect();
        found.sort();
        found
    }
}

/// Where nodes live: a directory only root can change, all the way up, as on a real node
/// (`flex` refuses image dirs and its device registry anywhere else; `/tmp` is writable by
/// everyone).
pub fn root_only_base() -> PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    let base = PathBuf::from("/var/lib/flex-tests");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&base)
        .expect("create /var/lib/flex-tests");
    base
}

/// A driver written in Python or JavaScript, built by `scripts/build-guests.sh` (which
/// `make build` runs) into the guests' directory, e.g. `script_guest("flex_hostpath_py")`.
/// Fails loudly, naming the command that builds it, when it is missing: never a skip.
pub fn script_guest(name: &str) -> PathBuf {
    let dir = std::env::var_os("FLEX_GUESTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/wasm32-wasip2/release"));
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: build it with `scripts/build-guests.sh` (or `make build`)",
        path.display()
    );
    path
}

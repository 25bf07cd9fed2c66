//! `flex test`: a conformance runner for any FlexVolume driver, as csi-sanity is for CSI.
//!
//! It builds a scratch node under a root-only directory (`/var/lib/flex-test-runs/<random>`):
//! a kubelet root with pod volume directories and device mount paths and, for a flex driver,
//! its own policy, log, state, cache, run and image directories. Then it execs the driver as
//! kubelet and kube-controller-manager do, with their exact argv and option JSON (protocol
//! notes §4, §5): `init`, then `mount`/`unmount` for a plain driver, or `getvolumename`,
//! `attach`, `isattached`, `waitforattach`, `mountdevice`, `mount`, `expandfs`, `unmount`,
//! `unmountdevice`, `detach` for an attachable one, each verb twice. Each check is a named case
//! (`lifecycle.rs`, `pods.rs`, `attach.rs`, `checks.rs`, `sandbox.rs`); kubelet's own behaviour decides what is a
//! failure and what is only a warning. The scratch node is torn down at the end (`scratch.rs`),
//! also after a failure or Ctrl-C.
//!
//! Exit 0 when every case passed or was skipped, 1 when one failed or the run could not be
//! set up, 2 for a usage error.

mod attach;
mod checks;
mod exec;
mod lifecycle;
mod pods;
mod reply;
mod report;
mod sandbox;
mod scratch;
mod setup;

use clap::Args;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Verbs a run can leave out, and the flex sandbox checks.
pub const SKIPPABLE: [&str; 12] = [
    "getvolumename",
    "attach",
    "isattached",
    "waitforattach",
    "mountdevice",
    "mount",
    "unmount",
    "unmountdevice",
    "detach",
    "expandfs",
    "deny-by-default",
    "dry-run",
];

#[derive(Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["driver", "component"])))]
pub struct TestArgs {
    /// An installed driver executable (<plugindir>/<vendor~driver>/<driver>): flex or any other
    #[arg(long, value_name = "PATH")]
    driver: Option<PathBuf>,
    /// A flex component, run through this flex (as `flex run --component`)
    #[arg(long, value_name = "FILE", requires = "policy")]
    component: Option<PathBuf>,
    /// The policy to run a flex driver under (default for --driver: its installed policy)
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// The driver's name, vendor~driver (default: its plugin directory's, else derived)
    #[arg(long, value_name = "VENDOR~DRIVER")]
    name: Option<String>,
    /// Directories of a flex driver: the scratch node's, or the node's own (FLEX_* as set)
    #[arg(long, value_enum, default_value = "scratch")]
    env: EnvMode,
    /// A volume option for the driver, e.g. size=8Mi (repeatable)
    #[arg(long = "options", short = 'o', value_name = "KEY=VALUE", value_parser = key_value)]
    options: Vec<(String, String)>,
    /// kubernetes.io/fsType of the volume
    #[arg(long, value_name = "TYPE", default_value = "")]
    fs_type: String,
    /// The node name attach, isattached and detach get
    #[arg(long, value_name = "NAME", default_value = "flex-test-node")]
    node_name: String,
    /// Seconds each call may take before it is killed (kubelet itself has no limit)
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
    /// Leave out verbs (or the checks deny-by-default, dry-run)
    #[arg(long, value_name = "VERB[,VERB]", value_delimiter = ',', value_parser = SKIPPABLE, conflicts_with = "only")]
    skip: Vec<String>,
    /// Run only these verbs (and checks); init always runs
    #[arg(long, value_name = "VERB[,VERB]", value_delimiter = ',', value_parser = SKIPPABLE)]
    only: Vec<String>,
    /// Also write the results as JUnit XML
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Warnings (allowed by kubelet, worth fixing) fail too
    #[arg(long)]
    strict: bool,
    /// Keep the scratch directory (emptied of mounts and loop devices) for a look afterwards
    #[arg(long)]
    keep: bool,
    /// Where the scratch directories are made (root-only)
    #[arg(long, value_name = "DIR", default_value = scratch::DEFAULT_BASE)]
    scratch_base: PathBuf,
    /// Print every call: argv, exit code, output
    #[arg(long, short = 'v')]
    verbose: bool,
    /// Print only failures and the summary
    #[arg(long, short = 'q')]
    quiet: bool,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
pub enum EnvMode {
    /// Policy, log, state, cache, run and image dirs in the scratch dir
    Scratch,
    /// The node's own (FLEX_POLICY_DIR, FLEX_LOG_DIR... as set, else their defaults)
    Node,
}

fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// What the run knows about the driver, set up before the first call.
pub struct Plan {
    /// `vendor~driver`, as in the pod volume directory.
    pub name: String,
    /// A flex driver: sandbox checks, and its log dir to search for secrets.
    pub flex_log_dir: Option<PathBuf>,
    /// For the deny-by-default check: the environment with an empty policy dir.
    pub empty_policy: Option<(String, std::ffi::OsString)>,
    pub options: Vec<(String, String)>,
    pub fs_type: String,
    pub node_name: String,
    skip: Vec<String>,
    only: Vec<String>,
    /// Where the driver's loop images are, to see a dry run create none.
    pub image_dir: Option<PathBuf>,
    /// Bytes of the logs before the run (node env: earlier lines are not this run's).
    pub log_marks: Vec<(PathBuf, u64)>,
    /// A flex driver on the node's own directories (`--env node`).
    pub node_env: bool,
}

impl Plan {
    pub fn wants(&self, verb: &str) -> bool {
        !self.skip.iter().any(|s| s == verb)
            && (self.only.is_empty() || self.only.iter().any(|s| s == verb))
    }
}

extern "C" fn on_signal(_: nix::libc::c_int) {
    exec::INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Ctrl-C or SIGTERM stops the running call and the run; the cleanup still runs.
fn catch_signals() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        let _ = unsafe { sigaction(signal, &action) };
    }
}

pub fn command(a: &TestArgs) -> Result<i32, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("flex test mounts file systems as kubelet does: run it as root".into());
    }
    let started = Instant::now();
    let scratch = scratch::Scratch::create(&a.scratch_base)?;
    catch_signals();
    let result = run(a, &scratch, started);
    let problems = scratch.cleanup(a.keep);
    for problem in &problems {
        eprintln!("flex test: cleanup: {problem}");
    }
    if a.keep && problems.is_empty() {
        eprintln!("flex test: kept {}", scratch.root.display());
    }
    let code = result?;
    Ok(if problems.is_empty() { code } else { 1 })
}

fn run(a: &TestArgs, scratch: &scratch::Scratch, started: Instant) -> Result<i32, String> {
    let (runner, plan, header) = setup::prepare(a, scratch)?;
    println!("flex test: {header}");
    println!("flex test: scratch node {}", scratch.root.display());
    let mut report = report::Report::new(plan.name.clone(), a.strict, a.quiet);
    lifecycle::Suite::new(&runner, scratch, &plan, &mut report).run();
    if exec::INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
        report.fail("run: interrupted", "stopped by a signal; cleaning up");
    }
    let elapsed = started.elapsed();
    if a.quiet {
        for case in report
            .cases
            .iter()
            .filter(|c| c.status == report::Status::Fail)
        {
            println!("{}", report::line(case));
        }
    }
    println!("{}", report.summary(elapsed));
    if let Some(file) = &a.junit {
        std::fs::write(file, report.junit(elapsed))
            .map_err(|e| format!("write {}: {e}", file.display()))?;
    }
    Ok(i32::from(report.failed()))
}

/// Per-call bound for the runner, from `--timeout`.
pub fn timeout(a: &TestArgs) -> Duration {
    Duration::from_secs(a.timeout)
}

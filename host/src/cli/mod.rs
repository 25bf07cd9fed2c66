//! The operator's CLI: `flex help`, `flex install`, `flex logs`, ... for a person at a shell.
//!
//! # Person or kubelet: the rule
//!
//! kubelet and kube-controller-manager always exec `<plugindir>/<vendor~driver>/<driver>` with
//! a FlexVolume verb as `argv[1]` (protocol notes §1). The operator commands are a fixed set
//! of names that are not FlexVolume verbs ([`OPERATOR_COMMANDS`]); `argv[1]` is compared with
//! that set, exactly, before anything else happens:
//!
//! - `argv[1]` is one of them: this CLI (clap), text for a person, errors on stderr, exit 2
//!   for a usage error;
//! - anything else (every verb, an unknown future verb, an empty or missing `argv[1]`, the
//!   development flags `--component`/`--dry-run`): the driver, exactly as before - one JSON
//!   reply on stdout, nothing on stderr. An unknown verb that looks like a misspelt operator
//!   command still gets that one `Not supported` reply; its message only adds the hint.
//!
//! Nothing else (a terminal on stdout, the executable's name, the environment) is consulted,
//! so the protocol's behaviour never depends on a guess, and clap is never even built for a
//! kubelet call.

mod check;
mod conformance;
mod doctor;
mod logs;
mod new;
mod run;

use crate::{artifact, inspect, install};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use std::io::Write;
use std::path::PathBuf;

/// `argv[1]` values that select the CLI; none is a FlexVolume verb, past or present.
pub const OPERATOR_COMMANDS: [&str; 19] = [
    "install",
    "uninstall",
    "list",
    "inspect",
    "policy",
    "logs",
    "audit",
    "doctor",
    "run",
    "new",
    "test",
    "provisioner",
    "serve",
    "completions",
    "help",
    "--help",
    "-h",
    "--version",
    "-V",
];

pub fn is_operator_command(arg: &str) -> bool {
    OPERATOR_COMMANDS.contains(&arg)
}

/// For an unknown FlexVolume verb: the operator command it was probably meant to be.
pub fn did_you_mean(verb: &str) -> Option<&'static str> {
    OPERATOR_COMMANDS
        .iter()
        .filter(|c| !c.starts_with('-'))
        .find(|c| verb.len() >= 4 && strsim::levenshtein(verb, c) <= 2)
        .copied()
}

const WIT_PACKAGE: &str = "flex:volume@0.1.0";

fn long_version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        format!(
            "{}\nwasmtime 48.0.8\nWIT package {WIT_PACKAGE}\nengine key: {}",
            env!("CARGO_PKG_VERSION"),
            artifact::ENGINE_KEY
        )
    })
}

const AFTER_HELP: &str = "\
kubelet runs this same binary as a FlexVolume driver: installed as
<plugindir>/<vendor~driver>/<driver>, argv[1] is a verb (init, mount, ...) and the reply is
one JSON line. Only the commands above are for people; any other first argument is a verb.

Examples:
  flex install --plugin-dir /usr/libexec/kubernetes/kubelet-plugins/volume/exec \\
      acme~tmpfs tmpfs.wasm --policy tmpfs.toml
  flex run --component tmpfs.wasm --policy tmpfs.toml --log-stderr init
  flex logs --driver acme~tmpfs --since 10m
  flex audit --decision deny --json";

#[derive(Parser)]
#[command(
    name = "flex",
    about = "Runs sandboxed WebAssembly FlexVolume drivers for kubelet",
    version = env!("CARGO_PKG_VERSION"),
    long_version = long_version(),
    after_help = AFTER_HELP,
    propagate_version = true,
    disable_help_subcommand = false
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install a driver where kubelet finds it (atomically), with its policy
    #[command(
        after_help = "Example:\n  flex install --plugin-dir /usr/libexec/kubernetes/kubelet-plugins/volume/exec \\\n      acme~tmpfs tmpfs.wasm --policy tmpfs.toml"
    )]
    Install(InstallArgs),
    /// Remove an installed driver (refused while its volumes are mounted)
    #[command(
        after_help = "Examples:\n  flex uninstall --plugin-dir DIR acme~tmpfs\n  flex uninstall --plugin-dir DIR acme~tmpfs --purge --yes"
    )]
    Uninstall(UninstallArgs),
    /// List the flex drivers in a plugin dir, with their digests and policies
    #[command(
        after_help = "Example:\n  flex list --plugin-dir /usr/libexec/kubernetes/kubelet-plugins/volume/exec"
    )]
    List(ListArgs),
    /// Show a component's digest, imports and exports, and what a policy grants it
    #[command(
        after_help = "Examples:\n  flex inspect tmpfs.wasm\n  flex inspect tmpfs.wasm --policy tmpfs.toml --strict\n  flex inspect tmpfs.wasm --suggest-policy tmpfs.toml"
    )]
    Inspect(InspectArgs),
    /// Check policy files
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Read the node's log (FLEX_LOG_DIR/flex.log and its rotated files)
    #[command(
        after_help = "Examples:\n  flex logs --driver acme~tmpfs --since 10m\n  flex logs --verb mount --level error --json\n  flex logs --follow"
    )]
    Logs(LogsArgs),
    /// Read the audit trail of privileged calls (FLEX_LOG_DIR/audit.jsonl)
    #[command(
        after_help = "Examples:\n  flex audit --decision deny\n  flex audit --driver acme~ebs --operation mount --since 2026-12-01T08:00:00Z"
    )]
    Audit(AuditArgs),
    /// Run one verb of a component directly: the development loop
    #[command(
        after_help = "Examples:\n  flex run --component target/wasm32-wasip2/release/flex_tmpfs.wasm --policy plugins/tmpfs/policy.toml --log-stderr init\n  flex run --component x.wasm --policy p.toml --dry-run mount /tmp/vol '{\"kubernetes.io/fsType\":\"tmpfs\"}'"
    )]
    Run(run::RunArgs),
    /// Create a driver project (Rust, Python or JavaScript), ready to build, test and install
    #[command(
        after_help = "Examples:\n  flex new acme~scratch --lang rust\n  flex new acme~scratch --lang python --dir ~/src/scratch-py\n  flex new acme~scratch --lang js"
    )]
    New(new::NewArgs),
    /// Check a node: plugin dir, installed drivers, policies, artifacts, tools, permissions
    #[command(
        after_help = "Examples:\n  flex doctor\n  flex doctor --plugin-dir /var/lib/kubelet/volumeplugins"
    )]
    Doctor(doctor::DoctorArgs),
    /// Check any FlexVolume driver against kubelet's protocol, on a scratch node (csi-sanity for Flex)
    #[command(
        after_help = "Runs init, then the volume's life as kubelet and kube-controller-manager drive it (each verb\ntwice), on a root-only scratch node that is torn down afterwards. Exit 1 on any failure.\n\nExamples:\n  flex test --component target/wasm32-wasip2/release/flex_tmpfs.wasm --policy plugins/tmpfs/policy.toml -o size=8Mi\n  flex test --driver /usr/libexec/kubernetes/kubelet-plugins/volume/exec/flex~loop/loop -o size=64Mi\n  flex test --driver ./my-driver.sh --skip expandfs --junit results.xml"
    )]
    Test(conformance::TestArgs),
    /// Keep warm children of the installed flex drivers, so kubelet's calls skip loading and
    /// instantiating the component (a long-running root daemon; calls run in their own
    /// process whenever it is absent)
    #[command(
        after_help = "Each call is still served by a process of its own, in kubelet's namespaces, under the policy file as it is when the call arrives.\n\nExample:\n  flex serve --plugin-dir /usr/libexec/kubernetes/kubelet-plugins/volume/exec"
    )]
    Serve(crate::warm::server::ServeArgs),
    /// Run the dynamic provisioner: PersistentVolumeClaims of the drivers' StorageClasses
    /// become flex volumes (a long-running controller; see deploy/provisioner.yaml)
    #[command(
        disable_help_flag = true,
        after_help = "Runs flex-provisioner, installed beside flex; `flex provisioner --help` lists its options.\n\nExample:\n  flex provisioner --driver flex~loop --kubeconfig /etc/kubernetes/admin.conf"
    )]
    Provisioner {
        /// Its options (--driver vendor~name ..., --kubeconfig, --listen, ...)
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "OPTIONS"
        )]
        args: Vec<String>,
    },
    /// Print shell completions (bash, zsh, fish) or the man page (man)
    #[command(
        after_help = "Examples:\n  flex completions bash > /etc/bash_completion.d/flex\n  flex completions man > /usr/share/man/man1/flex.1"
    )]
    Completions {
        shell: Generated,
        /// man only: write flex.1 and one page per subcommand (flex-install.1, ...) into DIR
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Generated {
    Bash,
    Zsh,
    Fish,
    /// The man page (roff), for `man 1 flex`
    Man,
}

#[derive(Args)]
pub struct InstallArgs {
    /// kubelet's FlexVolume plugin dir (--volume-plugin-dir)
    #[arg(long, value_name = "DIR")]
    pub plugin_dir: PathBuf,
    /// Create the plugin dir if it does not exist
    #[arg(long)]
    pub create: bool,
    /// The driver's policy, installed as FLEX_POLICY_DIR/<vendor~driver>.toml
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// vendor~driver, e.g. acme~tmpfs
    pub name: String,
    /// The driver's WebAssembly component
    pub component: PathBuf,
}

#[derive(Args)]
pub struct UninstallArgs {
    #[arg(long, value_name = "DIR")]
    pub plugin_dir: PathBuf,
    /// Uninstall although the driver's volumes are mounted
    #[arg(long)]
    pub force: bool,
    /// Also remove the driver's policy, state directory and block images
    #[arg(long)]
    pub purge: bool,
    /// Do not ask before --purge (required when stdin is not a terminal)
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// vendor~driver
    pub name: String,
}

#[derive(Args)]
pub struct ListArgs {
    #[arg(long, value_name = "DIR")]
    pub plugin_dir: PathBuf,
    /// One JSON object per driver
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct InspectArgs {
    /// The WebAssembly component
    pub component: PathBuf,
    /// Judge the imports against this policy file
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
    /// Exit 1 when an import would not link or is not granted by the policy
    #[arg(long)]
    pub strict: bool,
    /// Write the least policy skeleton the component's imports need ("-" for stdout)
    #[arg(long, value_name = "FILE")]
    pub suggest_policy: Option<PathBuf>,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy file, or an installed driver's policy by its name
    #[command(
        after_help = "Examples:\n  flex policy check plugins/tmpfs/policy.toml\n  flex policy check acme~tmpfs --json"
    )]
    Check(check::CheckArgs),
}

/// Filters shared by `logs` and `audit`.
#[derive(Args, Default)]
pub struct Filters {
    /// Only this driver (vendor~driver)
    #[arg(long)]
    pub driver: Option<String>,
    /// Only this verb (init, mount, ...)
    #[arg(long)]
    pub verb: Option<String>,
    /// Only this process (one call: the pid kubelet exec'd, or the warm child that answered)
    #[arg(long)]
    pub pid: Option<u64>,
    /// Not before: RFC 3339 (2026-12-01T08:00:00Z, UTC) or an age (30s, 10m, 2h, 1d)
    #[arg(long, value_name = "TIME", value_parser = valid_time)]
    pub since: Option<String>,
    /// Not after: RFC 3339 or an age
    #[arg(long, value_name = "TIME", value_parser = valid_time)]
    pub until: Option<String>,
    /// Keep printing new lines as they are written
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// The JSON lines as written, for machines
    #[arg(long)]
    pub json: bool,
}

/// Checked while parsing, so a bad time is a usage error; ages are taken from now later.
fn valid_time(text: &str) -> Result<String, String> {
    logs::parse_time(text).map(|_| text.to_string())
}

#[derive(Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub filters: Filters,
    /// Only this level (info, warn, error)
    #[arg(long)]
    pub level: Option<String>,
}

#[derive(Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub filters: Filters,
    /// Only this decision
    #[arg(long, value_parser = ["allow", "deny", "would-do"])]
    pub decision: Option<String>,
    /// Only this operation (mount, exec, http, mkfs, ...)
    #[arg(long)]
    pub operation: Option<String>,
}

/// Runs an operator command; returns the exit code. Usage errors exit 2 from clap itself.
pub fn main(args: Vec<String>) -> i32 {
    // A person's command: a crash is reported on stderr, not as a FlexVolume reply, and
    // `flex logs | head` ends quietly as other tools do.
    std::panic::set_hook(Box::new(|info| eprintln!("flex: internal error: {info}")));
    // SAFETY: no other thread exists yet; the default action needs no handler.
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        )
    };
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and exit 0; real errors to stderr, exit 2.
            let _ = e.print();
            return e.exit_code();
        }
    };
    let result = match cli.command {
        Command::Install(a) => install::install(&a).map(print),
        Command::Uninstall(a) => install::uninstall(&a).map(print),
        Command::List(a) => install::list(&a).map(print),
        Command::Inspect(a) => inspect::command(&a),
        Command::Policy(PolicyCommand::Check(a)) => check::command(&a),
        Command::Logs(a) => logs::logs(&a),
        Command::Audit(a) => logs::audit(&a),
        Command::Run(a) => run::command(a),
        Command::New(a) => new::command(&a),
        Command::Doctor(a) => doctor::command(&a),
        Command::Test(a) => conformance::command(&a),
        Command::Serve(a) => crate::warm::server::command(&a),
        Command::Provisioner { args } => Err(provisioner(&args)),
        Command::Completions { shell, dir } => completions(shell, dir).map(|()| 0),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "flex: {e}");
            1
        }
    }
}

/// The controller is its own executable (kube-rs and an async runtime stay out of the
/// per-call `flex`): found beside this one, else on `PATH`, and exec'd in place.
fn provisioner(args: &[String]) -> String {
    use std::os::unix::process::CommandExt;
    const NAME: &str = "flex-provisioner";
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(NAME)))
        .filter(|path| path.is_file());
    let program = beside.unwrap_or_else(|| PathBuf::from(NAME));
    let error = std::process::Command::new(&program)
        .arg0("flex provisioner")
        .args(args)
        .exec();
    format!(
        "cannot run {}: {error} (it is built with `cargo build --release -p flex-provisioner` \
         and installed beside flex)",
        program.display()
    )
}

fn print(text: String) -> i32 {
    let _ = std::io::stdout().write_all(text.as_bytes());
    0
}

fn completions(what: Generated, dir: Option<PathBuf>) -> Result<(), String> {
    use clap_complete::Shell;
    let mut command = Cli::command();
    let mut out = std::io::stdout();
    let shell = match (what, dir) {
        (Generated::Bash, _) => Shell::Bash,
        (Generated::Zsh, _) => Shell::Zsh,
        (Generated::Fish, _) => Shell::Fish,
        (Generated::Man, Some(dir)) => {
            return std::fs::create_dir_all(&dir)
                .and_then(|()| clap_mangen::generate_to(command, &dir))
                .map_err(|e| format!("write the man pages into {}: {e}", dir.display()));
        }
        (Generated::Man, None) => {
            return clap_mangen::Man::new(command)
                .render(&mut out)
                .map_err(|e| format!("write the man page: {e}"));
        }
    };
    clap_complete::generate(shell, &mut command, "flex", &mut out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_operator_command_is_a_flexvolume_verb() {
        for verb in crate::protocol::VERBS {
            assert!(!is_operator_command(verb), "{verb}");
        }
        // Historical verbs (protocol notes §4) stay driver calls too.
        for verb in [
            "attach",
            "detach",
            "getvolumename",
            "",
            "--component",
            "--dry-run",
        ] {
            assert!(!is_operator_command(verb), "{verb}");
        }
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn misspelt_commands_are_recognised() {
        assert_eq!(did_you_mean("instal"), Some("install"));
        assert_eq!(did_you_mean("uninstal"), Some("uninstall"));
        assert_eq!(did_you_mean("mount"), None);
        assert_eq!(did_you_mean("expandfs"), None);
    }
}

//! The flex runtime as a library: the per-call binary (`flex`, src/main.rs) and the
//! provisioner controller (`flex-provisioner`) run drivers through the same code, under the
//! same policies and audit.

pub mod artifact;
pub mod audit;
pub mod bindings;
pub mod caps;
pub mod cli;
pub mod inspect;
pub mod install;
pub mod limits;
pub mod locate;
pub mod logfile;
pub mod options;
pub mod policy;
pub mod protocol;
pub mod provisioning;
pub mod runtime;
pub mod warm;
pub mod wasi_link;

use logfile::Logger;
use protocol::Reply;
use std::io::Write;

/// One FlexVolume call from kubelet or KCM (`argv` as exec'd): the reply to print.
pub fn handle(args: &[String]) -> Reply {
    handle_with(args, locate::locate, policy::load, runtime::run)
}

/// [`handle`] with where the driver is found, its policy read and the call run given (a warm
/// child has them already: `warm::child`).
pub(crate) fn handle_with(
    args: &[String],
    locate: impl FnOnce(&str, Option<&str>) -> locate::Plugin,
    load_policy: impl FnOnce(&str) -> Result<policy::Policy, String>,
    run: impl FnOnce(
        &locate::Plugin,
        &policy::Policy,
        protocol::Call,
        &str,
        Logger,
        bool,
    ) -> (Reply, Logger),
) -> Reply {
    let argv0 = args.first().map(String::as_str).unwrap_or("flex");
    let (flags, rest) = split_flags(args.get(1..).unwrap_or_default());
    let component_flag = flags.component;
    // Dry run: privileged operations are checked and audited as would-do, never performed.
    let dry_run = flags.dry_run || std::env::var_os("FLEX_DRY_RUN").is_some_and(|v| v == "1");
    let plugin = locate(argv0, component_flag);
    let Some((verb, verb_args)) = rest.split_first() else {
        return Reply::failure(
            "usage: flex [--component PATH] [--dry-run] <verb> [arguments...]; kubelet runs this as a FlexVolume driver; `flex help` lists the operator commands",
        );
    };
    let mut logger = Logger::open(&plugin.name, verb);
    let reply = match protocol::parse(verb, verb_args) {
        Ok(call) => match load_policy(&plugin.name) {
            Ok(policy) => {
                // A development call names its component: the log says which policy it got
                // (`flex run` makes the choice explicit).
                if component_flag.is_some() || std::env::var_os("FLEX_COMPONENT").is_some() {
                    let path = policy::policy_path(&plugin.name);
                    let absent = if path.exists() {
                        ""
                    } else {
                        " (absent: nothing granted)"
                    };
                    logger.info(&format!(
                        "development call: policy {}{absent}",
                        path.display()
                    ));
                }
                let (reply, returned) = run(&plugin, &policy, call, verb, logger, dry_run);
                logger = returned;
                reply
            }
            Err(e) => Reply::failure(e),
        },
        Err(mut reply) => {
            // A person who misspelt an operator command: still the one reply, with a hint.
            let hint = (reply.status == protocol::NOT_SUPPORTED)
                .then(|| cli::did_you_mean(verb))
                .flatten();
            if let (Some(command), Some(message)) = (hint, &mut reply.message) {
                message.push_str(&format!(
                    "; did you mean `flex {command}`? (see `flex help`)"
                ));
            }
            reply
        }
    };
    // A Failure is an error for whoever filters the log by level (`flex logs --level error`).
    let level = match reply.status == protocol::FAILURE {
        true => "error",
        false => "info",
    };
    logger.log(
        level,
        "host",
        &format!("reply {}", reply.to_line().trim_end()),
    );
    reply
}

#[derive(Default)]
pub(crate) struct Flags<'a> {
    pub component: Option<&'a str>,
    dry_run: bool,
}

/// Development flags before the verb: `--component PATH` (or `=PATH`) and `--dry-run`.
/// kubelet never passes any, so the verb is the first argument that is not one of them.
pub(crate) fn split_flags(mut args: &[String]) -> (Flags<'_>, &[String]) {
    let mut flags = Flags::default();
    loop {
        match args {
            [flag, path, rest @ ..] if flag == "--component" => {
                (flags.component, args) = (Some(path.as_str()), rest)
            }
            [flag, rest @ ..] if flag.starts_with("--component=") => {
                (flags.component, args) = (Some(&flag["--component=".len()..]), rest)
            }
            [flag, rest @ ..] if flag == "--dry-run" => (flags.dry_run, args) = (true, rest),
            _ => return (flags, args),
        }
    }
}

/// Prints the reply as the process's only output and exits without teardown: there is
/// nothing to clean up that the kernel does not, and skipping it is measurably faster.
/// The stdout lock is held until exit, so a second caller (the deadline watchdog) never adds
/// a second reply.
pub fn reply_and_exit(reply: &Reply) -> ! {
    warm::child::answer_if_serving(reply);
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(reply.to_line().as_bytes());
    let _ = stdout.flush();
    std::process::exit(reply.exit_code())
}

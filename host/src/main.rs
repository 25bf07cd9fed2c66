//! `flex`: kubelet execs it once per FlexVolume verb, as it would any driver; it runs the
//! vendor's WebAssembly component for that verb and prints the one JSON reply kubelet parses.
//!
//! Nothing but that reply ever reaches stdout or stderr (kubelet reads both as one document):
//! logs go to a file, driver output is captured, and even a panic becomes a `Failure` reply.

mod artifact;
mod bindings;
mod caps;
mod locate;
mod logfile;
mod options;
mod policy;
mod protocol;
mod runtime;
mod wasi_link;

use logfile::Logger;
use protocol::Reply;
use std::io::Write;

fn main() {
    std::panic::set_hook(Box::new(|info| {
        let message = format!("flex crashed: {info}");
        Logger::open("flex", "panic").error(&message);
        reply_and_exit(&Reply::failure(message));
    }));
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let reply = handle(&args);
    reply_and_exit(&reply);
}

fn handle(args: &[String]) -> Reply {
    let argv0 = args.first().map(String::as_str).unwrap_or("flex");
    let (component_flag, rest) = split_component_flag(args.get(1..).unwrap_or_default());
    let plugin = locate::locate(argv0, component_flag);
    let Some((verb, verb_args)) = rest.split_first() else {
        return Reply::failure(
            "usage: flex [--component PATH] <verb> [arguments...]; kubelet runs this as a FlexVolume driver",
        );
    };
    let mut logger = Logger::open(&plugin.name, verb);
    let reply = match protocol::parse(verb, verb_args) {
        Ok(call) => match policy::load(&plugin.name) {
            Ok(policy) => {
                let (reply, returned) = runtime::run(&plugin, &policy, call, verb, logger);
                logger = returned;
                reply
            }
            Err(e) => Reply::failure(e),
        },
        Err(reply) => reply,
    };
    logger.log(
        "info",
        "host",
        &format!("reply {}", reply.to_line().trim_end()),
    );
    reply
}

/// `--component PATH` (or `--component=PATH`) before the verb, for development.
fn split_component_flag(args: &[String]) -> (Option<&str>, &[String]) {
    match args {
        [flag, path, rest @ ..] if flag == "--component" => (Some(path), rest),
        [flag, rest @ ..] if flag.starts_with("--component=") => {
            (Some(&flag["--component=".len()..]), rest)
        }
        _ => (None, args),
    }
}

/// Prints the reply as the process's only output and exits without teardown: there is
/// nothing to clean up that the kernel does not, and skipping it is measurably faster.
fn reply_and_exit(reply: &Reply) -> ! {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(reply.to_line().as_bytes());
    let _ = stdout.flush();
    std::process::exit(reply.exit_code())
}

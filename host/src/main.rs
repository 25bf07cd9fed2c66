//! `flex`: kubelet execs it once per FlexVolume verb, as it would any driver; it runs the
//! vendor's WebAssembly component for that verb and prints the one JSON reply kubelet parses.
//!
//! Nothing but that reply ever reaches stdout or stderr (kubelet reads both as one document):
//! logs go to a file, driver output is captured, and even a panic becomes a `Failure` reply.

use flex_host::logfile::Logger;
use flex_host::protocol::Reply;
use flex_host::{cli, reply_and_exit};

fn main() {
    std::panic::set_hook(Box::new(|info| {
        let message = format!("flex crashed: {info}");
        Logger::open("flex", "panic").error(&message);
        reply_and_exit(&Reply::failure(message));
    }));
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if args
        .get(1)
        .is_some_and(|arg| arg == flex_host::warm::child::COMMAND)
    {
        flex_host::warm::child::main(&args);
    }
    // Operator commands: a fixed set of names that are not FlexVolume verbs (see `cli`), so
    // kubelet's calls never build the CLI.
    if args.get(1).is_some_and(|arg| cli::is_operator_command(arg)) {
        std::process::exit(cli::main(args));
    }
    // A warm child of `flex serve` answers if there is one for this driver.
    if let Some((line, code)) = flex_host::warm::call(&args) {
        use std::io::Write;
        let _ = std::io::stdout().write_all(line.as_bytes());
        std::process::exit(code);
    }
    let reply = flex_host::handle(&args);
    reply_and_exit(&reply);
}

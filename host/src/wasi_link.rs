//! Links only the WASI interfaces the component actually imports: linking all of WASI is the
//! largest in-process cost of a call. The common ones (captured stdio, an empty environment,
//! exit, clocks, random and the I/O streams they need) are linked one by one. A component that
//! imports anything else gets all of WASI as configured for drivers, which grants nothing
//! more: no preopened directories (but the policy's state directory), socket creation and
//! name lookup denied, and `wasi:http` requests checked in the policy's send hook.

use crate::runtime::CallState;
use wasmtime::component::{Component, HasData, Linker, ResourceTable};
use wasmtime::{Engine, Result};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::cli::{WasiCli, WasiCliView};
use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
use wasmtime_wasi::p2::bindings::{cli, clocks, random, sync};
use wasmtime_wasi::random::WasiRandom;

/// The resource table, for `wasi:io`.
struct Io;

impl HasData for Io {
    type Data<'a> = &'a mut ResourceTable;
}

fn io_table(state: &mut CallState) -> &mut ResourceTable {
    state.ctx().table
}

/// A linker holding the WASI interfaces `component` imports, and the imports outside the
/// common set (if any, the linker holds all of WASI instead).
pub fn link_imported(
    engine: &Engine,
    component: &Component,
) -> Result<(Linker<CallState>, Vec<String>)> {
    let mut selective = Linker::new(engine);
    let mut uncommon = Vec::new();
    for (name, _) in component.component_type().imports(engine) {
        let linked = link_common(&mut selective, interface(name)).transpose()?;
        if linked.is_none() && name.starts_with("wasi:") {
            uncommon.push(name.to_string());
        }
    }
    if uncommon.is_empty() {
        return Ok((selective, uncommon));
    }
    let mut everything = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut everything)?;
    // Requests are checked against the policy in the send hook (`caps::http`).
    if uncommon.iter().any(|name| name.starts_with("wasi:http/")) {
        wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut everything)?;
    }
    Ok((everything, uncommon))
}

/// Links one interface of the common set; `None` for any other interface.
fn link_common(l: &mut Linker<CallState>, interface: &str) -> Option<Result<()>> {
    Some(match interface {
        "wasi:io/error" => sync::io::error::add_to_linker::<_, Io>(l, io_table),
        "wasi:io/poll" => sync::io::poll::add_to_linker::<_, Io>(l, io_table),
        "wasi:io/streams" => sync::io::streams::add_to_linker::<_, Io>(l, io_table),
        "wasi:cli/environment" => cli::environment::add_to_linker::<_, WasiCli>(l, CallState::cli),
        "wasi:cli/exit" => cli::exit::add_to_linker::<_, WasiCli>(l, CallState::cli),
        "wasi:cli/stdin" => cli::stdin::add_to_linker::<_, WasiCli>(l, CallState::cli),
        "wasi:cli/stdout" => cli::stdout::add_to_linker::<_, WasiCli>(l, CallState::cli),
        "wasi:cli/stderr" => cli::stderr::add_to_linker::<_, WasiCli>(l, CallState::cli),
        "wasi:cli/terminal-input" => {
            cli::terminal_input::add_to_linker::<_, WasiCli>(l, CallState::cli)
        }
        "wasi:cli/terminal-output" => {
            cli::terminal_output::add_to_linker::<_, WasiCli>(l, CallState::cli)
        }
        "wasi:cli/terminal-stdin" => {
            cli::terminal_stdin::add_to_linker::<_, WasiCli>(l, CallState::cli)
        }
        "wasi:cli/terminal-stdout" => {
            cli::terminal_stdout::add_to_linker::<_, WasiCli>(l, CallState::cli)
        }
        "wasi:cli/terminal-stderr" => {
            cli::terminal_stderr::add_to_linker::<_, WasiCli>(l, CallState::cli)
        }
        "wasi:clocks/wall-clock" => {
            clocks::wall_clock::add_to_linker::<_, WasiClocks>(l, CallState::clocks)
        }
        "wasi:clocks/monotonic-clock" => {
            clocks::monotonic_clock::add_to_linker::<_, WasiClocks>(l, CallState::clocks)
        }
        "wasi:random/random" => random::random::add_to_linker::<_, WasiRandom>(l, random_ctx),
        "wasi:random/insecure" => random::insecure::add_to_linker::<_, WasiRandom>(l, random_ctx),
        "wasi:random/insecure-seed" => {
            random::insecure_seed::add_to_linker::<_, WasiRandom>(l, random_ctx)
        }
        _ => return None,
    })
}

/// `wasi:cli/stdout@0.2.6` → `wasi:cli/stdout` (the linker matches versions semver-wise).
fn interface(import: &str) -> &str {
    import.split('@').next().unwrap_or(import)
}

fn random_ctx(state: &mut CallState) -> &mut wasmtime_wasi::random::WasiRandomCtx {
    state.ctx().ctx.random()
}

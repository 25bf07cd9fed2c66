//! `flex-compile COMPONENT ARTIFACT`: compiles a driver component to the native artifact the
//! per-call `flex` maps (see `artifact.rs`). A separate executable so that `flex` itself carries
//! no compiler; built from this crate with the `compiler` feature, so both agree on the
//! wasmtime build and the engine `Config`. `flex install` and the first call of a component
//! without an artifact run it; errors go to stderr, for `flex` to relay.

#[allow(dead_code)] // the runtime half of the module is not used here
mod artifact;

use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [component, target] = args.as_slice() else {
        eprintln!("usage: {} COMPONENT ARTIFACT", artifact::COMPILER);
        std::process::exit(2);
    };
    let result = wasmtime::Engine::new(&artifact::config())
        .map_err(|e| format!("cannot start the WebAssembly engine: {e:#}"))
        .and_then(|engine| artifact::compile_to(&engine, Path::new(component), Path::new(target)));
    if let Err(e) = result {
        eprintln!("{e}");
        std::process::exit(1);
    }
}

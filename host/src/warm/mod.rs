//! Warm children: `flex serve` keeps, for each installed driver, a few processes that hold its
//! component loaded and instantiated, so a kubelet call skips both (for a Python driver most of
//! its cost). The `flex` kubelet execs hands its call to one over a Unix socket and prints the
//! answer; without a server, or whenever a child cannot serve the call exactly as the calling
//! process would, the caller runs it itself, as always.
//!
//! What keeps a warm call the same call:
//! - each child serves one call and exits: no driver state outlives a call;
//! - a child ran the component's start code with nothing granted (as every call does, see
//!   `runtime::Started`); the call's grants come from the policy file read after the call
//!   arrived, in the caller's mount namespace, and are used only if its bytes and mode equal
//!   the ones the child was started with;
//! - the component the caller would run must be the child's, by path and `fstat` identity;
//!   the caller's `FLEX_*` environment must equal the child's where it chose what was loaded;
//! - the child enters the caller's mount and network namespaces and working directory, and
//!   takes its umask, before anything of the call is done;
//! - only root may connect: the socket's directory is root's alone, and the peer's
//!   credentials are checked on every connection;
//! - the call's deadline, limits, audit and log are the in-process call's; a caller that is
//!   killed takes its call with it.

pub mod child;
mod client;
pub mod server;
mod wire;

pub use client::call;
use std::path::PathBuf;

/// `<run dir>/warm`: root's alone, one socket per driver.
pub fn socket_dir() -> PathBuf {
    crate::caps::block::ownership::run_dir().join("warm")
}

pub fn socket_path(driver: &str) -> PathBuf {
    socket_dir().join(format!("{driver}.sock"))
}

/// The environment a call carries to a child: what `flex` reads.
fn carried(name: &str) -> bool {
    name.starts_with("FLEX_") || name == "HOME" || name == "XDG_CACHE_HOME"
}

/// The variables that chose what a child loaded (the component, its artifact, its policy):
/// a call must carry the same values.
const LOADED_BY: [&str; 6] = [
    "FLEX_COMPONENT",
    "FLEX_POLICY_DIR",
    "FLEX_CACHE_DIR",
    "FLEX_COMPILER",
    "HOME",
    "XDG_CACHE_HOME",
];

/// This process's carried environment, sorted by name.
fn carried_env() -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| carried(k))
        .collect();
    env.sort();
    env
}

//! When the artifact cache cannot be written (a read-only `/var`, a kube-controller-manager
//! container whose file systems are all read-only), a call compiles its component into memory
//! for itself alone and says so in the log: slower (every call compiles), never failing for
//! want of a writable directory. Nothing is read back from disk but the component, so the
//! cache's trust rules have nothing to check.

use super::{Digest, Identity, TRAILER_LEN, Trailer};
use std::fs::File;
use std::path::Path;
use wasmtime::Engine;
use wasmtime::component::Component;
use xxhash_rust::xxh3::xxh3_64;

/// An in-memory artifact larger than this is refused (the compiled form of a component of
/// `MAX_COMPONENT_BYTES` is about twice its size).
#[cfg_attr(feature = "compiler", allow(dead_code))]
const MAX_ARTIFACT_BYTES: u64 = 1 << 30;

/// The log line: why the cache was not used, and what it costs.
pub(super) fn note(component: &Path, why: &str) -> String {
    format!(
        "artifact cache not writable ({why}): compiled {} in memory for this call; every call \
         compiles until FLEX_CACHE_DIR names a writable directory (or `flex install` runs where \
         the cache is writable)",
        component.display()
    )
}

/// True when `dir`'s file system is mounted read-only.
pub(super) fn read_only(dir: &impl std::os::fd::AsFd) -> bool {
    use nix::sys::statvfs::{FsFlags, fstatvfs};
    fstatvfs(dir).is_ok_and(|stats| stats.flags().contains(FsFlags::ST_RDONLY))
}

/// Compiles the component open as `component` and loads it from memory, with the checks a
/// cached artifact gets: this component's identity, this engine, the whole body's checksum,
/// and the recorded digest shown to `accept` (the policy's pin).
pub(super) fn load(
    engine: &Engine,
    component: &File,
    identity: &Identity,
    accept: &dyn Fn(&Digest) -> Result<(), String>,
) -> Result<Component, String> {
    let bytes = compile(engine, component)?;
    let body_len = bytes
        .len()
        .checked_sub(TRAILER_LEN)
        .ok_or("the compiler wrote a truncated artifact")?;
    let trailer: &[u8; TRAILER_LEN] = bytes[body_len..].try_into().expect("trailer length");
    let trailer = Trailer::decode(trailer)?;
    if trailer.identity != *identity {
        return Err("the driver component changed while it was compiled: try again".into());
    }
    trailer
        .check(identity, body_len as u64)
        .map_err(|e| format!("the artifact compiled in memory: {e}"))?;
    if trailer.checksum != xxh3_64(&bytes[..body_len]) {
        return Err("the artifact compiled in memory is damaged (checksum)".into());
    }
    accept(&trailer.digest)?;
    // SAFETY: the bytes were compiled just now, by our own compiler (the same wasmtime build
    // and `Config`), from the component this call opened; wasmtime checks its header again.
    unsafe { Component::deserialize(engine, &bytes[..body_len]) }
        .map_err(|e| format!("the artifact compiled in memory does not load: {e:#}"))
}

#[cfg(feature = "compiler")]
fn compile(engine: &Engine, component: &File) -> Result<Vec<u8>, String> {
    super::compile_bytes(engine, component).map(|(bytes, _)| bytes)
}

/// `flex-compile --out-fd N` writes the artifact into an anonymous memory file.
#[cfg(not(feature = "compiler"))]
fn compile(_engine: &Engine, component: &File) -> Result<Vec<u8>, String> {
    use std::io::{Read, Seek};
    use std::os::fd::AsFd;
    let memfd = rustix::fs::memfd_create("flex-artifact", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| format!("cannot create an in-memory file for the artifact: {e}"))?;
    super::compiler::run_compiler(component, "--out-fd", memfd.as_fd())?;
    let mut file = File::from(memfd);
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    if size > MAX_ARTIFACT_BYTES {
        return Err(format!(
            "the compiled artifact has {size} bytes, more than the {MAX_ARTIFACT_BYTES} a call \
             may hold in memory"
        ));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.rewind()
        .and_then(|()| file.read_to_end(&mut bytes))
        .map_err(|e| format!("read the in-memory artifact: {e}"))?;
    Ok(bytes)
}

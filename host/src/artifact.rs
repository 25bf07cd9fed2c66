//! The native code cache: a component is compiled once (by `flex install`, or by its first
//! call) and every later call maps the compiled artifact straight from disk
//! (`Component::deserialize_file`).
//!
//! The artifact sits beside the component as `.<file>.<key>.cwasm`. The leading dot matters:
//! kubelet's prober ignores dot-files, so caching never makes it re-run `init`. The key hashes
//! the engine's identity (flex and wasmtime versions, `Config`) with the component file's
//! identity (device, inode, size, mtime, ctime), so a new component gets a fresh artifact;
//! wasmtime itself rejects an artifact from another wasmtime build, `Config` or CPU, which is
//! then rebuilt. Each artifact ends with a checksum of its contents: a damaged file is
//! detected, deleted and rebuilt, never executed.
//!
//! The per-call `flex` binary carries no compiler (Cranelift makes it twice the size and its
//! engine 3× slower to start). Compiling is `flex-compile`, the same crate built with the
//! `compiler` feature, the same wasmtime and the same [`config`]: the runtime execs it, found
//! through `FLEX_COMPILER`, beside the running executable or as `<plugindir>/.flex-compile`
//! (put there by `flex install`), when an artifact is missing or rejected.

use std::fs;
use std::hash::Hash;
#[cfg(feature = "compiler")]
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use wasmtime::component::Component;
use wasmtime::{Config, Engine};
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

const TRAILER_MAGIC: &[u8; 8] = b"flexsum1";
const TRAILER_LEN: usize = 16;

/// The compiler's file name, beside the `flex` executable.
#[cfg_attr(feature = "compiler", allow(dead_code))] // `flex` with the compiler needs none
pub const COMPILER: &str = "flex-compile";
/// The compiler's copy in a plugin dir: a dot-file at the top, which kubelet's prober ignores.
#[cfg_attr(feature = "compiler", allow(dead_code))]
pub const PLUGIN_DIR_COMPILER: &str = ".flex-compile";

/// What an artifact is only valid for, besides the component file (see the module docs).
/// wasmtime rejects a mismatch by itself; the key only makes a rebuild happen up front.
const ENGINE_KEY: &str = concat!(
    "flex ",
    env!("CARGO_PKG_VERSION"),
    "; wasmtime 48.0.8; epoch_interruption"
);

/// The one engine configuration: the compiler and the runtime must agree on it, or wasmtime
/// rejects the artifact (and it is rebuilt).
pub fn config() -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config
}

/// Where a component came from this call, for the log.
pub enum Source {
    Cached,
    Compiled,
}

pub fn load(engine: &Engine, component: &Path) -> Result<(Component, Source, Vec<String>), String> {
    let mut notes = Vec::new();
    let meta = fs::metadata(component)
        .map_err(|e| format!("driver component {}: {e}", component.display()))?;
    let artifact = artifact_path(component, &meta);
    match load_cached(engine, &artifact) {
        Ok(Some(loaded)) => return Ok((loaded, Source::Cached, notes)),
        Ok(None) => {}
        Err(problem) => {
            notes.push(format!(
                "discarding artifact {}: {problem}",
                artifact.display()
            ));
            let _ = fs::remove_file(&artifact);
        }
    }
    let compiled = compile(engine, component, &artifact, &mut notes)?;
    Ok((compiled, Source::Compiled, notes))
}

/// The compiler build: compiles in process; a read-only plugin dir still works, just without
/// the cache.
#[cfg(feature = "compiler")]
fn compile(
    engine: &Engine,
    component: &Path,
    artifact: &Path,
    notes: &mut Vec<String>,
) -> Result<Component, String> {
    let compiled = compile_component(engine, component)?;
    match store(&compiled, artifact) {
        Ok(()) => remove_stale(artifact),
        Err(e) => notes.push(format!("cannot cache artifact {}: {e}", artifact.display())),
    }
    Ok(compiled)
}

/// The runtime build: `flex-compile COMPONENT ARTIFACT` writes the artifact, then it is
/// loaded like any cached one.
#[cfg(not(feature = "compiler"))]
fn compile(
    engine: &Engine,
    component: &Path,
    artifact: &Path,
    _notes: &mut Vec<String>,
) -> Result<Component, String> {
    let compiler = compiler_path()?;
    // Its output is captured: nothing may reach kubelet's pipe.
    let output = std::process::Command::new(&compiler)
        .arg(component)
        .arg(artifact)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run the compiler {}: {e}", compiler.display()))?;
    if !output.status.success() {
        let error = String::from_utf8_lossy(&output.stderr);
        return Err(match error.trim() {
            "" => format!("{} failed ({})", compiler.display(), output.status),
            error => error.to_string(),
        });
    }
    match load_cached(engine, artifact) {
        Ok(Some(loaded)) => Ok(loaded),
        Ok(None) => Err(format!(
            "{} wrote no artifact {}",
            compiler.display(),
            artifact.display()
        )),
        Err(problem) => Err(format!(
            "artifact {} from {} does not load: {problem}",
            artifact.display(),
            compiler.display()
        )),
    }
}

/// `FLEX_COMPILER`, else `flex-compile` beside the running executable, else the copy
/// `flex install` keeps in the plugin dir (`<plugindir>/.flex-compile`, for installed drivers:
/// `<plugindir>/<vendor~driver>/<driver>`), so an installed driver can rebuild a rejected
/// artifact by itself, e.g. after a node's CPU changed.
#[cfg(not(feature = "compiler"))]
pub fn compiler_path() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("FLEX_COMPILER") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe().map_err(|e| format!("find the flex executable: {e}"))?;
    let beside = exe.with_file_name(COMPILER);
    let in_plugin_dir = exe
        .parent()
        .and_then(Path::parent)
        .map(|plugin_dir| plugin_dir.join(PLUGIN_DIR_COMPILER));
    let candidates = [Some(beside.clone()), in_plugin_dir];
    match candidates.into_iter().flatten().find(|path| path.is_file()) {
        Some(path) => Ok(path),
        None => Err(format!(
            "the component has no compiled artifact and there is no compiler to build one \
             ({} is missing): reinstall the driver with `flex install`, which precompiles it, \
             or set FLEX_COMPILER",
            beside.display()
        )),
    }
}

/// `flex-compile COMPONENT ARTIFACT`: compiles and stores the artifact at the path the
/// runtime chose.
#[cfg(feature = "compiler")]
#[allow(dead_code)] // only flex-compile calls it
pub fn compile_to(engine: &Engine, component: &Path, artifact: &Path) -> Result<(), String> {
    let compiled = compile_component(engine, component)?;
    store(&compiled, artifact)
        .map_err(|e| format!("cannot write artifact {}: {e}", artifact.display()))?;
    remove_stale(artifact);
    Ok(())
}

#[cfg(feature = "compiler")]
fn compile_component(engine: &Engine, component: &Path) -> Result<Component, String> {
    let wasm = fs::read(component)
        .map_err(|e| format!("driver component {}: {e}", component.display()))?;
    Component::new(engine, &wasm).map_err(|e| {
        format!(
            "driver component {} is not a valid component: {e:#}",
            component.display()
        )
    })
}

fn artifact_path(component: &Path, meta: &fs::Metadata) -> PathBuf {
    let mut hasher = Xxh3::new();
    ENGINE_KEY.hash(&mut hasher);
    (
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
    )
        .hash(&mut hasher);
    let file = component.file_name().unwrap_or_default().to_string_lossy();
    component.with_file_name(format!(".{file}.{:016x}.cwasm", hasher.digest()))
}

/// `Ok(None)`: no artifact yet. `Err`: an artifact that must not be used.
fn load_cached(engine: &Engine, artifact: &Path) -> Result<Option<Component>, String> {
    let file = match fs::File::open(artifact) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let len = usize::try_from(len).map_err(|_| "too large".to_string())?;
    if len < TRAILER_LEN {
        return Err("truncated".into());
    }
    // Checked through a read-only mapping rather than a heap copy: the page cache's pages are
    // mapped, not copied into freshly faulted memory (about 80 page faults fewer per call).
    verify_checksum(ReadOnlyMap::new(&file, len)?.bytes())?;
    drop(file);
    // SAFETY: the file was written by `store` below (root-owned, beside the component), its
    // checksum matches, and it is replaced only by rename, never rewritten in place. wasmtime
    // itself rejects artifacts from another version, `Config` or CPU feature set.
    let component = unsafe { Component::deserialize_file(engine, artifact) };
    component.map(Some).map_err(|e| format!("{e:#}"))
}

/// A whole file mapped read-only, unmapped on drop.
struct ReadOnlyMap {
    ptr: *mut nix::libc::c_void,
    len: usize,
}

impl ReadOnlyMap {
    fn new(file: &fs::File, len: usize) -> Result<ReadOnlyMap, String> {
        use nix::libc;
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh private read-only mapping of `len > 0` bytes of an open file; the
        // kernel picks the address. Populated up front: every page is read anyway.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        Ok(ReadOnlyMap { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes until `drop`. The artifact is replaced only
        // by rename, never truncated or rewritten in place, so the pages stay valid.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for ReadOnlyMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; `bytes` borrows end before drop.
        unsafe { nix::libc::munmap(self.ptr, self.len) };
    }
}

fn verify_checksum(bytes: &[u8]) -> Result<(), String> {
    let Some(body_len) = bytes.len().checked_sub(TRAILER_LEN) else {
        return Err("truncated".into());
    };
    let (body, trailer) = bytes.split_at(body_len);
    if &trailer[8..] != TRAILER_MAGIC {
        return Err("no checksum trailer".into());
    }
    let stored = u64::from_le_bytes(trailer[..8].try_into().expect("8 bytes"));
    if xxh3_64(body) != stored {
        return Err("checksum mismatch: the file is damaged".into());
    }
    Ok(())
}

/// Writes under a temporary dot-name, then renames: readers see the old file or the whole new
/// one, and concurrent first calls simply race to install identical artifacts.
#[cfg(feature = "compiler")]
fn store(component: &Component, artifact: &Path) -> Result<(), String> {
    let mut bytes = component.serialize().map_err(|e| format!("{e:#}"))?;
    let checksum = xxh3_64(&bytes);
    bytes.extend_from_slice(&checksum.to_le_bytes());
    bytes.extend_from_slice(TRAILER_MAGIC);
    let mut temp = artifact.as_os_str().to_owned();
    temp.push(format!(".tmp{}", std::process::id()));
    let temp = PathBuf::from(temp);
    let written = fs::File::create(&temp)
        .and_then(|mut file| file.write_all(&bytes).and_then(|()| file.sync_all()))
        .and_then(|()| fs::rename(&temp, artifact));
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(e.to_string());
    }
    Ok(())
}

/// Removes artifacts of earlier versions of the same component (same `.<file>.` prefix).
#[cfg(feature = "compiler")]
fn remove_stale(current: &Path) {
    let (Some(dir), Some(name)) = (current.parent(), current.file_name()) else {
        return;
    };
    let name = name.to_string_lossy();
    let Some(prefix_len) = name.rfind('.').and_then(|end| name[..end].rfind('.')) else {
        return;
    };
    let prefix = &name[..=prefix_len];
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let other = entry.file_name().to_string_lossy().into_owned();
        if other != name && other.starts_with(prefix) && other.ends_with(".cwasm") {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cache key names the wasmtime the workspace pins. A stale name would be harmless
    /// (wasmtime rejects the old artifact, which is then rebuilt once) but misleading.
    #[test]
    fn engine_key_names_the_pinned_wasmtime() {
        let manifest = include_str!("../../Cargo.toml");
        let version = ENGINE_KEY
            .split("wasmtime ")
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .expect("wasmtime version in ENGINE_KEY");
        assert!(
            manifest.contains(&format!("wasmtime = {{ version = \"={version}\"")),
            "ENGINE_KEY names wasmtime {version}, the workspace pins another"
        );
    }

    #[test]
    fn checksum_trailer() {
        let mut bytes = b"artifact".to_vec();
        bytes.extend_from_slice(&xxh3_64(b"artifact").to_le_bytes());
        bytes.extend_from_slice(TRAILER_MAGIC);
        assert_eq!(verify_checksum(&bytes), Ok(()));
        bytes[2] ^= 1;
        assert!(verify_checksum(&bytes).unwrap_err().contains("mismatch"));
        assert!(verify_checksum(b"short").is_err());
        assert!(verify_checksum(&[0; 40]).unwrap_err().contains("trailer"));
    }
}

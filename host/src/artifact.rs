//! The native code cache: a component is compiled once (by `flex install`, or by its first
//! call) and every later call maps the compiled artifact (`Component::deserialize_file`).
//!
//! An artifact is native code that runs outside the sandbox, so it only ever comes from one
//! root-only directory, `FLEX_CACHE_DIR` (default `/var/cache/flex/artifacts`, created `0700`),
//! never from the plugin dir (which containers and the kube-controller-manager share) nor from
//! a component's own directory. The cache is walked from `/` one `openat(O_NOFOLLOW)` at a time:
//! every directory must be owned by root (or the caller's euid) and not writable by group or
//! others (an ancestor may be sticky, like `/tmp`), the cache dir itself owned by the euid. An
//! artifact is opened relative to that directory, `O_NOFOLLOW`, and checked on the descriptor
//! (a regular file, owned by the euid, not group/other-writable) before it is mapped; anything
//! else is removed and rebuilt, and logged.
//!
//! An artifact is bound to the bytes it was compiled from: `flex-compile` reads the component
//! once, hashes those bytes (sha256) and compiles those same bytes, and records the digest in a
//! fixed-size trailer with the component's identity and the engine key. The cache is indexed by
//! the identity of the opened component (device, inode, size, mtime, ctime, with nanoseconds)
//! and the engine key, so a component changed in place (new ctime) is compiled again. A call
//! reads only the trailer: a policy's `digest` pin is compared with the recorded digest, so it
//! holds because what runs is what was hashed, and per-call work does not grow with the
//! component's size. Integrity comes from the root-only directory and write + fsync + rename;
//! the body checksum in the trailer is verified when an artifact is written, not per call.
//! Truncated or foreign files fail the trailer check, and wasmtime's own header check rejects
//! an artifact of another wasmtime build, `Config` or CPU; such an artifact is rebuilt.
//!
//! The trailer is trusted because only root writes the cache: an artifact recorded for another
//! component file is rebuilt, one whose recorded digest differs from the pin fails the call
//! (and is kept: the component really has that digest, rebuilding would not change it). Only
//! root can set a ctime, and the kernel (6.13+ multigrain timestamps) gives a change made right
//! after a `stat` a distinct one, so a component cannot change without changing its key.
//!
//! Concurrent first calls of a component wait on one `flock` in the cache dir: one compiles,
//! the others load its artifact. Garbage is bounded: compiling removes the other artifacts of
//! the same component inode (older contents, other engines) and leftovers of crashed compiles,
//! then the oldest artifacts beyond [`MAX_ARTIFACTS`] or [`MAX_CACHE_BYTES`]; `flex install`
//! and `flex uninstall` remove the artifacts of the component they replace or remove.
//!
//! The per-call `flex` binary carries no compiler (Cranelift makes it twice the size and its
//! engine 3× slower to start). Compiling is `flex-compile`, the same crate built with the
//! `compiler` feature, the same wasmtime and the same [`config`]: the runtime execs it, found
//! through `FLEX_COMPILER`, beside the running executable or as `<plugindir>/.flex-compile`
//! (put there by `flex install`), with the opened component as stdin and the checked cache
//! directory as an inherited descriptor. A compiler flex found itself is trusted like the cache
//! (its directory reached by the same checked walk, `trusted_dir.rs`) and is executed through
//! the descriptor that was checked (`compiler.rs`).

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag, openat};
use nix::sys::stat::Mode;
use nix::unistd::{UnlinkatFlags, unlinkat};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wasmtime::component::Component;
use wasmtime::{Config, Engine};
use xxhash_rust::xxh3::{xxh3_64, xxh3_128};

/// The compiler's file name, beside the `flex` executable.
#[cfg_attr(feature = "compiler", allow(dead_code))] // `flex` with the compiler needs none
pub const COMPILER: &str = "flex-compile";
/// The compiler's copy in a plugin dir: a dot-file at the top, which kubelet's prober ignores.
#[cfg_attr(feature = "compiler", allow(dead_code))]
pub const PLUGIN_DIR_COMPILER: &str = ".flex-compile";

pub const CACHE_DIR_ENV: &str = "FLEX_CACHE_DIR";
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/flex/artifacts";
/// Components larger than this are refused (the compiler reads one into memory).
pub const MAX_COMPONENT_BYTES: u64 = 256 << 20;
/// The cache keeps at most this many artifacts and bytes; compiling evicts the oldest.
pub const MAX_ARTIFACTS: usize = 64;
pub const MAX_CACHE_BYTES: u64 = 4 << 30;
/// A compile is killed after this long, and a call waits at most a little longer for the
/// compile lock: a component that takes Cranelift longer is refused.
pub const COMPILE_TIMEOUT: Duration = Duration::from_secs(120);
/// The compiler's data limit (`RLIMIT_DATA`: heap and other private writable memory) is this
/// plus [`COMPILE_MEMORY_PER_BYTE`] per byte of the component. Measured: Cranelift peaks at
/// 357 MB resident for the 18 MB Python driver (about 19 bytes per byte), 14 MB for the Rust
/// tmpfs driver; the Python driver (18,638 KiB) gets 949 MiB.
pub const COMPILE_MEMORY_BASE: u64 = 512 << 20;
pub const COMPILE_MEMORY_PER_BYTE: u64 = 24;
const LOCK_FILE: &str = ".compile.lock";

mod compiler;
mod memory;
mod trusted_dir;

pub use compiler::trusted_compiler;
#[cfg(not(feature = "compiler"))]
pub use compiler::{Compiler, compiler};

/// What an artifact is only valid for, besides the component's identity (see the module docs).
/// wasmtime rejects a mismatch by itself; the key only makes a rebuild happen up front.
pub const ENGINE_KEY: &str = concat!(
    "flex ",
    env!("CARGO_PKG_VERSION"),
    "; wasmtime 48.0.8; epoch_interruption; artifact v2"
);

/// The one engine configuration: the compiler and the runtime must agree on it, or wasmtime
/// rejects the artifact (and it is rebuilt).
pub fn config() -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config
}

/// sha256 of the exact component bytes an artifact was compiled from.
pub type Digest = [u8; 32];

pub fn digest_string(digest: &Digest) -> String {
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// What loading did besides mapping an artifact, for the log (also when it then failed).
pub enum Note {
    Info(String),
    Warn(String),
    Error(String),
}

/// Loads the artifact of the component at `path`, compiling it first if the cache has none.
/// `accept` sees the digest the artifact records before anything of it is mapped: the policy's
/// pin. Its error fails the call.
pub fn load(
    engine: &Engine,
    path: &Path,
    accept: &dyn Fn(&Digest) -> Result<(), String>,
    notes: &mut Vec<Note>,
) -> Result<Component, String> {
    let (component, identity) = open_component(path)?;
    let cache = match Cache::open() {
        Ok(cache) => cache,
        Err(Unusable::ReadOnly(why)) => {
            notes.push(Note::Warn(memory::note(path, &why)));
            return memory::load(engine, &component, &identity, accept);
        }
        Err(Unusable::Refused(e)) => return Err(e),
    };
    let name = identity.file_name();
    let artifact = cache.path.join(&name);
    if let Found::Loaded(loaded) = cache.lookup(engine, &identity, accept)? {
        return Ok(loaded);
    }
    if memory::read_only(&cache.dir) {
        let why = format!("{} is on a read-only file system", cache.path.display());
        notes.push(Note::Warn(memory::note(path, &why)));
        return memory::load(engine, &component, &identity, accept);
    }
    let _lock = cache.lock()?;
    // A concurrent call may have compiled it while this one waited for the lock.
    match cache.lookup(engine, &identity, accept)? {
        Found::Loaded(loaded) => {
            notes.push(Note::Info(format!(
                "loaded {}, compiled by a concurrent call of {}",
                artifact.display(),
                path.display()
            )));
            return Ok(loaded);
        }
        Found::Missing => {}
        Found::Discard(problem) => {
            notes.push(Note::Error(format!(
                "discarding artifact {}: {problem}",
                artifact.display()
            )));
            cache.remove(&name);
        }
    }
    compile(engine, &component, &cache)?;
    cache.collect(&identity);
    let changed = || {
        format!(
            "driver component {} changed while it was compiled: try again",
            path.display()
        )
    };
    if !cache.verify_checksum(&name)? {
        return Err(changed());
    }
    notes.push(Note::Info(format!(
        "compiled {} into {}",
        path.display(),
        artifact.display()
    )));
    let compiled = match cache.lookup(engine, &identity, accept)? {
        Found::Loaded(compiled) => compiled,
        Found::Missing => return Err(changed()),
        Found::Discard(problem) => {
            return Err(format!(
                "the artifact {} just compiled from {} does not load: {problem}",
                artifact.display(),
                path.display()
            ));
        }
    };
    // Removed meanwhile (an upgrade or uninstall, which forgets its artifacts after removing
    // it): this call still runs it, mapped; nobody will call it again.
    if component.metadata().is_ok_and(|m| m.nlink() == 0) {
        cache.remove(&name);
    }
    Ok(compiled)
}

/// A component file's device and inode: what `forget` removes the artifacts of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inode {
    dev: u64,
    ino: u64,
}

impl Inode {
    /// The file at `path`, if there is one (for `flex install` / `uninstall`).
    pub fn of(path: &Path) -> Option<Inode> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Inode {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    fn prefix(self) -> String {
        format!("{:x}-{:x}-", self.dev, self.ino)
    }
}

/// Removes every artifact of a component that is gone (replaced by `flex install`, removed by
/// `flex uninstall`): call it after the component's last link is removed.
pub fn forget(inode: Inode) -> Result<(), String> {
    let cache = Cache::open().map_err(Unusable::into_message)?;
    let _lock = cache.lock()?;
    let prefix = inode.prefix();
    for name in cache.names() {
        if name.starts_with(&prefix) && name.ends_with(".cwasm") {
            cache.remove(&name);
        }
    }
    Ok(())
}

/// A component file's identity as the cache keys it, by path: what a warm child compares
/// with the file a call would run (`crate::warm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileIdentity(Identity);

impl FileIdentity {
    pub fn of(path: &Path) -> Result<FileIdentity, String> {
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("driver component {}: {e}", path.display()))?;
        Ok(FileIdentity(Identity::of(&meta)))
    }
}

/// The component's identity, from `fstat` of the opened file: the cache key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Identity([u64; 7]);

impl Identity {
    const LEN: usize = 7 * 8;

    fn of(meta: &std::fs::Metadata) -> Identity {
        Identity([
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime() as u64,
            meta.mtime_nsec() as u64,
            meta.ctime() as u64,
            meta.ctime_nsec() as u64,
        ])
    }

    fn inode(&self) -> Inode {
        Inode {
            dev: self.0[0],
            ino: self.0[1],
        }
    }

    fn bytes(&self) -> [u8; Identity::LEN] {
        let mut out = [0; Identity::LEN];
        for (chunk, value) in out.chunks_exact_mut(8).zip(self.0) {
            chunk.copy_from_slice(&value.to_le_bytes());
        }
        out
    }

    fn from_bytes(bytes: &[u8]) -> Identity {
        let mut values = [0; 7];
        for (value, chunk) in values.iter_mut().zip(bytes.chunks_exact(8)) {
            *value = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        }
        Identity(values)
    }

    /// `<dev>-<ino>-<key>.cwasm`: the inode part lets a compile find the stale artifacts of
    /// the same file; the key hashes the whole identity with the engine key.
    fn file_name(&self) -> String {
        let mut keyed = ENGINE_KEY.as_bytes().to_vec();
        keyed.extend_from_slice(&self.bytes());
        format!("{}{:032x}.cwasm", self.inode().prefix(), xxh3_128(&keyed))
    }
}

/// The fixed-size end of every artifact, after wasmtime's own bytes (which it ignores):
/// digest, identity, engine hash, body checksum, body length, magic.
#[derive(Debug)]
struct Trailer {
    digest: Digest,
    identity: Identity,
    engine: u64,
    checksum: u64,
    body_len: u64,
}

const MAGIC: &[u8; 8] = b"flexart2";
const TRAILER_LEN: usize = 32 + Identity::LEN + 8 + 8 + 8 + 8;

impl Trailer {
    #[cfg_attr(not(feature = "compiler"), allow(dead_code))]
    fn encode(&self) -> [u8; TRAILER_LEN] {
        let mut out = [0; TRAILER_LEN];
        let parts: [&[u8]; 6] = [
            &self.digest,
            &self.identity.bytes(),
            &self.engine.to_le_bytes(),
            &self.checksum.to_le_bytes(),
            &self.body_len.to_le_bytes(),
            MAGIC,
        ];
        let mut at = 0;
        for part in parts {
            out[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        out
    }

    /// This engine's, for this component file, with a body of `body_len` bytes before it.
    fn check(&self, identity: &Identity, body_len: u64) -> Result<(), String> {
        if self.engine != engine_hash() {
            return Err("compiled by another flex or wasmtime".into());
        }
        if self.identity != *identity {
            return Err("compiled from another component file".into());
        }
        if self.body_len != body_len {
            return Err("truncated".into());
        }
        Ok(())
    }

    fn decode(bytes: &[u8; TRAILER_LEN]) -> Result<Trailer, String> {
        if &bytes[TRAILER_LEN - 8..] != MAGIC {
            return Err("not a flex artifact (no trailer): truncated or foreign".into());
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8"));
        let id_end = 32 + Identity::LEN;
        Ok(Trailer {
            digest: bytes[..32].try_into().expect("32 bytes"),
            identity: Identity::from_bytes(&bytes[32..id_end]),
            engine: u64_at(id_end),
            checksum: u64_at(id_end + 8),
            body_len: u64_at(id_end + 16),
        })
    }
}

fn engine_hash() -> u64 {
    xxh3_64(ENGINE_KEY.as_bytes())
}

/// Opens the component once; its descriptor is what is identified and, if need be, compiled.
/// `O_NONBLOCK`: a FIFO planted in its place must not hang the call before `fstat` refuses it.
fn open_component(path: &Path) -> Result<(File, Identity), String> {
    let problem = |e: &dyn std::fmt::Display| format!("driver component {}: {e}", path.display());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NONBLOCK | OFlag::O_NOCTTY).bits())
        .open(path)
        .map_err(|e| problem(&e))?;
    let meta = file.metadata().map_err(|e| problem(&e))?;
    if !meta.is_file() {
        return Err(problem(&"not a regular file"));
    }
    if meta.size() > MAX_COMPONENT_BYTES {
        return Err(problem(&format!(
            "{} bytes, more than the {} a component may have",
            meta.size(),
            MAX_COMPONENT_BYTES
        )));
    }
    Ok((file, Identity::of(&meta)))
}

/// `FLEX_CACHE_DIR`; else `/var/cache/flex/artifacts` for root, and for another user (a dry
/// run reviewing a driver) `$XDG_CACHE_HOME/flex/artifacts` or `~/.cache/flex/artifacts`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(CACHE_DIR_ENV) {
        return dir.into();
    }
    if nix::unistd::geteuid().is_root() {
        return DEFAULT_CACHE_DIR.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")));
    match base {
        Some(base) => base.join("flex/artifacts"),
        None => DEFAULT_CACHE_DIR.into(),
    }
}

/// Why the cache cannot be used: a cache that cannot be created on a read-only file system
/// (the call then compiles into memory), or one refused by its checks (the call fails).
enum Unusable {
    ReadOnly(String),
    Refused(String),
}

impl Unusable {
    fn into_message(self) -> String {
        match self {
            Unusable::ReadOnly(e) | Unusable::Refused(e) => e,
        }
    }
}

/// The checked cache directory, open: everything in it is reached relative to `dir`.
struct Cache {
    dir: OwnedFd,
    path: PathBuf,
}

enum Found {
    Missing,
    Loaded(Component),
    /// Must not be used: removed (under the lock) and rebuilt.
    Discard(String),
}

impl Cache {
    /// `cache_dir()`, walked from `/` and checked on the way (see `trusted_dir`); the missing
    /// directories are created `0700`.
    fn open() -> Result<Cache, Unusable> {
        let path = cache_dir();
        let dir = trusted_dir::open(&path, trusted_dir::Last::Cache).map_err(|e| match e {
            Unusable::Refused(why) => {
                Unusable::Refused(format!("refusing artifact cache {}: {why}", path.display()))
            }
            read_only => read_only,
        })?;
        Ok(Cache { dir, path })
    }

    /// The artifact for `identity`, checked on its descriptor, its trailer read and its digest
    /// shown to `accept`, then mapped. `Err` (from `accept`) fails the call.
    fn lookup(
        &self,
        engine: &Engine,
        identity: &Identity,
        accept: &dyn Fn(&Digest) -> Result<(), String>,
    ) -> Result<Found, String> {
        let name = identity.file_name();
        let flags = OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_CLOEXEC
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY;
        let file = match openat(&self.dir, name.as_str(), flags, Mode::empty()) {
            Ok(fd) => File::from(fd),
            Err(Errno::ENOENT) => return Ok(Found::Missing),
            Err(Errno::ELOOP) => return Ok(Found::Discard("a symlink".into())),
            Err(e) => return Ok(Found::Discard(e.to_string())),
        };
        let trailer = match checked_trailer(&file, identity) {
            Ok(trailer) => trailer,
            Err(problem) => return Ok(Found::Discard(problem)),
        };
        accept(&trailer.digest)?;
        // Mapped through the checked descriptor: `Component::deserialize` would copy the whole
        // artifact into fresh memory (cost growing with its size) and `deserialize_raw` cannot
        // make borrowed memory executable, so wasmtime opens this very file again through
        // /proc and maps it privately (only the pages a call touches are read).
        let fd_path = format!("/proc/self/fd/{}", file.as_raw_fd());
        // SAFETY: the file is a regular file owned by us in a directory only we can write,
        // written by `store` (whole, fsynced, renamed into place, never rewritten), its
        // trailer matches this engine and component. wasmtime itself rejects artifacts of
        // another version, `Config` or CPU feature set.
        match unsafe { Component::deserialize_file(engine, &fd_path) } {
            Ok(component) => Ok(Found::Loaded(component)),
            Err(e) => Ok(Found::Discard(format!("{e:#}{}", self.noexec_hint()))),
        }
    }

    fn noexec_hint(&self) -> &'static str {
        use nix::sys::statvfs::{FsFlags, fstatvfs};
        match fstatvfs(&self.dir) {
            Ok(stats) if stats.flags().contains(FsFlags::ST_NOEXEC) => {
                " (the cache is on a noexec mount: set FLEX_CACHE_DIR to a directory on an exec mount)"
            }
            _ => "",
        }
    }

    /// The exclusive compile lock, waited for at most a little longer than one compile takes.
    fn lock(&self) -> Result<Flock<File>, String> {
        let problem = |e: &dyn std::fmt::Display| {
            format!("compile lock {}: {e}", self.path.join(LOCK_FILE).display())
        };
        let flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(&self.dir, LOCK_FILE, flags, Mode::from_bits_truncate(0o600))
            .map_err(|e| problem(&e))?;
        let mut file = File::from(fd);
        let meta = file.metadata().map_err(|e| problem(&e))?;
        if !meta.is_file() || meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(problem(&"not a regular file of ours"));
        }
        let deadline = Instant::now() + COMPILE_TIMEOUT + Duration::from_secs(10);
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(lock),
                Err((_, e)) if e != Errno::EWOULDBLOCK => return Err(problem(&e)),
                Err((again, _)) if Instant::now() < deadline => {
                    file = again;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return Err(problem(&"another compile holds it for too long")),
            }
        }
    }

    fn remove(&self, name: &str) {
        let _ = unlinkat(&self.dir, name, UnlinkatFlags::NoRemoveDir);
    }

    /// The entries of the cache dir (names only: everything is then done relative to `dir`).
    fn names(&self) -> Vec<String> {
        let listing = format!("/proc/self/fd/{}", self.dir.as_raw_fd());
        std::fs::read_dir(listing)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Garbage collection after compiling `identity`, under the lock: other artifacts of the
    /// same inode (older contents, another engine), leftovers of crashed compiles, then the
    /// oldest artifacts beyond the cache's bounds.
    fn collect(&self, identity: &Identity) {
        let keep = identity.file_name();
        let prefix = identity.inode().prefix();
        let mut others = Vec::new();
        for name in self.names() {
            if name == keep {
                continue;
            }
            if name.contains(".cwasm.tmp")
                || (name.starts_with(&prefix) && name.ends_with(".cwasm"))
            {
                self.remove(&name);
            } else if name.ends_with(".cwasm") {
                let stat = nix::sys::stat::fstatat(
                    &self.dir,
                    name.as_str(),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                );
                if let Ok(stat) = stat {
                    others.push((
                        (stat.st_mtime, stat.st_mtime_nsec),
                        stat.st_size as u64,
                        name,
                    ));
                }
            }
        }
        others.sort();
        let kept_bytes = nix::sys::stat::fstatat(
            &self.dir,
            keep.as_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_or(0, |stat| stat.st_size as u64);
        let mut bytes = kept_bytes + others.iter().map(|(_, size, _)| size).sum::<u64>();
        let mut count = others.len() + 1;
        for (_, size, name) in others {
            if count <= MAX_ARTIFACTS && bytes <= MAX_CACHE_BYTES {
                break;
            }
            self.remove(&name);
            count -= 1;
            bytes -= size;
        }
    }

    /// Reads the whole artifact once, right after it was written: the body checksum the
    /// compiler recorded. `Ok(false)`: there is none (the compiler saw another identity).
    fn verify_checksum(&self, name: &str) -> Result<bool, String> {
        let problem =
            |e: &dyn std::fmt::Display| format!("artifact {}: {e}", self.path.join(name).display());
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut file = match openat(&self.dir, name, flags, Mode::empty()) {
            Ok(fd) => File::from(fd),
            Err(Errno::ENOENT) => return Ok(false),
            Err(e) => return Err(problem(&e)),
        };
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut bytes).map_err(|e| problem(&e))?;
        let body_len = bytes.len().saturating_sub(TRAILER_LEN);
        let trailer: &[u8; TRAILER_LEN] = bytes[body_len..]
            .try_into()
            .map_err(|_| problem(&"truncated"))?;
        let trailer = Trailer::decode(trailer).map_err(|e| problem(&e))?;
        if xxh3_64(&bytes[..body_len]) != trailer.checksum {
            self.remove(name);
            return Err(problem(&"checksum mismatch right after it was written"));
        }
        Ok(true)
    }
}

/// The artifact's descriptor checks and its trailer, read with one small `pread`.
fn checked_trailer(file: &File, identity: &Identity) -> Result<Trailer, String> {
    let meta = file.metadata().map_err(|e| e.to_string())?;
    let euid = nix::unistd::geteuid().as_raw();
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.uid() != euid {
        return Err(format!("owned by uid {}, not {euid}", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "writable by group or others (mode {:o})",
            meta.mode() & 0o7777
        ));
    }
    let size = meta.size();
    let Some(at) = size.checked_sub(TRAILER_LEN as u64) else {
        return Err("truncated".into());
    };
    let mut bytes = [0; TRAILER_LEN];
    file.read_exact_at(&mut bytes, at)
        .map_err(|e| format!("read trailer: {e}"))?;
    let trailer = Trailer::decode(&bytes)?;
    trailer.check(identity, at)?;
    Ok(trailer)
}

/// The compiler build: compiles in process, from the same descriptor.
#[cfg(feature = "compiler")]
fn compile(engine: &Engine, component: &File, cache: &Cache) -> Result<(), String> {
    compile_into(engine, component, std::os::fd::AsFd::as_fd(&cache.dir)).map(|_| ())
}

/// The runtime build: `flex-compile --cache-fd N` with the opened component as stdin and the
/// checked cache directory as descriptor N; then the artifact is looked up like any other.
#[cfg(not(feature = "compiler"))]
fn compile(_engine: &Engine, component: &File, cache: &Cache) -> Result<(), String> {
    compiler::run_compiler(
        component,
        "--cache-fd",
        std::os::fd::AsFd::as_fd(&cache.dir),
    )
}

/// Compiles the component open as `component` into the cache directory `dir`: reads it once,
/// hashes those bytes, compiles those same bytes, and stores the artifact under the name of
/// the identity it had throughout (a file that changes while it is read is refused). Returns
/// the artifact's name.
#[cfg(feature = "compiler")]
pub fn compile_into(
    engine: &Engine,
    component: &File,
    dir: std::os::fd::BorrowedFd,
) -> Result<String, String> {
    let (bytes, identity) = compile_bytes(engine, component)?;
    let name = identity.file_name();
    store(dir, &name, &bytes).map_err(|e| format!("cannot write artifact {name}: {e}"))?;
    Ok(name)
}

/// Compiles the component open as `component` and writes the artifact into the file `out`
/// (for a call that cannot use the cache: `memory.rs`).
#[cfg(feature = "compiler")]
pub fn compile_to(
    engine: &Engine,
    component: &File,
    out: std::os::fd::BorrowedFd,
) -> Result<(), String> {
    use std::io::Write;
    let (bytes, _) = compile_bytes(engine, component)?;
    let mut file = File::from(out.try_clone_to_owned().map_err(|e| e.to_string())?);
    file.write_all(&bytes)
        .map_err(|e| format!("write the artifact: {e}"))
}

/// The artifact of the component open as `component`, trailer included, and the identity the
/// component had while it was read.
#[cfg(feature = "compiler")]
fn compile_bytes(engine: &Engine, component: &File) -> Result<(Vec<u8>, Identity), String> {
    use sha2::{Digest as _, Sha256};
    let problem = |e: &dyn std::fmt::Display| format!("driver component: {e}");
    let before = component.metadata().map_err(|e| problem(&e))?;
    if !before.is_file() {
        return Err(problem(&"not a regular file"));
    }
    if before.size() > MAX_COMPONENT_BYTES {
        return Err(problem(&"too large"));
    }
    let identity = Identity::of(&before);
    let mut wasm = vec![0; before.size() as usize];
    component
        .read_exact_at(&mut wasm, 0)
        .map_err(|e| problem(&e))?;
    let after = component.metadata().map_err(|e| problem(&e))?;
    if Identity::of(&after) != identity {
        return Err(problem(&"it changed while it was read: try again"));
    }
    let digest: Digest = Sha256::digest(&wasm).into();
    let compiled = Component::new(engine, &wasm)
        .map_err(|e| format!("driver component is not a valid component: {e:#}"))?;
    let mut bytes = compiled.serialize().map_err(|e| format!("{e:#}"))?;
    let trailer = Trailer {
        digest,
        identity,
        engine: engine_hash(),
        checksum: xxh3_64(&bytes),
        body_len: bytes.len() as u64,
    };
    bytes.extend_from_slice(&trailer.encode());
    Ok((bytes, identity))
}

/// Writes under a temporary name, fsyncs, renames into place and fsyncs the directory: a
/// reader sees no artifact or the whole one.
#[cfg(feature = "compiler")]
fn store(dir: std::os::fd::BorrowedFd, name: &str, bytes: &[u8]) -> Result<(), Errno> {
    use std::io::Write;
    let temp = format!("{name}.tmp{}", std::process::id());
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let written =
        openat(dir, temp.as_str(), flags, Mode::from_bits_truncate(0o600)).and_then(|fd| {
            let mut file = File::from(fd);
            file.write_all(bytes)
                .and_then(|()| file.sync_all())
                .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
            nix::fcntl::renameat(dir, temp.as_str(), dir, name)?;
            nix::unistd::fsync(dir)
        });
    if written.is_err() {
        let _ = unlinkat(dir, temp.as_str(), UnlinkatFlags::NoRemoveDir);
    }
    written
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
    fn trailer_round_trip_and_magic() {
        let identity = Identity([1, 2, 3, 4, 5, 6, 7]);
        let trailer = Trailer {
            digest: [9; 32],
            identity,
            engine: engine_hash(),
            checksum: 42,
            body_len: 1000,
        };
        let bytes = trailer.encode();
        let back = Trailer::decode(&bytes).unwrap();
        assert_eq!(
            (
                back.digest,
                back.identity,
                back.engine,
                back.checksum,
                back.body_len
            ),
            ([9; 32], identity, engine_hash(), 42, 1000)
        );
        let mut damaged = bytes;
        damaged[TRAILER_LEN - 1] ^= 1;
        assert!(Trailer::decode(&damaged).unwrap_err().contains("trailer"));
    }

    /// Every part of the identity, and the engine, is in the name: a component changed in
    /// place (new ctime, even with the same size and mtime) gets another artifact.
    #[test]
    fn every_identity_field_changes_the_name() {
        let base = Identity([1, 2, 3, 4, 5, 6, 7]);
        let name = base.file_name();
        assert!(
            name.starts_with("1-2-") && name.ends_with(".cwasm"),
            "{name}"
        );
        for field in 0..7 {
            let mut other = base;
            other.0[field] += 1;
            assert_ne!(other.file_name(), name, "field {field}");
        }
    }

    #[test]
    fn digest_is_printed_like_the_policy_pin() {
        assert_eq!(
            digest_string(&[0xab; 32]),
            format!("sha256:{}", "ab".repeat(32))
        );
    }
}

//! The native code cache: a component is compiled once, on its first call, and every later
//! call maps the compiled artifact straight from disk (`Component::deserialize_file`).
//!
//! The artifact sits beside the component as `.<file>.<key>.cwasm`. The leading dot matters:
//! kubelet's prober ignores dot-files, so caching never makes it re-run `init`. The key hashes
//! the engine's compatibility hash (wasmtime build, `Config`, CPU features) with the component
//! file's identity (device, inode, size, mtime, ctime), so a new component or a new `flex`
//! build gets a fresh artifact. Each artifact ends with a checksum of its contents: a damaged
//! file is detected, deleted and rebuilt, never executed.

use std::fs;
use std::hash::Hash;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

const TRAILER_MAGIC: &[u8; 8] = b"flexsum1";
const TRAILER_LEN: usize = 16;

/// Where a component came from this call, for the log.
pub enum Source {
    Cached,
    Compiled,
}

pub fn load(engine: &Engine, component: &Path) -> Result<(Component, Source, Vec<String>), String> {
    let mut notes = Vec::new();
    let meta = fs::metadata(component)
        .map_err(|e| format!("driver component {}: {e}", component.display()))?;
    let artifact = artifact_path(engine, component, &meta);
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
    let wasm = fs::read(component)
        .map_err(|e| format!("driver component {}: {e}", component.display()))?;
    let compiled = Component::new(engine, &wasm).map_err(|e| {
        format!(
            "driver component {} is not a valid component: {e:#}",
            component.display()
        )
    })?;
    match store(&compiled, &artifact) {
        Ok(()) => remove_stale(&artifact),
        // A read-only plugin dir still works, just without the cache.
        Err(e) => notes.push(format!("cannot cache artifact {}: {e}", artifact.display())),
    }
    Ok((compiled, Source::Compiled, notes))
}

fn artifact_path(engine: &Engine, component: &Path, meta: &fs::Metadata) -> PathBuf {
    let mut hasher = Xxh3::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
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
    let bytes = match fs::read(artifact) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    verify_checksum(&bytes)?;
    // SAFETY: the file was written by `store` below (root-owned, beside the component), its
    // checksum matches, and it is replaced only by rename, never rewritten in place. wasmtime
    // itself rejects artifacts from another version, `Config` or CPU feature set.
    let component = unsafe { Component::deserialize_file(engine, artifact) };
    component.map(Some).map_err(|e| format!("{e:#}"))
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

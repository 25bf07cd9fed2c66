//! kubelet's FlexVolume plugin prober, as it reads a plugin dir: inotify watches added by path
//! for every directory (fsnotify's bookkeeping: a watch descriptor keeps the path it was added
//! with, also after its directory is renamed away), events translated to fsnotify's ops, and
//! classified as kubelet v1.20.2 does (`pkg/volume/flexvolume/probe.go`, `handleWatchEvent`):
//! dot-names are ignored, a `Remove` of `<vendor~driver>/<driver>` or of a name directly in
//! the plugin dir drops the driver, anything else re-probes it.
//!
//! Used to prove that `flex install` upgrades never look like a removal to kubelet.

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    AddOrUpdate(String),
    Remove(String),
}

/// One classified event, with the fsnotify path and op it came from (for failure messages).
#[derive(Clone, Debug)]
pub struct Seen {
    pub probe: Probe,
    pub path: PathBuf,
    pub op: &'static str,
}

pub struct Prober {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    /// Starts watching `plugin_dir` (which must exist) the way kubelet does at start.
    pub fn watch(plugin_dir: &Path) -> Prober {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).unwrap();
        let mut state = Watches {
            inotify,
            paths: HashMap::new(),
            plugin_dir: plugin_dir.to_path_buf(),
        };
        state.add_recursive(plugin_dir);
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                loop {
                    // The last read after the stop flag drains what is queued.
                    let stopping = stop.load(Ordering::SeqCst);
                    state.drain(&seen);
                    if stopping {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            })
        };
        Prober {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Stops watching; returns every classified event, in order.
    pub fn finish(mut self) -> Vec<Seen> {
        std::thread::sleep(std::time::Duration::from_millis(50));
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        self.seen.lock().unwrap().clone()
    }
}

struct Watches {
    inotify: Inotify,
    paths: HashMap<WatchDescriptor, PathBuf>,
    plugin_dir: PathBuf,
}

impl Watches {
    /// kubelet's `addWatchRecursive`: a watch on every directory below `path`, dot-names too,
    /// symlinks not followed.
    fn add_recursive(&mut self, path: &Path) {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return;
        };
        if !meta.is_dir() {
            return;
        }
        let flags = AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_ATTRIB
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF;
        if let Ok(wd) = self.inotify.add_watch(path, flags) {
            self.paths.insert(wd, path.to_path_buf());
        }
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            self.add_recursive(&entry.path());
        }
    }

    fn drain(&mut self, seen: &Mutex<Vec<Seen>>) {
        while let Ok(events) = self.inotify.read_events() {
            if events.is_empty() {
                break;
            }
            for event in events {
                let Some(base) = self.paths.get(&event.wd).cloned() else {
                    continue;
                };
                let path = match &event.name {
                    Some(name) => base.join(name),
                    None => base.clone(),
                };
                let mask = event.mask;
                if mask.contains(AddWatchFlags::IN_DELETE_SELF) {
                    self.paths.remove(&event.wd);
                }
                if mask.contains(AddWatchFlags::IN_IGNORED) {
                    continue;
                }
                let op = if mask.intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO) {
                    "create"
                } else if mask.intersects(AddWatchFlags::IN_DELETE | AddWatchFlags::IN_DELETE_SELF)
                {
                    "remove"
                } else if mask
                    .intersects(AddWatchFlags::IN_MOVED_FROM | AddWatchFlags::IN_MOVE_SELF)
                {
                    "rename"
                } else if mask.contains(AddWatchFlags::IN_MODIFY) {
                    "write"
                } else {
                    "chmod"
                };
                if let Some(probe) = self.classify(&path, op) {
                    seen.lock().unwrap().push(Seen { probe, path, op });
                }
            }
        }
    }

    /// `handleWatchEvent`.
    fn classify(&mut self, path: &Path, op: &'static str) -> Option<Probe> {
        let base = path.file_name()?.to_string_lossy();
        if base.starts_with('.') || path == self.plugin_dir {
            return None;
        }
        if op == "create" {
            self.add_recursive(path);
        }
        let rel = path.strip_prefix(&self.plugin_dir).ok()?;
        let driver_dir = rel
            .components()
            .next()?
            .as_os_str()
            .to_string_lossy()
            .into_owned();
        let executable = Path::new(&driver_dir).join(driver_dir.rsplit('~').next()?);
        let in_plugin_dir = path.parent() == Some(self.plugin_dir.as_path());
        Some(
            match op == "remove" && (rel == executable || in_plugin_dir) {
                true => Probe::Remove(driver_dir),
                false => Probe::AddOrUpdate(driver_dir),
            },
        )
    }
}

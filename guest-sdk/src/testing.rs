//! An in-process fake of the host, for unit-testing a driver natively.
//!
//! On every target but `wasm32` (so in `cargo test` on a development machine) the SDK's host
//! calls ([`mounts`](crate::mounts), [`block`](crate::block), [`exec`](crate::exec),
//! [`config`](crate::config), [`log`](crate::log), and through them
//! [`filesystem`](crate::filesystem) and [`pod`](crate::pod)) go to the [`Host`] of the
//! current thread instead of the WIT imports. The component built for `wasm32-wasip2` contains
//! none of this module.
//!
//! A test creates a [`Host`], scripts what it needs (config values, devices, images, program
//! output, failures), calls the driver's verbs as ordinary functions and checks the answers,
//! the recorded [`Call`]s and the resulting state:
//!
//! ```
//! use flex_sdk::testing::{Call, Host};
//! use flex_sdk::{Capabilities, Driver, Options, Result, block};
//!
//! /// Provisions loop-backed images named after the PV.
//! struct Images;
//!
//! impl Driver for Images {
//!     fn init() -> Result<Capabilities> {
//!         Ok(Capabilities::default())
//!     }
//!     fn provision(options: Options) -> Result<()> {
//!         let name = options.pv_or_volume_name.as_deref().ok_or_else(|| flex_sdk::failure("no PV name"))?;
//!         let size = flex_sdk::parse_quantity(options.get("requestBytes").unwrap_or("1Gi"))?;
//!         block::create_image(name, size)?;
//!         Ok(())
//!     }
//! }
//!
//! let host = Host::new();
//! let options = Options::default().with_pv_or_volume_name("pv-1").with_extra("requestBytes", "1048576");
//! Images::provision(options.clone()).unwrap();
//! Images::provision(options.clone()).unwrap(); // a retry keeps the image
//! assert_eq!(host.block.image("pv-1").unwrap().size, 1 << 20);
//! assert_eq!(
//!     host.take_calls(),
//!     [
//!         Call::CreateImage { name: "pv-1".into(), size: 1 << 20 },
//!         Call::CreateImage { name: "pv-1".into(), size: 1 << 20 },
//!     ]
//! );
//!
//! host.block.fail_next("denied: the policy sets no block.image_dir");
//! let err = Images::provision(options).unwrap_err();
//! assert_eq!(err, flex_sdk::failure("denied: the policy sets no block.image_dir"));
//! ```
//!
//! Each thread has its own host, and the test harness runs each test on its own thread, so
//! tests stay independent when they run in parallel. A host call on a thread with no
//! [`Host`] panics, saying so (log lines only go to stderr). [`Host::new`] replaces the
//! thread's earlier host; dropping a [`Host`] removes it.
//!
//! The fake keeps the state the real host would (what is mounted where, devices and their
//! file systems, images and their loop devices) and refuses what the real host always refuses
//! (mounting onto a mount point, unmounting what is not mounted, formatting a device that has
//! a file system or is mounted, deleting an attached image, detaching a mounted one), with
//! messages in the host's words. It checks no policy: whether a node's policy grants a
//! source, option, device or program is for `flex policy check`, `flex inspect` and a run on
//! a node. Every device is unknown (refused) until [`Block::add_device`] adds it, and every
//! program until [`Exec::respond`] scripts it.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use crate::exec::Output;
use crate::log::Level;

/// One host call a driver made, with its arguments, in the order made. Log lines are not
/// calls: see [`Host::logs`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Call {
    /// [`Mount::mount`](crate::mounts::Mount::mount): the request as built (the host would
    /// add the policy's required options, the fake does not).
    Mount {
        /// The device, `tmpfs`, `server:/export` or bind source.
        source: String,
        /// The mount point.
        target: String,
        /// The file system type; empty when not set.
        fs_type: String,
        /// The options as passed, in order, not split on commas.
        options: Vec<String>,
        /// A bind mount.
        bind: bool,
    },
    /// [`mounts::remount`](crate::mounts::remount).
    Remount {
        /// The mount point.
        target: String,
        /// The new options.
        options: Vec<String>,
    },
    /// [`mounts::unmount`](crate::mounts::unmount).
    Unmount {
        /// The mount point.
        target: String,
    },
    /// [`mounts::is_mountpoint`](crate::mounts::is_mountpoint).
    IsMountpoint {
        /// The path asked about.
        path: String,
    },
    /// [`block::probe_fs`](crate::block::probe_fs).
    ProbeFs {
        /// The device.
        device: String,
    },
    /// [`block::mkfs`](crate::block::mkfs).
    Mkfs {
        /// The device.
        device: String,
        /// The file system type.
        fs_type: String,
    },
    /// [`block::resize_fs`](crate::block::resize_fs).
    ResizeFs {
        /// The device.
        device: String,
        /// Where its file system is mounted.
        mount_path: String,
    },
    /// [`block::device_size`](crate::block::device_size).
    DeviceSize {
        /// The device.
        device: String,
    },
    /// [`block::wait_for_device`](crate::block::wait_for_device).
    WaitForDevice {
        /// The device.
        device: String,
        /// The timeout asked for (the fake never waits).
        timeout_ms: u32,
    },
    /// [`block::create_image`](crate::block::create_image).
    CreateImage {
        /// The image.
        name: String,
        /// The size asked for.
        size: u64,
    },
    /// [`block::image_size`](crate::block::image_size).
    ImageSize {
        /// The image.
        name: String,
    },
    /// [`block::grow_image`](crate::block::grow_image).
    GrowImage {
        /// The image.
        name: String,
        /// The size asked for.
        size: u64,
    },
    /// [`block::delete_image`](crate::block::delete_image).
    DeleteImage {
        /// The image.
        name: String,
    },
    /// [`block::attach_image`](crate::block::attach_image).
    AttachImage {
        /// The image.
        name: String,
    },
    /// [`block::image_device`](crate::block::image_device).
    ImageDevice {
        /// The image.
        name: String,
    },
    /// [`block::detach_image`](crate::block::detach_image).
    DetachImage {
        /// The image.
        name: String,
    },
    /// [`exec::run`](crate::exec::run).
    Run {
        /// The program's path.
        program: String,
        /// Its arguments.
        args: Vec<String>,
        /// The environment passed.
        env: Vec<(String, String)>,
    },
    /// [`config::get`](crate::config::get).
    ConfigGet {
        /// The key.
        key: String,
    },
    /// [`config::get_all`](crate::config::get_all).
    ConfigGetAll,
}

/// A block device as the fake host sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// Its size in bytes.
    pub size: u64,
    /// The file system on it; `None` while blank.
    pub fs: Option<String>,
}

/// A loop-backed image as the fake host sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// Its size in bytes.
    pub size: u64,
    /// The file system in it; `None` while blank.
    pub fs: Option<String>,
    /// The loop device it is attached to.
    pub device: Option<String>,
}

type Responder = Rc<dyn Fn(&[String], &[(String, String)]) -> Result<Output, String>>;
type Matcher = Rc<dyn Fn(&Call) -> bool>;

#[derive(Clone, Copy)]
enum Interface {
    Mounts,
    Block,
    Exec,
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    logs: Vec<(Level, String)>,
    config: Vec<(String, String)>,
    /// Mount point → source.
    mounts: BTreeMap<String, String>,
    devices: BTreeMap<String, Device>,
    images: BTreeMap<String, Image>,
    next_loop: u32,
    programs: BTreeMap<String, Responder>,
    fail_next: [VecDeque<String>; 3],
    fail_when: Vec<(Matcher, String)>,
}

type Shared = Rc<RefCell<State>>;

thread_local! {
    static CURRENT: RefCell<Option<Shared>> = const { RefCell::new(None) };
}

/// The fake host of the current thread; see the [module docs](self).
///
/// Its fields script and inspect one capability each; [`Host::calls`] and [`Host::logs`]
/// record what the driver did. All methods take `&self`.
pub struct Host {
    /// The policy's `[config]` table.
    pub config: Config,
    /// What is mounted where.
    pub mounts: Mounts,
    /// Devices and images.
    pub block: Block,
    /// Programs and their answers.
    pub exec: Exec,
    state: Shared,
}

impl Host {
    /// A fresh host (nothing mounted, no devices, images, programs or config), installed for
    /// the current thread in place of any earlier one.
    pub fn new() -> Host {
        let state = Shared::default();
        CURRENT.with(|current| *current.borrow_mut() = Some(state.clone()));
        Host {
            config: Config(state.clone()),
            mounts: Mounts(state.clone()),
            block: Block(state.clone()),
            exec: Exec(state.clone()),
            state,
        }
    }

    /// Every host call so far, in order (log lines excepted).
    pub fn calls(&self) -> Vec<Call> {
        self.state.borrow().calls.clone()
    }

    /// Every host call so far, forgetting them: the next [`Host::calls`] starts empty.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.state.borrow_mut().calls)
    }

    /// Every line logged so far, in order.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.state.borrow().logs.clone()
    }

    /// Makes every call `matches` accepts fail with `message` (as the host's refusal), from
    /// now on. Calls that cannot fail (config and log) are never failed.
    ///
    /// ```
    /// use flex_sdk::testing::{Call, Host};
    ///
    /// let host = Host::new();
    /// host.block.add_device("/dev/xvdf", 1 << 30);
    /// host.fail_when(|call| matches!(call, Call::Mkfs { .. }), "mkfs.ext4 exited with 1");
    /// assert_eq!(flex_sdk::block::probe_fs("/dev/xvdf"), Ok(None));
    /// assert!(flex_sdk::block::mkfs("/dev/xvdf", "ext4").is_err());
    /// ```
    pub fn fail_when(&self, matches: impl Fn(&Call) -> bool + 'static, message: impl Into<String>) {
        self.state
            .borrow_mut()
            .fail_when
            .push((Rc::new(matches), message.into()));
    }
}

impl Default for Host {
    /// The same as [`Host::new`]: installs the new host for the current thread.
    fn default() -> Self {
        Host::new()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // `try_with`: the thread may be exiting, its locals already gone.
        let _ = CURRENT.try_with(|current| {
            let mut current = current.borrow_mut();
            if current.as_ref().is_some_and(|s| Rc::ptr_eq(s, &self.state)) {
                *current = None;
            }
        });
    }
}

/// The policy's `[config]` table, as [`config::get`](crate::config::get) and
/// [`config::get_all`](crate::config::get_all) read it (in insertion order).
pub struct Config(Shared);

impl Config {
    /// Sets `key` to `value`.
    pub fn insert(&self, key: impl Into<String>, value: impl Into<String>) {
        let (key, value) = (key.into(), value.into());
        let config = &mut self.0.borrow_mut().config;
        match config.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => config.push((key, value)),
        }
    }
    /// Removes `key`.
    pub fn remove(&self, key: &str) {
        self.0.borrow_mut().config.retain(|(k, _)| k != key);
    }
}

/// What is mounted where. [`Mount::mount`](crate::mounts::Mount::mount) adds a mount point,
/// [`unmount`](crate::mounts::unmount) removes it; these set up and inspect the same state.
pub struct Mounts(Shared);

impl Mounts {
    /// Makes `target` a mount point, as if an earlier call had mounted it.
    pub fn add(&self, target: impl Into<String>) {
        self.0
            .borrow_mut()
            .mounts
            .insert(target.into(), String::new());
    }
    /// Makes `target` no mount point, as if something else had unmounted it.
    pub fn remove(&self, target: &str) {
        self.0.borrow_mut().mounts.remove(target);
    }
    /// Whether `target` is a mount point.
    pub fn is_mounted(&self, target: &str) -> bool {
        self.0.borrow().mounts.contains_key(target)
    }
    /// Every mount point, sorted.
    pub fn mounted(&self) -> Vec<String> {
        self.0.borrow().mounts.keys().cloned().collect()
    }
    /// Makes the next call to a `mounts` function fail with `message`.
    pub fn fail_next(&self, message: impl Into<String>) {
        fail_next(&self.0, Interface::Mounts, message.into());
    }
}

/// Block devices and loop-backed images. A device is unknown (every call on it is refused)
/// until added; an image's loop device (`/dev/loop0`, `/dev/loop1`...) exists while it is
/// attached.
pub struct Block(Shared);

impl Block {
    /// Adds a blank device of `size` bytes at `path` (replacing one there).
    pub fn add_device(&self, path: impl Into<String>, size: u64) {
        let device = Device { size, fs: None };
        self.0.borrow_mut().devices.insert(path.into(), device);
    }
    /// Removes the device at `path`, as if it had been detached from the node.
    pub fn remove_device(&self, path: &str) {
        self.0.borrow_mut().devices.remove(path);
    }
    /// Puts a file system on the device at `path` (an added device or an attached image's
    /// loop device), as if it had been formatted before. Panics on an unknown device.
    pub fn set_fs(&self, path: &str, fs_type: impl Into<String>) {
        let mut state = self.0.borrow_mut();
        let (_, fs) = state
            .disk(path)
            .unwrap_or_else(|| panic!("set_fs: no device {path} in the test host"));
        *fs = Some(fs_type.into());
    }
    /// The device at `path` (an added one, or an attached image's loop device).
    pub fn device(&self, path: &str) -> Option<Device> {
        let mut state = self.0.borrow_mut();
        state.disk(path).map(|(size, fs)| Device {
            size: *size,
            fs: fs.clone(),
        })
    }
    /// Adds a blank, detached image of `size` bytes (replacing one of that name).
    pub fn add_image(&self, name: impl Into<String>, size: u64) {
        let image = Image {
            size,
            fs: None,
            device: None,
        };
        self.0.borrow_mut().images.insert(name.into(), image);
    }
    /// The image named `name`.
    pub fn image(&self, name: &str) -> Option<Image> {
        self.0.borrow().images.get(name).cloned()
    }
    /// Makes the next call to a `block` function fail with `message`.
    pub fn fail_next(&self, message: impl Into<String>) {
        fail_next(&self.0, Interface::Block, message.into());
    }
}

/// Host programs and what they answer. A program nobody scripted is refused as the host
/// refuses a program the policy does not grant.
pub struct Exec(Shared);

impl Exec {
    /// Makes every run of `program` answer `output`, whatever its arguments.
    pub fn respond(&self, program: impl Into<String>, output: Output) {
        self.respond_with(program, move |_, _| Ok(output.clone()));
    }
    /// Makes every run of `program` answer what `answer` returns for its arguments and
    /// environment; an `Err` is the host's refusal (the program never ran).
    ///
    /// ```
    /// use flex_sdk::exec::{self, Output};
    /// use flex_sdk::testing::Host;
    ///
    /// let host = Host::new();
    /// host.exec.respond_with("/usr/bin/lsblk", |args, _env| match args {
    ///     [flag, dev] if flag == "-no" && dev == "/dev/xvdf" => Ok(Output::success("xvdf\n")),
    ///     _ => Err(format!("denied: arguments {args:?} are not allowed")),
    /// });
    /// assert_eq!(exec::run("/usr/bin/lsblk", &["-no", "/dev/xvdf"], &[]).unwrap().stdout_text(), "xvdf\n");
    /// assert!(exec::run("/usr/bin/lsblk", &["-a"], &[]).is_err());
    /// assert!(exec::run("/bin/sh", &["-c", "true"], &[]).is_err());
    /// ```
    pub fn respond_with(
        &self,
        program: impl Into<String>,
        answer: impl Fn(&[String], &[(String, String)]) -> Result<Output, String> + 'static,
    ) {
        let answer: Responder = Rc::new(answer);
        self.0.borrow_mut().programs.insert(program.into(), answer);
    }
    /// Makes the next [`exec::run`](crate::exec::run) fail with `message`.
    pub fn fail_next(&self, message: impl Into<String>) {
        fail_next(&self.0, Interface::Exec, message.into());
    }
}

fn fail_next(state: &Shared, interface: Interface, message: String) {
    state.borrow_mut().fail_next[interface as usize].push_back(message);
}

impl State {
    /// The size and file system of a device: an added one, or an attached image's loop device.
    fn disk(&mut self, path: &str) -> Option<(&mut u64, &mut Option<String>)> {
        if let Some(image) = self
            .images
            .values_mut()
            .find(|i| i.device.as_deref() == Some(path))
        {
            return Some((&mut image.size, &mut image.fs));
        }
        self.devices.get_mut(path).map(|d| (&mut d.size, &mut d.fs))
    }

    fn known_disk(&mut self, path: &str) -> Result<(&mut u64, &mut Option<String>), String> {
        self.disk(path).ok_or_else(|| {
            format!(
                "denied: device {path:?} is not granted to this driver (block.devices, its own images)"
            )
        })
    }

    fn mount_point_of(&self, source: &str) -> Option<&str> {
        self.mounts
            .iter()
            .find(|(_, s)| *s == source)
            .map(|(target, _)| target.as_str())
    }
}

fn current() -> Shared {
    CURRENT
        .with(|current| current.borrow().clone())
        .unwrap_or_else(|| {
            panic!(
                "flex_sdk: a host call on a thread without a test host. Off wasm32 the SDK's \
                 host calls go to flex_sdk::testing::Host: create one first \
                 (`let host = flex_sdk::testing::Host::new();`) on the thread that calls the driver"
            )
        })
}

/// Records `call`, applies the scripted failures, then runs the fake's own behaviour.
fn fallible<T>(
    interface: Interface,
    call: Call,
    act: impl FnOnce(&mut State) -> Result<T, String>,
) -> Result<T, String> {
    let shared = current();
    let rules = {
        let mut state = shared.borrow_mut();
        state.calls.push(call.clone());
        if let Some(message) = state.fail_next[interface as usize].pop_front() {
            return Err(message);
        }
        state.fail_when.clone()
    };
    // Outside the borrow: a matcher may look at the host.
    if let Some((_, message)) = rules.iter().find(|(matches, _)| matches(&call)) {
        return Err(message.clone());
    }
    act(&mut shared.borrow_mut())
}

/// The fakes of the WIT imports, with the generated functions' signatures: the SDK's modules
/// call these instead of the bindings off wasm32.
pub(crate) mod fake {
    pub mod log {
        use super::super::{CURRENT, Level};

        pub fn log(level: Level, message: &str) {
            eprintln!("[{level:?}] {message}");
            CURRENT.with(|current| {
                if let Some(state) = current.borrow().as_ref() {
                    state.borrow_mut().logs.push((level, message.into()));
                }
            });
        }
    }

    pub mod mounts {
        use super::super::{Call, Interface, fallible};
        pub use crate::bindings::flex::volume::mounts::MountRequest;

        pub fn mount(request: &MountRequest) -> Result<(), String> {
            let call = Call::Mount {
                source: request.source.clone(),
                target: request.target.clone(),
                fs_type: request.fs_type.clone(),
                options: request.options.clone(),
                bind: request.bind,
            };
            fallible(Interface::Mounts, call, |state| {
                if state.mounts.contains_key(&request.target) {
                    return Err(format!(
                        "refused: {} is already a mount point",
                        request.target
                    ));
                }
                if !request.bind && request.source.starts_with('/') {
                    state.known_disk(&request.source)?;
                }
                state
                    .mounts
                    .insert(request.target.clone(), request.source.clone());
                Ok(())
            })
        }

        pub fn remount(target: &str, options: &[String]) -> Result<(), String> {
            let call = Call::Remount {
                target: target.into(),
                options: options.to_vec(),
            };
            fallible(Interface::Mounts, call, |state| {
                match state.mounts.contains_key(target) {
                    true => Ok(()),
                    false => Err(format!("{target} is not a mount point")),
                }
            })
        }

        pub fn unmount(target: &str) -> Result<(), String> {
            let call = Call::Unmount {
                target: target.into(),
            };
            fallible(Interface::Mounts, call, |state| {
                match state.mounts.remove(target) {
                    Some(_) => Ok(()),
                    None => Err(format!("{target} is not a mount point")),
                }
            })
        }

        pub fn is_mountpoint(path: &str) -> Result<bool, String> {
            let call = Call::IsMountpoint { path: path.into() };
            fallible(Interface::Mounts, call, |state| {
                Ok(state.mounts.contains_key(path))
            })
        }
    }

    pub mod block {
        use super::super::{Call, Image, Interface, fallible};

        pub fn probe_fs(device: &str) -> Result<Option<String>, String> {
            let call = Call::ProbeFs {
                device: device.into(),
            };
            fallible(Interface::Block, call, |state| {
                Ok(state.known_disk(device)?.1.clone())
            })
        }

        pub fn mkfs(device: &str, fs_type: &str) -> Result<(), String> {
            let call = Call::Mkfs {
                device: device.into(),
                fs_type: fs_type.into(),
            };
            fallible(Interface::Block, call, |state| {
                if let Some(point) = state.mount_point_of(device) {
                    return Err(format!("refused to format: {device} is mounted at {point}"));
                }
                let (_, fs) = state.known_disk(device)?;
                if let Some(kind) = fs {
                    return Err(format!(
                        "refused to format {device}: it already carries a signature ({kind})"
                    ));
                }
                *fs = Some(fs_type.into());
                Ok(())
            })
        }

        pub fn resize_fs(device: &str, mount_path: &str) -> Result<(), String> {
            let call = Call::ResizeFs {
                device: device.into(),
                mount_path: mount_path.into(),
            };
            fallible(Interface::Block, call, |state| {
                if state.known_disk(device)?.1.is_none() {
                    return Err(format!("{device} carries no file system to resize"));
                }
                match state.mounts.get(mount_path) {
                    Some(source) if source == device => Ok(()),
                    _ => Err(format!("{device} is not mounted at {mount_path}")),
                }
            })
        }

        pub fn device_size(device: &str) -> Result<u64, String> {
            let call = Call::DeviceSize {
                device: device.into(),
            };
            fallible(Interface::Block, call, |state| {
                Ok(*state.known_disk(device)?.0)
            })
        }

        pub fn wait_for_device(device: &str, timeout_ms: u32) -> Result<bool, String> {
            let call = Call::WaitForDevice {
                device: device.into(),
                timeout_ms,
            };
            fallible(Interface::Block, call, |state| {
                Ok(state.disk(device).is_some())
            })
        }

        pub fn create_image(name: &str, size: u64) -> Result<u64, String> {
            let call = Call::CreateImage {
                name: name.into(),
                size,
            };
            fallible(Interface::Block, call, |state| {
                if size == 0 {
                    return Err("denied: an image must be larger than 0 bytes".into());
                }
                let image = state.images.entry(name.into()).or_insert(Image {
                    size,
                    fs: None,
                    device: None,
                });
                Ok(image.size)
            })
        }

        pub fn image_size(name: &str) -> Result<Option<u64>, String> {
            let call = Call::ImageSize { name: name.into() };
            fallible(Interface::Block, call, |state| {
                Ok(state.images.get(name).map(|i| i.size))
            })
        }

        pub fn grow_image(name: &str, size: u64) -> Result<(), String> {
            let call = Call::GrowImage {
                name: name.into(),
                size,
            };
            fallible(Interface::Block, call, |state| {
                let image = state
                    .images
                    .get_mut(name)
                    .ok_or_else(|| format!("image {name} does not exist"))?;
                image.size = image.size.max(size);
                Ok(())
            })
        }

        pub fn delete_image(name: &str) -> Result<(), String> {
            let call = Call::DeleteImage { name: name.into() };
            fallible(Interface::Block, call, |state| {
                if let Some(device) = state.images.get(name).and_then(|i| i.device.as_ref()) {
                    return Err(format!(
                        "refused to delete image {name}: it is attached to {device}"
                    ));
                }
                state.images.remove(name);
                Ok(())
            })
        }

        pub fn attach_image(name: &str) -> Result<String, String> {
            let call = Call::AttachImage { name: name.into() };
            fallible(Interface::Block, call, |state| {
                let next = state.next_loop;
                let image = state
                    .images
                    .get_mut(name)
                    .ok_or_else(|| format!("image {name} does not exist"))?;
                if let Some(device) = &image.device {
                    return Ok(device.clone());
                }
                let device = format!("/dev/loop{next}");
                image.device = Some(device.clone());
                state.next_loop += 1;
                Ok(device)
            })
        }

        pub fn image_device(name: &str) -> Result<Option<String>, String> {
            let call = Call::ImageDevice { name: name.into() };
            fallible(Interface::Block, call, |state| {
                Ok(state.images.get(name).and_then(|i| i.device.clone()))
            })
        }

        pub fn detach_image(name: &str) -> Result<(), String> {
            let call = Call::DetachImage { name: name.into() };
            fallible(Interface::Block, call, |state| {
                let Some(device) = state.images.get(name).and_then(|i| i.device.clone()) else {
                    return Ok(());
                };
                if let Some(point) = state.mount_point_of(&device) {
                    return Err(format!(
                        "refused to detach {device}: it is mounted at {point}"
                    ));
                }
                if let Some(image) = state.images.get_mut(name) {
                    image.device = None;
                }
                Ok(())
            })
        }
    }

    pub mod exec {
        use super::super::{Call, Interface, fallible};
        use crate::exec::Output;

        pub fn run(
            program: &str,
            args: &[String],
            env: &[(String, String)],
        ) -> Result<Output, String> {
            let call = Call::Run {
                program: program.into(),
                args: args.to_vec(),
                env: env.to_vec(),
            };
            let answer = fallible(Interface::Exec, call, |state| {
                state.programs.get(program).cloned().ok_or_else(|| {
                    format!(
                        "denied: {program:?} is not listed in exec.programs (no answer scripted \
                         in the test host: Host::exec.respond)"
                    )
                })
            })?;
            // Called outside the borrow: the answer may look at the host.
            answer(args, env)
        }
    }

    pub mod config {
        use super::super::{Call, current};

        pub fn get(key: &str) -> Option<String> {
            let state = current();
            let mut state = state.borrow_mut();
            state.calls.push(Call::ConfigGet { key: key.into() });
            let value = state.config.iter().find(|(k, _)| k == key);
            value.map(|(_, v)| v.clone())
        }

        pub fn get_all() -> Vec<(String, String)> {
            let state = current();
            let mut state = state.borrow_mut();
            state.calls.push(Call::ConfigGetAll);
            state.config.clone()
        }
    }
}

//! One verb call: load the driver's compiled component, link the host imports its policy
//! grants, instantiate it in a fresh store with memory and time limits, call the verb.

use crate::artifact::{self, Note};
use crate::audit::Audit;
use crate::bindings::{self, DriverError};
use crate::caps::block::Block;
use crate::caps::config::Config as DriverConfig;
use crate::caps::exec::Exec;
use crate::caps::http::Http;
use crate::caps::mounts::{CallDirs, Mounts};
use crate::caps::state;
use crate::limits::CallLimiter;
use crate::locate::Plugin;
use crate::logfile::{Logger, Timings};
use crate::policy::Policy;
use crate::protocol::{Call, Reply};
use crate::wasi_link;
use std::path::Path;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Instance, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// What a driver may print to stdout/stderr before further output is refused. The output only
/// goes to the log; kubelet never sees it.
const GUEST_OUTPUT_BYTES: usize = 64 << 10;

/// How long a host call may keep running past the verb's deadline before `flex` replies
/// without it (the epoch interrupts only WebAssembly code).
const HOST_CALL_GRACE: Duration = Duration::from_secs(3);

/// The store's data for one call: WASI (stdio captured, nothing else) plus one field per
/// capability, each the `Host` implementation of its interface.
pub struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: CallLimiter,
    pub logger: Logger,
    mounts: Mounts,
    block: Block,
    exec: Exec,
    config: DriverConfig,
    http_ctx: WasiHttpCtx,
    http: Http,
}

impl WasiHttpView for CallState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http_ctx,
            table: &mut self.table,
            hooks: &mut self.http,
        }
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The one engine configuration: compiling and loading must agree on it, or wasmtime rejects
/// the cached artifact (and it is recompiled).
pub fn engine() -> Result<Engine, String> {
    let config: Config = artifact::config();
    Engine::new(&config).map_err(|e| format!("cannot start the WebAssembly engine: {e:#}"))
}

/// One call into a driver: who, under which policy, and what kubelet handed it.
pub struct CallSpec<'a> {
    pub plugin: &'a Plugin,
    pub policy: &'a Policy,
    /// The verb's name in the log and audit (`mount`, `provision`...).
    pub verb: &'a str,
    pub dry_run: bool,
    /// The directories the call may mount onto or unmount (call-scoped targets).
    pub targets: Vec<String>,
    /// Directories it may bind from without a grant.
    pub bind_sources: Vec<String>,
    /// The devices kubelet named in this call.
    pub devices: Vec<String>,
    /// The call runs in a per-call `flex`, which exits once it has replied. It replies and
    /// exits when a host call outlives the deadline (the epoch stops only WebAssembly code),
    /// where a long-running caller logs it and times the call out itself; and it leaves the
    /// instance's teardown to the exit (see [`finish`]).
    pub per_call_process: bool,
}

/// A FlexVolume verb, as kubelet or KCM called it: the reply to print.
pub fn run(
    plugin: &Plugin,
    policy: &Policy,
    call: Call,
    verb: &str,
    logger: Logger,
    dry_run: bool,
) -> (Reply, Logger) {
    let spec = CallSpec {
        plugin,
        policy,
        verb,
        dry_run,
        targets: owned(call_targets(&call)),
        bind_sources: call_bind_sources(&call),
        devices: owned(call_devices(&call)),
        per_call_process: true,
    };
    let (outcome, logger) = run_call(spec, logger, |store, instance| {
        let verbs = bindings::VerbsIndices::new(&instance.instance_pre(&*store))?
            .load(&mut *store, instance)?;
        call_verb(&verbs, store, call)
    });
    (outcome.unwrap_or_else(Reply::failure), logger)
}

/// Runs `invoke` on a fresh instance of the driver: the component loaded (its pin checked),
/// the imports its policy grants linked, limits and deadline applied. An error is the failure
/// message: the limit the call ran into, or what crashed.
pub fn run_call<T>(
    spec: CallSpec<'_>,
    logger: Logger,
    invoke: impl FnOnce(&mut Store<CallState>, &Instance) -> wasmtime::Result<T>,
) -> (Result<T, String>, Logger) {
    let CallSpec {
        plugin,
        policy,
        verb,
        dry_run,
        ..
    } = spec;
    let targets: Vec<&str> = spec.targets.iter().map(String::as_str).collect();
    let devices: Vec<&str> = spec.devices.iter().map(String::as_str).collect();
    let mut timings = Timings::start();
    let engine = match engine() {
        Ok(engine) => engine,
        Err(e) => return (Err(e), logger),
    };
    timings.mark("engine");
    let mut logger = logger;
    logger.set_limits(&policy.limits);
    // The pin is checked against the digest the artifact records of the bytes it was compiled
    // from, before any of it is mapped (see artifact.rs).
    let accept = |recorded: &artifact::Digest| match &policy.digest {
        Some(expected) => check_digest(&plugin.component, recorded, expected),
        None => Ok(()),
    };
    let mut notes = Vec::new();
    let loaded = artifact::load(&engine, &plugin.component, &accept, &mut notes);
    for note in notes {
        match note {
            Note::Info(message) => logger.info(&message),
            Note::Warn(message) => logger.log("warn", "host", &message),
            Note::Error(message) => logger.error(&message),
        }
    }
    let component = match loaded {
        Ok(component) => component,
        Err(e) => return (Err(e), logger),
    };
    timings.mark("artifact_load");

    let stdout = MemoryOutputPipe::new(GUEST_OUTPUT_BYTES);
    let stderr = MemoryOutputPipe::new(GUEST_OUTPUT_BYTES);
    let mut wasi = WasiCtx::builder();
    wasi.stdout(stdout.clone()).stderr(stderr.clone());
    let state_dir = match &policy.state {
        None => None,
        Some(grant) => {
            let prepared = state::Prepared::new(grant, &plugin.name, &policy.limits, dry_run)
                .and_then(|prepared| {
                    let perms = match prepared.read_only {
                        true => FsPerms::ReadOnly,
                        false => FsPerms::ReadWrite,
                    };
                    wasi.preopened_dir(&prepared.dir, state::GUEST_PATH, perms)
                        .map_err(|e| format!("cannot open the state directory: {e}"))?;
                    Ok(prepared)
                });
            match prepared {
                Ok(prepared) => {
                    if prepared.is_scratch() {
                        logger.info("dry run: /state is a scratch copy, removed after the call");
                    }
                    if let Some(note) = &prepared.note {
                        logger.error(&format!("state directory read-only for this call: {note}"));
                    }
                    Some(prepared)
                }
                // Controller verbs on a read-only control plane need no state: the driver runs
                // without `/state` and any use of it fails in the driver, with its message.
                Err(e) if e.starts_with(state::UNAVAILABLE) => {
                    logger.log(
                        "warn",
                        "host",
                        &format!("{e}: /state is absent for this call"),
                    );
                    None
                }
                Err(e) => return (Err(e), logger),
            }
        }
    };
    let wasi = wasi.build();
    let audit =
        Audit::new(&plugin.name, verb, dry_run).with_line_limit(policy.limits.audit_line_bytes);
    let deadline = Duration::from_secs(match verb {
        "waitforattach" => policy.limits.wait_for_attach_deadline_seconds,
        _ => policy.limits.deadline_seconds,
    });
    let deadline_at = Instant::now() + deadline;
    let state = CallState {
        wasi,
        table: ResourceTable::new(),
        limits: CallLimiter::new(&policy.limits),
        logger,
        mounts: Mounts::new(
            &policy.mount,
            CallDirs::new(&targets, &spec.bind_sources),
            &policy.limits,
            audit.clone(),
        )
        .with_device_check(crate::caps::block::mount_device_check(
            &policy.block,
            &plugin.name,
            &devices,
            dry_run,
        )),
        block: Block::new(
            &policy.block,
            &policy.limits,
            &plugin.name,
            &devices,
            audit.clone(),
        ),
        exec: Exec::new(&policy.exec, &policy.limits, audit.clone()),
        config: DriverConfig(policy.config.clone()),
        http_ctx: WasiHttpCtx::new(),
        http: Http::new(&policy.http, deadline_at, audit),
    };
    let mut store = Store::new(&engine, state);
    store.limiter(|state| &mut state.limits);
    store.set_epoch_deadline(1);
    let watchdog = Watchdog::start(
        engine.clone(),
        &plugin.name,
        verb,
        deadline,
        spec.per_call_process,
    );

    // A call that grows its state directory past the limits is stopped, like one past its
    // deadline, and fails naming the limit.
    let state_watch = state_dir.as_ref().filter(|p| !p.read_only).map(|prepared| {
        let stopper = engine.clone();
        state::watch(prepared.dir.clone(), policy.limits, move || {
            stopper.increment_epoch()
        })
    });

    timings.mark("store");
    let outcome = link(&engine, &component, &mut store).and_then(|linker| {
        timings.mark("link");
        // Instantiated before its exports are looked up, so a component's start code runs
        // (and meets the store's limits) even if it exports no verbs.
        let instance = linker.instantiate(&mut store, &component)?;
        timings.mark("instantiate");
        invoke(&mut store, &instance)
    });
    timings.mark("call");
    drop(watchdog);
    let (growth_limit, mut logger) = finish(store, component, spec.per_call_process);
    for (name, pipe) in [("stdout", &stdout), ("stderr", &stderr)] {
        // Within the same per-call budget as the driver's `log` import.
        logger.driver_output(&format!("driver {name}"), &pipe.contents());
    }
    // The state directory is measured once more at the end: a call that left it over its
    // limits fails, however quickly it wrote.
    let state_limit = state_watch.as_ref().and_then(|w| w.exceeded()).or_else(|| {
        let prepared = state_dir.as_ref().filter(|p| !p.read_only)?;
        state::over_limits(&prepared.dir, &policy.limits)
    });
    let outcome = match (outcome, state_limit) {
        (_, Some(limit)) => Err(wasmtime::Error::msg(limit.clone()).context(StateLimit(limit))),
        (outcome, None) => outcome,
    };
    let result = match outcome {
        Ok(value) => Ok(value),
        Err(e) => {
            logger.error(&format!("{e:?}"));
            // A limit the call ran into explains the trap or error better than the trap does.
            let limit = e
                .downcast_ref::<StateLimit>()
                .map(|l| l.0.clone())
                .or(growth_limit)
                .or_else(|| {
                    crate::limits::count_limit_in(&format!("{e:#}")).map(|name| {
                        crate::limits::exceeded(name, "the component needs more at instantiation")
                    })
                });
            match limit {
                Some(limit) => Err(format!(
                    "driver {} stopped during {verb}: {limit}",
                    plugin.name
                )),
                None => Err(crash_message(
                    &plugin.name,
                    verb,
                    &e,
                    &stderr.contents(),
                    deadline,
                )),
            }
        }
    };
    drop(state_dir); // a dry run's scratch copy goes
    timings.write(&mut logger);
    (result, logger)
}

/// Stops a call at its deadline: the epoch interrupts WebAssembly code; a host call still
/// blocked on the outside world a grace period later is answered for (per-call `flex`) or
/// logged (a long-running caller). Dropped with the call: the channel closes and the thread
/// ends at once.
struct Watchdog {
    _call: std::sync::mpsc::Sender<()>,
}

impl Watchdog {
    fn start(
        engine: Engine,
        driver: &str,
        verb: &str,
        deadline: Duration,
        exit_when_stuck: bool,
    ) -> Watchdog {
        use std::sync::mpsc::{RecvTimeoutError, channel};
        let (call, finished) = channel::<()>();
        let (driver, verb) = (driver.to_string(), verb.to_string());
        std::thread::spawn(move || {
            if finished.recv_timeout(deadline) != Err(RecvTimeoutError::Timeout) {
                return;
            }
            engine.increment_epoch();
            if finished.recv_timeout(HOST_CALL_GRACE) != Err(RecvTimeoutError::Timeout) {
                return;
            }
            let message = format!(
                "driver {driver} did not finish within {}s during {verb} (blocked in a host call)",
                deadline.as_secs()
            );
            Logger::open(&driver, &verb).error(&message);
            if exit_when_stuck {
                crate::reply_and_exit(&Reply::failure(message));
            }
        });
        Watchdog { _call: call }
    }
}

/// The limit the call's growth ran into, and its logger. A per-call `flex` exits right after
/// the reply, so it leaves the instance and the artifact to the kernel: unmapping a large
/// component's linear memories and mapping, with TLB shootdowns while the call's other threads
/// still run, and freeing its metadata cost a Python driver roughly 0.5 ms per call (`make
/// bench`, its exec + exit phase over the Rust driver's, in runs before and after). Nothing in
/// the store has a `Drop` with effects beyond memory: audit and log lines are written when
/// they happen. A long-running caller drops both as usual.
fn finish(
    mut store: Store<CallState>,
    component: Component,
    per_call_process: bool,
) -> (Option<String>, Logger) {
    if !per_call_process {
        let data = store.into_data();
        return (data.limits.hit, data.logger);
    }
    let data = store.data_mut();
    let growth_limit = data.limits.hit.take();
    let logger = std::mem::replace(&mut data.logger, Logger::to_file(Path::new(""), "", ""));
    std::mem::forget(store);
    std::mem::forget(component);
    (growth_limit, logger)
}

/// The state directory's limit, carried through the call's error.
#[derive(Debug)]
struct StateLimit(String);

impl std::fmt::Display for StateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn link(
    engine: &Engine,
    component: &Component,
    store: &mut Store<CallState>,
) -> wasmtime::Result<Linker<CallState>> {
    let (mut linker, uncommon) = wasi_link::link_imported(engine, component)?;
    bindings::flex::volume::log::add_to_linker::<_, HasSelf<Logger>>(&mut linker, |s| {
        &mut s.logger
    })?;
    use bindings::flex::volume as flex;
    flex::mounts::add_to_linker::<_, HasSelf<Mounts>>(&mut linker, |s| &mut s.mounts)?;
    flex::block::add_to_linker::<_, HasSelf<Block>>(&mut linker, |s| &mut s.block)?;
    flex::exec::add_to_linker::<_, HasSelf<Exec>>(&mut linker, |s| &mut s.exec)?;
    flex::config::add_to_linker::<_, HasSelf<DriverConfig>>(&mut linker, |s| &mut s.config)?;
    if !uncommon.is_empty() {
        let note = format!(
            "component imports {}: linking all of WASI",
            uncommon.join(", ")
        );
        store.data_mut().logger.info(&note);
    }
    Ok(linker)
}

/// The policy's `digest` against the digest recorded in the artifact, i.e. of the exact bytes
/// it was compiled from: no hashing per call, and no artifact of another component can pass.
fn check_digest(
    component: &std::path::Path,
    recorded: &artifact::Digest,
    expected: &str,
) -> Result<(), String> {
    let actual = artifact::digest_string(recorded);
    if actual.eq_ignore_ascii_case(expected) {
        return Ok(());
    }
    Err(format!(
        "denied: refusing driver component {}: its digest is {actual}, the policy requires {expected}",
        component.display()
    ))
}

fn owned(strings: Vec<&str>) -> Vec<String> {
    strings.into_iter().map(str::to_string).collect()
}

/// The directories kubelet handed to this call: the only ones a driver may mount onto.
fn call_targets(call: &Call) -> Vec<&str> {
    match call {
        Call::Mount { dir, .. } | Call::Unmount { dir } => vec![dir],
        Call::MountDevice { path, .. } | Call::UnmountDevice { path } => vec![path],
        _ => vec![],
    }
}

/// The devices kubelet handed to this call (named as such in the audit; see caps::block).
fn call_devices(call: &Call) -> Vec<&str> {
    match call {
        Call::WaitForAttach { device, .. }
        | Call::MountDevice { device, .. }
        | Call::ExpandFs { device, .. } => vec![device],
        _ => vec![],
    }
}

/// Directories a driver may bind from without a grant: in `mount`, the volume's device mount
/// path, which is what kubelet itself would bind.
fn call_bind_sources(call: &Call) -> Vec<String> {
    match call {
        Call::Mount { dir, .. } => crate::caps::mounts::device_mount_path_for(dir)
            .into_iter()
            .collect(),
        _ => vec![],
    }
}

fn call_verb(
    verbs: &bindings::Verbs,
    store: &mut Store<CallState>,
    call: Call,
) -> wasmtime::Result<Reply> {
    let s = store;
    Ok(match call {
        Call::Init => reply(verbs.call_init(s)?, |caps| Reply {
            capabilities: Some(caps.into()),
            ..Reply::success()
        }),
        Call::GetVolumeName { options } => {
            reply(verbs.call_get_volume_name(s, &options)?, |name| Reply {
                volume_name: Some(name),
                ..Reply::success()
            })
        }
        Call::Attach { options, node } => {
            reply(verbs.call_attach(s, &options, &node)?, device_reply)
        }
        Call::Detach { volume, node } => reply(verbs.call_detach(s, &volume, &node)?, success),
        Call::WaitForAttach { device, options } => reply(
            verbs.call_wait_for_attach(s, &device, &options)?,
            device_reply,
        ),
        Call::IsAttached { options, node } => {
            reply(verbs.call_is_attached(s, &options, &node)?, |attached| {
                Reply {
                    attached: Some(attached),
                    ..Reply::success()
                }
            })
        }
        Call::MountDevice {
            path,
            device,
            options,
        } => reply(
            verbs.call_mount_device(s, &path, &device, &options)?,
            success,
        ),
        Call::UnmountDevice { path } => reply(verbs.call_unmount_device(s, &path)?, success),
        Call::Mount { dir, options } => reply(verbs.call_mount(s, &dir, &options)?, success),
        Call::Unmount { dir } => reply(verbs.call_unmount(s, &dir)?, success),
        Call::ExpandVolume {
            options,
            path,
            new_size,
            old_size,
        } => reply(
            verbs.call_expand_volume(s, &options, &path, new_size, old_size)?,
            |size| Reply {
                volume_new_size: Some(size),
                ..Reply::success()
            },
        ),
        Call::ExpandFs {
            options,
            device,
            path,
            new_size,
            old_size,
        } => reply(
            verbs.call_expand_fs(s, &options, &device, &path, new_size, old_size)?,
            success,
        ),
        Call::Provision { options } => reply(verbs.call_provision(s, &options)?, success),
        Call::Delete { options } => reply(verbs.call_delete(s, &options)?, success),
    })
}

fn reply<T>(result: Result<T, DriverError>, on_success: impl FnOnce(T) -> Reply) -> Reply {
    match result {
        Ok(value) => on_success(value),
        Err(DriverError::NotSupported) => Reply::not_supported("not supported by this driver"),
        Err(DriverError::Failure(message)) => Reply::failure(message),
    }
}

fn success(_: ()) -> Reply {
    Reply::success()
}

fn device_reply(device: String) -> Reply {
    Reply {
        device: Some(device),
        ..Reply::success()
    }
}

/// A trap or link error, in words an operator can act on; the full error is in the log.
fn crash_message(
    driver: &str,
    verb: &str,
    error: &wasmtime::Error,
    stderr: &[u8],
    deadline: Duration,
) -> String {
    let reason = match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => format!("did not finish within {}s", deadline.as_secs()),
        Some(trap) => format!("crashed ({trap})"),
        None => format!("could not run: {}", error.root_cause()),
    };
    let stderr = String::from_utf8_lossy(stderr);
    // A Rust guest's panic message is the most useful line it printed.
    let detail = stderr
        .lines()
        .skip_while(|line| !line.contains("panicked at"))
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let detail = if detail.is_empty() {
        stderr.lines().last().unwrap_or("").to_string()
    } else {
        detail
    };
    let mut message = format!("driver {driver} {reason} during {verb}");
    if !detail.is_empty() {
        message.push_str(": ");
        message.extend(detail.chars().take(500));
    }
    message
}

//! One verb call: load the driver's compiled component, link the host imports its policy
//! grants, instantiate it in a fresh store with memory and time limits, call the verb.

mod store;
mod verbs;
mod watchdog;

use crate::artifact::{self, Note};
use crate::bindings;
use crate::caps::mounts::CallDirs;
use crate::caps::state;
use crate::limits::{CallLimiter, Limits};
use crate::locate::Plugin;
use crate::logfile::{Logger, Timings};
use crate::policy::Policy;
use crate::protocol::{Call, Reply};
use std::path::Path;
use std::time::{Duration, Instant};
pub use store::CallState;
use store::{Grants, link, wasi_ctx};
use verbs::{call_bind_sources, call_devices, call_targets, call_verb, owned};
use wasmtime::component::{Component, Instance, ResourceTable};
use wasmtime::{Config, Engine, Store, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi_http::WasiHttpCtx;
pub use watchdog::{Watchdog, WhenStuck};

/// What a driver may print to stdout/stderr before further output is refused. The output only
/// goes to the log; kubelet never sees it.
const GUEST_OUTPUT_BYTES: usize = 64 << 10;

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
    let spec = verb_spec(plugin, policy, &call, verb, dry_run);
    let (outcome, logger) = run_call(spec, logger, |store, instance| {
        invoke_verb(store, instance, call)
    });
    (outcome.unwrap_or_else(Reply::failure), logger)
}

/// The spec of a kubelet verb call: its directories and devices are what it may use.
pub fn verb_spec<'a>(
    plugin: &'a Plugin,
    policy: &'a Policy,
    call: &Call,
    verb: &'a str,
    dry_run: bool,
) -> CallSpec<'a> {
    CallSpec {
        plugin,
        policy,
        verb,
        dry_run,
        targets: owned(call_targets(call)),
        bind_sources: call_bind_sources(call),
        devices: owned(call_devices(call)),
        per_call_process: true,
    }
}

/// Calls the verb's export on an instance: the reply kubelet reads.
pub fn invoke_verb(
    store: &mut Store<CallState>,
    instance: &Instance,
    call: Call,
) -> wasmtime::Result<Reply> {
    let verbs = bindings::VerbsIndices::new(&instance.instance_pre(&*store))?
        .load(&mut *store, instance)?;
    call_verb(&verbs, store, call)
}

/// Runs `invoke` on a fresh instance of the driver: the component loaded (its pin checked),
/// the imports linked, instantiated with nothing granted, then given the policy's grants for
/// this call, limits and deadline applied. An error is the failure message: the limit the
/// call ran into, or what crashed.
pub fn run_call<T>(
    spec: CallSpec<'_>,
    logger: Logger,
    invoke: impl FnOnce(&mut Store<CallState>, &Instance) -> wasmtime::Result<T>,
) -> (Result<T, String>, Logger) {
    let mut started = match Started::load(spec.plugin, spec.policy, logger) {
        Ok(started) => started,
        Err(failed) => {
            let (e, logger) = *failed;
            return (Err(e), logger);
        }
    };
    // One deadline from instantiation to the reply.
    let when_stuck = match spec.per_call_process {
        true => WhenStuck::Reply,
        false => WhenStuck::Log,
    };
    let watchdog = started.watchdog(spec.verb, when_stuck);
    let instance = started.instantiate();
    started.call(spec, instance, watchdog, invoke)
}

/// How long the verb may run.
fn deadline(limits: &Limits, verb: &str) -> Duration {
    Duration::from_secs(match verb {
        "waitforattach" => limits.wait_for_attach_deadline_seconds,
        _ => limits.deadline_seconds,
    })
}

/// The verb's name in the audit for what a component's start code asks for.
const START_VERB: &str = "start";

/// A driver's component loaded in a store of its own, before the call is known: nothing is
/// granted yet. Its start code, run by [`Started::instantiate`], meets the policy's limits and
/// is refused every privileged import (audited as verb `start`), whether the call then runs
/// in this process or in a warm child (`crate::warm`).
pub struct Started {
    engine: Engine,
    component: Component,
    store: Store<CallState>,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
    driver: String,
    limits: Limits,
    pub timings: Timings,
}

impl Started {
    /// Loads `plugin`'s component under `policy`'s limits and pin. An error is the failure
    /// message, with the logger back.
    pub fn load(
        plugin: &Plugin,
        policy: &Policy,
        logger: Logger,
    ) -> Result<Started, Box<(String, Logger)>> {
        let mut timings = Timings::start();
        let engine = match engine() {
            Ok(engine) => engine,
            Err(e) => return Err(Box::new((e, logger))),
        };
        timings.mark("engine");
        let mut logger = logger;
        logger.set_limits(&policy.limits);
        // The pin is checked against the digest the artifact records of the bytes it was
        // compiled from, before any of it is mapped (see artifact.rs).
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
            Err(e) => return Err(Box::new((e, logger))),
        };
        timings.mark("artifact_load");
        let stdout = MemoryOutputPipe::new(GUEST_OUTPUT_BYTES);
        let stderr = MemoryOutputPipe::new(GUEST_OUTPUT_BYTES);
        let nothing = Policy {
            limits: policy.limits,
            ..Policy::default()
        };
        let no_call = CallDirs::new(&[], &[]);
        let far = Instant::now() + deadline(&policy.limits, START_VERB);
        let grants = Grants::new(plugin, &nothing, START_VERB, false, no_call, &[], far);
        let wasi = match wasi_ctx(&stdout, &stderr, None) {
            Ok(wasi) => wasi,
            Err(e) => return Err(Box::new((e, logger))),
        };
        let state = CallState {
            wasi,
            table: ResourceTable::new(),
            limits: CallLimiter::new(&policy.limits),
            logger,
            grants,
            http_ctx: WasiHttpCtx::new(),
        };
        let mut store = Store::new(&engine, state);
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(1);
        timings.mark("store");
        Ok(Started {
            engine,
            component,
            store,
            stdout,
            stderr,
            driver: plugin.name.clone(),
            limits: policy.limits,
            timings,
        })
    }

    /// The deadline of a `verb` call, from now.
    pub fn watchdog(&self, verb: &str, when_stuck: WhenStuck) -> Watchdog {
        let deadline = deadline(&self.limits, verb);
        Watchdog::start(
            self.engine.clone(),
            &self.driver,
            verb,
            deadline,
            when_stuck,
        )
    }

    /// Links the imports and runs the component's start code, with nothing granted.
    pub fn instantiate(&mut self) -> wasmtime::Result<Instance> {
        let linker = link(&self.engine, &self.component, &mut self.store)?;
        self.timings.mark("link");
        // Instantiated before its exports are looked up, so a component's start code runs
        // (and meets the store's limits) even if it exports no verbs.
        let instance = linker.instantiate(&mut self.store, &self.component);
        self.timings.mark("instantiate");
        instance
    }

    /// The logger of the call from here on (a warm child's call is known only now).
    pub fn set_logger(&mut self, mut logger: Logger) {
        logger.set_limits(&self.limits);
        self.store.data_mut().logger = logger;
    }

    /// Runs `invoke` on `instance` with `spec`'s grants: its state directory prepared, its
    /// mounts, devices and deadline; then the call's outcome in words, its logger back.
    pub fn call<T>(
        self,
        spec: CallSpec<'_>,
        instance: wasmtime::Result<Instance>,
        watchdog: Watchdog,
        invoke: impl FnOnce(&mut Store<CallState>, &Instance) -> wasmtime::Result<T>,
    ) -> (Result<T, String>, Logger) {
        let Started {
            engine,
            component,
            mut store,
            stdout,
            stderr,
            mut timings,
            ..
        } = self;
        let CallSpec {
            plugin,
            policy,
            verb,
            dry_run,
            ..
        } = spec;
        let deadline = deadline(&policy.limits, verb);
        let logger = &mut store.data_mut().logger;
        let granted = granted_state_dir(plugin, policy, dry_run, logger).and_then(|state_dir| {
            let wasi = wasi_ctx(&stdout, &stderr, state_dir.as_ref())?;
            Ok((state_dir, wasi))
        });
        let (state_dir, wasi) = match granted {
            Ok(granted) => granted,
            Err(e) => {
                drop(watchdog);
                let (_, logger) = finish(store, component, spec.per_call_process);
                return (Err(e), logger);
            }
        };
        let targets: Vec<&str> = spec.targets.iter().map(String::as_str).collect();
        let devices: Vec<&str> = spec.devices.iter().map(String::as_str).collect();
        let dirs = CallDirs::new(&targets, &spec.bind_sources);
        let deadline_at = Instant::now() + deadline;
        let data = store.data_mut();
        data.grants = Grants::new(plugin, policy, verb, dry_run, dirs, &devices, deadline_at);
        data.wasi = wasi;

        // A call that grows its state directory past the limits is stopped, like one past its
        // deadline, and fails naming the limit.
        let state_watch = state_dir.as_ref().filter(|p| !p.read_only).map(|prepared| {
            let stopper = engine.clone();
            state::watch(prepared.dir.clone(), policy.limits, move || {
                stopper.increment_epoch()
            })
        });
        timings.mark("grant");
        let outcome = instance.and_then(|instance| invoke(&mut store, &instance));
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
                            crate::limits::exceeded(
                                name,
                                "the component needs more at instantiation",
                            )
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
}

/// The state directory the policy grants, prepared for this call (a dry run's is a scratch
/// copy); none when the policy grants none, or a controller verb finds it unavailable.
fn granted_state_dir(
    plugin: &Plugin,
    policy: &Policy,
    dry_run: bool,
    logger: &mut Logger,
) -> Result<Option<state::Prepared>, String> {
    let Some(grant) = &policy.state else {
        return Ok(None);
    };
    match state::Prepared::new(grant, &plugin.name, &policy.limits, dry_run) {
        Ok(prepared) => {
            if prepared.is_scratch() {
                logger.info("dry run: /state is a scratch copy, removed after the call");
            }
            if let Some(note) = &prepared.note {
                logger.error(&format!("state directory read-only for this call: {note}"));
            }
            Ok(Some(prepared))
        }
        // Controller verbs on a read-only control plane need no state: the driver runs
        // without `/state` and any use of it fails in the driver, with its message.
        Err(e) if e.starts_with(state::UNAVAILABLE) => {
            logger.log(
                "warn",
                "host",
                &format!("{e}: /state is absent for this call"),
            );
            Ok(None)
        }
        Err(e) => Err(e),
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

//! The store's data for one call and the linker that reaches it: WASI (stdio captured, the
//! state directory if granted, nothing else) plus one field per capability, each the `Host`
//! implementation of its interface.

use crate::audit::Audit;
use crate::bindings;
use crate::caps::block::Block;
use crate::caps::config::Config as DriverConfig;
use crate::caps::exec::Exec;
use crate::caps::http::Http;
use crate::caps::mounts::{CallDirs, Mounts};
use crate::caps::state;
use crate::limits::CallLimiter;
use crate::locate::Plugin;
use crate::logfile::Logger;
use crate::policy::Policy;
use crate::wasi_link;
use std::time::Instant;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

pub struct CallState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limits: CallLimiter,
    pub logger: Logger,
    pub(super) grants: Grants,
    pub(super) http_ctx: WasiHttpCtx,
}

/// What the policy grants one call, each capability checked against it: replaced as a whole
/// when the call is known (see `Started::call`).
pub(super) struct Grants {
    mounts: Mounts,
    block: Block,
    exec: Exec,
    config: DriverConfig,
    http: Http,
}

impl Grants {
    /// `policy`'s grants for a `verb` call handed `dirs` and `devices`.
    pub(super) fn new(
        plugin: &Plugin,
        policy: &Policy,
        verb: &str,
        dry_run: bool,
        dirs: CallDirs,
        devices: &[&str],
        deadline_at: Instant,
    ) -> Grants {
        let audit =
            Audit::new(&plugin.name, verb, dry_run).with_line_limit(policy.limits.audit_line_bytes);
        let device_check =
            crate::caps::block::mount_device_check(&policy.block, &plugin.name, devices, dry_run);
        Grants {
            mounts: Mounts::new(&policy.mount, dirs, &policy.limits, audit.clone())
                .with_device_check(device_check),
            block: Block::new(
                &policy.block,
                &policy.limits,
                &plugin.name,
                devices,
                audit.clone(),
            ),
            exec: Exec::new(&policy.exec, &policy.limits, audit.clone()),
            config: DriverConfig(policy.config.clone()),
            http: Http::new(&policy.http, deadline_at, audit),
        }
    }
}

/// WASI with the driver's stdout and stderr captured and, if granted, its state directory at
/// `/state`.
pub(super) fn wasi_ctx(
    stdout: &MemoryOutputPipe,
    stderr: &MemoryOutputPipe,
    state_dir: Option<&state::Prepared>,
) -> Result<WasiCtx, String> {
    let mut wasi = WasiCtx::builder();
    wasi.stdout(stdout.clone()).stderr(stderr.clone());
    if let Some(prepared) = state_dir {
        let perms = match prepared.read_only {
            true => FsPerms::ReadOnly,
            false => FsPerms::ReadWrite,
        };
        wasi.preopened_dir(&prepared.dir, state::GUEST_PATH, perms)
            .map_err(|e| format!("cannot open the state directory: {e}"))?;
    }
    Ok(wasi.build())
}

impl WasiHttpView for CallState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http_ctx,
            table: &mut self.table,
            hooks: &mut self.grants.http,
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

pub(super) fn link(
    engine: &Engine,
    component: &Component,
    store: &mut Store<CallState>,
) -> wasmtime::Result<Linker<CallState>> {
    let (mut linker, uncommon) = wasi_link::link_imported(engine, component)?;
    bindings::flex::volume::log::add_to_linker::<_, HasSelf<Logger>>(&mut linker, |s| {
        &mut s.logger
    })?;
    use bindings::flex::volume as flex;
    flex::mounts::add_to_linker::<_, HasSelf<Mounts>>(&mut linker, |s| &mut s.grants.mounts)?;
    flex::block::add_to_linker::<_, HasSelf<Block>>(&mut linker, |s| &mut s.grants.block)?;
    flex::exec::add_to_linker::<_, HasSelf<Exec>>(&mut linker, |s| &mut s.grants.exec)?;
    flex::config::add_to_linker::<_, HasSelf<DriverConfig>>(&mut linker, |s| &mut s.grants.config)?;
    if !uncommon.is_empty() {
        let note = format!(
            "component imports {}: linking all of WASI",
            uncommon.join(", ")
        );
        store.data_mut().logger.info(&note);
    }
    Ok(linker)
}

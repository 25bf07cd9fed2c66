//! Host bindings generated from `wit/flex.wit`.
//!
//! Generated for `provisioning-driver`, the widest world: every driver exports `verbs`, and a
//! provisioning one `provisioning` too, so each export is looked up on its own
//! (`GuestIndices`), never as a whole world a component must match.

wasmtime::component::bindgen!({
    world: "provisioning-driver",
    path: "../wit",
});

pub use exports::flex::volume::provisioning::{
    AccessMode, Guest as Provisioning, GuestIndices as ProvisioningIndices, ProvisionRequest,
    Provisioned, ProvisionerInfo,
};
pub use exports::flex::volume::verbs::{Guest as Verbs, GuestIndices as VerbsIndices};
pub use flex::volume::types::{Capabilities, Error as DriverError, Options, Secret};

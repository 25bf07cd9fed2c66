//! Host bindings generated from `wit/flex.wit`.

wasmtime::component::bindgen!({
    world: "driver",
    path: "../wit",
});

pub use exports::flex::volume::verbs::Guest as Verbs;
pub use flex::volume::types::{Capabilities, Error as DriverError, Options, Secret};

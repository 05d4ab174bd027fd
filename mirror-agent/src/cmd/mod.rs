//! The subcommands: each wires the layers below together and handles
//! signals; none holds logic of its own.

pub mod attach;
pub mod collect;
pub mod run;
pub mod sidecar;
pub mod status;
pub mod stop;
pub mod uninstall;
pub mod webhook;

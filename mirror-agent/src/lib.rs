//! The mirror's userspace agent as a library: the binary in `main.rs` is a
//! thin command-line front end over these modules, and tests and fuzz
//! targets use them directly.

pub mod cli;
pub mod cmd;
pub mod collect;
pub mod controller;
pub mod datapath;
pub mod discovery;
pub mod export;
pub mod k8s;
pub mod kernel;
pub mod metrics;
pub mod model;
pub mod policy;

//! The mirror's userspace agent as a library: the binary in `main.rs` is a
//! thin command-line front end over these modules, and tests and fuzz
//! targets use them directly.

pub mod attach;
pub mod cli;
pub mod hooks;
pub mod pcapng;
pub mod record;
pub mod ringbuf;

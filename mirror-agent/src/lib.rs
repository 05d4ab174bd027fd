//! The mirror's userspace agent as a library: the binary in `main.rs` is a
//! thin command-line front end over these modules, and tests and fuzz
//! targets use them directly.
//!
//! Layers, bottom first; a module names only lower ranks (`cargo xtask layers`):
//! `model` 0 (value types, the record view) · `metrics` 1 · `kernel` 2 (objects,
//! maps, links, pins, ring) · `policy` 3 · `export` 4 (outputs, `encap`, `pcapng`) ·
//! `discovery` 5 · `datapath` 6 and `collect` 6 · `k8s` 7 · `controller` 8 · `cli` 9 ·
//! `cmd` 10 (wiring and signals only).
//!
//! One packet: `mirror-ebpf` writes a ring record (header in `mirror-common`) →
//! `kernel::ring` → `datapath::{drain, pump, fanout}` (with `policy`'s filters and
//! rate limit) → `export` (queue, then `tunnel` or `stream`) → the network →
//! `collect::{receive, tcp}` → `collect::{datagram, stream}` → `collect::writer`.
//! The whole map, the control path and the pins: `docs/ARCHITECTURE.md`.

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

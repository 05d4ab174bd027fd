//! The mirror's userspace agent as a library: the binary in `main.rs` is a
//! thin command-line front end over these modules, and tests and fuzz
//! targets use them directly.

pub mod attach;
pub mod cli;
pub mod collect;
pub mod discovery;
pub mod encap;
pub mod export;
pub mod fanout;
pub mod hooks;
pub mod k8s;
pub mod kfilter;
pub mod metrics;
pub mod mirror;
pub mod netns;
pub mod output;
pub mod pcapfilter;
pub mod pcapng;
pub mod pin;
pub mod plan;
pub mod policy;
pub mod pump;
pub mod qdisc;
pub mod ratelimit;
pub mod record;
pub mod ringbuf;
pub mod rules;
pub mod run;
pub mod tls;
pub mod uninstall;

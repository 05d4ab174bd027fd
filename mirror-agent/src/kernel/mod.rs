//! Kernel access: the loaded eBPF objects, their maps and links, pins on
//! bpffs, qdiscs, network namespaces and netlink. Knows no policy and no
//! Kubernetes.

pub mod cgroup;
pub mod hooks;
pub mod inspect;
pub mod link_events;
pub mod netlink;
pub mod netns;
pub mod pin;
pub mod prefilter;
pub mod privileges;
pub mod qdisc;
pub mod ring;
pub mod route;
pub mod tc;

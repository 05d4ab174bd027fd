//! The Kubernetes control path of `mirror-agent run`: what the agent watches
//! ([`watch`], retrying as [`retry`] says), seen at one moment ([`snapshot`]); what this node should
//! mirror given it, a pure function ([`desired`]); the credentials of TLS
//! collectors ([`secrets`]); one reconcile, which locates pods, writes the
//! credentials and moves the mirror ([`reconcile`]); and each policy's
//! status on this node ([`status`]). Beside `run`: the admission webhook's
//! HTTPS server ([`admission`]), which injects the sidecar. It hands plans to the datapath and
//! never touches the kernel's maps itself.
//!
//! Dependencies run one way: `snapshot` ← `secrets` ← `desired` ←
//! `reconcile`; `watch` and `status` use `snapshot` (and `status` the
//! outcomes of `desired`).

pub mod admission;
pub mod desired;
pub mod reconcile;
pub mod retry;
pub mod secrets;
pub mod snapshot;
pub mod status;
pub mod usage;
pub mod watch;

//! The Kubernetes control path of `mirror-agent run`: what the agent watches
//! ([`watch`]), what this node should mirror given it ([`desired`]), the
//! credentials of TLS collectors ([`secrets`]), and each policy's status on
//! this node ([`status`]). It produces plans for the datapath and never
//! touches the kernel's maps itself.

pub mod desired;
pub mod secrets;
pub mod status;
pub mod watch;

//! The datapath: drain the ring buffer, run each record through its policy's
//! filters, and hand it to the exporters; a [`mirror::Mirror`] owns it all
//! and moves it from plan to plan. Knows no Kubernetes.

pub mod charge;
pub mod drain;
pub mod fanout;
pub mod hold;
pub mod metrics;
pub mod mirror;
pub mod plan;
pub mod pump;
pub mod status;
pub mod tenants;

#[cfg(test)]
mod testing;

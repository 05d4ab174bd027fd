//! Whether this process holds the capabilities that loading and attaching
//! BPF programs need, asked before anything is touched.

use caps::{CapSet, Capability};

/// The capabilities missing, named for the person who must grant them.
#[derive(Debug, thiserror::Error)]
#[error(
    "not permitted: mirroring needs root or the capabilities CAP_BPF and CAP_PERFMON (or \
     CAP_SYS_ADMIN for both) and CAP_NET_ADMIN, plus CAP_NET_RAW for gre and erspan outputs; \
     missing {0}"
)]
pub struct MissingPrivileges(String);

/// Checks the effective set; `raw_sockets` when GRE or ERSPAN outputs need
/// raw sockets too.
pub fn check(raw_sockets: bool) -> Result<(), MissingPrivileges> {
    let has = |cap| caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false);
    let mut missing = Vec::new();
    if !has(Capability::CAP_BPF) && !has(Capability::CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    // Without it the verifier treats the loader as unprivileged for
    // pointers and refuses the programs' packet-pointer arithmetic.
    if !has(Capability::CAP_PERFMON) && !has(Capability::CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    if !has(Capability::CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if raw_sockets && !has(Capability::CAP_NET_RAW) {
        missing.push("CAP_NET_RAW (for gre and erspan outputs)");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(MissingPrivileges(missing.join(" and ")))
    }
}

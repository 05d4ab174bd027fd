//! What can stop a mirror from starting or from moving to a new plan.

use crate::{export::ExportError, kernel::hooks::HookError, policy::pcapfilter::PcapFilterError};

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("--output {0}")]
    Output(#[from] ExportError),
    #[error("policy \"{0}\": filter: {1}")]
    Filter(String, PcapFilterError),
    #[error(transparent)]
    Hook(#[from] HookError),
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        source: std::io::Error,
    },
}

impl MirrorError {
    /// 2 for bad input (an output that cannot be opened), as clap does for
    /// usage errors; 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Output(_) => 2,
            Self::Hook(_) | Self::Io { .. } | Self::Filter(..) => 1,
        }
    }
}

pub(super) fn io_err(context: &'static str) -> impl FnOnce(std::io::Error) -> MirrorError {
    move |source| MirrorError::Io { context, source }
}

//! `mirror-agent status`: what is hooked on this node, read from the pin
//! directory and the kernel, printed to stdout.

use std::io::Write;

use crate::{
    cli::StatusArgs,
    datapath::status::{self, RenderError},
    kernel::{
        inspect::{self, InspectError},
        pin::PinError,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Inspect(#[from] InspectError),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("writing to standard output: {0}")]
    Stdout(#[from] std::io::Error),
}

impl StatusError {
    /// 2 for a pin directory that is not one, as for other bad flags; 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Inspect(InspectError::Pin(e @ PinError::Dir { .. })) => e.exit_code(),
            _ => 1,
        }
    }
}

pub fn run(args: &StatusArgs) -> Result<(), StatusError> {
    let state = inspect::read(&args.pin_dir)?;
    let text = status::render(&state, args.output)?;
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}

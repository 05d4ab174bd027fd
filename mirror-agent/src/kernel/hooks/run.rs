//! Running the mirror programs on one frame without attaching them
//! (`BPF_PROG_TEST_RUN`, through aya's `TestRun`): the kernel builds an skb
//! from the bytes on the loopback device of the caller's namespace and runs
//! the program once. The tests hold the prefilter to its promise this way,
//! frame by frame, on frames no live interface would carry.

use aya::programs::{TestRun, TestRunOptions};
use mirror_common::{PROG_EGRESS, PROG_INGRESS};

use super::{HookError, Hooks, load::classifier};
use crate::model::direction::Direction;

/// What one run gave back.
#[derive(Debug, PartialEq, Eq)]
pub struct FrameRun {
    /// The program's verdict (`TC_ACT_UNSPEC`, -1, on every path).
    pub verdict: i32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
}

impl Hooks {
    /// Runs the mirror program of `direction` once on `frame`, as if it had
    /// come in on the loopback device (ifindex 1) of the calling thread's
    /// namespace: configure that interface first, or the program sees an
    /// interface it does not mirror.
    pub fn run_frame(&mut self, direction: Direction, frame: &[u8]) -> Result<FrameRun, HookError> {
        let prog = match direction {
            Direction::Ingress => PROG_INGRESS,
            Direction::Egress => PROG_EGRESS,
        };
        // Room for the frame as it went in: the program never changes it,
        // and a frame grown past this would be an error (ENOSPC), not a cut.
        let mut out = vec![0u8; frame.len()];
        let result = classifier(&mut self.ebpf, prog)?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .map_err(|source| HookError::Program { prog, source })?;
        out.truncate(result.data_size_out as usize);
        Ok(FrameRun {
            verdict: result.return_value as i32,
            frame: out,
        })
    }
}

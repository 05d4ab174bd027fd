//! pcapng streams as the collector takes them (an agent's
//! `--output tcp://...` or `tls://...`): the block reader of
//! [`crate::export::pcapng::read`], and what each way a stream can fail
//! counts as in the listener's statistics.

use super::stats::Reason;
pub use crate::export::pcapng::read::{Event, ReadError, StreamReader};

impl ReadError {
    /// The listener counter a failed stream or skipped packet goes to.
    pub fn reason(&self) -> Reason {
        match self {
            Self::Io(_) | Self::Truncated | Self::BlockShort { .. } => Reason::Short,
            Self::NotPcapng(_) | Self::Magic(_) | Self::Version(..) | Self::LinkType { .. } => {
                Reason::Foreign
            }
            Self::Length { .. }
            | Self::Trailer { .. }
            | Self::TooManyInterfaces
            | Self::UnknownInterface(_)
            | Self::CapturedLength { .. } => Reason::Garbled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::pcapng::read::tests::{agent_stream, collect};

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let (_, end) = collect(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(end.unwrap_err().reason(), Reason::Foreign);
        let mut s = agent_stream();
        s[4] = 13; // SHB length not a multiple of 4
        assert_eq!(collect(&s).1.unwrap_err().reason(), Reason::Garbled);
        // Cut inside a block: short.
        let s = agent_stream();
        let cut = &s[..s.len() - 1];
        assert_eq!(collect(cut).1.unwrap_err().reason(), Reason::Short);
    }
}

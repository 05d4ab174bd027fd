//! Value types parsed at the edge (flags, policy fields) and trusted past
//! it: each can only hold a value that makes sense.

use std::{fmt, num::NonZeroU32, str::FromStr};

use clap::ValueEnum;
use mirror_common::MAX_SNAPLEN;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AttachMode {
    Auto,
    Tcx,
    Netlink,
}

/// Bytes kept per packet, 1..=262144.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snaplen(NonZeroU32);

impl Snaplen {
    pub const MAX: Self = Self(NonZeroU32::new(MAX_SNAPLEN).unwrap());

    pub fn get(self) -> u32 {
        self.0.get()
    }
}

impl FromStr for Snaplen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let n: u32 = s
            .parse()
            .map_err(|_| format!("'{s}' is not a whole number of bytes"))?;
        match NonZeroU32::new(n) {
            Some(n) if n.get() <= MAX_SNAPLEN => Ok(Self(n)),
            _ => Err(format!("must be from 1 to {MAX_SNAPLEN} bytes, not {n}")),
        }
    }
}

impl fmt::Display for Snaplen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Mirror one packet in this many.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleRate(NonZeroU32);

impl SampleRate {
    pub const ALL: Self = Self(NonZeroU32::MIN);

    pub fn get(self) -> u32 {
        self.0.get()
    }
}

impl FromStr for SampleRate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let n: u32 = s
            .parse()
            .map_err(|_| format!("'{s}' is not a whole number"))?;
        NonZeroU32::new(n)
            .map(Self)
            .ok_or_else(|| "must be at least 1 (1 = every packet)".to_owned())
    }
}

impl fmt::Display for SampleRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Ring buffer size: the kernel wants a power of two and a multiple of the page size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingSize(u32);

impl RingSize {
    /// A size known when the agent is built; one that the kernel would
    /// refuse stops the build (these are only used in constants).
    pub const fn of(bytes: u32) -> Self {
        assert!(bytes.is_power_of_two() && bytes >= 4096);
        Self(bytes)
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl FromStr for RingSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let n: u32 = s
            .parse()
            .map_err(|_| format!("'{s}' is not a whole number of bytes (at most 2^31)"))?;
        if n.is_power_of_two() && n >= 4096 {
            Ok(Self(n))
        } else {
            Err(format!(
                "must be a power of two of at least 4096 bytes, not {n}"
            ))
        }
    }
}

impl fmt::Display for RingSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// `--socket-mark VALUE[/MASK]`, in hex (0x...) or decimal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MarkArg {
    pub value: u32,
    pub mask: u32,
}

impl FromStr for MarkArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let number = |t: &str| {
            let t = t.trim();
            let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                Some(hex) => u32::from_str_radix(hex, 16),
                None => t.parse(),
            };
            parsed.map_err(|_| format!("'{t}' is not a 32-bit number"))
        };
        let (value, mask) = match s.split_once('/') {
            Some((v, m)) => (number(v)?, number(m)?),
            None => (number(s)?, u32::MAX),
        };
        if value == 0 || mask == 0 || value & !mask != 0 {
            return Err("needs a non-zero value inside a non-zero mask".into());
        }
        Ok(Self { value, mask })
    }
}

impl fmt::Display for MarkArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}/{:#x}", self.value, self.mask)
    }
}

/// Which end of a pod's link the hooks go on, as asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AttachPoint {
    /// The host end of the pod's veth, in the host's network namespace.
    Host,
    /// The pod's own interface, inside the pod's network namespace.
    Pod,
    /// The host end where the pod's traffic passes through it, else the pod
    /// end; see `discovery::decide`.
    #[default]
    Auto,
}

impl FromStr for AttachPoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "host" => Ok(Self::Host),
            "pod" => Ok(Self::Pod),
            "auto" => Ok(Self::Auto),
            other => Err(format!(
                "unknown attach point `{other}` (host, pod or auto)"
            )),
        }
    }
}

impl fmt::Display for AttachPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Host => "host",
            Self::Pod => "pod",
            Self::Auto => "auto",
        })
    }
}

/// The end chosen, which also says in which namespace to attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum End {
    /// In the host's namespace. This end transmits what the pod receives,
    /// so a hook's ingress and egress swap relative to the pod's.
    Host,
    /// Inside the pod's namespace; directions are the pod's own.
    Pod,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snaplen_bounds() {
        assert!("0".parse::<Snaplen>().is_err());
        assert!("262145".parse::<Snaplen>().is_err());
        assert!("x".parse::<Snaplen>().is_err());
        assert_eq!("1".parse::<Snaplen>().map(Snaplen::get), Ok(1));
        assert_eq!("262144".parse::<Snaplen>().map(Snaplen::get), Ok(262_144));
    }

    #[test]
    fn sample_rate_rejects_zero() {
        assert!("0".parse::<SampleRate>().is_err());
        assert_eq!("7".parse::<SampleRate>().map(SampleRate::get), Ok(7));
    }

    #[test]
    fn ring_size_is_power_of_two_pages() {
        assert!("1000".parse::<RingSize>().is_err());
        assert!("2048".parse::<RingSize>().is_err());
        assert_eq!("8192".parse::<RingSize>().map(RingSize::get), Ok(8192));
    }

    #[test]
    fn marks() {
        assert_eq!(
            "0x00dd0000/0x00ff0000".parse::<MarkArg>(),
            Ok(MarkArg {
                value: 0xdd0000,
                mask: 0xff0000
            })
        );
        assert_eq!(
            "7".parse::<MarkArg>(),
            Ok(MarkArg {
                value: 7,
                mask: u32::MAX
            })
        );
        assert!("0x100/0xff".parse::<MarkArg>().is_err());
        assert!("0".parse::<MarkArg>().is_err());
        assert!("zz".parse::<MarkArg>().is_err());
    }
}

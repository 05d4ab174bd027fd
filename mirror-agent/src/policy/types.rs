//! Validated value types of a policy. Each one can only hold a value that
//! makes sense, so code past the parser never re-checks.

use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::policy::pcapfilter::{PcapFilter, PcapFilterError};

/// What a matching rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Action {
    Accept,
    Reject,
}

/// An IP protocol number, as in the IPv4 protocol field or the last IPv6
/// next-header field. Rules match the protocol after any IPv6 extension
/// headers (and an IPsec AH header), so those numbers are refused: a rule
/// naming one could never match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Protocol(u8);

impl Protocol {
    pub const ICMP: Self = Self(1);
    pub const TCP: Self = Self(6);
    pub const UDP: Self = Self(17);
    pub const ICMPV6: Self = Self(58);
    pub const SCTP: Self = Self(132);

    const NAMES: [(&'static str, Self); 5] = [
        ("TCP", Self::TCP),
        ("UDP", Self::UDP),
        ("ICMP", Self::ICMP),
        ("ICMPv6", Self::ICMPV6),
        ("SCTP", Self::SCTP),
    ];

    /// The protocol with this number, unless it is an extension header that
    /// rules look past (hop-by-hop 0, routing 43, fragment 44, AH 51,
    /// destination options 60).
    pub fn from_number(number: u8) -> Option<Self> {
        (!Self::EXTENSION_HEADERS.contains(&number)).then_some(Self(number))
    }

    /// Hop-by-hop options, routing, fragment, AH and destination options:
    /// headers rules look past, so never a rule's protocol.
    const EXTENSION_HEADERS: [u8; 5] = [0, 43, 44, 51, 60];

    pub fn number(self) -> u8 {
        self.0
    }

    /// TCP, UDP and SCTP: the protocols whose headers start with a source and
    /// a destination port.
    pub fn carries_ports(self) -> bool {
        matches!(self, Self::TCP | Self::UDP | Self::SCTP)
    }

    fn name(self) -> Option<&'static str> {
        Self::NAMES
            .iter()
            .find(|(_, p)| *p == self)
            .map(|(n, _)| *n)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.name() {
            Some(name) => s.serialize_str(name),
            None => s.serialize_u8(self.0),
        }
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Protocol;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("TCP, UDP, ICMP, ICMPv6, SCTP or an IP protocol number 0-255")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Protocol, E> {
                Protocol::NAMES
                    .iter()
                    .find(|(name, _)| *name == v)
                    .map(|(_, p)| *p)
                    .ok_or_else(|| {
                        E::custom(format_args!(
                            "unknown protocol \"{v}\", expected TCP, UDP, ICMP, ICMPv6, SCTP \
                             or an IP protocol number 0-255"
                        ))
                    })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Protocol, E> {
                let n = u8::try_from(v).map_err(|_| {
                    E::custom(format_args!("protocol number {v} is greater than 255"))
                })?;
                Protocol::from_number(n).ok_or_else(|| {
                    E::custom(format_args!(
                        "protocol {n} is an IPv6 extension header (or IPsec AH), which rules \
                         look past to the transport protocol; name that protocol instead"
                    ))
                })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Protocol, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format_args!("protocol number {v} is negative"))),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A name or a number, as Kubernetes writes such a field: `int-or-string`
/// (the only union a structural schema allows), with the number's range, the
/// names, and the extension-header numbers refused. The last matters beyond
/// a nicer error: a resource the API server admits but serde refuses would
/// fail the agent's whole list of policies, not just itself.
impl JsonSchema for Protocol {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Protocol".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "TCP, UDP, ICMP, ICMPv6, SCTP, or an IP protocol number 0-255, \
                            after IPv6 extension headers (so not 0, 43, 44, 51 or 60).",
            "x-kubernetes-int-or-string": true,
            "minimum": 0,
            "maximum": 255,
            "pattern": "^(TCP|UDP|ICMP|ICMPv6|SCTP)$",
            "not": {"enum": Self::EXTENSION_HEADERS},
        })
    }
}

/// An inclusive range of ports, `from <= to`. Port 0 is allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    from: u16,
    to: u16,
}

impl PortRange {
    /// `None` when `from > to`.
    pub fn new(from: u16, to: u16) -> Option<Self> {
        (from <= to).then_some(Self { from, to })
    }

    pub fn single(port: u16) -> Self {
        Self {
            from: port,
            to: port,
        }
    }

    pub fn from(self) -> u16 {
        self.from
    }

    pub fn to(self) -> u16 {
        self.to
    }

    pub fn contains(self, port: u16) -> bool {
        (self.from..=self.to).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.from == self.to {
            write!(f, "{}", self.from)
        } else {
            write!(f, "{}-{}", self.from, self.to)
        }
    }
}

/// One TCP flag, named as in the policy (`tcpFlags: [SYN, ACK]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum TcpFlag {
    Fin,
    Syn,
    Rst,
    Psh,
    Ack,
    Urg,
    Ece,
    Cwr,
}

impl TcpFlag {
    /// The flag's bit in byte 13 of the TCP header (RFC 9293, RFC 3168).
    pub fn bit(self) -> u8 {
        match self {
            Self::Fin => 0x01,
            Self::Syn => 0x02,
            Self::Rst => 0x04,
            Self::Psh => 0x08,
            Self::Ack => 0x10,
            Self::Urg => 0x20,
            Self::Ece => 0x40,
            Self::Cwr => 0x80,
        }
    }
}

/// A set of TCP flags as the bits of TCP header byte 13, so the kernel can
/// test it with one mask: a rule matches when all its flags are set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags(u8);

impl TcpFlags {
    pub fn from_bits(bits: u8) -> Self {
        Self(bits)
    }

    pub fn bits(self) -> u8 {
        self.0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn with(self, flag: TcpFlag) -> Self {
        Self(self.0 | flag.bit())
    }

    /// Whether every flag of `self` is set in `packet`.
    pub fn all_set_in(self, packet: TcpFlags) -> bool {
        packet.0 & self.0 == self.0
    }
}

/// A pcap-filter expression that libpcap compiled when the policy was read,
/// kept as text because a compiled program is tied to one thread
/// ([`PcapFilter`] is `Send` but not `Sync`): each user compiles its own.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FilterExpr(String);

impl FilterExpr {
    /// Compiles `text` once to check it. Blank text is no filter (`None`),
    /// as tcpdump with no expression.
    pub fn new(text: &str) -> Result<Option<Self>, PcapFilterError> {
        if text.trim().is_empty() {
            return Ok(None);
        }
        PcapFilter::compile(text)?;
        Ok(Some(Self(text.to_owned())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn compile(&self) -> Result<PcapFilter, PcapFilterError> {
        PcapFilter::compile(&self.0)
    }
}

/// An interface name, or a glob over names (`veth*`, `eth[0-3]`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum InterfacePattern {
    Name(String),
    Glob(glob::Pattern),
}

impl InterfacePattern {
    /// Longest Linux interface name (IFNAMSIZ less the NUL).
    pub const MAX_NAME: usize = 15;

    /// Parses a name or glob; the error is the reason, for the caller to
    /// place.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("empty interface name".into());
        }
        if let Some(c) = text
            .chars()
            .find(|c| c.is_whitespace() || matches!(c, '/' | ':'))
        {
            return Err(format!(
                "\"{text}\" has {c:?}, which no interface name can contain"
            ));
        }
        if !text.contains(['*', '?', '[']) {
            if text.len() > Self::MAX_NAME || text == "." || text == ".." {
                return Err(format!(
                    "\"{text}\" is not a valid interface name (at most {} bytes, not . or ..)",
                    Self::MAX_NAME
                ));
            }
            return Ok(Self::Name(text.to_owned()));
        }
        glob::Pattern::new(text)
            .map(Self::Glob)
            .map_err(|e| format!("\"{text}\" is not a valid glob: {e}"))
    }

    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::Name(n) => n == name,
            Self::Glob(g) => g.matches(name),
        }
    }
}

impl fmt::Display for InterfacePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(n) => f.write_str(n),
            Self::Glob(g) => f.write_str(g.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_names_and_numbers() {
        let p: Protocol = serde_norway::from_str("ICMPv6").expect("name");
        assert_eq!(p, Protocol::ICMPV6);
        let p: Protocol = serde_norway::from_str("6").expect("number");
        assert_eq!((p, p.to_string()), (Protocol::TCP, "TCP".to_owned()));
        let p: Protocol = serde_norway::from_str("47").expect("number");
        assert_eq!(p.to_string(), "47");
        for bad in ["tcp", "256", "-1", "44", "1.5"] {
            assert!(serde_norway::from_str::<Protocol>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn port_ranges() {
        assert!(PortRange::new(9000, 8000).is_none());
        let r = PortRange::new(0, 10).expect("valid");
        assert!(r.contains(0) && r.contains(10) && !r.contains(11));
        assert_eq!(PortRange::single(443).to_string(), "443");
    }

    #[test]
    fn tcp_flags_all_of() {
        let want = TcpFlags::default().with(TcpFlag::Syn).with(TcpFlag::Ack);
        assert!(want.all_set_in(TcpFlags::from_bits(0x12)));
        assert!(want.all_set_in(TcpFlags::from_bits(0x1a)));
        assert!(!want.all_set_in(TcpFlags::from_bits(0x02)));
    }

    #[test]
    fn interface_patterns() {
        assert_eq!(
            InterfacePattern::parse("veth1"),
            Ok(InterfacePattern::Name("veth1".into()))
        );
        let g = InterfacePattern::parse("veth*").expect("glob");
        assert!(g.matches("veth0abc") && !g.matches("eth0"));
        for bad in ["", "a b", "a/b", "0123456789abcdef", "[", ".."] {
            assert!(InterfacePattern::parse(bad).is_err(), "{bad}");
        }
    }
}

//! Collector URIs (`--output`, a policy file's `collectors`), parsed once
//! into typed specs. The forms are those of README.md's "Outputs":
//!
//! | URI | sends |
//! |---|---|
//! | `pcapng:PATH`, `pcapng:-` | a pcapng file, or standard output |
//! | `vxlan://HOST[:PORT]?vni=N` | VXLAN over UDP (port 4789) |
//! | `geneve://HOST[:PORT]?vni=N` | GENEVE over UDP (port 6081), with metadata options |
//! | `gre://HOST[?key=N][&seq=true]` | GRE, transparent Ethernet bridging |
//! | `erspan2://HOST?session=N` | ERSPAN Type II over GRE |
//! | `erspan3://HOST?session=N[&hwid=N]` | ERSPAN Type III over GRE |
//! | `tcp://HOST:PORT` | a pcapng stream over TCP |
//! | `tls://HOST:PORT?ca=PATH&cert=PATH&key=PATH[&name=SERVER]` | the same over mutual TLS |
//!
//! Tunnels and streams take `checksums=keep`: the bytes exactly as the hook
//! saw them, not as a wire carries them (see `export/wire`). Files finish
//! checksums but keep super-packets whole, as tcpdump writes them; `attach
//! --segment` and `--checksums keep` change that ([`Output::with_file_wire`]).
//! Tunnels also take `mtu=BYTES` (default: the route's path MTU): a copy whose encapsulated
//! size would exceed it is cut to fit rather than IP-fragmented. vxlan and
//! geneve send runs of copies as UDP GSO messages unless `gso=false`.

use std::{fmt, path::PathBuf, str::FromStr};

use url::Url;

use crate::export::{
    encap::{
        Vni,
        erspan::{HwId, SessionId},
        gre::GreKey,
    },
    wire::Wire,
};

/// `mtu=` left out: the tunnel takes the path MTU the kernel's route
/// towards the collector reports when it opens (1500 if it cannot tell).
pub const DEFAULT_MTU: u16 = ROUTE_MTU;
/// The value of [`DEFAULT_MTU`]: not an MTU but "ask the route" (an
/// explicit `mtu=` is at least [`MIN_MTU`]).
pub const ROUTE_MTU: u16 = 0;
/// Assumed when the route cannot tell.
pub const FALLBACK_MTU: u16 = 1500;
/// Smallest `mtu=` accepted: IPv4's minimum datagram size.
pub const MIN_MTU: u16 = 576;

/// A collector host: a name (resolved when connecting, and again on every
/// reconnect) or an address literal, with its port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Files for mutual TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate(s) that signed the collector's certificate.
    pub ca: PathBuf,
    /// Our client certificate chain and its private key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Name to verify in the collector's certificate; the host by default.
    pub server_name: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tunnel {
    Vxlan { vni: Vni },
    Geneve { vni: Vni },
    Gre { key: Option<GreKey>, sequence: bool },
    Erspan2 { session: SessionId },
    Erspan3 { session: SessionId, hw_id: HwId },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    PcapngFile(PathBuf),
    PcapngStdout,
    Tunnel {
        tunnel: Tunnel,
        to: Endpoint,
        mtu: u16,
        /// vxlan and geneve, unless `gso=false`: runs of equal-size copies
        /// leave as one UDP GSO message, which a NIC (or the kernel, for a
        /// device without UDP segmentation offload) cuts into datagrams and
        /// a receiving socket gets as datagrams (or whole, with UDP GRO). A
        /// sniffer on a virtual link that passes them on whole (a veth)
        /// sees them merged: `gso=false` is for that.
        gso: bool,
    },
    Tcp(Endpoint),
    Tls(Endpoint, TlsFiles),
    /// An output that does `Wire` to the bytes instead of its default:
    /// `checksums=keep` on a tunnel or stream URI ([`Wire::KEEP`]: the bytes
    /// exactly as the hook saw them, partial checksums and whole
    /// super-packets), or `attach --segment` / `--checksums keep` on a file.
    /// A wrapper, so the plain outputs stay as they are.
    Shaped(Box<Output>, Wire),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OutputError {
    #[error("'{0}' has no scheme; write pcapng:PATH, vxlan://HOST?vni=N, tcp://HOST:PORT, ...")]
    NoScheme(String),
    #[error("unknown scheme '{0}'; known: pcapng, vxlan, geneve, gre, erspan2, erspan3, tcp, tls")]
    Scheme(String),
    #[error("pcapng: needs a path, or - for standard output")]
    NoPath,
    #[error("not a valid URI: {0}")]
    Syntax(String),
    #[error("needs a host")]
    NoHost,
    #[error("needs a port")]
    NoPort,
    #[error("missing parameter {0}")]
    Missing(&'static str),
    #[error("parameter {name}: {reason}")]
    Param { name: String, reason: String },
    #[error("unknown parameter '{0}'")]
    UnknownParam(String),
}

fn param(name: &str, reason: impl fmt::Display) -> OutputError {
    OutputError::Param {
        name: name.to_owned(),
        reason: reason.to_string(),
    }
}

/// The query parameters of a URI, each taken at most once; whatever is left
/// at the end is an unknown parameter.
struct Params(Vec<(String, String)>);

impl Params {
    fn take(&mut self, name: &'static str) -> Option<String> {
        let i = self.0.iter().position(|(k, _)| k == name)?;
        Some(self.0.remove(i).1)
    }

    fn number<T: FromStr>(&mut self, name: &'static str) -> Result<Option<T>, OutputError>
    where
        T::Err: fmt::Display,
    {
        self.take(name)
            .map(|v| {
                v.parse::<T>()
                    .map_err(|e| param(name, format!("'{v}': {e}")))
            })
            .transpose()
    }

    fn required<T: FromStr>(&mut self, name: &'static str) -> Result<T, OutputError>
    where
        T::Err: fmt::Display,
    {
        self.number(name)?.ok_or(OutputError::Missing(name))
    }

    fn done(self) -> Result<(), OutputError> {
        match self.0.into_iter().next() {
            Some((k, _)) => Err(OutputError::UnknownParam(k)),
            None => Ok(()),
        }
    }
}

fn vni(params: &mut Params) -> Result<Vni, OutputError> {
    Vni::new(params.required("vni")?).map_err(|e| param("vni", e))
}

impl FromStr for Output {
    type Err = OutputError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = s
            .split_once(':')
            .ok_or_else(|| OutputError::NoScheme(s.to_owned()))?;
        if scheme == "pcapng" {
            return match rest {
                "" => Err(OutputError::NoPath),
                "-" => Ok(Self::PcapngStdout),
                path => Ok(Self::PcapngFile(PathBuf::from(path))),
            };
        }
        let default_port = match scheme {
            "vxlan" => Some(crate::export::encap::vxlan::UDP_PORT),
            "geneve" => Some(crate::export::encap::geneve::UDP_PORT),
            // GRE has no ports; the raw socket ignores this one.
            "gre" | "erspan2" | "erspan3" => Some(0),
            "tcp" | "tls" => None,
            other => return Err(OutputError::Scheme(other.to_owned())),
        };
        let url = Url::parse(s).map_err(|e| OutputError::Syntax(e.to_string()))?;
        let host = match url.host() {
            Some(url::Host::Ipv6(a)) => a.to_string(),
            Some(h) => h.to_string(),
            None => return Err(OutputError::NoHost),
        };
        if host.is_empty() {
            return Err(OutputError::NoHost);
        }
        let port = url.port().or(default_port).ok_or(OutputError::NoPort)?;
        let to = Endpoint { host, port };
        let mut params = Params(url.query_pairs().into_owned().collect());
        let out = match scheme {
            "tcp" => Self::Tcp(to),
            "tls" => {
                let mut file = |name| {
                    params
                        .take(name)
                        .map(PathBuf::from)
                        .ok_or(OutputError::Missing(name))
                };
                let files = TlsFiles {
                    ca: file("ca")?,
                    cert: file("cert")?,
                    key: file("key")?,
                    server_name: params.take("name").unwrap_or_else(|| to.host.clone()),
                };
                Self::Tls(to, files)
            }
            _ => {
                let mtu: u16 = match params.number("mtu")? {
                    None => DEFAULT_MTU,
                    Some(mtu) if mtu < MIN_MTU => {
                        return Err(param(
                            "mtu",
                            format!("must be at least {MIN_MTU}, not {mtu}"),
                        ));
                    }
                    Some(mtu) => mtu,
                };
                let tunnel = match scheme {
                    "vxlan" => Tunnel::Vxlan {
                        vni: vni(&mut params)?,
                    },
                    "geneve" => Tunnel::Geneve {
                        vni: vni(&mut params)?,
                    },
                    "gre" => Tunnel::Gre {
                        key: params.number::<u32>("key")?.map(GreKey),
                        sequence: params.number::<bool>("seq")?.unwrap_or(false),
                    },
                    "erspan2" => Tunnel::Erspan2 {
                        session: SessionId::new(params.required("session")?)
                            .map_err(|e| param("session", e))?,
                    },
                    _ => Tunnel::Erspan3 {
                        session: SessionId::new(params.required("session")?)
                            .map_err(|e| param("session", e))?,
                        hw_id: HwId::new(params.number("hwid")?.unwrap_or(0))
                            .map_err(|e| param("hwid", e))?,
                    },
                };
                let udp = matches!(tunnel, Tunnel::Vxlan { .. } | Tunnel::Geneve { .. });
                let gso = match params.number::<bool>("gso")? {
                    Some(true) if !udp => {
                        return Err(param("gso", "only vxlan and geneve go over UDP".to_owned()));
                    }
                    Some(gso) => gso,
                    None => udp,
                };
                Self::Tunnel {
                    tunnel,
                    to,
                    mtu,
                    gso,
                }
            }
        };
        let out = match params.take("checksums").as_deref() {
            None | Some("finish") => out,
            Some("keep") => Self::Shaped(Box::new(out), Wire::KEEP),
            Some(other) => {
                return Err(param(
                    "checksums",
                    format!("'{other}': write keep (bytes as the hook saw them) or finish"),
                ));
            }
        };
        params.done()?;
        Ok(out)
    }
}

impl Output {
    /// What this output does to the bytes the hook saw: tunnels and streams
    /// send what a wire would carry; files (standard output too, as
    /// `tcpdump -w -`) finish checksums but keep super-packets whole, as
    /// tcpdump writes them.
    pub fn wire(&self) -> Wire {
        match self {
            Self::Shaped(_, wire) => *wire,
            Self::PcapngFile(_) | Self::PcapngStdout => Wire::FILE,
            _ => Wire::WIRE,
        }
    }

    /// The output itself, whatever it does to the bytes.
    pub fn base(&self) -> &Output {
        match self {
            Self::Shaped(inner, _) => inner.base(),
            other => other,
        }
    }

    /// A pcapng file or standard output.
    pub fn is_file(&self) -> bool {
        matches!(self.base(), Self::PcapngFile(_) | Self::PcapngStdout)
    }

    /// A file output doing `wire` to the bytes (`attach --segment`,
    /// `--checksums keep`: a file's path has no room for URI options);
    /// any other output as it is.
    pub fn with_file_wire(self, wire: Wire) -> Output {
        if !self.is_file() || self.wire() == wire {
            return self;
        }
        let base = match self {
            Self::Shaped(inner, _) => *inner,
            other => other,
        };
        if base.wire() == wire {
            base
        } else {
            Self::Shaped(Box::new(base), wire)
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PcapngFile(path) => write!(f, "pcapng:{}", path.display()),
            Self::PcapngStdout => f.write_str("pcapng:-"),
            Self::Tunnel { tunnel, to, .. } => {
                let scheme = match tunnel {
                    Tunnel::Vxlan { .. } => "vxlan",
                    Tunnel::Geneve { .. } => "geneve",
                    Tunnel::Gre { .. } => "gre",
                    Tunnel::Erspan2 { .. } => "erspan2",
                    Tunnel::Erspan3 { .. } => "erspan3",
                };
                write!(f, "{scheme}://{to}")
            }
            Self::Tcp(to) => write!(f, "tcp://{to}"),
            Self::Tls(to, _) => write!(f, "tls://{to}"),
            // A file's flags are not part of its name.
            Self::Shaped(inner, wire) if *wire == Wire::KEEP && !inner.is_file() => {
                write!(f, "{inner}?checksums=keep")
            }
            Self::Shaped(inner, _) => inner.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gso_is_on_by_default_for_udp_tunnels_only() {
        let gso = |uri: &str| match uri.parse::<Output>().expect("parses") {
            Output::Tunnel { gso, .. } => gso,
            other => panic!("{other:?}"),
        };
        assert!(gso("vxlan://198.18.0.9?vni=42"));
        assert!(gso("geneve://198.18.0.9?vni=42&gso=true"));
        assert!(!gso("geneve://198.18.0.9?vni=42&gso=false"));
        assert!(!gso("gre://198.18.0.9"));
        assert!(!gso("erspan2://198.18.0.9?session=1&gso=false"));
        let e = "gre://198.18.0.9?gso=true".parse::<Output>().unwrap_err();
        assert!(e.to_string().contains("gso"), "{e}");
    }

    #[test]
    fn checksums_keep_wraps_the_output() {
        let o: Output = "vxlan://198.18.0.9?vni=42&checksums=keep"
            .parse()
            .expect("parses");
        assert_eq!(o.wire(), Wire::KEEP);
        assert!(matches!(o.base(), Output::Tunnel { .. }));
        let o: Output = "tcp://198.18.0.9:9000?checksums=finish"
            .parse()
            .expect("parses");
        assert_eq!(o.wire(), Wire::WIRE);
        let e = "tcp://198.18.0.9:9000?checksums=no"
            .parse::<Output>()
            .unwrap_err();
        assert!(e.to_string().contains("checksums"), "{e}");
        let file: Output = "pcapng:/tmp/x".parse().expect("parses");
        assert_eq!(file.wire(), Wire::FILE);
        assert!(file.wire().finish_checksums && !file.wire().segment);
    }

    #[test]
    fn files_take_their_wire_from_the_flags_and_keep_their_name() {
        let file: Output = "pcapng:/tmp/x".parse().expect("parses");
        let segmented = file.clone().with_file_wire(Wire::WIRE);
        assert_eq!(segmented.wire(), Wire::WIRE);
        assert_eq!(segmented.base(), &file);
        assert_eq!(segmented.to_string(), "pcapng:/tmp/x");
        let kept = segmented.with_file_wire(Wire::KEEP);
        assert_eq!(kept.wire(), Wire::KEEP);
        assert_eq!(kept.clone().with_file_wire(Wire::FILE), file);
        let stdout: Output = "pcapng:-".parse().expect("parses");
        assert_eq!(stdout.wire(), Wire::FILE, "as tcpdump -w -");
        assert_eq!(stdout.clone().with_file_wire(Wire::KEEP).wire(), Wire::KEEP);
        // Tunnels and streams take theirs from the URI only.
        let tcp: Output = "tcp://198.18.0.9:9000".parse().expect("parses");
        assert_eq!(tcp.clone().with_file_wire(Wire::KEEP), tcp);
    }
}

//! `--listen` URIs: where the collector receives, parsed once into typed
//! addresses. The host must be an address literal (what to bind), not a name.
//!
//! | URI | receives |
//! |---|---|
//! | `vxlan://ADDR[:PORT]` | VXLAN on UDP, port 4789 by default |
//! | `geneve://ADDR[:PORT]` | GENEVE on UDP, port 6081 by default |
//! | `gre://ADDR` | GRE/TEB and ERSPAN II and III, on one raw `IPPROTO_GRE` socket |
//! | `tcp://ADDR:PORT` | pcapng streams from agents (`--output tcp://...`) |
//! | `tls://ADDR:PORT?ca=PATH&cert=PATH&key=PATH` | the same inside mutual TLS: only agents with a certificate signed by `ca` get in |
//!
//! `0.0.0.0` or `[::]` listens on every address.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    str::FromStr,
};

use url::Url;

use crate::export::encap::{geneve, vxlan};

/// The collector's own certificate and key, and the CA that must have
/// signed every agent's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsServerFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One listener's address and what it receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    Vxlan(SocketAddr),
    Geneve(SocketAddr),
    /// GRE has no ports: every GRE packet to the address, whatever it carries.
    Gre(IpAddr),
    /// pcapng streams over plain TCP.
    Tcp(SocketAddr),
    /// The same streams inside mutual TLS: only the accepted connection is
    /// wrapped, see `tcp::Wrap`.
    Tls(SocketAddr, TlsServerFiles),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListenError {
    #[error(
        "'{0}' has no scheme; write vxlan://ADDR, geneve://ADDR, gre://ADDR or tcp://ADDR:PORT"
    )]
    NoScheme(String),
    #[error("unknown scheme '{0}'; known: vxlan, geneve, gre, tcp, tls")]
    Scheme(String),
    #[error("not a valid URI: {0}")]
    Syntax(String),
    #[error("needs an address to listen on, such as 0.0.0.0 or [::]")]
    NoHost,
    #[error("'{0}' is not an IP address; give the address to listen on, not a name")]
    NotAnAddress(String),
    #[error("tcp:// and tls:// need a port")]
    NoPort,
    #[error("tls:// needs the parameter {0} (ca, cert and key files)")]
    TlsFile(&'static str),
    #[error("gre:// takes no port (GRE has none)")]
    GrePort,
    #[error("takes no path, parameters or user ('{0}')")]
    Extra(String),
}

impl FromStr for Listen {
    type Err = ListenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, _) = s
            .split_once("://")
            .ok_or_else(|| ListenError::NoScheme(s.to_owned()))?;
        let default_port = match scheme {
            "vxlan" => Some(vxlan::UDP_PORT),
            "geneve" => Some(geneve::UDP_PORT),
            "gre" | "tcp" | "tls" => None,
            other => return Err(ListenError::Scheme(other.to_owned())),
        };
        let url = Url::parse(s).map_err(|e| ListenError::Syntax(e.to_string()))?;
        if !matches!(url.path(), "" | "/")
            || (url.query().is_some() && scheme != "tls")
            || url.fragment().is_some()
            || !url.username().is_empty()
        {
            return Err(ListenError::Extra(s.to_owned()));
        }
        let ip: IpAddr = match url.host() {
            Some(url::Host::Ipv4(a)) => a.into(),
            Some(url::Host::Ipv6(a)) => a.into(),
            Some(url::Host::Domain("")) | None => return Err(ListenError::NoHost),
            // Non-special schemes leave IPv4 literals as "domains".
            Some(url::Host::Domain(name)) => name
                .parse()
                .map_err(|_| ListenError::NotAnAddress(name.into()))?,
        };
        let port = url.port().or(default_port);
        let udp = || SocketAddr::new(ip, port.unwrap_or_default());
        Ok(match scheme {
            "vxlan" => Self::Vxlan(udp()),
            "geneve" => Self::Geneve(udp()),
            "gre" if port.is_some() => return Err(ListenError::GrePort),
            "gre" => Self::Gre(ip),
            "tcp" => Self::Tcp(SocketAddr::new(ip, port.ok_or(ListenError::NoPort)?)),
            _ => {
                let mut params: Vec<(String, String)> = url.query_pairs().into_owned().collect();
                let mut file = |name: &'static str| {
                    let i = params
                        .iter()
                        .position(|(k, _)| k == name)
                        .ok_or(ListenError::TlsFile(name))?;
                    Ok::<_, ListenError>(PathBuf::from(params.remove(i).1))
                };
                let files = TlsServerFiles {
                    ca: file("ca")?,
                    cert: file("cert")?,
                    key: file("key")?,
                };
                if !params.is_empty() {
                    return Err(ListenError::Extra(s.to_owned()));
                }
                Self::Tls(SocketAddr::new(ip, port.ok_or(ListenError::NoPort)?), files)
            }
        })
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vxlan(a) => write!(f, "vxlan://{a}"),
            Self::Geneve(a) => write!(f, "geneve://{a}"),
            Self::Gre(IpAddr::V6(a)) => write!(f, "gre://[{a}]"),
            Self::Gre(a) => write!(f, "gre://{a}"),
            Self::Tcp(a) => write!(f, "tcp://{a}"),
            Self::Tls(a, _) => write!(f, "tls://{a}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Listen, ListenError> {
        s.parse()
    }

    #[test]
    fn forms_and_default_ports() {
        let v4 = |s: &str, p| SocketAddr::new(s.parse().unwrap(), p);
        assert_eq!(
            parse("vxlan://0.0.0.0"),
            Ok(Listen::Vxlan(v4("0.0.0.0", 4789)))
        );
        assert_eq!(
            parse("vxlan://198.18.1.2:9999"),
            Ok(Listen::Vxlan(v4("198.18.1.2", 9999)))
        );
        assert_eq!(
            parse("geneve://198.18.1.2/"),
            Ok(Listen::Geneve(v4("198.18.1.2", 6081)))
        );
        assert_eq!(
            parse("gre://198.18.1.2"),
            Ok(Listen::Gre("198.18.1.2".parse().unwrap()))
        );
        assert_eq!(parse("tcp://[::]:7000"), Ok(Listen::Tcp(v4("::", 7000))));
        assert_eq!(
            parse("tls://0.0.0.0:7001?ca=/c&cert=/s.pem&key=/k.pem"),
            Ok(Listen::Tls(
                v4("0.0.0.0", 7001),
                TlsServerFiles {
                    ca: "/c".into(),
                    cert: "/s.pem".into(),
                    key: "/k.pem".into()
                }
            ))
        );
        for s in [
            "vxlan://198.18.1.2:4789",
            "gre://[fd00:198:18::1]",
            "tcp://127.0.0.1:1",
        ] {
            assert_eq!(parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn bad_forms_say_why() {
        assert_eq!(
            parse("198.18.1.2"),
            Err(ListenError::NoScheme("198.18.1.2".into()))
        );
        assert_eq!(
            parse("udp://1.2.3.4"),
            Err(ListenError::Scheme("udp".into()))
        );
        assert_eq!(parse("tcp://1.2.3.4"), Err(ListenError::NoPort));
        assert_eq!(parse("gre://1.2.3.4:5"), Err(ListenError::GrePort));
        assert_eq!(
            parse("tls://1.2.3.4:5?ca=/c&cert=/s"),
            Err(ListenError::TlsFile("key"))
        );
        assert!(matches!(
            parse("tls://1.2.3.4:5?ca=/c&cert=/s&key=/k&x=1"),
            Err(ListenError::Extra(_))
        ));
        assert_eq!(
            parse("vxlan://collector.example"),
            Err(ListenError::NotAnAddress("collector.example".into()))
        );
        assert!(matches!(
            parse("vxlan://1.2.3.4?vni=1"),
            Err(ListenError::Extra(_))
        ));
        assert!(matches!(
            parse("vxlan://1.2.3.4:99999"),
            Err(ListenError::Syntax(_))
        ));
        assert!(matches!(
            parse("tcp://:80"),
            Err(ListenError::Syntax(_) | ListenError::NoHost)
        ));
    }
}

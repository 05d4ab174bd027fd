//! `MirrorCollector` (cluster-scoped, an administrator's): an approved
//! destination and the namespaces that may send to it.
//!
//! The destination is structured (protocol, address, port, VNI, ...) rather
//! than a URI, so the schema can bound each number; [`MirrorCollectorSpec::output`]
//! turns it into the [`Output`] a `--output` URI becomes, through the same
//! range-checked header types ([`Vni`], [`SessionId`], [`HwId`]), and the
//! exporters take it from there.

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::Condition;
use crate::export::{
    encap::{
        Vni,
        erspan::{HwId, SessionId},
        geneve,
        gre::GreKey,
        vxlan,
    },
    output::{DEFAULT_MTU, Endpoint, MIN_MTU, Output, TlsFiles, Tunnel},
};
use crate::policy::{Problem, RateLimit, spec::RateLimitSpec};

/// The keys of a collector's TLS Secret, as in a `kubernetes.io/tls` Secret
/// (with the CA that cert-manager also writes as `ca.crt`): the CA that
/// signed the collector's certificate, and the agent's client certificate
/// and key.
pub const TLS_CA_KEY: &str = "ca.crt";
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";

/// Where mirrored copies may go, and who may send them.
// Each printcolumn(...) repeats `type_ = "string"`, which clippy takes for
// a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "mirror.packets.dev",
    version = "v1alpha1",
    kind = "MirrorCollector",
    status = "MirrorCollectorStatus",
    derive = "PartialEq",
    shortname = "mcol",
    category = "mirror",
    doc = "A destination for mirrored packets, approved by an administrator, and the namespaces whose MirrorPolicies may use it.",
    printcolumn(name = "Protocol", type_ = "string", json_path = ".spec.protocol"),
    printcolumn(name = "Address", type_ = "string", json_path = ".spec.address"),
    printcolumn(name = "Port", type_ = "integer", json_path = ".spec.port"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MirrorCollectorSpec {
    /// How copies are carried: a tunnel (vxlan, geneve, gre, erspan2,
    /// erspan3) or a pcapng stream (tcp, tls).
    pub protocol: CollectorProtocol,
    /// Host name (each agent resolves it, and again on every reconnect) or IP address.
    #[schemars(length(min = 1, max = 253))]
    pub address: String,
    /// UDP port for vxlan (default 4789) and geneve (default 6081); TCP port
    /// for tcp and tls (required). GRE and ERSPAN have no ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = u16::MAX))]
    pub port: Option<u64>,
    /// VXLAN or GENEVE network identifier, 24 bits; required for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = Vni::MAX))]
    pub vni: Option<u64>,
    /// GRE key, 32 bits (gre only); none when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = u32::MAX))]
    pub key: Option<u64>,
    /// GRE sequence numbers (gre only); default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<bool>,
    /// ERSPAN session id, 10 bits; required for erspan2 and erspan3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = SessionId::MAX))]
    pub session_id: Option<u64>,
    /// ERSPAN Type III hardware id, 6 bits (erspan3 only); default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = HwId::MAX))]
    pub hardware_id: Option<u64>,
    /// Path MTU toward the collector (tunnels only; default 1500): longer
    /// copies are cut to fit, never IP-fragmented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = MIN_MTU, max = u16::MAX))]
    pub mtu: Option<u64>,
    /// Mutual TLS (tls only, and required for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<CollectorTls>,
    /// The namespaces whose MirrorPolicies may send here, by their labels
    /// (`kubernetes.io/metadata.name` names one). Left out: none, so a new
    /// collector is closed until its administrator opens it; `{}`: all.
    /// ClusterMirrorPolicies, being an administrator's too, are not limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_namespaces: Option<LabelSelector>,
    /// The most any one MirrorPolicy (a tenant's) sending here may mirror
    /// per node: its `rateLimit` is lowered to this, rate and burst, and a
    /// policy with no limit gets this one; its `Accepted` condition then
    /// says so. The same fields as a policy's `rateLimit`. Left out: no
    /// ceiling. ClusterMirrorPolicies are not limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate_limit: Option<RateLimitSpec>,
}

/// The wire protocol toward a collector; the names of the URI schemes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CollectorProtocol {
    Vxlan,
    Geneve,
    Gre,
    Erspan2,
    Erspan3,
    Tcp,
    Tls,
}

impl CollectorProtocol {
    fn is_tunnel(self) -> bool {
        !matches!(self, Self::Tcp | Self::Tls)
    }

    /// GRE and ERSPAN go out through raw sockets (CAP_NET_RAW).
    pub fn needs_raw_socket(self) -> bool {
        matches!(self, Self::Gre | Self::Erspan2 | Self::Erspan3)
    }
}

impl fmt::Display for CollectorProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Vxlan => "vxlan",
            Self::Geneve => "geneve",
            Self::Gre => "gre",
            Self::Erspan2 => "erspan2",
            Self::Erspan3 => "erspan3",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        })
    }
}

/// The TLS side of a `tls` collector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CollectorTls {
    /// The name of a Secret with keys ca.crt (the CA that signed the
    /// collector's certificate), tls.crt and tls.key (the client
    /// certificate and key), all PEM. The node agent reads it in its own
    /// namespace (mirror-system) and reads no Secret elsewhere; an injected
    /// sidecar mounts the Secret of this name from its pod's namespace, so
    /// each tenant namespace that uses the collector holds its own copy.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// The name to verify in the collector's certificate; default: address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// What the agents report on a collector: `Accepted` (the spec converts to
/// an output) with a reason.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MirrorCollectorStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Why a collector's spec cannot be used; each names the field under `spec`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CollectorError {
    #[error("{field}: required for protocol {protocol}")]
    Missing {
        field: &'static str,
        protocol: CollectorProtocol,
    },
    #[error("{field}: not used by protocol {protocol}; leave it out")]
    Unused {
        field: &'static str,
        protocol: CollectorProtocol,
    },
    #[error("{field}: {reason}")]
    Range { field: &'static str, reason: String },
    #[error("address: \"{0}\" is not a host name or an IP address")]
    Address(String),
    #[error("maxRateLimit.{field}: {problem}")]
    Ceiling {
        field: &'static str,
        problem: Problem,
    },
}

fn range(field: &'static str, reason: impl fmt::Display) -> CollectorError {
    CollectorError::Range {
        field,
        reason: reason.to_string(),
    }
}

/// `value` as a narrower integer, or an error naming `field`.
fn narrow<T: TryFrom<u64>>(field: &'static str, value: u64, max: u64) -> Result<T, CollectorError> {
    T::try_from(value).map_err(|_| range(field, format_args!("{value} is greater than {max}")))
}

impl MirrorCollectorSpec {
    /// The output this collector stands for, checked field by field.
    /// `tls_dir` is used by protocol `tls` only: the directory where the
    /// agent wrote the Secret's [`TLS_CA_KEY`], [`TLS_CERT_KEY`] and
    /// [`TLS_KEY_KEY`] files (they are read when connecting, not here).
    pub fn output(&self, tls_dir: &Path) -> Result<Output, CollectorError> {
        use CollectorProtocol as P;
        let protocol = self.protocol;
        let only_for = |field, set: bool, protocols: &[P]| {
            if set && !protocols.contains(&protocol) {
                Err(CollectorError::Unused { field, protocol })
            } else {
                Ok(())
            }
        };
        let tunnels = [P::Vxlan, P::Geneve, P::Gre, P::Erspan2, P::Erspan3];
        only_for(
            "port",
            self.port.is_some(),
            &[P::Vxlan, P::Geneve, P::Tcp, P::Tls],
        )?;
        only_for("vni", self.vni.is_some(), &[P::Vxlan, P::Geneve])?;
        only_for("key", self.key.is_some(), &[P::Gre])?;
        only_for("sequence", self.sequence.is_some(), &[P::Gre])?;
        only_for(
            "sessionId",
            self.session_id.is_some(),
            &[P::Erspan2, P::Erspan3],
        )?;
        only_for("hardwareId", self.hardware_id.is_some(), &[P::Erspan3])?;
        only_for("mtu", self.mtu.is_some(), &tunnels)?;
        only_for("tls", self.tls.is_some(), &[P::Tls])?;
        let required =
            |field, value: Option<u64>| value.ok_or(CollectorError::Missing { field, protocol });

        let host = host(&self.address)?;
        let port = match (protocol, self.port) {
            (P::Gre | P::Erspan2 | P::Erspan3, _) => 0,
            (_, Some(0)) => return Err(range("port", "0 is not a port (1 to 65535)")),
            (_, Some(port)) => narrow("port", port, u16::MAX.into())?,
            (P::Vxlan, None) => vxlan::UDP_PORT,
            (P::Geneve, None) => geneve::UDP_PORT,
            (P::Tcp | P::Tls, None) => {
                return Err(CollectorError::Missing {
                    field: "port",
                    protocol,
                });
            }
        };
        let to = Endpoint { host, port };

        if !protocol.is_tunnel() {
            return Ok(match protocol {
                P::Tls => {
                    let tls = self.tls.as_ref().ok_or(CollectorError::Missing {
                        field: "tls",
                        protocol,
                    })?;
                    let files = TlsFiles {
                        ca: tls_dir.join(TLS_CA_KEY),
                        cert: tls_dir.join(TLS_CERT_KEY),
                        key: tls_dir.join(TLS_KEY_KEY),
                        server_name: tls.server_name.clone().unwrap_or_else(|| to.host.clone()),
                    };
                    Output::Tls(to, files)
                }
                _ => Output::Tcp(to),
            });
        }

        let mtu = match self.mtu {
            None => DEFAULT_MTU,
            Some(mtu) if mtu < u64::from(MIN_MTU) => {
                return Err(range("mtu", format_args!("{mtu} is less than {MIN_MTU}")));
            }
            Some(mtu) => narrow("mtu", mtu, u16::MAX.into())?,
        };
        let vni = || -> Result<Vni, CollectorError> {
            let n = narrow("vni", required("vni", self.vni)?, Vni::MAX.into())?;
            Vni::new(n).map_err(|e| range("vni", e))
        };
        let session = || -> Result<SessionId, CollectorError> {
            let n = required("sessionId", self.session_id)?;
            let n = narrow("sessionId", n, SessionId::MAX.into())?;
            SessionId::new(n).map_err(|e| range("sessionId", e))
        };
        let tunnel = match protocol {
            P::Vxlan => Tunnel::Vxlan { vni: vni()? },
            P::Geneve => Tunnel::Geneve { vni: vni()? },
            P::Gre => Tunnel::Gre {
                key: self
                    .key
                    .map(|k| narrow("key", k, u32::MAX.into()).map(GreKey))
                    .transpose()?,
                sequence: self.sequence.unwrap_or(false),
            },
            P::Erspan2 => Tunnel::Erspan2 {
                session: session()?,
            },
            _ => {
                let hw = narrow(
                    "hardwareId",
                    self.hardware_id.unwrap_or(0),
                    HwId::MAX.into(),
                )?;
                Tunnel::Erspan3 {
                    session: session()?,
                    hw_id: HwId::new(hw).map_err(|e| range("hardwareId", e))?,
                }
            }
        };
        Ok(Output::Tunnel {
            // UDP GSO, as a `vxlan://` or `geneve://` URI has it by default.
            gso: matches!(tunnel, Tunnel::Vxlan { .. } | Tunnel::Geneve { .. }),
            tunnel,
            to,
            mtu,
        })
    }

    /// Checks the spec as [`Self::output`] does, for a status before any
    /// Secret is read.
    pub fn validate(&self) -> Result<(), CollectorError> {
        self.ceiling()?;
        self.output(&PathBuf::new()).map(drop)
    }

    /// `maxRateLimit`, checked as a policy's `rateLimit`; no limit when
    /// left out.
    pub fn ceiling(&self) -> Result<RateLimit, CollectorError> {
        self.max_rate_limit
            .as_ref()
            .map_or(Ok(RateLimit::default()), RateLimit::from_spec)
            .map_err(|(field, problem)| CollectorError::Ceiling { field, problem })
    }
}

/// A host as the URI parser takes one: an IP address, or a name that is
/// valid in a URL's host (the url crate's own check, as for `--output`).
fn host(address: &str) -> Result<String, CollectorError> {
    if let Ok(ip) = address.parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    match url::Host::parse(address) {
        Ok(url::Host::Ipv6(a)) => Ok(a.to_string()),
        Ok(host) if !host.to_string().is_empty() => Ok(host.to_string()),
        _ => Err(CollectorError::Address(address.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> MirrorCollectorSpec {
        serde_norway::from_str(yaml).expect("collector spec")
    }

    fn output(yaml: &str) -> Result<Output, String> {
        spec(yaml)
            .output(Path::new("/run/mirror/tls/c"))
            .map_err(|e| e.to_string())
    }

    /// Each structured spec means what its URI means: same parser output.
    #[test]
    fn same_output_as_the_uri() {
        let cases = [
            (
                "{protocol: vxlan, address: 198.18.0.9, vni: 42}",
                "vxlan://198.18.0.9?vni=42",
            ),
            (
                "{protocol: geneve, address: collector.mirror-system.svc, port: 7000, vni: 7, mtu: 9000}",
                "geneve://collector.mirror-system.svc:7000?vni=7&mtu=9000",
            ),
            (
                "{protocol: gre, address: 'fd00:198:18::9'}",
                "gre://[fd00:198:18::9]",
            ),
            (
                "{protocol: gre, address: 198.18.0.9, key: 4294967295, sequence: true}",
                "gre://198.18.0.9?key=4294967295&seq=true",
            ),
            (
                "{protocol: erspan2, address: 198.18.0.9, sessionId: 1023}",
                "erspan2://198.18.0.9?session=1023",
            ),
            (
                "{protocol: erspan3, address: 198.18.0.9, sessionId: 5, hardwareId: 63}",
                "erspan3://198.18.0.9?session=5&hwid=63",
            ),
            (
                "{protocol: tcp, address: c.example, port: 7000}",
                "tcp://c.example:7000",
            ),
            (
                "{protocol: tls, address: c.example, port: 7443, tls: {secretName: c-tls, serverName: collector}}",
                "tls://c.example:7443?ca=/run/mirror/tls/c/ca.crt&cert=/run/mirror/tls/c/tls.crt&key=/run/mirror/tls/c/tls.key&name=collector",
            ),
        ];
        for (yaml, uri) in cases {
            let want: Output = uri.parse().expect(uri);
            assert_eq!(output(yaml), Ok(want), "{yaml}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                "{protocol: vxlan, address: a.example}",
                "vni: required for protocol vxlan",
            ),
            (
                "{protocol: vxlan, address: a.example, vni: 16777216}",
                "vni: VNI 16777216 is out of range (at most 16777215)",
            ),
            (
                "{protocol: erspan2, address: a.example}",
                "sessionId: required for protocol erspan2",
            ),
            (
                "{protocol: erspan3, address: a.example, sessionId: 1024}",
                "sessionId: ERSPAN session id 1024 is out of range (at most 1023)",
            ),
            (
                "{protocol: erspan3, address: a.example, sessionId: 1, hardwareId: 64}",
                "hardwareId: ERSPAN hardware id 64 is out of range (at most 63)",
            ),
            (
                "{protocol: gre, address: a.example, key: 4294967296}",
                "key: 4294967296 is greater than 4294967295",
            ),
            (
                "{protocol: gre, address: a.example, port: 47}",
                "port: not used by protocol gre; leave it out",
            ),
            (
                "{protocol: gre, address: a.example, vni: 1}",
                "vni: not used by protocol gre; leave it out",
            ),
            (
                "{protocol: tcp, address: a.example}",
                "port: required for protocol tcp",
            ),
            (
                "{protocol: tcp, address: a.example, port: 0}",
                "port: 0 is not a port (1 to 65535)",
            ),
            (
                "{protocol: tcp, address: a.example, port: 65536}",
                "port: 65536 is greater than 65535",
            ),
            (
                "{protocol: tcp, address: a.example, port: 1, mtu: 1500}",
                "mtu: not used by protocol tcp; leave it out",
            ),
            (
                "{protocol: tls, address: a.example, port: 1}",
                "tls: required for protocol tls",
            ),
            (
                "{protocol: tcp, address: a.example, port: 1, tls: {secretName: s}}",
                "tls: not used by protocol tcp; leave it out",
            ),
            (
                "{protocol: vxlan, address: a.example, vni: 1, mtu: 575}",
                "mtu: 575 is less than 576",
            ),
            (
                "{protocol: vxlan, address: 'a b', vni: 1}",
                "address: \"a b\" is not a host name or an IP address",
            ),
            (
                "{protocol: vxlan, address: '', vni: 1}",
                "address: \"\" is not a host name or an IP address",
            ),
        ];
        for (yaml, want) in cases {
            assert_eq!(output(yaml), Err(want.to_owned()), "{yaml}");
        }
    }

    #[test]
    fn validate_needs_no_secret() {
        let s = spec("{protocol: tls, address: c.example, port: 7443, tls: {secretName: c-tls}}");
        assert_eq!(s.validate(), Ok(()));
        let s = spec("{protocol: tls, address: c.example, port: 7443}");
        assert!(s.validate().is_err());
    }
}

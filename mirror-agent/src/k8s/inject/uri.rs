//! A `MirrorCollector` as the collector URI of a policy file, which is how
//! the sidecar's policy names it (`attach --output` takes the same URIs).

use std::{fmt::Write as _, path::Path};

use crate::{
    export::output::Output,
    k8s::collector::{CollectorError, CollectorProtocol as P, MirrorCollectorSpec},
};

/// The URI of `spec`, checked as the node agent checks it (its `output`);
/// a TLS collector's files are named under `tls_dir`.
pub fn collector_uri(spec: &MirrorCollectorSpec, tls_dir: &Path) -> Result<String, CollectorError> {
    let output = spec.output(tls_dir)?;
    let mut uri = match &output {
        Output::Tunnel { to, .. } | Output::Tcp(to) => {
            let to = to.to_string();
            // GRE and ERSPAN have no port; theirs is 0 in the endpoint.
            let host = match spec.protocol {
                P::Gre | P::Erspan2 | P::Erspan3 => to
                    .rsplit_once(':')
                    .map_or(to.as_str(), |(h, _)| h)
                    .to_owned(),
                _ => to,
            };
            format!("{}://{host}", spec.protocol)
        }
        Output::Tls(to, files) => format!(
            "tls://{to}?ca={}&cert={}&key={}&name={}",
            files.ca.display(),
            files.cert.display(),
            files.key.display(),
            files.server_name
        ),
        other => format!("{other}"),
    };
    let mut params: Vec<(&str, String)> = Vec::new();
    if let Some(v) = spec.vni {
        params.push(("vni", v.to_string()));
    }
    if let Some(v) = spec.key {
        params.push(("key", v.to_string()));
    }
    if let Some(v) = spec.sequence {
        params.push(("seq", v.to_string()));
    }
    if let Some(v) = spec.session_id {
        params.push(("session", v.to_string()));
    }
    if let Some(v) = spec.hardware_id {
        params.push(("hwid", v.to_string()));
    }
    // Without one, the MTU comes from the route, as for the node agent.
    if let Some(v) = spec.mtu {
        params.push(("mtu", v.to_string()));
    }
    for (i, (k, v)) in params.iter().enumerate() {
        let sep = if i == 0 && !uri.contains('?') {
            '?'
        } else {
            '&'
        };
        let _ = write!(uri, "{sep}{k}={v}");
    }
    Ok(uri)
}

//! The path MTU towards an address, as the kernel's routing says
//! (`ip route get ADDR`): the route's own MTU metric (a learnt path MTU
//! included) or else the MTU of the device it leaves by.

use std::net::IpAddr;

use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteMetric},
};

use crate::kernel::netlink::{self, NetlinkError};

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("looking up the route to {to}: {source}")]
    Netlink {
        to: IpAddr,
        #[source]
        source: NetlinkError,
    },
    #[error("the kernel has no route to {0} with an MTU")]
    NoMtu(IpAddr),
}

/// The MTU of the path the kernel would send a packet to `to` by.
pub fn path_mtu(to: IpAddr) -> Result<u32, RouteError> {
    let err = |source| RouteError::Netlink { to, source };
    let mut request = RouteMessage::default();
    let (family, bits, address) = match to {
        IpAddr::V4(a) => (AddressFamily::Inet, 32, RouteAddress::Inet(a)),
        IpAddr::V6(a) => (AddressFamily::Inet6, 128, RouteAddress::Inet6(a)),
    };
    request.header.address_family = family;
    request.header.destination_prefix_length = bits;
    request
        .attributes
        .push(RouteAttribute::Destination(address));
    let replies = netlink::get(RouteNetlinkMessage::GetRoute(request)).map_err(err)?;
    let route = replies
        .into_iter()
        .find_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => Some(r),
            _ => None,
        })
        .ok_or(RouteError::NoMtu(to))?;
    let mut oif = None;
    for a in &route.attributes {
        match a {
            RouteAttribute::Metrics(metrics) => {
                if let Some(mtu) = metrics.iter().find_map(|m| match m {
                    RouteMetric::Mtu(mtu) if *mtu > 0 => Some(*mtu),
                    _ => None,
                }) {
                    return Ok(mtu);
                }
            }
            RouteAttribute::Oif(index) => oif = Some(*index),
            _ => {}
        }
    }
    let index = oif.ok_or(RouteError::NoMtu(to))?;
    let mut request = LinkMessage::default();
    request.header.index = index;
    netlink::get(RouteNetlinkMessage::GetLink(request))
        .map_err(err)?
        .into_iter()
        .find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => l.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::Mtu(mtu) => Some(mtu),
                _ => None,
            }),
            _ => None,
        })
        .ok_or(RouteError::NoMtu(to))
}

#[cfg(test)]
mod tests {
    use super::path_mtu;

    /// Loopback's route leaves by `lo`, whose MTU the kernel reports (65536
    /// by default): needs no privileges.
    #[test]
    fn loopback_has_a_path_mtu() {
        let mtu = path_mtu("127.0.0.1".parse().expect("address")).expect("a route to loopback");
        assert!(mtu >= 1280, "{mtu}");
    }
}

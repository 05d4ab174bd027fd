//! GRE: the header parser and the GRE/TEB decoder, then the collector's
//! raw-socket path: the IPv4 header in front, and the dispatch by GRE
//! protocol to GRE/TEB or ERSPAN.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use mirror_agent::{
    collect::datagram::{self, Names, Tunnel},
    export::encap::gre,
};

fuzz_target!(|data: &[u8]| {
    let _ = gre::parse(data);
    let _ = gre::decode(data);
    let mut names = Names::default();
    let from = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1));
    let _ = datagram::decode(Tunnel::Gre, from, data, &mut names);
    if let Ok((from, payload)) = datagram::ipv4_payload(data) {
        let _ = datagram::decode(Tunnel::Gre, from, payload, &mut names);
    }
});

//! VXLAN: the codec's decoder, then the collector's whole path for a VXLAN
//! datagram (decapsulation and interface naming).
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use mirror_agent::{
    collect::datagram::{self, Names, Tunnel},
    export::encap::vxlan,
};

fuzz_target!(|data: &[u8]| {
    let _ = vxlan::decode(data);
    let from = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1));
    let _ = datagram::decode(Tunnel::Vxlan, from, data, &mut Names::default());
});

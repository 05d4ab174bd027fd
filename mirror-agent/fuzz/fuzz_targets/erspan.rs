//! ERSPAN II and III: the codec's decoder, and the collector's recovery of
//! the original length of a truncated frame from its inner IP header.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use mirror_agent::{
    collect::datagram::{self, Names, Tunnel},
    export::encap::erspan,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = erspan::decode(data) {
        let _ = datagram::inner_ip_len(d.inner);
    }
    let _ = datagram::inner_ip_len(data);
    let from = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1));
    let _ = datagram::decode(Tunnel::Gre, from, data, &mut Names::default());
});

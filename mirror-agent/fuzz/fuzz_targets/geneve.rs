//! GENEVE: the codec's decoder (options included), then the collector's
//! path, which names interfaces from the node and pod options.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use mirror_agent::{
    collect::datagram::{self, Names, Tunnel},
    export::encap::geneve,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = geneve::decode(data) {
        let _ = d.truncated();
    }
    let from = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1));
    let _ = datagram::decode(Tunnel::Geneve, from, data, &mut Names::default());
});

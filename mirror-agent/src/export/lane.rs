//! Which lane a tunnel copy takes: UDP tunnels send from a pool of
//! sockets ("lanes"), each in capture order, so copies that must keep
//! their order have to share one.

/// A symmetric hash of the inner frame's host pair: both addresses, taken
/// in sorted order, so both directions of a connection, its IP fragments
/// and the ICMP errors about it take one lane, and one lane keeps their
/// order (an IDS misreads a SYN-ACK that overtakes its SYN). Ports are left
/// out on purpose: with them, non-first fragments would hash apart. Copies
/// of different host pairs may overtake each other across lanes. FNV-1a
/// over the fields. ARP hashes by its sender and target IPv4 addresses,
/// as IPv4 between those hosts does: by MACs, a broadcast request and its
/// unicast reply took different lanes, and the reply overtook the request
/// (tests/tests/ids.rs saw it). An IPv6 neighbour solicitation, sent to a
/// solicited-node multicast address, hashes by its source and target
/// address, as its unicast advertisement (from the target) and the traffic
/// between the two hosts do. Other frames hash by their sorted MAC pair.
pub fn flow_hash(frame: &[u8]) -> u32 {
    let mut at = 12;
    let mut ethertype = frame
        .get(12..14)
        .map_or(0, |t| u16::from_be_bytes([t[0], t[1]]));
    if ethertype == 0x8100 {
        at = 16;
        ethertype = frame
            .get(16..18)
            .map_or(0, |t| u16::from_be_bytes([t[0], t[1]]));
    }
    let l3 = at + 2;
    let pair = |a: usize, b: usize, n: usize| -> (&[u8], &[u8]) {
        let x = frame.get(a..a + n).unwrap_or(&[]);
        let y = frame.get(b..b + n).unwrap_or(&[]);
        if x <= y { (x, y) } else { (y, x) }
    };
    let (low, high) = match ethertype {
        0x0800 => pair(l3 + 12, l3 + 16, 4),
        // ICMPv6 (next header 58) of type 135: the target follows 8 bytes in.
        0x86dd if frame.get(l3 + 6) == Some(&58) && frame.get(l3 + 40) == Some(&135) => {
            pair(l3 + 8, l3 + 48, 16)
        }
        0x86dd => pair(l3 + 8, l3 + 24, 16),
        // Ethernet and IPv4 (hardware length 6, protocol length 4).
        0x0806 if frame.get(l3 + 4..l3 + 6) == Some(&[6, 4]) => pair(l3 + 14, l3 + 24, 4),
        _ => pair(0, 6, 6),
    };
    let mut h: u32 = 0x811c_9dc5;
    for b in low.iter().chain(high) {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::flow_hash;

    fn udp4(src_port: u16, id: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[18..20].copy_from_slice(&id.to_be_bytes());
        f[23] = 17;
        f[26..30].copy_from_slice(&[198, 18, 0, 1]);
        f[30..34].copy_from_slice(&[198, 18, 0, 2]);
        f[34..36].copy_from_slice(&src_port.to_be_bytes());
        f
    }

    #[test]
    fn both_directions_and_fragments_share_a_hash() {
        let forward = udp4(1000, 1);
        let mut back = forward.clone();
        back[26..30].copy_from_slice(&forward[30..34]);
        back[30..34].copy_from_slice(&forward[26..30]);
        back[34..36].copy_from_slice(&2000u16.to_be_bytes());
        assert_eq!(flow_hash(&forward), flow_hash(&back));
        // The IP id changes per packet, ports per connection; the lane must not.
        assert_eq!(flow_hash(&forward), flow_hash(&udp4(1001, 2)));
        let mut other = forward.clone();
        other[33] = 3;
        assert_ne!(flow_hash(&forward), flow_hash(&other));
        assert_eq!(flow_hash(&[]), flow_hash(&[]));
    }

    /// An ARP request (broadcast) and its reply take the lane of the IPv4
    /// traffic between the same two hosts.
    #[test]
    fn arp_shares_the_hash_of_its_hosts() {
        let arp = |dst_mac: [u8; 6], op: u8, sender: [u8; 4], target: [u8; 4]| {
            let mut f = vec![0u8; 42];
            f[..6].copy_from_slice(&dst_mac);
            f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
            f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, op]);
            f[28..32].copy_from_slice(&sender);
            f[38..42].copy_from_slice(&target);
            f
        };
        let (a, b) = ([198, 18, 0, 1], [198, 18, 0, 2]);
        let request = arp([0xff; 6], 1, a, b);
        let reply = arp([2, 0, 0, 0, 0, 1], 2, b, a);
        assert_eq!(flow_hash(&request), flow_hash(&reply));
        assert_eq!(flow_hash(&request), flow_hash(&udp4(1000, 1)));
    }

    /// An IPv6 neighbour solicitation (to the target's solicited-node
    /// multicast address) and its advertisement (unicast, from the target)
    /// take the lane of the traffic between the same two hosts.
    #[test]
    fn neighbour_discovery_shares_the_hash_of_its_hosts() {
        let ipv6 = |src: [u8; 16], dst: [u8; 16], next: u8, icmp: &[u8]| {
            let mut f = vec![0u8; 54];
            f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
            f[14] = 0x60;
            f[20] = next;
            f[22..38].copy_from_slice(&src);
            f[38..54].copy_from_slice(&dst);
            f.extend_from_slice(icmp);
            f
        };
        let mut a = [0u8; 16];
        a[..2].copy_from_slice(&[0xfd, 0x00]);
        let (mut b, mut multicast) = (a, [0u8; 16]);
        a[15] = 1;
        b[15] = 2;
        multicast[..2].copy_from_slice(&[0xff, 0x02]);
        multicast[11..].copy_from_slice(&[1, 0xff, 0, 0, 2]);
        let nd = |kind: u8, target: [u8; 16]| {
            let mut m = vec![kind, 0, 0, 0, 0, 0, 0, 0];
            m.extend_from_slice(&target);
            m
        };
        let solicitation = ipv6(a, multicast, 58, &nd(135, b));
        let advertisement = ipv6(b, a, 58, &nd(136, b));
        let udp = ipv6(a, b, 17, &[0; 8]);
        assert_eq!(flow_hash(&solicitation), flow_hash(&advertisement));
        assert_eq!(flow_hash(&solicitation), flow_hash(&udp));
        // Other ICMPv6 to that multicast address is not taken for it.
        let other = ipv6(a, multicast, 58, &nd(128, b));
        assert_ne!(flow_hash(&other), flow_hash(&udp));
    }
}

//! The policy prefilter: lets a packet through when some Accept rule of its
//! policy could match it. It may let through more than the rules accept
//! (the agent re-checks every record exactly, in order, Reject rules
//! included), never less: whatever it cannot read exactly, it lets through.

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::generated::bpf_skb_load_bytes,
    macros::map,
    maps::{Array, LpmTrie, lpm_trie::Key},
    programs::TcContext,
};
use mirror_common::{
    KernelRule, Lpm4, Lpm6, MAX_KERNEL_RULES, MAX_LPM_ENTRIES, MAX_POLICIES, MAX_RULE_PORTS,
    PORTS_UNCHECKED, PROTO_ANY, PolicyFilter, PortSpan,
};

#[map(name = "MIRROR_POLICIES")]
static POLICIES: Array<PolicyFilter> = Array::with_max_entries(MAX_POLICIES, 0);

#[map(name = "MIRROR_RULES")]
static RULES: Array<KernelRule> = Array::with_max_entries(MAX_POLICIES * MAX_KERNEL_RULES, 0);

#[map(name = "MIRROR_LPM_SRC4")]
static SRC4: LpmTrie<Lpm4, u64> = LpmTrie::with_max_entries(MAX_LPM_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "MIRROR_LPM_DST4")]
static DST4: LpmTrie<Lpm4, u64> = LpmTrie::with_max_entries(MAX_LPM_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "MIRROR_LPM_SRC6")]
static SRC6: LpmTrie<Lpm6, u64> = LpmTrie::with_max_entries(MAX_LPM_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "MIRROR_LPM_DST6")]
static DST6: LpmTrie<Lpm6, u64> = LpmTrie::with_max_entries(MAX_LPM_ENTRIES, BPF_F_NO_PREALLOC);

const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;

/// A header copied to the stack, aligned so it can be filled a word at a
/// time (the verifier refuses misaligned stack writes).
#[repr(C, align(8))]
struct Aligned<const N: usize>(MaybeUninit<[u8; N]>);

/// Reads `N` bytes at `offset`; `None` if the packet is shorter. Headers
/// in the skb's linear area (nearly always) are read in place, a word at a
/// time and with no helper call; the rest are copied with `bpf_skb_load_bytes`.
#[inline(always)]
fn load<const N: usize>(ctx: &TcContext, offset: u32) -> Option<[u8; N]> {
    // Not zeroed first: that is a `memset` subprogram call, and both ways
    // below write every byte.
    let mut buf = Aligned(MaybeUninit::<[u8; N]>::uninit());
    let dst = buf.0.as_mut_ptr().cast::<u8>();
    let at = ctx.data() + offset as usize;
    if at + N <= ctx.data_end() {
        // Volatile, word by word: LLVM would otherwise turn the copy into a
        // call of a byte-wise `memcpy` subprogram.
        let mut i = 0;
        while i + 4 <= N {
            // SAFETY: [at, at + N) lies within the packet's linear data, as
            // checked above (for the verifier too); `buf` is 8-aligned and `i`
            // a multiple of 4, so the store is aligned.
            unsafe {
                let w = core::ptr::read_volatile((at + i) as *const u32);
                dst.add(i).cast::<u32>().write(w);
            }
            i += 4;
        }
        while i < N {
            // SAFETY: as above.
            unsafe {
                dst.add(i)
                    .write(core::ptr::read_volatile((at + i) as *const u8))
            };
            i += 1;
        }
        // SAFETY: every byte was written above.
        return Some(unsafe { buf.0.assume_init() });
    }
    // SAFETY: `buf` has N bytes, and N is a non-zero constant.
    let rc = unsafe { bpf_skb_load_bytes(ctx.skb.skb as *const _, offset, dst.cast(), N as u32) };
    // SAFETY: the helper wrote all N bytes when it returned 0.
    (rc == 0).then(|| unsafe { buf.0.assume_init() })
}

/// Reads `W` 32-bit words at `offset`, as they lie in memory (network
/// order); `None` if the packet is shorter. For headers whose fields are
/// taken apart arithmetically: from a byte array LLVM splits every word
/// into bytes, kept on the stack, and joins them again.
#[inline(always)]
fn load_words<const W: usize>(ctx: &TcContext, offset: u32) -> Option<[u32; W]> {
    let at = ctx.data() + offset as usize;
    if at + 4 * W <= ctx.data_end() {
        let mut words = [0u32; W];
        let mut i = 0;
        while i < W {
            // SAFETY: [at, at + 4W) lies within the packet's linear data, as
            // checked above (for the verifier too). Volatile, so that LLVM
            // neither merges nor splits the loads.
            words[i] = unsafe { core::ptr::read_volatile((at + 4 * i) as *const u32) };
            i += 1;
        }
        return Some(words);
    }
    let mut buf = MaybeUninit::<[u32; W]>::uninit();
    // SAFETY: `buf` has 4W bytes, and W is a non-zero constant.
    let rc = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            offset,
            buf.as_mut_ptr().cast(),
            4 * W as u32,
        )
    };
    // SAFETY: the helper wrote all 4W bytes when it returned 0.
    (rc == 0).then(|| unsafe { buf.assume_init() })
}

/// Byte `i` (0 first in memory) of a word read by [`load_words`].
#[inline(always)]
fn byte(word: u32, i: usize) -> u8 {
    word.to_ne_bytes()[i]
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Header facts the rules look at.
struct L4 {
    proto: u8,
    /// Offset of the transport header, when this packet has one (not a later
    /// fragment).
    offset: Option<u32>,
}

/// Whether policy `policy_id` may mirror this packet.
#[inline(always)]
pub fn passes(ctx: &TcContext, policy_id: u32) -> bool {
    let Some(pf) = POLICIES.get(policy_id) else {
        return true;
    };
    if pf.enabled == 0 {
        return true;
    }
    let Some(t) = load::<2>(ctx, 12) else {
        return true;
    };
    let (mut ethertype, mut l3) = (be16(t), 14u32);
    // 802.1Q, 802.1ad and the older QinQ TPID 0x9100: the agent's parser
    // (etherparse) and libpcap's `vlan` know all three.
    if matches!(ethertype, 0x8100 | 0x88a8 | 0x9100) {
        let Some(t) = load::<2>(ctx, 16) else {
            return true;
        };
        (ethertype, l3) = (be16(t), 18);
    }
    let key = policy_id.to_be_bytes();
    // A side's trie is looked up only when some Accept rule has a CIDR list
    // there (others match any address), and the destination's only when
    // the source left candidates: most packets need one lookup or none.
    let need_src = pf.accept & !pf.src_any != 0;
    let need_dst = pf.accept & !pf.dst_any != 0;
    let (candidates, l4) = match ethertype {
        0x0800 => {
            let Some(h) = load_words::<5>(ctx, l3) else {
                return true;
            };
            let later_fragment = be16([byte(h[1], 2), byte(h[1], 3)]) & 0x1fff != 0;
            let ihl = u32::from(byte(h[0], 0) & 0x0f) * 4;
            let lookup = |map: &LpmTrie<Lpm4, u64>, a: [u8; 4]| {
                map.get(Key::new(
                    64,
                    Lpm4 {
                        policy: key,
                        addr: a,
                    },
                ))
                .copied()
                .unwrap_or(0)
            };
            // An address outside every entry's span matches none: no
            // lookup (a trie walk is most of what a packet that matches
            // nothing costs).
            let (src, dst) = (h[3].to_ne_bytes(), h[4].to_ne_bytes());
            let src = if need_src && pf.src4.holds(u32::from_be_bytes(src)) {
                lookup(&SRC4, src)
            } else {
                0
            };
            let c = pf.accept & (src | pf.src_any);
            if c == 0 {
                return false;
            }
            let dst = if need_dst && pf.dst4.holds(u32::from_be_bytes(dst)) {
                lookup(&DST4, dst)
            } else {
                0
            };
            (
                c & (dst | pf.dst_any),
                L4 {
                    proto: byte(h[2], 1),
                    offset: (!later_fragment).then_some(l3 + ihl),
                },
            )
        }
        0x86dd => {
            let Some(h) = load::<40>(ctx, l3) else {
                return true;
            };
            // Extension headers (hop-by-hop, routing, fragment, ESP, AH,
            // destination options, mobility, HIP, shim6, experimental) are
            // walked by the agent, not here.
            if matches!(
                h[6],
                0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254
            ) {
                return true;
            }
            let addr = |at: usize| {
                let mut a = [0u8; 16];
                let mut i = 0;
                while i < 16 {
                    a[i] = h[at + i];
                    i += 1;
                }
                a
            };
            let lookup = |map: &LpmTrie<Lpm6, u64>, a: [u8; 16]| {
                map.get(Key::new(
                    160,
                    Lpm6 {
                        policy: key,
                        addr: a,
                    },
                ))
                .copied()
                .unwrap_or(0)
            };
            let src = if need_src { lookup(&SRC6, addr(8)) } else { 0 };
            let c = pf.accept & (src | pf.src_any);
            if c == 0 {
                return false;
            }
            let dst = if need_dst { lookup(&DST6, addr(24)) } else { 0 };
            (
                c & (dst | pf.dst_any),
                L4 {
                    proto: h[6],
                    offset: Some(l3 + 40),
                },
            )
        }
        // A second VLAN tag: the agent looks through it, so must we.
        0x8100 | 0x88a8 | 0x9100 => return true,
        _ => return pf.non_ip & pf.accept != 0,
    };
    if candidates == 0 {
        return false;
    }
    let (mut sport, mut dport, mut flags, mut has_ports) = (0u16, 0u16, 0u8, false);
    if let Some(at) = l4.offset
        && matches!(l4.proto, TCP | UDP | SCTP)
    {
        // TCP: ports to flags in one read (a TCP header has at least 20
        // bytes). Never a 1-byte read: LLVM turns its bounds check into a
        // form the verifier draws no packet range from.
        let p = if l4.proto == TCP {
            let Some(h) = load::<14>(ctx, at) else {
                return true;
            };
            flags = h[13];
            [h[0], h[1], h[2], h[3]]
        } else {
            let Some(h) = load::<4>(ctx, at) else {
                return true;
            };
            h
        };
        (sport, dport, has_ports) = (be16([p[0], p[1]]), be16([p[2], p[3]]), true);
    }
    let base = policy_id * MAX_KERNEL_RULES;
    let mut i = 0;
    while i < MAX_KERNEL_RULES {
        if candidates & (1u64 << i) != 0 {
            let Some(rule) = RULES.get(base + i) else {
                return true;
            };
            match rule_matches(rule, l4.proto, has_ports, sport, dport, flags) {
                Some(true) | None => return true,
                Some(false) => {}
            }
        }
        i += 1;
    }
    false
}

/// Protocol, ports and flags of one candidate rule; `None` when the rule
/// has conditions the hook does not check (the agent will).
#[inline(always)]
fn rule_matches(
    rule: &KernelRule,
    proto: u8,
    has_ports: bool,
    sport: u16,
    dport: u16,
    flags: u8,
) -> Option<bool> {
    if rule.protocol != PROTO_ANY && rule.protocol != u32::from(proto) {
        return Some(false);
    }
    if rule.src_port_count == PORTS_UNCHECKED || rule.dst_port_count == PORTS_UNCHECKED {
        return None;
    }
    if rule.src_port_count != 0 || rule.dst_port_count != 0 {
        if !has_ports {
            return Some(false);
        }
        if !in_spans(&rule.src_ports, rule.src_port_count, sport)
            || !in_spans(&rule.dst_ports, rule.dst_port_count, dport)
        {
            return Some(false);
        }
    }
    if rule.tcp_flags != 0 {
        let want = rule.tcp_flags as u8;
        if proto != TCP || !has_ports || flags & want != want {
            return Some(false);
        }
    }
    Some(true)
}

/// Whether `port` is in the first `count` spans; no spans = any port.
#[inline(always)]
fn in_spans(spans: &[PortSpan; MAX_RULE_PORTS], count: u32, port: u16) -> bool {
    if count == 0 {
        return true;
    }
    let mut i = 0;
    while i < MAX_RULE_PORTS {
        if (i as u32) < count && spans[i].from <= port && port <= spans[i].to {
            return true;
        }
        i += 1;
    }
    false
}

//! The kernel/user ABI of the mirror, and nothing else.
//!
//! Every type here is `#[repr(C)]` with fixed-width fields and explicit
//! padding, and its size is asserted, so the eBPF object and the agent agree
//! byte for byte. No `bool`, `Option`, enum or `usize` crosses the boundary:
//! directions and flags are `u32` bit sets whose meaning is given by the
//! constants below, and the agent turns them into types at its edge.
//! Any change to a layout or a meaning bumps [`ABI_VERSION`].
#![no_std]

/// Version of everything in this crate. The agent refuses records or pins of
/// another version instead of misreading them.
pub const ABI_VERSION: u32 = 8;

/// Map names, as they appear in the eBPF object (and, later, under the pin root).
pub const MAP_CONFIG: &str = "MIRROR_CONFIG";
/// The config of the interfaces in the agent's own namespace again, in an
/// array at their ifindex (those below [`CONFIG_HERE_SLOTS`]), where the
/// hook finds it without hashing; every other slot all zeros, which
/// mirrors no direction. [`MAP_CONFIG`] still holds every interface: the
/// hook looks there for the others.
pub const MAP_CONFIG_HERE: &str = "MIRROR_CONFIG_HERE";
pub const MAP_COUNTERS: &str = "MIRROR_COUNTERS";
/// The ring buffers, one per ring slot ([`IfaceConfig::ring`]): tenants'
/// copies take space in their own ring only.
pub const MAP_RECORDS: [&str; RINGS as usize] = [
    "MIRROR_RECORDS_0",
    "MIRROR_RECORDS_1",
    "MIRROR_RECORDS_2",
    "MIRROR_RECORDS_3",
    "MIRROR_RECORDS_4",
    "MIRROR_RECORDS_5",
    "MIRROR_RECORDS_6",
    "MIRROR_RECORDS_7",
];
/// How many ring buffers the hook has (static maps: a BPF map of ring
/// buffers is beyond aya-ebpf 0.2). Tenants beyond this share rings.
pub const RINGS: u32 = 8;
/// The single ring of ABI versions before 7, by which a retired map set's
/// leftover records are still counted.
pub const MAP_RECORDS_SHARED: &str = "MIRROR_RECORDS";
pub const MAP_POLICIES: &str = "MIRROR_POLICIES";
pub const MAP_RULES: &str = "MIRROR_RULES";
pub const MAP_LPM_SRC4: &str = "MIRROR_LPM_SRC4";
pub const MAP_LPM_DST4: &str = "MIRROR_LPM_DST4";
pub const MAP_LPM_SRC6: &str = "MIRROR_LPM_SRC6";
pub const MAP_LPM_DST6: &str = "MIRROR_LPM_DST6";
pub const MAP_NS_SCRATCH: &str = "MIRROR_NS_SCRATCH";
pub const MAP_MAINS: &str = "MIRROR_MAINS";
pub const MAP_BUDGETS: &str = "MIRROR_BUDGETS";
/// In each entry object, its own (never pinned): the namespace it serves.
pub const MAP_NS_SELF: &str = "MIRROR_NS_SELF";
/// Every map, as pinned by name under the agent's pin directory.
pub const MAPS: [&str; 20] = [
    MAP_CONFIG,
    MAP_CONFIG_HERE,
    MAP_COUNTERS,
    MAP_RECORDS[0],
    MAP_RECORDS[1],
    MAP_RECORDS[2],
    MAP_RECORDS[3],
    MAP_RECORDS[4],
    MAP_RECORDS[5],
    MAP_RECORDS[6],
    MAP_RECORDS[7],
    MAP_POLICIES,
    MAP_RULES,
    MAP_LPM_SRC4,
    MAP_LPM_DST4,
    MAP_LPM_SRC6,
    MAP_LPM_DST6,
    MAP_NS_SCRATCH,
    MAP_MAINS,
    MAP_BUDGETS,
];
/// The mirror programs' global (u64) the agent sets at load time to its own
/// netns cookie: that of the interfaces they are attached to directly.
pub const GLOBAL_NETNS_COOKIE: &str = "NETNS_COOKIE";
/// Program names: the mirror programs, loaded once, for the agent's own
/// namespace; and the entry programs for another namespace (a pod's), a
/// copy per namespace, which note the namespace in [`MAP_NS_SCRATCH`] and
/// tail-call the mirror program at [`MAIN_INGRESS`] or [`MAIN_EGRESS`] of
/// [`MAP_MAINS`]. An entry copy verifies in microseconds; the mirror
/// programs take the verifier far longer, too long to repeat per pod.
pub const PROG_INGRESS: &str = "mirror_ingress";
pub const PROG_EGRESS: &str = "mirror_egress";
pub const PROG_NS_INGRESS: &str = "mirror_ns_ingress";
pub const PROG_NS_EGRESS: &str = "mirror_ns_egress";
pub const MAIN_INGRESS: u32 = 0;
pub const MAIN_EGRESS: u32 = 1;

/// Direction bits, from the hooked interface's own point of view (as `tcpdump -Q`):
/// ingress is what the interface receives, egress what it transmits.
pub const DIR_INGRESS: u32 = 1;
pub const DIR_EGRESS: u32 = 2;

/// Record flag: the captured bytes are fewer than the original length.
pub const FLAG_TRUNCATED: u32 = 1;

/// Largest snaplen accepted, as tcpdump's maximum.
pub const MAX_SNAPLEN: u32 = 262_144;
/// How many interfaces one agent can hook (config and counter slots).
pub const MAX_INTERFACES: u32 = 1024;
/// Slots of [`MAP_CONFIG_HERE`]: ifindexes `0..16384`. A namespace numbers
/// its interfaces upwards as they are made, so a node's pod veths reach
/// the 16384th only after that many pods since boot; theirs are found in
/// the hash instead (a hash lookup more per packet, 20 to 30 ns here;
/// nothing lost). 512 KiB of kernel memory, less than [`MAP_RULES`] takes
/// (768 KiB).
pub const CONFIG_HERE_SLOTS: u32 = 16384;
/// Default total size of the ring buffers in bytes (`attach --ring-size`);
/// each ring's must be a power of two and a page multiple.
pub const DEFAULT_RING_BYTES: u32 = 64 << 20;

/// Policy ids index [`MAP_POLICIES`]: 1..MAX_POLICIES (0 is "none").
pub const MAX_POLICIES: u32 = 256;
/// Kernel rules per policy: one bit each in a `u64`.
pub const MAX_KERNEL_RULES: u32 = 64;
/// Port ranges per rule side the hook checks; a rule with more is checked
/// only in the agent (the hook lets its packets through).
pub const MAX_RULE_PORTS: usize = 4;
/// [`KernelRule::protocol`] matching any protocol.
pub const PROTO_ANY: u32 = 0x100;
/// [`KernelRule::src_ports`] count meaning "not checked here".
pub const PORTS_UNCHECKED: u32 = u32::MAX;
/// LPM entries per table.
pub const MAX_LPM_ENTRIES: u32 = 16384;

/// Capture size classes. The verifier needs a constant size for every ring
/// buffer reservation, so instead of reserving the worst case (256 KiB) for
/// every packet the hook reserves the smallest class that holds
/// `min(packet length, snaplen)`. Powers of two from 64 bytes to [`MAX_SNAPLEN`]
/// waste at most half a record and usually far less.
pub const SIZE_CLASSES: [u32; 13] = [
    64,
    128,
    256,
    512,
    1024,
    2048,
    4096,
    8192,
    16384,
    32768,
    65536,
    131_072,
    MAX_SNAPLEN,
];
// The hook takes the first class that holds the capture, which is the
// smallest only if they ascend, and always finds one only if the last holds
// a whole snaplen.
const _: () = {
    let mut i = 1;
    while i < SIZE_CLASSES.len() {
        assert!(SIZE_CLASSES[i - 1] < SIZE_CLASSES[i]);
        i += 1;
    }
    assert!(SIZE_CLASSES[SIZE_CLASSES.len() - 1] == MAX_SNAPLEN);
};

/// What names a hooked interface to the hook: its network namespace (the
/// kernel's netns cookie: [`GLOBAL_NETNS_COOKIE`], or [`MAP_NS_SELF`] of the
/// entry copy that runs there) and its index there. The index alone repeats across
/// namespaces: every pod's `eth0` may be index 2.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IfaceKey {
    pub netns_cookie: u64,
    pub ifindex: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<IfaceKey>() == 16);

/// The per-CPU hand-over from an entry program to the mirror program it
/// tail-calls (the only entry of [`MAP_NS_SCRATCH`]): the namespace of the
/// packet's device. Set just before the tail call and cleared by the first
/// reader, so a mirror program attached directly never takes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NsScratch {
    pub netns_cookie: u64,
    /// 1 while `netns_cookie` is waiting for the mirror program.
    pub set: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<NsScratch>() == 16);

/// Per-interface configuration, keyed by [`IfaceKey`] in [`MAP_CONFIG`].
/// An interface with no entry is not mirrored.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfaceConfig {
    /// Opaque id of the policy that asked for this mirror, copied into records.
    pub policy_id: u32,
    /// Bit set of `DIR_*`: which hook directions are mirrored.
    pub directions: u32,
    /// Bytes kept per packet, 1..=[`MAX_SNAPLEN`].
    pub snaplen: u32,
    /// Mirror one in this many matching packets, chosen at random; 1 = all.
    pub sample_every: u32,
    /// Index into [`MAP_COUNTERS`] for this interface's counters.
    pub counter_slot: u32,
    /// Packets with `skb->mark & skip_mask == skip_mark` are the agent's own
    /// (its sockets carry that `SO_MARK`) and are never mirrored. A zero mask
    /// disables the check.
    pub skip_mark: u32,
    pub skip_mask: u32,
    /// Which ring (`0..RINGS`, an index into [`MAP_RECORDS`]) this
    /// interface's copies go to: its tenant's. Out of range: the last.
    pub ring: u32,
}
const _: () = assert!(core::mem::size_of::<IfaceConfig>() == 32);

impl IfaceConfig {
    /// No config: what an empty slot of [`MAP_CONFIG_HERE`] holds. It
    /// mirrors no direction, so the hook stops at it.
    pub const NONE: Self = Self {
        policy_id: 0,
        directions: 0,
        snaplen: 0,
        sample_every: 0,
        counter_slot: 0,
        skip_mark: 0,
        skip_mask: 0,
        ring: 0,
    };
}

/// Per-CPU counters for one interface, in [`MAP_COUNTERS`] (a per-CPU array
/// indexed by [`IfaceConfig::counter_slot`]). Every way a packet that reached
/// the hook can fail to become a record is counted here.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets (and their bytes) the hook saw in a mirrored direction.
    pub seen_packets: u64,
    pub seen_bytes: u64,
    /// Records written to the ring buffer, and the original bytes they stand for.
    pub mirrored_packets: u64,
    pub mirrored_bytes: u64,
    /// Records whose captured bytes are fewer than the packet (snaplen).
    pub truncated: u64,
    /// Packets passed over by 1-in-N sampling.
    pub sampled_out: u64,
    /// Packets lost because the interface's ring buffer (its tenant's) had no room.
    pub ring_full: u64,
    /// Packets lost because copying from the packet failed.
    pub load_failed: u64,
    /// The agent's own tunnel packets, passed over (see `IfaceConfig::skip_mark`).
    pub own_traffic: u64,
    /// Packets the policy's kernel prefilter ruled out (no Accept rule can match).
    pub filtered: u64,
    /// Packets over the policy's budget ([`Budget`]), never copied.
    pub rate_limited: u64,
}
const _: () = assert!(core::mem::size_of::<Counters>() == 88);

impl Counters {
    /// Sum of per-CPU values.
    pub fn add(&mut self, other: &Self) {
        self.seen_packets += other.seen_packets;
        self.seen_bytes += other.seen_bytes;
        self.mirrored_packets += other.mirrored_packets;
        self.mirrored_bytes += other.mirrored_bytes;
        self.truncated += other.truncated;
        self.sampled_out += other.sampled_out;
        self.ring_full += other.ring_full;
        self.load_failed += other.load_failed;
        self.own_traffic += other.own_traffic;
        self.filtered += other.filtered;
        self.rate_limited += other.rate_limited;
    }
}

/// A policy's kernel prefilter, in [`MAP_POLICIES`] at the policy id. The
/// hook lets a packet through when some Accept rule could match it, and
/// counts the rest as filtered; the agent then applies the rules exactly,
/// in order, Reject rules included. Bit `i` of each mask is rule `i`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyFilter {
    /// Zero: no prefilter (no rules, or more than the kernel holds).
    pub enabled: u32,
    pub _pad: u32,
    /// Accept rules.
    pub accept: u64,
    /// Rules with no condition at all, the only ones that match non-IP frames.
    pub non_ip: u64,
    /// Rules with no source (destination) CIDR list: any address matches.
    pub src_any: u64,
    pub dst_any: u64,
    /// The IPv4 addresses the source (destination) trie's entries cover,
    /// first to last as host-order numbers: an address outside matches no
    /// entry, so the hook skips the lookup (the costliest step of a packet
    /// that matches nothing). Empty (`first > last`) for an empty trie.
    pub src4: AddrSpan,
    pub dst4: AddrSpan,
}
const _: () = assert!(core::mem::size_of::<PolicyFilter>() == 56);

/// The smallest range of IPv4 addresses holding a set of prefixes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrSpan {
    pub first: u32,
    pub last: u32,
}
const _: () = assert!(core::mem::size_of::<AddrSpan>() == 8);

impl AddrSpan {
    /// Holds no address.
    pub const EMPTY: Self = Self {
        first: u32::MAX,
        last: 0,
    };

    #[inline(always)]
    pub fn holds(&self, addr: u32) -> bool {
        self.first <= addr && addr <= self.last
    }
}

impl Default for AddrSpan {
    fn default() -> Self {
        Self::EMPTY
    }
}

/// One dimension (packets or bytes) of a policy's [`Budget`]: a token
/// bucket kept as a theoretical arrival time (GCRA): `tat_ns` is when the
/// bucket would be full again had nothing more arrived. A packet of cost
/// `c` passes when `c <= burst` and `max(tat, now) + ceil(c * ns_per_unit
/// / 2^BUDGET_UNIT_SHIFT) <= now + depth_ns`, which is a bucket of `burst`
/// tokens refilled at `rate` per second, in one word the hook can move
/// with an atomic add.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Nanoseconds per unit (packet or byte), times `2^BUDGET_UNIT_SHIFT`,
    /// rounded up: `ceil(10^9 * 2^BUDGET_UNIT_SHIFT / rate)`, so the hook
    /// multiplies instead of dividing; 0: this dimension has no limit.
    /// The agent bounds `burst * ns_per_unit` below 2^64.
    pub ns_per_unit: u64,
    /// Units the bucket holds; a packet costing more never passes.
    pub burst: u64,
    /// Nanoseconds the bucket takes to fill from empty: `burst * 10^9 / rate`.
    pub depth_ns: u64,
    /// `CLOCK_BOOTTIME` nanoseconds; 0 (the agent's write) is a full bucket.
    /// Written by the hook only.
    pub tat_ns: u64,
}
/// The fixed point of [`Bucket::ns_per_unit`]: 2^-20 ns, so that a rate
/// of 10^12 bytes/s is still exact to 0.1%.
pub const BUDGET_UNIT_SHIFT: u32 = 20;
const _: () = assert!(core::mem::size_of::<Bucket>() == 32);

/// A policy's budget, in [`MAP_BUDGETS`] at the policy id: checked after
/// the prefilter and sampling, before a copy takes ring space. Shared by
/// all CPUs (not per-CPU), so the limit is the policy's on the node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    /// Zero: no limit at all; the hook reads nothing else (the cheap path).
    pub limited: u32,
    pub _pad: u32,
    pub packets: Bucket,
    pub bytes: Bucket,
}
const _: () = assert!(core::mem::size_of::<Budget>() == 72);

/// An inclusive port range.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortSpan {
    pub from: u16,
    pub to: u16,
}

/// One rule's non-address conditions, in [`MAP_RULES`] at
/// `policy_id * MAX_KERNEL_RULES + rule index`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelRule {
    /// IP protocol number, or [`PROTO_ANY`].
    pub protocol: u32,
    /// TCP flag bits that must all be set; 0 = any.
    pub tcp_flags: u32,
    /// How many spans below apply: 0 = any port, [`PORTS_UNCHECKED`] = too
    /// many to check here.
    pub src_port_count: u32,
    pub dst_port_count: u32,
    pub src_ports: [PortSpan; MAX_RULE_PORTS],
    pub dst_ports: [PortSpan; MAX_RULE_PORTS],
}
const _: () = assert!(core::mem::size_of::<KernelRule>() == 48);

/// LPM trie keys: the policy id (big-endian, so it is the leading 32 bits of
/// the prefix) then the address. Prefix length = 32 + the CIDR's length.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lpm4 {
    pub policy: [u8; 4],
    pub addr: [u8; 4],
}
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lpm6 {
    pub policy: [u8; 4],
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<Lpm4>() == 8 && core::mem::size_of::<Lpm6>() == 20);

/// Header of every ring-buffer record; the captured bytes follow it directly.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// `CLOCK_BOOTTIME` nanoseconds when the hook ran (`bpf_ktime_get_boot_ns`);
    /// the agent adds the realtime-minus-boottime offset for wall-clock time.
    pub timestamp_ns: u64,
    /// The hooked interface, as [`IfaceKey`] names it.
    pub netns_cookie: u64,
    pub ifindex: u32,
    /// One of `DIR_*`.
    pub direction: u32,
    pub policy_id: u32,
    /// Length of the packet on the wire (`skb->len`).
    pub orig_len: u32,
    /// Bytes that follow this header.
    pub cap_len: u32,
    /// Bit set of `FLAG_*`.
    pub flags: u32,
    /// `skb->gso_size`: the payload bytes of each wire segment of a GSO or
    /// GRO super-packet (the MSS for TCP); 0 for a packet the kernel sends
    /// as it is. The agent cuts super-packets into wire-size segments by it.
    pub gso_size: u32,
    /// `skb->gso_segs`: how many segments the kernel would make (0 or 1
    /// for a plain packet).
    pub gso_segs: u32,
}
pub const RECORD_HEADER_LEN: usize = core::mem::size_of::<RecordHeader>();
const _: () = assert!(RECORD_HEADER_LEN == 48);

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` data with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for super::IfaceKey {}
    unsafe impl aya::Pod for super::NsScratch {}
    unsafe impl aya::Pod for super::IfaceConfig {}
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl aya::Pod for super::RecordHeader {}
    unsafe impl aya::Pod for super::PolicyFilter {}
    unsafe impl aya::Pod for super::KernelRule {}
    unsafe impl aya::Pod for super::Lpm4 {}
    unsafe impl aya::Pod for super::Lpm6 {}
    unsafe impl aya::Pod for super::Budget {}
}

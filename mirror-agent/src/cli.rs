//! Command-line surface. Flags are parsed into typed values here, at the
//! edge, so the rest of the agent never sees a bare string or integer.

use std::{
    num::{NonZeroU64, NonZeroUsize},
    path::PathBuf,
};

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use mirror_common::DEFAULT_RING_BYTES;

use crate::{
    collect::{OutputDir, listen::Listen},
    export::output::Output,
    model::{
        direction::Directions,
        rings::RingSlots,
        values::{AttachMode, MarkArg, RingSize, SampleRate, Snaplen},
    },
};

#[derive(Debug, Parser)]
#[command(
    name = "mirror-agent",
    version,
    about = "Mirror packets from network interfaces with eBPF TC hooks, into pcapng files or collectors.",
    long_about = "Mirror packets from network interfaces with eBPF TC hooks, into pcapng files \
                  or collectors.\n\nThe hooks copy packets into a BPF ring buffer and always \
                  pass them on unchanged: a failure in the mirror loses mirrored copies (and \
                  counts them), never production packets.\n\nNeeds root, or the capabilities \
                  CAP_BPF and CAP_NET_ADMIN (CAP_SYS_ADMIN also works in place of CAP_BPF)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mirror named interfaces of this network namespace, without Kubernetes.
    #[command(after_help = ATTACH_EXAMPLES)]
    Attach(AttachArgs),
    /// Receive mirrored packets from agents (VXLAN, GENEVE, GRE, ERSPAN II/III, pcapng
    /// over TCP) and write rotating pcapng files, one interface per agent and pod.
    #[command(after_help = COLLECT_EXAMPLES)]
    Collect(CollectArgs),
    /// The node agent under Kubernetes (a DaemonSet): mirror the pods of this node
    /// that MirrorPolicies and ClusterMirrorPolicies select, to their MirrorCollectors.
    #[command(after_help = RUN_EXAMPLES)]
    Run(RunArgs),
    /// Inside one pod (a native sidecar, injected by `webhook`): mirror the pod's own
    /// interfaces by a policy the webhook resolved, with no Kubernetes API access.
    #[command(after_help = SIDECAR_EXAMPLES)]
    Sidecar(SidecarArgs),
    /// The mutating admission webhook that injects `sidecar` into the pods of
    /// opted-in namespaces (HTTPS; see deploy/webhook.yaml).
    #[command(after_help = WEBHOOK_EXAMPLES)]
    Webhook(WebhookArgs),
    /// Remove every hook and pin left under a pin directory (by `attach
    /// --cleanup-on-exit=false`, or by `run`, which keeps its pins across restarts).
    Uninstall(UninstallArgs),
    /// What is hooked on this node, read from the pin directory and the kernel
    /// (no API server needed): each interface's pod, policy, tcx hooks with
    /// their link and program ids, the hook's counters, and the ring's fill.
    #[command(after_help = STATUS_EXAMPLES)]
    Status(StatusArgs),
}

/// `run`'s default ring buffer: 32 MiB.
pub const RUN_RING: RingSize = RingSize::of(32 << 20);
/// `attach`'s default ring: the size the eBPF object declares.
pub const ATTACH_RING: RingSize = RingSize::of(DEFAULT_RING_BYTES);

#[derive(Debug, Args)]
pub struct RunArgs {
    /// This node's name: pods with this spec.nodeName are the ones mirrored.
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    pub node_name: String,

    /// Pin directory (on bpffs): hooks and the ring buffer outlive the agent there.
    #[arg(long, value_name = "DIR", default_value = crate::kernel::pin::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,

    /// On exit, remove every hook and pin (`false`, the default, keeps them
    /// mirroring for the next agent, as a DaemonSet restart needs).
    #[arg(long, value_name = "BOOL", default_value_t = false, action = ArgAction::Set)]
    pub cleanup_on_exit: bool,

    /// Serve /metrics, /healthz and /readyz here; `off` for none. Default: the pod
    /// IP ($POD_IP, from the downward API) on port 9464, else 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_addr: Option<crate::metrics::MetricsAddr>,

    /// Where to look for pods' network namespaces: directories of namespace files
    /// (as /run/netns, where CNIs and `ip netns` bind them), and `/proc` for those
    /// of running processes. Repeat for several.
    #[arg(long = "netns-path", value_name = "DIR", default_values = ["/run/netns", "/proc"])]
    pub netns_paths: Vec<PathBuf>,

    /// Where pods' hooks go: `host`, the host end of the pod's veth; `pod`, the
    /// pod's own interface, inside its namespace; `auto`, the host end where the
    /// pod's traffic passes it both ways, else the pod end (ipvlan, macvlan,
    /// netkit, or a host end under a CNI's own TC program, as Cilium's).
    #[arg(
        long,
        value_name = "WHERE",
        env = "ATTACH_POINT",
        default_value = "auto"
    )]
    pub attach_point: crate::model::values::AttachPoint,

    /// The namespace whose Secrets hold TLS collectors' credentials (the agent's own).
    #[arg(
        long,
        value_name = "NAMESPACE",
        env = "POD_NAMESPACE",
        default_value = "mirror-system"
    )]
    pub secrets_namespace: String,

    /// Where TLS collectors' credentials are written, from their Secrets, for the
    /// exporters (a directory per collector, readable by the agent alone).
    #[arg(long, value_name = "DIR", default_value = "/run/mirror/tls")]
    pub tls_dir: PathBuf,

    /// Least time between two status writes of one policy by this node, and
    /// the window of each policy's usage rates in its status.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub status_interval: u64,

    /// Another node's status entry not renewed within this time is left out
    /// of a policy's totals and removed (its agent is gone); each agent renews
    /// its own entries every third of it. Node clocks must agree well within it.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub status_stale_after: u64,

    #[command(flatten)]
    pub tuning: Tuning,
}

/// Settings `run` shares with `attach`.
#[derive(Debug, Args)]
pub struct Tuning {
    /// SO_MARK put on the agent's own sockets, as VALUE[/MASK] (see `attach --help`).
    #[arg(
        long,
        value_name = "VALUE[/MASK]",
        default_value = "0x00dd0000/0x00ff0000"
    )]
    pub socket_mark: MarkArg,

    /// Bound of each output's queue in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    pub queue_bytes: usize,

    /// How hooks are attached: `tcx`, `netlink` or `auto` (see `attach --help`).
    #[arg(long, value_enum, default_value_t = AttachMode::Tcx)]
    pub attach_mode: AttachMode,

    /// Total size of the BPF ring buffers in bytes, split evenly over --ring-slots
    /// rings (pinned rings keep their sizes). Smaller than `attach`'s default: the
    /// kernel maps the rings' pages twice, and all of them count in the agent's RSS
    /// from the start (32 MiB: about 64 MiB of RSS).
    #[arg(long, value_name = "BYTES", default_value_t = RUN_RING)]
    pub ring_size: RingSize,

    /// How many rings the ring space is split into, 1 to 8: each namespace (and
    /// each ClusterMirrorPolicy) copies into a ring of its own, so one tenant's
    /// flood or slow collector cannot take the ring space another's copies need.
    /// More tenants than rings share them, evenly. Each ring gets at least 1 MiB:
    /// a smaller --ring-size makes fewer rings. 1: one ring shared by all.
    #[arg(long, value_name = "N", default_value_t = RingSlots::ALL)]
    pub ring_slots: RingSlots,
}

/// `sidecar`'s default `--metrics-addr`: every address of the pod, on a port
/// far from those applications commonly take (80, 443, 3000, 5000, 8000-8999,
/// 9000-9100, 9090, 9464 of the node agent).
pub const SIDECAR_METRICS_ADDR: &str = "0.0.0.0:19464";

const SIDECAR_EXAMPLES: &str = "Examples:\n  \
    MIRROR_POLICY=\"$(cat policy.yaml)\" mirror-agent sidecar\n  \
    mirror-agent sidecar --policy /etc/mirror/policy.yaml --interface eth0 --metrics-addr 0.0.0.0:19500\n\n\
    The policy is a policy file (as `attach --policy`; see deploy/examples/policy-web.yaml), \
    from --policy or, as the webhook passes it, from $MIRROR_POLICY. Its `interfaces` globs \
    are matched against the pod's interfaces but `lo` (unless a policy names `lo` itself), or \
    against those given with --interface. The ring buffer and the output queues are sized \
    from the container's memory limit (cgroup memory.max, or --memory-limit): a quarter each. \
    Needs CAP_BPF and CAP_NET_ADMIN (CAP_NET_RAW for gre and erspan outputs). Every output \
    works, tcp:// and tls:// too: the connection to the collector crosses the pod's interface, \
    and its packets, both ways, are never mirrored (counted in \
    mirror_own_traffic_packets_total). On SIGTERM the \
    sidecar detaches, sends what the ring holds, flushes its outputs and exits 0.";

#[derive(Debug, Args)]
pub struct SidecarArgs {
    /// The policy file (as `attach --policy`). Default: the text of $MIRROR_POLICY.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,

    /// The policy file's text itself, as the webhook puts it in the pod spec.
    #[arg(
        long,
        value_name = "YAML",
        env = "MIRROR_POLICY",
        hide_env_values = true
    )]
    pub policy_text: Option<String>,

    /// Mirror only this interface of the pod; repeat for more. Default: every
    /// interface but `lo`.
    #[arg(short, long = "interface", value_name = "IF")]
    pub interfaces: Vec<String>,

    /// Serve /metrics, /healthz (200 while running) and /readyz (200 once hooked)
    /// here, for the sidecar's probes; `off` for none.
    #[arg(long, value_name = "ADDR:PORT", env = "MIRROR_METRICS_ADDR", default_value = SIDECAR_METRICS_ADDR)]
    pub metrics_addr: crate::metrics::MetricsAddr,

    /// The memory the ring and queues are sized from, in bytes. Default: the
    /// container's limit (cgroup memory.max); with no limit, a 16 MiB ring.
    #[arg(long, value_name = "BYTES", env = "MIRROR_MEMORY_LIMIT")]
    pub memory_limit: Option<u64>,

    /// Size of the BPF ring buffer in bytes (a power of two); overrides the one
    /// sized from the memory limit.
    #[arg(long, value_name = "BYTES")]
    pub ring_size: Option<RingSize>,

    /// Bound of each output's queue in bytes; overrides the one sized from the
    /// memory limit.
    #[arg(long, value_name = "BYTES")]
    pub queue_bytes: Option<usize>,

    /// SO_MARK put on the sidecar's own sockets, as VALUE[/MASK] (see `attach --help`).
    #[arg(
        long,
        value_name = "VALUE[/MASK]",
        default_value = "0x00dd0000/0x00ff0000"
    )]
    pub socket_mark: MarkArg,

    /// How hooks are attached: `tcx`, `netlink` or `auto` (see `attach --help`).
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub attach_mode: AttachMode,

    /// The node's name, carried in GENEVE options (the webhook sets it from the
    /// downward API).
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    pub node_name: Option<String>,
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// The pin directory the agent used.
    #[arg(long, value_name = "DIR", default_value = crate::kernel::pin::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The pin directory the agent uses.
    #[arg(long, value_name = "DIR", default_value = crate::kernel::pin::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// How to print it: a table, or everything as JSON or YAML.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: crate::datapath::status::Format,
}

const STATUS_EXAMPLES: &str = "Examples:\n  \
    mirror-agent status\n  \
    kubectl -n mirror-system exec ds/mirror-agent -- mirror-agent status -o json\n\n\
    Counters are the hooks' own, since each interface was first hooked: SEEN packets in a \
    mirrored direction, MIRRORED into the ring, and those not (TRUNCATED ones are mirrored but \
    cut to the snaplen). What the agent then sent is in its /metrics. Only hooks pinned by \
    `run` or `attach --pin-dir` are seen.";

const COLLECT_EXAMPLES: &str = "Examples:\n  \
    mirror-agent collect --listen vxlan://0.0.0.0 --output pcapng:/var/lib/mirror\n  \
    mirror-agent collect -l geneve://0.0.0.0 -l gre://0.0.0.0 -l tcp://0.0.0.0:7000 -o pcapng:/data\n  \
    mirror-agent collect -l tcp://[::]:7000 -o pcapng:/data --rotate-size 50000000 --rotate-seconds 600 --max-files 48\n  \
    mirror-agent collect -l vxlan://0.0.0.0 -o pcapng:/data --max-files 20 --max-total-bytes 50000000000\n  \
    mirror-agent collect -l 'tls://0.0.0.0:7443?ca=ca.pem&cert=collector.pem&key=collector.key' -o pcapng:/data\n\n\
    Each sender gets its own files, named collect-SENDER-YYYYMMDDTHHMMSSZ-NNNNNN.pcapng \
    (mergecap -w all.pcapng DIR/collect-*.pcapng merges them in time order). Interfaces are named SOURCE-IP/node/pod \
    (GENEVE), SOURCE-IP/vni-N (VXLAN), SOURCE-IP/key-N (GRE), SOURCE-IP/erspan-session-N \
    (ERSPAN) and PEER-IP/INTERFACE (TCP streams). Packets are written as the agents sent \
    them: checksums finished and super-packets in wire-size segments by default, the hook's \
    bytes exactly from an agent output with `checksums=keep`. Stop with Ctrl-C or SIGTERM: \
    the collector closes its files, prints a summary per listener and exits 0.";

const RUN_EXAMPLES: &str = "Examples:\n  \
    mirror-agent run --node-name \"$NODE_NAME\" --metrics-addr \"$POD_IP:9464\"\n  \
    KUBECONFIG=~/.kube/config mirror-agent run --node-name worker-1 --metrics-addr off\n\n\
    The API server is found as kube-rs finds it: $KUBECONFIG or ~/.kube/config if there is \
    one, else the in-cluster service account (the DaemonSet's case). Hooks go on the host end of each selected pod's interface. They are \
    pinned under --pin-dir and kept on SIGTERM (a DaemonSet restart is not an uninstall): \
    the next agent adopts them. `mirror-agent uninstall` removes them.";

const ATTACH_EXAMPLES: &str = "Examples:\n  \
    mirror-agent attach --interface veth1 --output pcapng:/tmp/veth1.pcapng\n  \
    mirror-agent attach -i veth1 -i veth2 --direction ingress --snaplen 128 --output pcapng:out.pcapng\n  \
    mirror-agent attach -i eth0 --sample 100 --output pcapng:- | tshark -r -\n  \
    mirror-agent attach -i veth1 --snaplen 256 --output vxlan://198.18.0.9?vni=42 --output pcapng:local.pcapng\n  \
    mirror-agent attach -i veth1 --segment --output pcapng:for-the-ids.pcapng\n\n\
    Stop with Ctrl-C or SIGTERM: the agent drains what is left, detaches its hooks, prints \
    a counter summary and exits 0.";

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Interface to mirror; repeat for more than one.
    #[arg(
        short,
        long = "interface",
        value_name = "IF",
        required_unless_present = "policy"
    )]
    pub interfaces: Vec<String>,

    /// Mirror by a policy file instead of the flags: policies with interfaces (names or
    /// globs), collectors, direction, ordered accept/reject rules, a pcap-filter
    /// expression, snaplen, sampling and a rate limit, which the hook enforces before the
    /// ring buffer (rateLimit: packetsPerSecond, packetsBurst, bytesPerSecond, bytesBurst;
    /// see deploy/examples/policy-web.yaml).
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["interfaces", "outputs", "direction", "snaplen", "sample"]
    )]
    pub policy: Option<std::path::PathBuf>,

    /// Which packets to mirror, from the interface's own point of view (as `tcpdump -Q`):
    /// ingress = received by the interface, egress = sent by it.
    #[arg(short, long, value_enum, default_value_t = Directions::Both)]
    pub direction: Directions,

    /// Bytes kept per packet (1 to 262144); longer packets are cut, and their original
    /// length is kept. Default: the whole packet, as tcpdump.
    #[arg(short, long, default_value_t = Snaplen::MAX)]
    pub snaplen: Snaplen,

    /// Mirror one in N packets, chosen at random (1 = every packet).
    #[arg(long = "sample", value_name = "N", default_value_t = SampleRate::ALL)]
    pub sample: SampleRate,

    /// Where the copies go; repeat for several collectors, each gets every copy:
    /// `pcapng:PATH`, `pcapng:-` (standard output), `vxlan://HOST[:PORT]?vni=N`,
    /// `geneve://HOST[:PORT]?vni=N`, `gre://HOST[?key=N&seq=true]`,
    /// `erspan2://HOST?session=N`, `erspan3://HOST?session=N[&hwid=N]`,
    /// `tcp://HOST:PORT` (a pcapng stream), `tls://HOST:PORT?ca=PATH&cert=PATH&key=PATH[&name=SERVER]`
    /// (the same over mutual TLS: the collector's CA, our client certificate and key,
    /// PEM files). Tunnels take `&mtu=BYTES` (default: the path MTU of the route to the
    /// collector): longer copies are cut to fit, keeping their original length where the
    /// tunnel can; tunnels and streams take `&checksums=keep` to send the bytes exactly as
    /// the hook saw them (by default checksums are finished and super-packets cut into wire
    /// segments; files finish checksums and keep super-packets whole: see --segment and
    /// --checksums); vxlan and geneve send runs of copies as UDP GSO messages, which the NIC or
    /// kernel cuts into datagrams (`&gso=false` for a receiver sniffing a veth, where they stay
    /// merged).
    #[arg(
        short,
        long = "output",
        value_name = "URI",
        required_unless_present = "policy"
    )]
    pub outputs: Vec<Output>,

    /// File outputs (`pcapng:PATH`, `pcapng:-`, and those of a --policy file) write
    /// GSO/GRO super-packets as the wire-size segments the kernel would send (each with
    /// its own headers, checksums and original length), as tunnels and streams do. By
    /// default files keep them whole, as tcpdump writes them.
    #[arg(long)]
    pub segment: bool,

    /// What file outputs do with partial (offloaded) checksums of locally sent packets:
    /// `finish` writes the checksums a NIC would put on the wire, so readers that
    /// validate them (an IDS, tshark) accept every packet; `keep` writes the bytes
    /// exactly as the hook saw them, as tcpdump does. Tunnels and streams take
    /// `&checksums=keep` in their URI instead.
    #[arg(long, value_enum, value_name = "HOW", default_value_t = FileChecksums::Finish)]
    pub checksums: FileChecksums,

    /// SO_MARK put on the agent's own sockets, as VALUE[/MASK]; the hooks pass over
    /// packets whose mark matches, so the agent never mirrors its own tunnels. Change it
    /// if your CNI uses these mark bits.
    #[arg(
        long,
        value_name = "VALUE[/MASK]",
        default_value = "0x00dd0000/0x00ff0000"
    )]
    pub socket_mark: MarkArg,

    /// Bound of each output's queue in bytes; beyond it copies are dropped and counted
    /// (`queue_full`), so a slow collector never holds up the others.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    pub queue_bytes: usize,

    /// This node's name, carried in GENEVE options. Default: $NODE_NAME, else the host name.
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics, and the probes /healthz
    /// (200 while the agent runs) and /readyz (200 once the hooks are attached, 503
    /// before and while stopping); `off` for none. Metric names: see docs/metrics.md.
    #[arg(long, value_name = "ADDR:PORT", default_value = crate::metrics::DEFAULT_ADDR)]
    pub metrics_addr: crate::metrics::MetricsAddr,

    /// How hooks are attached: `tcx` (first in the kernel's multi-program chain),
    /// `netlink` (clsact qdisc and cls_bpf filter, for kernels before 6.6),
    /// or `auto` (tcx where the kernel has it).
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub attach_mode: AttachMode,

    /// Total size of the BPF ring buffers in bytes: a power of two, at least one
    /// page, split evenly over --ring-slots rings. Rings adopted from --pin-dir keep
    /// the sizes they were made with. For whole packets at full rate, give each
    /// tenant tcpdump's buffer (268435456 a ring, as `-B 262144`).
    #[arg(long, value_name = "BYTES", default_value_t = ATTACH_RING)]
    pub ring_size: RingSize,

    /// At most how many rings the ring space is split into, 1 to 8: each policy
    /// of --policy copies into a ring of its own, so one policy's flood or slow
    /// collector cannot take the ring space another's copies need. No more rings
    /// than the policies at start (one policy: the whole space); policies added
    /// on SIGHUP, or more than rings, share them, evenly. Each ring gets at least
    /// 1 MiB: a smaller --ring-size makes fewer rings. 1: one ring shared by all.
    #[arg(long, value_name = "N", default_value_t = RingSlots::ALL)]
    pub ring_slots: RingSlots,

    /// Pin the hooks, maps and ring buffer under DIR, on a bpf filesystem (e.g.
    /// /sys/fs/bpf/mirror), so they outlive this process: if it is killed, the hooks
    /// go on copying into the ring, and the next agent started with the same DIR
    /// adopts them (replacing their programs atomically, never unhooking) and sends
    /// what was copied meanwhile. One agent per DIR. Needs tcx (Linux 6.6+).
    /// Without it, the hooks belong to this process and go with it.
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,

    /// On exit, remove every hook and pin this agent made or adopted (`true`, the
    /// default). `false` leaves the pinned hooks mirroring into the ring for the next
    /// agent, as across a restart or an upgrade (needs --pin-dir); `mirror-agent
    /// uninstall --pin-dir DIR` removes them later.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = ArgAction::Set)]
    pub cleanup_on_exit: bool,
}

/// `attach --checksums`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FileChecksums {
    Finish,
    Keep,
}

#[derive(Debug, Args)]
pub struct CollectArgs {
    /// Where to receive; repeat for more: `vxlan://ADDR[:PORT]` (UDP 4789),
    /// `geneve://ADDR[:PORT]` (UDP 6081), `gre://ADDR` (GRE/TEB and ERSPAN II/III),
    /// `tcp://ADDR:PORT` (pcapng streams from `--output tcp://`),
    /// `tls://ADDR:PORT?ca=PATH&cert=PATH&key=PATH` (the same over mutual TLS: only
    /// agents with a certificate signed by `ca` get in). ADDR is an address of this
    /// host, or 0.0.0.0 / [::] for all.
    #[arg(short, long = "listen", value_name = "URI", required = true)]
    pub listen: Vec<Listen>,

    /// The directory for the rotating pcapng files, as `pcapng:DIR`. It must exist.
    #[arg(short, long, value_name = "pcapng:DIR")]
    pub output: OutputDir,

    /// Start a new file once the current one holds this many bytes.
    #[arg(long, value_name = "BYTES", default_value = "104857600")]
    pub rotate_size: NonZeroU64,

    /// Start a new file once the current one is this many seconds old (and holds packets).
    #[arg(long, value_name = "N")]
    pub rotate_seconds: Option<NonZeroU64>,

    /// Keep at most N files per sender in DIR (earlier runs' included), deleting that
    /// sender's oldest: each sender (source address, or stream peer) has its own series
    /// of files, so one sender's volume never rotates out another's captures. Only
    /// --rotate-size and --rotate-seconds start a file: new interfaces never do (past
    /// 1,024 in a file they are filed under SOURCE-IP/other-interfaces).
    /// Default: keep them all.
    #[arg(long, value_name = "N")]
    pub max_files: Option<NonZeroUsize>,

    /// Cap on the bytes of all the collector's files in DIR together (earlier runs'
    /// included). A packet that would pass it deletes its own sender's oldest closed
    /// files; a sender with none left has its packets dropped and counted
    /// (`dropped_packets{reason="retention"}`). Another sender's files are never deleted
    /// for it. Default: no cap.
    #[arg(long, value_name = "BYTES")]
    pub max_total_bytes: Option<NonZeroU64>,

    /// Delete closed files (ours, earlier runs' included) last written this many seconds
    /// ago, whoever sent them: time, not a sender's traffic, decides, and it frees what
    /// senders that went away left. Default: keep them.
    #[arg(long, value_name = "SECONDS")]
    pub max_age: Option<NonZeroU64>,

    /// Senders (source addresses) known at once, each with one open file. A new sender
    /// past it takes the place of one silent for 10 minutes, or has its packets dropped
    /// and counted (`dropped_packets{reason="senders"}`).
    #[arg(long, value_name = "N", default_value_t = NonZeroUsize::new(1024).unwrap_or(NonZeroUsize::MIN))]
    pub max_senders: NonZeroUsize,

    /// Stream connections (tcp:// and tls://) open at once, per listener; past it a
    /// connection is closed at once and counted (`refused_connections{reason="limit"}`).
    /// The collector keeps file descriptors beyond it for its files and /metrics.
    #[arg(long, value_name = "N", default_value_t = NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN))]
    pub max_connections: NonZeroUsize,

    /// Stream connections open at once from one source address, per listener
    /// (`reason="source_limit"` past it).
    #[arg(long, value_name = "N", default_value_t = NonZeroUsize::new(16).unwrap_or(NonZeroUsize::MIN))]
    pub max_connections_per_source: NonZeroUsize,

    /// Close a stream connection that sends nothing between blocks for this many
    /// seconds (`reason="idle_timeout"`); agents reconnect when they have packets.
    #[arg(long, value_name = "SECONDS", default_value_t = NonZeroU64::new(300).unwrap_or(NonZeroU64::MIN))]
    pub idle_timeout: NonZeroU64,

    /// Close a stream connection whose block (at most about 320 KiB) takes longer than
    /// this many seconds to arrive from its first byte (`reason="read_timeout"`), so a
    /// peer cannot hold memory by trickling.
    #[arg(long, value_name = "SECONDS", default_value_t = NonZeroU64::new(30).unwrap_or(NonZeroU64::MIN))]
    pub read_timeout: NonZeroU64,

    /// Bound, in bytes, of the queue between the receivers and the file writer; when it
    /// is full, UDP receivers wait (the kernel drops and counts) and TCP pushes back.
    #[arg(long, value_name = "BYTES", default_value_t = crate::collect::queue::DEFAULT_QUEUE_BYTES)]
    pub queue_bytes: usize,

    /// Hold each packet up to this many milliseconds and write them in order of
    /// their time, so a file mixing one sender's tunnels and lanes is in time order.
    /// The time is the sender's capture time where the tunnel carries it (GENEVE,
    /// ERSPAN III, tcp://, tls://), else the time it was received (VXLAN, GRE,
    /// ERSPAN II). Packets later than this are written at once and counted
    /// (`mirror_collect_late_packets`). 0 writes in arrival order.
    #[arg(long, value_name = "MS", default_value_t = 250)]
    pub reorder_ms: u64,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics, and the probes /healthz
    /// (200 while the collector runs) and /readyz (200 once every listener is bound);
    /// `off` for none.
    #[arg(long, value_name = "ADDR:PORT", default_value = crate::metrics::DEFAULT_ADDR)]
    pub metrics_addr: crate::metrics::MetricsAddr,
}

const WEBHOOK_EXAMPLES: &str = "Examples:\n  \
    mirror-agent webhook --tls-cert /tls/tls.crt --tls-key /tls/tls.key --image ghcr.io/example/mirror-agent:0.1.0\n\n\
    Serves POST /mutate (AdmissionReview of Pods) and GET /healthz over HTTPS. A pod gets the \
    sidecar when its namespace has the label mirror.packets.dev/sidecar=enabled or the pod the \
    annotation of that name (`disabled` opts out); the policy is the MirrorPolicy named by \
    mirror.packets.dev/policy, else the one of the namespace that selects the pod. Other \
    annotations: mirror.packets.dev/memory, /cpu, /interfaces (comma-separated), /metrics-port. \
    A pod that cannot have the sidecar (bad annotation, no policy, a collector that does not \
    admit its namespace) is admitted without it, with a warning naming the reason. A tls \
    collector's client certificate comes from the Secret of its tls.secretName in the pod's \
    own namespace (keys ca.crt, tls.crt, tls.key), mounted read-only into the sidecar; the \
    webhook reads no Secret. The \
    certificate files are read again when they change. See deploy/webhook.yaml.";

#[derive(Debug, Args)]
pub struct WebhookArgs {
    /// Where to serve HTTPS.
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:8443")]
    pub listen: std::net::SocketAddr,

    /// The serving certificate (PEM, chain leaf first), for the webhook's Service name.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/run/mirror/webhook-tls/tls.crt"
    )]
    pub tls_cert: PathBuf,

    /// Its private key (PEM).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/run/mirror/webhook-tls/tls.key"
    )]
    pub tls_key: PathBuf,

    /// The image of the injected sidecar (this binary's image).
    #[arg(long, value_name = "IMAGE", env = "MIRROR_IMAGE")]
    pub image: String,

    /// The project's own namespace, never injected (nor kube-system).
    #[arg(
        long,
        value_name = "NAMESPACE",
        env = "POD_NAMESPACE",
        default_value = "mirror-system"
    )]
    pub own_namespace: String,

    /// The sidecar's memory limit without an annotation (its ring and queues take
    /// a quarter each).
    #[arg(long, value_name = "QUANTITY", default_value = "64Mi")]
    pub memory: String,

    /// The sidecar's CPU request without an annotation.
    #[arg(long, value_name = "QUANTITY", default_value = "50m")]
    pub cpu: String,

    /// The port of the sidecar's /metrics and probes without an annotation.
    #[arg(long, value_name = "PORT", default_value_t = 19464)]
    pub sidecar_metrics_port: u16,
}
